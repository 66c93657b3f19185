//! WHEP end to end: ffmpeg publishes RTMP (H.264 + AAC) to a real agent; a real WebRTC viewer
//! (the library behind `examples/whep_client.rs`) watches through the manager's URL, over
//! MQTT RPC, and through the agent's own port. Every refusal a client can act on is produced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use verge::whep::{Stats, Viewer, ViewerOptions, WhepError};
use verge_media::rtp::h264::AccessUnit;
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::whep::{runtime, watching};
use verge_testkit::{Response, get, request, send, wait_for};

fn post_sdp(addr: SocketAddr, path: &str, headers: &[(&str, &str)], sdp: &str) -> Response {
    let timeout = Duration::from_secs(10);
    request("POST", addr, path, headers, sdp.as_bytes(), timeout).expect("HTTP exchange")
}

fn post_offer(addr: SocketAddr, path: &str, content_type: Option<&str>, sdp: &str) -> Response {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("Content-Type", ct))
        .into_iter()
        .collect();
    post_sdp(addr, path, &headers, sdp)
}

/// Checks access unit `n`, which a viewer returned after `last` (its RTP time) with its numbers
/// going from `before` to `now`: every frame, in order, is 3600 RTP ticks on (25 fps), whatever
/// the pace. A keyframe the source did not send (the test's stream has only its first) was
/// resent from the agent's cache on request, stamped just past the last frame sent: less than a
/// frame on. A UDP packet may be lost on a busy machine (the cached GOP comes as one unpaced
/// burst), or come late (resent on a NACK): the client drops the access unit, which shows as a
/// sequence break just then, and asks for a keyframe. Nothing else may move RTP time, and no
/// access unit may be lost without such a break.
fn check_next(n: u32, unit: &AccessUnit, last: u32, before: &Stats, now: &Stats) {
    let step = unit.rtp_timestamp.wrapping_sub(last);
    if now.lost > before.lost {
        assert!(
            now.sequence_breaks > before.sequence_breaks,
            "frame {n}: an access unit was lost with the packet sequence unbroken: {now}"
        );
    } else if unit.keyframe {
        assert!(
            now.keyframe_requests > 0 && (1..=3600).contains(&step),
            "frame {n}: a keyframe nobody asked for, or not just past the frame before \
             ({step} ticks on): {now}"
        );
    } else {
        assert_eq!(step, 3600, "frame {n} moved RTP time by {step}: {now}");
    }
}

/// The viewer's next access unit (number `n`, after RTP time `last`, both moved on), checked
/// by [`check_next`].
async fn next_checked(viewer: &mut Viewer, n: &mut u32, last: &mut u32) -> AccessUnit {
    let before = viewer.stats.clone();
    let unit = viewer
        .next_frame(Duration::from_secs(10))
        .await
        .expect("video")
        .expect("open");
    *n += 1;
    check_next(*n, &unit, *last, &before, &viewer.stats);
    *last = unit.rtp_timestamp;
    unit
}

/// Asks for a keyframe until one comes (checking every frame on the way, see `check_next`);
/// how long it took from the first request. A request within the client's (300 ms) or the
/// agent's (500 ms) interval of the one before is dropped, so it is repeated every 600 ms.
async fn keyframe_after_asking(viewer: &mut Viewer, n: &mut u32, last: &mut u32) -> Duration {
    let asked_since = Instant::now();
    let mut asked = asked_since;
    viewer.request_keyframe();
    loop {
        let unit = next_checked(viewer, n, last).await;
        if unit.keyframe {
            return asked_since.elapsed();
        }
        assert!(
            asked_since.elapsed() < Duration::from_secs(20),
            "no keyframe 20 s after asking: {}",
            viewer.stats
        );
        if asked.elapsed() >= Duration::from_millis(600) {
            viewer.request_keyframe();
            asked = Instant::now();
        }
    }
}

