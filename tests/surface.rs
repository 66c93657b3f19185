//! The public surface held against what an attacker on the internet tried (issue #27), each
//! attack as it was observed: a read token taking a WHIP publisher off the air, preflights
//! handing out TURN credentials to anyone, junk tunnel packets under made-up agent ids growing
//! the manager, and one client holding every viewer slot of a box with offers it never
//! connects.

use std::net::SocketAddr;
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::{Response, listener, request, wait_for};

const STATIC: &str = "surface-static-token";
const SECRET: &str = "surface-jwt-secret";

fn jwt(id: &str, mode: u8) -> String {
    let exp = verge_protocol::now_ms() / 1000 + 600;
    verge_testkit::liveman_jwt(SECRET, id, mode, exp)
}

fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let content_type = if path.starts_with("/session") || path.starts_with("/whip-session") {
        "application/trickle-ice-sdpfrag"
    } else {
        "application/sdp"
    };
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    request(
        method,
        addr,
        path,
        &headers,
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .expect("HTTP exchange")
}

/// A WHIP offer the agent answers (ICE credentials, a fingerprint, H.264 to send); nobody
/// connects behind it, so its session lives until the agent's connect timeout.
const WHIP_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Hc4f\r\na=ice-pwd:Q1zXGk8rM1F0oKc6bq3yWn2u\r\n\
a=fingerprint:sha-256 3C:4B:4F:8A:7E:2B:90:14:5D:E1:A4:27:62:7C:3D:6C:1C:8F:12:A0:33:44:55:66:77:88:99:AA:BB:CC:DD:EE\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=ssrc:1111 cname:surface\r\n";

/// The same offer, as a viewer would make it (receive only).
fn whep_offer() -> String {
    WHIP_OFFER
        .replace("a=sendonly", "a=recvonly")
        .replace("a=ssrc:1111 cname:surface\r\n", "")
}

fn links(r: &Response) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("link"))
        .map(|(_, v)| v.clone())
        .collect()
}

fn edge(label: &str, agent_toml: &str) -> Edge {
    Edge::start(
        label,
        &EdgeOptions::noauth()
            .token(STATIC)
            .manager(&format!(
                "[auth]\ntokens = [\"{STATIC}\"]\nsecret = \"{SECRET}\"\n\
                 [[extra_ice.ice_servers]]\nurls = [\"turn:turn.example.net:3478\"]\n\
                 username = \"turn-user\"\ncredential = \"turn-password\"\n\
                 [enrollment]\nsecret = \"surface-enrollment\"\n"
            ))
            .agent(agent_toml),
    )
}

/// ffmpeg publishing `live/cam` to the box for two minutes, once it is listed.
fn live_cam(b: &Edge) -> verge_testkit::Proc {
    b.on_air("cam", "cam", &Synthetic::lasting(120))
}

