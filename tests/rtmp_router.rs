//! The manager's RTMP router with real processes: ffmpeg publishes to the manager with a key
//! bound to edge-1, the box behind it gets the stream through the tunnel, and viewers on the
//! manager's side play it (WHEP, HTTP-FLV); wrong keys and keys of offline agents are refused at
//! publish; the router's limits hold against idle and flooding clients; write tokens work in
//! the app (`rtmp://…/live?token=…/key`) or the key, and no log holds them.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::rtmp::RtmpClient;
use verge_testkit::whep::watching;
use verge_testkit::{ANY_PORT, http, listener, request, tcp_from, wait_for};

/// A manager with the router on and two enrolled agents, of which only edge-1 runs (with keys
/// required).
fn router_edge(label: &str, rtmp_toml: &str) -> Edge {
    Edge::start(
        label,
        &EdgeOptions::default().manager(&format!(
            "[rtmp]\nlisten = \"{ANY_PORT}\"\n{rtmp_toml}\
                 [[agents]]\nid = \"edge-2\"\nsecret = \"s2\"\n"
        )),
    )
}

/// Issues the key of `live/{name}`, bound to `agent`.
fn issue(b: &Edge, name: &str, agent: &str) -> String {
    let r = http(
        "POST",
        b.manager_http,
        &format!("/api/keys/live/{name}"),
        format!("{{\"agent\": \"{agent}\"}}").as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["key"].as_str().unwrap().to_string()
}

/// Publishes with `key` through the router until the agent takes it (it learns new keys over
/// MQTT, a moment after they are issued); returns the publisher, still connected.
fn publish_once_the_agent_has(b: &Edge, router: SocketAddr, key: &str) -> RtmpClient {
    let mut last = (String::new(), String::new());
    let accepted = wait_for(Duration::from_secs(20), || {
        // From 127.0.0.1, the address the limits test floods from.
        let socket = tcp_from(IpAddr::from([127, 0, 0, 1]), router).ok()?;
        let mut c = RtmpClient::handshake(socket).ok()?;
        last = c.publish_status("live", key).ok()?;
        (last.0 == "NetStream.Publish.Start").then_some(c)
    });
    accepted.unwrap_or_else(|| {
        panic!(
            "never published through the router: {last:?}\n{}",
            b.manager.log_text()
        )
    })
}

#[test]
fn ffmpeg_publishes_to_the_managers_router_and_the_stream_plays_through_the_manager() {
    let b = router_edge("router-e2e", "");
    let router = listener(&b.manager_listeners, "rtmp");
    let key = issue(&b, "cam", "edge-1");
    let probe = issue(&b, "probe", "edge-1");
    let offline = issue(&b, "elsewhere", "edge-2");
    // Both keys of edge-1 came in the same table: once one publishes, the other is there.
    drop(publish_once_the_agent_has(&b, router, &probe));

    let media = Synthetic {
        seconds: 60,
        gop: 25,
        ..Synthetic::default()
    };
    let mut ffmpeg = b.publish_to("ffmpeg", &format!("rtmp://{router}/live/{key}"), &media);
    let live = wait_for(Duration::from_secs(30), || {
        b.listed_stream("cam").filter(|s| s["width"].is_u64())
    });
    assert!(
        live.is_some(),
        "the stream never went live through the router:\n{}\n{}\n{}",
        ffmpeg.log_text(),
        b.manager.log_text(),
        b.agent.log_text()
    );

    // WHEP through the manager: a keyframe, then 50 frames in order.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{}/whep/cam", b.manager_http);
    rt.block_on(async {
        let mut viewer = watching(&url, "WHEP through the manager").await;
        for _ in 0..50 {
            let frame = viewer.next_frame(Duration::from_secs(10)).await;
            assert!(matches!(frame, Ok(Some(_))), "{frame:?}: {}", viewer.stats);
        }
        viewer.close().await;
    });

    // HTTP-FLV of the box, fetched from the manager, decoded by ffmpeg.
    let flv = format!("http://{}/flv/live/cam.flv", b.manager_http);
    let mut player = b.decode("flv", &flv, Some(50));
    let status = wait_for(Duration::from_secs(60), || player.exit_status());
    assert!(
        status.is_some_and(|s| s.success()),
        "ffmpeg could not decode {flv}: {status:?}\n{}",
        player.log_text()
    );
    assert!(!ffmpeg.exited(), "{}", ffmpeg.log_text());

    // Refusals at publish, with a reason the encoder shows.
    let mut wrong = b.publish_to(
        "ffmpeg-wrong-key",
        &format!("rtmp://{router}/live/not-a-key"),
        &media,
    );
    let status = wait_for(Duration::from_secs(30), || wrong.exit_status());
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(
        wrong.log_text().contains("unknown channel key"),
        "{}",
        wrong.log_text()
    );
    let mut c = RtmpClient::connect(router).unwrap();
    let (code, reason) = c.publish_status("live", &offline).unwrap();
    assert_eq!(code, "NetStream.Failed");
    assert!(reason.contains("edge-2, which is offline"), "{reason}");
    assert!(c.closed_by_server(Duration::from_secs(10)));
    let mut c = RtmpClient::connect(router).unwrap();
    let (code, _) = c.publish_status("other", &key).unwrap();
    assert_eq!(code, "NetStream.Publish.BadName");

    // The operator sees where it went.
    let log = b.manager.log_text();
    assert!(
        log.contains("handing the publisher to its agent") && log.contains("live/cam"),
        "{log}"
    );
    assert!(
        !log.contains(&key),
        "the manager logged a channel key:\n{log}"
    );
}

/// True once the server has closed `socket` (EOF or reset) within `within`.
fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = socket.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn idle_and_flooding_clients_cannot_lock_publishers_out() {
    let b = router_edge(
        "router-limits",
        "max_per_source = 2\nmax_handshakes = 3\nhandshake_timeout_secs = 2\n",
    );
    let router = listener(&b.manager_listeners, "rtmp");
    let key = issue(&b, "cam", "edge-1");
    let ip = |last: u8| IpAddr::from([127, 0, 0, last]);

    // Two idle connections from one address; a third from it is closed at once.
    let mut a1 = tcp_from(ip(1), router).unwrap();
    let mut a2 = tcp_from(ip(1), router).unwrap();
    let mut a3 = tcp_from(ip(1), router).unwrap();
    assert!(
        closed_within(&mut a3, Duration::from_secs(10)),
        "a third connection from one source was kept"
    );
    // One more from another address fills the handshake places; a fourth address waits.
    let mut b1 = tcp_from(ip(2), router).unwrap();
    let mut c1 = tcp_from(ip(3), router).unwrap();
    assert!(
        closed_within(&mut c1, Duration::from_secs(10)),
        "more connections in their handshake than allowed"
    );

    // None of them said anything for 2 s: all closed, places free.
    for (name, socket) in [("a1", &mut a1), ("a2", &mut a2), ("b1", &mut b1)] {
        assert!(
            closed_within(socket, Duration::from_secs(20)),
            "{name} outlived the handshake deadline"
        );
    }
    let log = b.manager.log_text();
    assert!(log.contains("no publish within 2s"), "{log}");

    // A publisher from the flooding address gets through, and once through holds no
    // handshake place: three more clients can start theirs.
    let _publisher = publish_once_the_agent_has(&b, router, &key);
    let others: Vec<TcpStream> = [4, 5, 6]
        .into_iter()
        .map(|last| tcp_from(ip(last), router).unwrap())
        .collect();
    for mut socket in others {
        assert!(!closed_within(&mut socket, Duration::from_millis(300)));
    }
}

#[test]
fn write_tokens_in_the_app_publish_through_the_router_and_to_the_agent_and_reach_no_log() {
    const STATIC: &str = "router-static-token";
    let b = Edge::start(
        "router-tokens",
        &EdgeOptions {
            noauth: false,
            manager_toml: format!(
                "[auth]\ntokens = [\"{STATIC}\"]\nsecret = \"router-jwt-secret\"\n\
                 [rtmp]\nlisten = \"{ANY_PORT}\"\n"
            ),
            api_token: Some(STATIC.into()),
            // Every line either process writes, so none can hold a token unseen.
            rust_log: Some("debug,rumqttd=warn".into()),
            ..EdgeOptions::default()
        },
    );
    let router = listener(&b.manager_listeners, "rtmp");
    let bearer = format!("Bearer {STATIC}");
    let post = |path: &str, body: &str| {
        let r = request(
            "POST",
            b.manager_http,
            path,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(r.status < 300, "{path}: {} {}", r.status, r.text());
        r.json()
    };
    let key = |name: &str| {
        post(&format!("/api/keys/live/{name}"), r#"{"agent": "edge-1"}"#)["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let write_token = |name: &str| {
        post(
            "/api/token",
            &format!(r#"{{"id":"{name}","mode":2,"duration":600}}"#),
        )["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (routed_key, direct_key) = (key("routed"), key("direct"));
    let (routed_token, direct_token) = (write_token("routed"), write_token("direct"));
    let wrong_tokens = ["wrong-token-in-the-app-7f3a", "wrong-token-in-the-key-9c1e"];

    // The app form through the router, as the testkit's client sends it, until the agent has
    // the key (it learns keys over MQTT a moment after they are issued). No status the
    // encoder sees echoes the token.
    let app = format!("live?token={routed_token}");
    let mut last = (String::new(), String::new());
    let started = wait_for(Duration::from_secs(20), || {
        let mut c = RtmpClient::connect(router).ok()?;
        last = c.publish_status(&app, &routed_key).ok()?;
        assert!(!last.1.contains(&routed_token), "token echoed: {last:?}");
        (last.0 == "NetStream.Publish.Start").then_some(())
    });
    assert!(
        started.is_some(),
        "the app form did not publish through the router: {last:?}\n{}\n{}",
        b.manager.log_text(),
        b.agent.log_text()
    );

    // ffmpeg, `rtmp://…/live?token=…/key`: through the router, and to the agent directly.
    let media = Synthetic::lasting(60);
    let _routed = b.publish_to(
        "ffmpeg-router",
        &format!("rtmp://{router}/live?token={routed_token}/{routed_key}"),
        &media,
    );
    let _direct = b.publish_to(
        "ffmpeg-agent",
        &format!("rtmp://{}/live?token={direct_token}/{direct_key}", b.rtmp),
        &media,
    );
    for name in ["routed", "direct"] {
        let live = wait_for(Duration::from_secs(30), || b.listed_stream(name));
        assert!(
            live.is_some(),
            "{name} never went live:\n{}\n{}",
            b.manager.log_text(),
            b.agent.log_text()
        );
    }

    // Wrong tokens, in the app and in the key: refused, and not echoed either.
    let refusals = [
        (
            format!("live?token={}", wrong_tokens[0]),
            routed_key.clone(),
        ),
        (
            "live".to_string(),
            format!("{routed_key}?token={}", wrong_tokens[1]),
        ),
    ];
    for ((app, name), wrong) in refusals.iter().zip(wrong_tokens) {
        let mut c = RtmpClient::connect(router).unwrap();
        let (code, description) = c.publish_status(app, name).unwrap();
        assert_eq!(code, "NetStream.Publish.Unauthorized", "{description}");
        assert!(!description.contains(wrong), "{description}");
        assert!(c.closed_by_server(Duration::from_secs(10)));
    }

    // No process logged any of them.
    for (process, log) in [
        ("manager", b.manager.log_text()),
        ("agent", b.agent.log_text()),
    ] {
        assert!(
            log.contains("RTMP"),
            "the {process}'s log holds nothing to check"
        );
        for token in [routed_token.as_str(), direct_token.as_str()]
            .into_iter()
            .chain(wrong_tokens)
        {
            assert!(
                !log.contains(token),
                "the {process} logged a token ({token}):\n{log}"
            );
        }
    }
}