/// A well-formed offer with only VP8 video: nothing the agent can send.
const VP8_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Hc4f\r\na=ice-pwd:Q1zXGk8rM1F0oKc6bq3yWn2u\r\n\
a=fingerprint:sha-256 3C:4B:4F:8A:7E:2B:90:14:5D:E1:A4:27:62:7C:3D:6C:1C:8F:12:A0:33:44:55:66:77:88:99:AA:BB:CC:DD:EE\r\n\
a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n";

#[test]
fn a_viewer_through_the_manager_gets_every_frame_until_delete_or_publisher_end() {
    let edge = Edge::start("whep", &EdgeOptions::noauth());
    // One keyframe, the source's first: every keyframe a viewer gets after joining came from
    // the agent's cache (the whole stream is about 1.3 MB, well within the cache's bound).
    let media = Synthetic {
        fps: 25,
        gop: 1500,
        seconds: 60,
        ..Synthetic::default()
    };
    let mut ffmpeg = edge.on_air("ffmpeg", "cam", &media);
    let state = wait_for(Duration::from_secs(20), || {
        edge.listed_stream("cam")
            .filter(|s| s["codecs"].as_array().map(Vec::len) == Some(2))
    });
    assert!(state.is_some(), "{:?}", edge.listed_stream("cam"));

    let rt = runtime();
    let manager_url = format!("http://{}/whep/cam", edge.manager_http);
    rt.block_on(async {
        let opts = ViewerOptions {
            audio: true,
            ..ViewerOptions::for_url(&manager_url)
        };
        let mut viewer = Viewer::connect(&manager_url, &opts)
            .await
            .expect("WHEP through the manager");
        assert!(
            viewer.session_url.path.starts_with("/session/cam/edge-1~"),
            "{}",
            viewer.session_url.path
        );
        // The cached keyframe comes first: the picture does not wait for the next IDR (the
        // source sends none).
        let first = viewer
            .next_frame(Duration::from_secs(20))
            .await
            .expect("video")
            .expect("open");
        assert!(first.keyframe);
        println!("first keyframe through the manager: {}", viewer.stats);

        // Every frame, in order, until 3 s of video and 2 s of audio came (see `check_next`).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = first.rtp_timestamp;
        let mut n = 0;
        loop {
            next_checked(&mut viewer, &mut n, &mut last).await;
            let audio = viewer
                .audio
                .packets
                .load(std::sync::atomic::Ordering::Relaxed);
            if n >= 75 && audio >= 100 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n} frames and {audio} Opus packets in 60 s: {}",
                viewer.stats
            );
        }
        let s = viewer.stats.clone();
        println!("{n} frames read: {s}");
        assert_eq!((s.width, s.height), (Some(640), Some(360)), "{s}");

        // The AAC came along as Opus, live: each packet 960 ticks of 48 kHz RTP time (20 ms)
        // past the one before (times the sequence step, should one be lost on the way), so 50
        // packets a second; each one 20 ms frame (RFC 6716 §3.1: the TOC byte's config and
        // frame-count code).
        let rtp = viewer
            .audio
            .rtp
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        assert!(rtp.len() >= 100, "{} Opus packets", rtp.len());
        for pair in rtp.windows(2) {
            let sequence_step = pair[1].0.wrapping_sub(pair[0].0);
            let time_step = pair[1].1.wrapping_sub(pair[0].1);
            let in_order = (1..0x8000).contains(&sequence_step);
            assert!(
                in_order && time_step == 960 * u32::from(sequence_step),
                "Opus packet {:?} after {:?}: not 20 ms a packet",
                pair[1],
                pair[0]
            );
        }
        let toc = viewer
            .audio
            .last
            .lock()
            .map(|p| p.first().copied())
            .ok()
            .flatten();
        let toc = toc.expect("an Opus packet");
        assert!(
            [1, 5, 9, 13, 15, 19, 23, 27, 31].contains(&(toc >> 3)) && toc & 3 == 0,
            "TOC {toc:#04x} is not one 20 ms Opus frame"
        );

        // A keyframe request (PLI) is answered from the cache (the source sends no other
        // keyframe), with RTP time running on just past the last frame sent (`check_next`).
        let waited = keyframe_after_asking(&mut viewer, &mut n, &mut last).await;
        println!("keyframe {n} {waited:?} after asking: {}", viewer.stats);
        // Asked again at once, within the agent's 5 s between resends of the cache: the
        // request waits for the stream's next keyframe (a minute away here) or for the cache
        // to be allowed again, whichever comes first; not for the next keyframe alone.
        let waited = keyframe_after_asking(&mut viewer, &mut n, &mut last).await;
        println!(
            "keyframe {n} {waited:?} after asking again: {}",
            viewer.stats
        );
        assert!(
            waited < Duration::from_secs(15),
            "a second request waited {waited:?}: {}",
            viewer.stats
        );

        // Trickled candidates are taken (and an ICE restart is refused with 405).
        let frag = "a=ice-ufrag:x\r\na=ice-pwd:y\r\na=mid:0\r\n\
                    a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
        let patch = request(
            "PATCH",
            edge.manager_http,
            &viewer.session_url.path,
            &[("Content-Type", "application/trickle-ice-sdpfrag")],
            frag.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(patch.status, 204, "{}", patch.text());
        let restart = request(
            "PATCH",
            edge.manager_http,
            &viewer.session_url.path,
            &[("Content-Type", "application/trickle-ice-sdpfrag")],
            b"a=ice-ufrag:new\r\na=ice-pwd:newnewnewnewnewnewnewnew\r\n",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(restart.status, 405, "{}", restart.text());

        // A session is found only under its own stream's URL.
        let elsewhere = viewer
            .session_url
            .path
            .replacen("/session/cam/", "/session/other/", 1);
        assert_eq!(send("DELETE", edge.manager_http, &elsewhere).status, 404);

        // DELETE ends the session: the agent closes the connection and frees the viewer.
        assert_eq!(viewer.delete().await.expect("DELETE"), 200);
        verge_testkit::whep::ends(&mut viewer, Duration::from_secs(20), "after DELETE").await;
        assert_eq!(viewer.delete().await.expect("second DELETE"), 404);

        // The agent's own endpoint (the LAN path) serves the same stream; the publisher's end
        // ends the session cleanly.
        let agent_url = format!("http://{}/whep/live/cam", edge.http);
        let mut local = watching(&agent_url, "agent WHEP").await;
        ffmpeg.signal("KILL");
        let ended = local
            .watch(Duration::from_secs(20))
            .await
            .expect("watching");
        assert!(
            ended,
            "the session outlived its publisher by 20 s: {}",
            local.stats
        );
    });
    let _ = ffmpeg.exited();
    let log = edge.agent.log_text();
    assert!(log.contains("end=\"publisher gone\""), "{log}");
    assert!(log.contains("end=\"closed\""), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WHEP viewer ended") && !l.contains("resyncs=0")),
        "the PLI was not answered from the cache:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WHEP viewer ended") && !l.contains("keyframe_waits=0")),
        "the second PLI did not wait:\n{log}"
    );
    // Every viewer slot is given back.
    let freed = wait_for(Duration::from_secs(20), || {
        let nodes = get(edge.manager_http, "/api/nodes/").ok()?.json();
        (nodes[0]["streams"].as_array()?.is_empty()).then_some(())
    });
    assert!(freed.is_some());
}