/// Finding 1: the publisher's session id was shown to readers, and `DELETE /session/…` (read
/// rights) ended publisher sessions too. Observed: a read token's DELETE → 200, "WHIP
/// publisher ended".
#[test]
fn a_read_token_can_neither_see_nor_end_a_whip_publisher() {
    let b = edge("surface-whip", "");
    let m = b.manager_http;
    let (reader, writer) = (jwt("pub", 4), jwt("pub", 2));
    let created = call(m, "POST", "/whip/pub", Some(&writer), WHIP_OFFER);
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("location").unwrap_or_default().to_string();
    let session = location
        .strip_prefix("/whip-session/pub/")
        .unwrap_or_else(|| panic!("location {location}"))
        .to_string();

    // What a reader sees of a publisher: its kind, not the session id (or address) that would
    // name it. (The WHIP publisher above sends no media, so it is not listed: an RTMP one is.)
    let _cam = live_cam(&b);
    let seen = |token: &str| {
        wait_for(Duration::from_secs(20), || {
            let r = call(m, "GET", "/api/streams/cam", Some(token), "");
            (r.status == 200).then(|| r.json()["edge-1"]["publish"]["sessions"][0]["id"].clone())
        })
        .unwrap_or_else(|| {
            let r = call(m, "GET", "/api/streams/cam", Some(token), "");
            panic!("the RTMP stream is not listed: {} {}", r.status, r.text())
        })
    };
    assert_eq!(seen(&jwt("cam", 4)), "RTMP");
    let full = seen(&jwt("cam", 6));
    assert!(
        full.as_str()
            .is_some_and(|id| id.starts_with("RTMP ") && id.len() > 5),
        "{full}"
    );
    let listed = call(m, "GET", "/api/streams/", Some(&jwt("cam", 4)), "").text();
    assert!(!listed.contains(full.as_str().unwrap_or("?")), "{listed}");

    // The attack: the viewer's session URL, the reader's token.
    let frag = "a=ice-ufrag:Hc4f\r\na=ice-pwd:Q1zXGk8rM1F0oKc6bq3yWn2u\r\n";
    for method in ["PATCH", "DELETE"] {
        let r = call(
            m,
            method,
            &format!("/session/pub/{session}"),
            Some(&reader),
            frag,
        );
        assert_eq!(
            r.status,
            404,
            "{method} as a viewer's session: {}",
            r.text()
        );
        let r = call(
            m,
            method,
            &format!("/whip-session/pub/{session}"),
            Some(&reader),
            frag,
        );
        assert_eq!(r.status, 403, "{method} with read rights: {}", r.text());
    }
    assert!(
        !b.agent.log_text().contains("WHEP session deleted"),
        "{}",
        b.agent.log_text()
    );
    // The publisher's own token ends it.
    let r = call(m, "DELETE", &location, Some(&writer), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let gone = wait_for(Duration::from_secs(10), || {
        (call(m, "GET", "/api/streams/pub", Some(STATIC), "").status == 404).then_some(())
    });
    assert!(gone.is_some(), "the publisher's own DELETE did not end it");
}

/// Finding 4: `OPTIONS` on any path answered with the TURN credentials, even for a stream that
/// does not exist. Now only a caller whose token may make the offer gets them, and for WHEP
/// only while the stream is live.
#[test]
fn preflights_carry_ice_servers_only_for_callers_who_may_make_the_offer() {
    let b = edge("surface-preflight", "");
    let m = b.manager_http;
    let _cam = live_cam(&b);
    let options = |path: &str, token: Option<&str>| {
        let r = call(m, "OPTIONS", path, token, "");
        if path.starts_with("/whep") || path.starts_with("/whip") {
            assert_eq!(r.status, 204, "OPTIONS {path}: {}", r.text());
            // CORS holds for everyone: a page on another origin can still make its offer.
            assert!(r.header("access-control-allow-origin").is_some());
        }
        links(&r)
    };
    let (read_cam, read_other, write_new) = (jwt("cam", 4), jwt("other", 4), jwt("new", 2));
    // Observed before: every one of these carried `turn-password`.
    for (path, token) in [
        ("/whep/cam", None),
        ("/whep/ghost", Some(STATIC)),
        ("/whep/cam", Some(read_other.as_str())),
        ("/whip/new", None),
        ("/whip/new", Some(read_cam.as_str())),
        ("/api/keys", Some(STATIC)),
        ("/anything", None),
    ] {
        assert!(
            options(path, token).is_empty(),
            "OPTIONS {path} with {token:?}"
        );
    }
    for (path, token) in [
        ("/whep/cam", read_cam.as_str()),
        ("/whep/cam", STATIC),
        ("/whip/new", write_new.as_str()),
    ] {
        let got = options(path, Some(token));
        assert!(
            got.iter().any(|l| l.contains("turn-password")),
            "OPTIONS {path}: {got:?}"
        );
    }
}

/// Finding 3: a tunnel link was made for any agent id named in a tunnel topic, before the
/// packet was checked, and never removed. Observed: 10,000 junk publishes to
/// `verge/v1/m/manager/tun/ghost-N` → 10,001 "tunnel link up" lines, RSS 13 → 164 MB.
#[test]
fn junk_tunnel_packets_under_made_up_agent_ids_cost_the_manager_nothing() {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

    let b = edge("surface-tunnel", "");
    let pid = b.manager.pid();
    let before = verge_testkit::measure::rss_kib(pid).expect("manager RSS");
    // Any broker credentials will do; with `[enrollment] secret` every id has a secret.
    let mqtt = listener(&b.manager_listeners, "mqtt");
    let secret = verge_protocol::secret::derive_agent_secret("surface-enrollment", "junk");
    let mut opts = MqttOptions::new("junk", "127.0.0.1", mqtt.port());
    opts.set_credentials("junk", secret)
        .set_keep_alive(Duration::from_secs(5))
        .set_inflight(100);
    let (client, mut connection) = Client::new(opts, 256);
    const JUNK: usize = 10_000;
    let (acked_tx, acked_rx) = std::sync::mpsc::channel();
    let events = std::thread::spawn(move || {
        let mut acked = 0;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == JUNK {
                        let _ = acked_tx.send(());
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    for n in 0..JUNK {
        client
            .publish(
                format!("verge/v1/m/manager/tun/ghost-{n}"),
                QoS::AtLeastOnce,
                false,
                vec![0x5a; 64],
            )
            .expect("queued");
    }
    acked_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the broker took every junk packet");
    let _ = client.disconnect();
    let _ = events.join();
    // The manager's link thread has had every one of them.
    std::thread::sleep(Duration::from_millis(500));
    let after = verge_testkit::measure::rss_kib(pid).expect("manager RSS");
    let log = b.manager.log_text();
    let links = log.matches("tunnel link up").count();
    println!(
        "{JUNK} junk tunnel packets: manager RSS {} → {} MiB, {links} tunnel links",
        before / 1024,
        after / 1024
    );
    assert_eq!(links, 0, "links for made-up agents:\n{log}");
    assert!(
        after < before + 16 * 1024,
        "the manager grew from {before} KiB to {after} KiB"
    );
    assert!(log.len() < 64 * 1024, "the junk was logged");
}

/// Finding 7: one client held every viewer slot of the box with offers it never connected
/// (62 fake viewers for 15 s). Now one address holds at most `[limits] sessions_per_address`
/// sessions at once; others still get in.
#[test]
fn one_address_cannot_hold_every_viewer_slot() {
    let b = edge(
        "surface-caps",
        "[limits]\nsessions_per_address = 4\nsessions_per_token = 6\n",
    );
    let m = b.manager_http;
    let _cam = live_cam(&b);
    let offer = whep_offer();
    let statuses: Vec<u16> = (0..8)
        .map(|_| call(m, "POST", "/whep/cam", Some(STATIC), &offer).status)
        .collect();
    assert_eq!(statuses, [201, 201, 201, 201, 429, 429, 429, 429]);
    let refused = call(m, "POST", "/whep/cam", Some(STATIC), &offer);
    assert!(
        refused.text().contains("127.0.0.1 holds 4 WebRTC sessions"),
        "{}",
        refused.text()
    );
    // A session that ends gives its slot back.
    let first = call(m, "POST", "/whep/cam", Some(STATIC), &offer);
    assert_eq!(first.status, 429);
    let sessions = b.agent.log_text();
    let session = sessions
        .lines()
        .find(|l| l.contains("WHEP viewer answered"))
        .and_then(|l| l.split("session=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .expect("an answered session in the agent's log")
        .to_string();
    let r = call(
        m,
        "DELETE",
        &format!("/session/cam/{session}"),
        Some(STATIC),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let again = wait_for(Duration::from_secs(10), || {
        let r = call(m, "POST", "/whep/cam", Some(STATIC), &offer);
        (r.status == 201).then_some(())
    });
    assert!(
        again.is_some(),
        "the ended session's slot did not come back"
    );
}