#[test]
fn whep_refusals_are_statuses_a_client_can_act_on() {
    let edge = Edge::start(
        "whep-errors",
        &EdgeOptions {
            noauth: true,
            rpc_timeout_ms: Some(4000),
            ..Default::default()
        },
    );
    let m = edge.manager_http;
    let sdp = Some("application/sdp");

    // Unknown stream.
    let r = post_offer(m, "/whep/nope", sdp, VP8_OFFER);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("not live"), "{}", r.text());
    assert_eq!(r.text().lines().count(), 1);

    let ffmpeg = edge.on_air("ffmpeg", "cam", &Synthetic::lasting(60));

    // CORS preflight exposes what a browser must read.
    let r = send("OPTIONS", m, "/whep/cam");
    assert_eq!(r.status, 204);
    assert!(
        r.header("access-control-expose-headers")
            .is_some_and(|v| v.contains("Location") && v.contains("Link"))
    );

    // Wrong content type, not SDP, SDP the agent cannot use, no H.264.
    let r = post_offer(m, "/whep/cam", None, VP8_OFFER);
    assert_eq!(r.status, 415, "{}", r.text());
    let r = post_offer(m, "/whep/cam", sdp, "hello");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post_offer(
        m,
        "/whep/cam",
        sdp,
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post_offer(m, "/whep/cam", sdp, VP8_OFFER);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("H.264"), "{}", r.text());
    let r = post_offer(m, "/whep/bad%20name", sdp, VP8_OFFER);
    assert_eq!(r.status, 400, "{}", r.text());

    // Sessions that do not exist, on a known agent and on none.
    assert_eq!(
        send("DELETE", m, "/session/cam/edge-1~0000000000000001").status,
        404
    );
    assert_eq!(send("DELETE", m, "/session/cam/bogus").status, 404);
    assert_eq!(
        send("DELETE", m, "/session/cam/ghost~0000000000000001").status,
        404
    );

    // The agent does not answer in time: frozen, still online until its keepalive runs out
    // (5 s at the soonest; the call starts at once and is not cut short by that).
    // (post_offer gives up after 10 s: the manager answers within its 4 s RPC timeout.)
    edge.agent.signal("STOP");
    let r = post_offer(m, "/whep/cam", sdp, VP8_OFFER);
    edge.agent.signal("CONT");
    assert_eq!(r.status, 504, "{}", r.text());

    // The agent is gone: its stream is still in its last state, but it cannot answer.
    edge.agent.signal("KILL");
    let offline = wait_for(Duration::from_secs(20), || {
        let nodes = get(m, "/api/nodes/").ok()?.json();
        (nodes[0]["online"] == false).then_some(())
    });
    assert!(offline.is_some());
    let r = post_offer(m, "/whep/cam", sdp, VP8_OFFER);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("offline"), "{}", r.text());

    // The client library reports refusals as such.
    let rt = runtime();
    let url = format!("http://{m}/whep/nope");
    let err = rt
        .block_on(Viewer::connect(&url, &ViewerOptions::for_url(&url)))
        .err();
    assert!(
        matches!(err, Some(WhepError::Refused { status: 404, .. })),
        "{err:?}"
    );
    ffmpeg.signal("KILL");
}

#[test]
fn each_session_gets_its_own_turn_credentials_with_coturn_configured() {
    let edge = Edge::start(
        "whep-coturn",
        &EdgeOptions::noauth().manager("[extra_ice.coturn]\nsecret = \"north\"\nurls = [\"turn:127.0.0.1:3478?transport=udp\"]\nttl = 600\n"),
    );
    let turn = |r: &Response| -> (String, String) {
        let link = r
            .all("link")
            .find(|l| l.contains("turn:127.0.0.1:3478"))
            .unwrap_or_else(|| panic!("no TURN server in {:?}", r.headers))
            .to_string();
        let field = |name: &str| {
            link.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        (field("username"), field("credential"))
    };
    let now = verge_protocol::now_ms() / 1000;
    // Preflights of a WHIP endpoint: with auth off anyone may publish, and no stream needs to
    // be live (a WHEP preflight carries ICE servers only for a live stream).
    let preflight = || {
        let timeout = Duration::from_secs(10);
        turn(&request("OPTIONS", edge.manager_http, "/whip/cam", &[], b"", timeout).unwrap())
    };
    let (first, second) = (preflight(), preflight());
    assert_ne!(first.0, second.0, "every session its own username");
    for (username, credential) in [first, second] {
        let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
        assert!((now + 590..=now + 610).contains(&expiry), "{username}");
        assert_eq!(
            credential,
            verge_manager::ice::credential("north", &username)
        );
    }
}

#[test]
fn viewers_get_the_agents_ice_servers_too_unless_the_manager_overrides_them() {
    for (label, overridden) in [("whep-upstream-ice", false), ("whep-override-ice", true)] {
        let edge = Edge::start(
            label,
            &EdgeOptions::noauth()
                .manager(&format!(
                    "[extra_ice]\noverride_upstream_ice_servers = {overridden}\n\
                     [[extra_ice.ice_servers]]\nurls = [\"stun:127.0.0.8:3478\"]\n"
                ))
                .agent("[[webrtc.ice_servers]]\nurls = [\"stun:127.0.0.9:3478\"]\n"),
        );
        let media = Synthetic::keyframe_every_second(30);
        let _ffmpeg = edge.on_air("ffmpeg", "cam", &media);
        let url = format!("http://{}/whep/cam", edge.manager_http);
        let links = runtime().block_on(async {
            let viewer = Viewer::connect(&url, &ViewerOptions::for_url(&url))
                .await
                .expect("WHEP through the manager");
            let links = viewer.links.clone();
            viewer.close().await;
            links
        });
        let has = |addr: &str| links.iter().any(|l| l.contains(addr));
        assert!(has("stun:127.0.0.8:3478"), "{links:?}");
        assert_eq!(
            has("stun:127.0.0.9:3478"),
            !overridden,
            "override {overridden}: {links:?}"
        );
    }
}

/// A stand-in for Cloudflare's TURN credential API on loopback: it answers the documented
/// `POST /v1/turn/keys/{key_id}/credentials/generate-ice-servers` with the documented shape
/// (201, `{"iceServers": [...]}`) and records what it was asked.
struct CloudflareStandIn {
    addr: std::net::SocketAddr,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CloudflareStandIn {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(16) {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as many body bytes as it announces.
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&raw).to_string();
                log.lock().unwrap().push(text.clone());
                let ok = text
                    .starts_with("POST /v1/turn/keys/key-1/credentials/generate-ice-servers ")
                    // Header names are case-insensitive (hyper writes them in lowercase).
                    && text.lines().any(|l| {
                        l.split_once(':').is_some_and(|(name, value)| {
                            name.eq_ignore_ascii_case("authorization")
                                && value.trim() == "Bearer cf-token"
                        })
                    });
                let (status, body) = if ok {
                    (
                        "201 Created",
                        r#"{"iceServers":[{"urls":["stun:stun.cloudflare.test:3478"]},{"urls":["turn:turn.cloudflare.test:3478?transport=udp","turns:turn.cloudflare.test:5349?transport=tcp"],"username":"cf-user","credential":"cf-pass"}]}"#,
                    )
                } else {
                    ("401 Unauthorized", r#"{"error":"bad token"}"#)
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { addr, asked }
    }
}

#[test]
fn cloudflare_turn_credentials_reach_viewers_and_are_reused() {
    let cf = CloudflareStandIn::start();
    let edge = Edge::start(
        "whep-cloudflare",
        &EdgeOptions::noauth().manager(&format!(
            "[extra_ice.cloudflare]\nkey_id = \"key-1\"\napi_token = \"cf-token\"\nttl = 600\n\
                 api_url = \"http://{}/v1/turn/keys\"\n",
            cf.addr
        )),
    );
    // A WHIP preflight (see the coturn test): no stream needs to be live.
    let links = || {
        let r = send("OPTIONS", edge.manager_http, "/whip/cam");
        assert_eq!(r.status, 204);
        r.all("link").map(str::to_string).collect::<Vec<_>>()
    };
    let first = links();
    let turn = first
        .iter()
        .find(|l| l.contains("turn:turn.cloudflare.test:3478"))
        .unwrap_or_else(|| panic!("no Cloudflare TURN server in {first:?}"));
    assert!(
        turn.contains("username=\"cf-user\"") && turn.contains("credential=\"cf-pass\""),
        "{turn}"
    );
    assert!(
        first
            .iter()
            .any(|l| l.contains("stun:stun.cloudflare.test:3478"))
    );
    // Reused while fresh: one request for both sessions.
    let second = links();
    assert_eq!(first, second);
    let asked = cf.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].ends_with(r#"{"ttl":600}"#), "{}", asked[0]);
}

#[test]
fn without_cloudflare_sessions_go_on_without_its_servers() {
    // Nothing listens on this port: the API is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = down.local_addr().unwrap();
    drop(down);
    let edge = Edge::start(
        "whep-cloudflare-down",
        &EdgeOptions::noauth().manager(&format!(
            "[extra_ice.cloudflare]\nkey_id = \"key-1\"\napi_token = \"cf-token\"\n\
                 api_url = \"http://{addr}/v1/turn/keys\"\n"
        )),
    );
    // The API's refusal (or its 3 s timeout) does not hold the session up.
    let started = std::time::Instant::now();
    let r = request(
        "OPTIONS",
        edge.manager_http,
        "/whip/cam",
        &[],
        b"",
        Duration::from_secs(30),
    )
    .expect("HTTP exchange");
    assert_eq!(r.status, 204);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.all("link").any(|l| l.contains("cloudflare")));
    assert!(
        wait_for(Duration::from_secs(5), || edge
            .manager
            .log_text()
            .contains("no Cloudflare TURN credentials")
            .then_some(()))
        .is_some()
    );
}

/// An offer that sends H.264 in packetization mode 1 and nothing else: it passes the checks
/// made before WebRTC, and WebRTC then refuses it (no ICE credentials, no fingerprint).
const WHIP_H264_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
    a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n";

fn post_whip(addr: SocketAddr, path: &str, bearer: Option<&str>, sdp: &str) -> Response {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    post_sdp(addr, path, &headers, sdp)
}

#[test]
fn whip_refusals_say_why_and_the_boxs_own_port_wants_the_channel_key() {
    let edge = Edge::start("whip-refusals", &EdgeOptions::default());
    let m = edge.manager_http;
    // No H.264 to receive.
    let r = post_whip(m, "/whip/cam", None, VP8_OFFER);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("H.264"), "{}", r.text());
    // Wrong content type.
    let r = request(
        "POST",
        m,
        "/whip/cam",
        &[],
        WHIP_H264_OFFER.as_bytes(),
        Duration::from_secs(10),
    )
    .expect("HTTP exchange");
    assert_eq!(r.status, 415, "{}", r.text());
    // An agent that is not online.
    let r = post_whip(m, "/whip/cam?agent=edge-9", None, WHIP_H264_OFFER);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("edge-9"), "{}", r.text());

    // A stream with a publisher (RTMP, with its key) refuses a WHIP one, and names the
    // key's agent when another is asked for.
    let (_ffmpeg, key) = edge.publish_with_key("ffmpeg", "cam", &Synthetic::default());
    let r = post_whip(m, "/whip/cam", None, WHIP_H264_OFFER);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("already has a publisher"), "{}", r.text());
    let r = post_whip(m, "/whip/cam?agent=edge-2", None, WHIP_H264_OFFER);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("edge-1"), "{}", r.text());

    // The box's own port, with [rtmp] noauth = false: the stream's channel key, as a bearer.
    let a = edge.http;
    let r = post_whip(a, "/whip/other", None, WHIP_H264_OFFER);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = post_whip(a, "/whip/other", Some(&key), WHIP_H264_OFFER);
    assert_eq!(r.status, 403, "cam's key for another stream: {}", r.text());
    let r = post_whip(a, "/whip/cam", Some("not-a-key"), WHIP_H264_OFFER);
    assert_eq!(r.status, 403, "{}", r.text());
    // The right key passes; the stream is taken by ffmpeg.
    let r = post_whip(a, "/whip/cam", Some(&key), WHIP_H264_OFFER);
    assert_eq!(r.status, 409, "{}", r.text());
}
