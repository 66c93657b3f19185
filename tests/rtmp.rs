//! RTMP ingest end to end: real ffmpeg publishing to a real `verge-agent`, read back by ffprobe
//! over HTTP-FLV and RTMP, listed by a real `verge-manager`; refusals and malformed input.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use verge_media::rtmp::chunk::Message;
use verge_media::rtmp::message;
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic, tool};
use verge_testkit::measure::rss_kib;
use verge_testkit::rtmp::RtmpClient;
use verge_testkit::{Proc, get, wait_for};

/// Frames ffmpeg sends: 25 fps for 12 s, long enough for the probes to connect before the
/// end on a loaded machine (they read from the start either way: one GOP, cached).
const FRAMES: u32 = 300;

/// AAC frames in as much audio (44.1 kHz, 1024 samples a frame).
const AUDIO_FRAMES: u32 = FRAMES / 25 * 44_100 / 1024;

fn start() -> Edge {
    start_with(true)
}

/// A manager and an agent; `noauth` false makes the agent require channel keys.
fn start_with(noauth: bool) -> Edge {
    Edge::start(
        "rtmp",
        &EdgeOptions {
            noauth,
            ..EdgeOptions::default()
        },
    )
}

/// ffmpeg publishing a synthetic 640x360 H.264 + AAC stream in real time for `seconds`.
fn publish(b: &Edge, label: &str, name: &str, seconds: u32) -> Proc {
    b.publish(
        label,
        name,
        &Synthetic {
            seconds,
            ..Synthetic::default()
        },
    )
}

/// ffprobe decoding every frame of `url` until the stream ends; its output lands in its log.
fn probe(b: &Edge, label: &str, url: &str) -> Proc {
    let args = [
        "-v",
        "error",
        "-count_frames",
        "-show_entries",
        "stream=codec_type,width,height,nb_read_frames",
        "-of",
        "csv=p=0",
        url,
    ];
    Proc::spawn(label, tool("ffprobe"), &args, b.dir.path())
}

/// (video frames, width, height, audio frames) from a finished probe.
fn probed(p: &mut Proc) -> (u32, u32, u32, u32) {
    let done = wait_for(Duration::from_secs(30), || p.exited().then_some(()));
    assert!(done.is_some(), "{} did not finish", p.name);
    let text = p.log_text();
    let mut out = (0, 0, 0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        match f.as_slice() {
            ["video", w, h, n] => {
                out = (
                    n.parse().unwrap_or(0),
                    w.parse().unwrap_or(0),
                    h.parse().unwrap_or(0),
                    out.3,
                )
            }
            ["audio", n] => out.3 = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    out
}

#[test]
fn ffmpeg_stream_is_read_back_over_http_flv_and_rtmp_and_listed_by_the_manager() {
    let b = start();
    let rss_before = rss_kib(b.agent.pid()).unwrap_or(0);
    // One keyframe for the whole stream: a probe that starts late (a loaded machine) still
    // gets every frame from the cached GOP, so the count below does not depend on timing.
    let mut publisher = b.publish(
        "publisher",
        "cam",
        &Synthetic {
            seconds: FRAMES / 25,
            gop: FRAMES,
            ..Synthetic::default()
        },
    );
    // Listed at once; codec and size follow as soon as the sequence headers arrive.
    let listed = wait_for(Duration::from_secs(20), || {
        b.listed_stream("cam")
            .filter(|s| s["width"].is_u64() && s["codecs"].as_array().is_some_and(|c| c.len() == 2))
    });
    let listed = listed.unwrap_or_else(|| {
        panic!(
            "stream not listed by the manager:\n{}",
            publisher.log_text()
        )
    });
    assert_eq!(listed["agent"], "edge-1");
    assert_eq!(
        (listed["width"].as_u64(), listed["height"].as_u64()),
        (Some(640), Some(360)),
        "{listed}"
    );
    assert!(listed["codecs"].to_string().contains("H.264"), "{listed}");
    assert!(listed["codecs"].to_string().contains("AAC"), "{listed}");

    // A viewer that never reads: it must not hold up the others or grow the agent's memory.
    let mut stalled = std::net::TcpStream::connect(b.http).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        b"GET /live/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();

    let mut flv = probe(&b, "probe-flv", &format!("http://{}/live/cam.flv", b.http));
    let mut rtmp = probe(&b, "probe-rtmp", &format!("rtmp://{}/live/cam", b.rtmp));
    let (v, w, h, a) = probed(&mut flv);
    println!("HTTP-FLV: {v}/{FRAMES} video frames {w}x{h}, {a} audio frames");
    assert!(
        v * 10 >= FRAMES * 9,
        "HTTP-FLV decoded {v} of {FRAMES} frames"
    );
    assert_eq!((w, h), (640, 360));
    assert!(
        a * 4 >= AUDIO_FRAMES * 3,
        "HTTP-FLV decoded {a} of {AUDIO_FRAMES} audio frames"
    );
    let (v, w, h, a) = probed(&mut rtmp);
    println!("RTMP: {v}/{FRAMES} video frames {w}x{h}, {a} audio frames");
    assert!(v * 10 >= FRAMES * 9, "RTMP decoded {v} of {FRAMES} frames");
    assert_eq!((w, h), (640, 360));
    assert!(
        a * 4 >= AUDIO_FRAMES * 3,
        "RTMP decoded {a} of {AUDIO_FRAMES} audio frames"
    );

    assert!(wait_for(Duration::from_secs(15), || publisher.exited().then_some(())).is_some());
    let gone = wait_for(Duration::from_secs(15), || {
        b.listed_stream("cam").is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "stream still listed after the publisher left"
    );
    let grown = rss_kib(b.agent.pid())
        .unwrap_or(0)
        .saturating_sub(rss_before);
    println!("agent RSS grew by {grown} KiB with a stalled viewer");
    assert!(grown < 48 * 1024, "agent RSS grew by {grown} KiB");
    drop(stalled);
}

#[test]
fn second_publisher_on_a_live_name_is_refused_with_bad_name() {
    let b = start();
    let _first = publish(&b, "first", "cam", 20);
    wait_for(Duration::from_secs(20), || b.listed_stream("cam")).expect("first publisher live");
    let mut client = RtmpClient::connect(b.rtmp).unwrap();
    let code = client.publish("live", "cam").unwrap();
    assert_eq!(code, "NetStream.Publish.BadName");
    assert!(client.closed_by_server(Duration::from_secs(15)));

    // ffmpeg, too, gives up on the refusal.
    let mut second = publish(&b, "second", "cam", 5);
    let exited = wait_for(Duration::from_secs(20), || second.exited().then_some(()));
    assert!(exited.is_some(), "the second ffmpeg kept publishing");
    assert!(
        b.agent.log_text().contains("already has a publisher"),
        "{}",
        b.agent.log_text()
    );
    assert!(
        b.listed_stream("cam").is_some(),
        "the first publisher must be unaffected"
    );
}

#[test]
fn malformed_rtmp_input_closes_only_that_connection() {
    let b = start();
    let _good = publish(&b, "good", "cam", 20);
    wait_for(Duration::from_secs(20), || b.listed_stream("cam")).expect("good publisher live");

    // Garbage before the handshake.
    let mut raw = std::net::TcpStream::connect(b.rtmp).unwrap();
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert!(
        matches!(std::io::Read::read(&mut raw, &mut buf), Ok(0) | Err(_)),
        "garbage was not refused"
    );

    // A chunk size of 2^31 − 1.
    let mut c = RtmpClient::connect(b.rtmp).unwrap();
    c.send(&message::control_message(message::Control::SetChunkSize(
        0x7fff_ffff,
    )))
    .unwrap();
    assert!(
        c.closed_by_server(Duration::from_secs(15)),
        "huge chunk size accepted"
    );

    // A message that declares 16 MiB.
    let mut c = RtmpClient::connect(b.rtmp).unwrap();
    let header = [0x03, 0, 0, 0, 0xff, 0xff, 0xff, message::VIDEO, 1, 0, 0, 0];
    std::io::Write::write_all(&mut c.stream, &header).unwrap();
    assert!(
        c.closed_by_server(Duration::from_secs(15)),
        "16 MiB message accepted"
    );

    // A truncated FLV video tag from a publisher.
    let mut c = publish_video(&b, "broken", &[0x17]);
    assert!(
        c.closed_by_server(Duration::from_secs(15)),
        "truncated FLV tag accepted"
    );

    // An unsupported codec gets a clear reason.
    let mut c = publish_video(&b, "hevc", &[0x1c, 0, 0, 0, 0]);
    assert!(
        c.closed_by_server(Duration::from_secs(15)),
        "H.265 (legacy id 12) accepted"
    );

    // A publisher that stops mid-chunk: its stream ends, nothing else does.
    let mut c = RtmpClient::connect(b.rtmp).unwrap();
    assert_eq!(
        c.publish("live", "midway").unwrap(),
        "NetStream.Publish.Start"
    );
    let half_chunk = [
        0x06,
        0,
        0,
        0,
        0,
        0x10,
        0,
        message::VIDEO,
        1,
        0,
        0,
        0,
        0x17,
        1,
        0,
    ];
    std::io::Write::write_all(&mut c.stream, &half_chunk).unwrap();
    drop(c);

    let started = Instant::now();
    let ended = wait_for(Duration::from_secs(15), || {
        let streams = get(b.manager_http, "/api/streams/").ok()?.json();
        let ids: Vec<String> = streams
            .as_array()?
            .iter()
            .map(|s| s["id"].as_str().unwrap_or("").to_string())
            .collect();
        (ids == ["cam"]).then_some(ids)
    });
    assert!(
        ended.is_some(),
        "only the good stream should be left after {:?}",
        started.elapsed()
    );

    // The good stream still plays.
    let bytes = flv_bytes_until(b.http, "/live/cam.flv", 20_000);
    assert!(
        bytes >= 20_000,
        "the good stream delivered only {bytes} bytes"
    );
    let log = b.agent.log_text();
    for reason in [
        "not RTMP",
        "Chunk Size",
        "over the limit",
        "truncated",
        "H.265",
        "without unpublishing",
    ] {
        assert!(
            log.contains(reason),
            "agent log lacks a reason mentioning {reason:?}:\n{log}"
        );
    }
    assert!(
        Command::new("kill")
            .arg("-0")
            .arg(b.agent.pid().to_string())
            .status()
            .unwrap()
            .success(),
        "agent died"
    );
}

/// A publisher on `live/{name}` that has sent one video message with `payload`.
fn publish_video(b: &Edge, name: &str, payload: &'static [u8]) -> RtmpClient {
    let mut c = RtmpClient::connect(b.rtmp).unwrap();
    assert_eq!(c.publish("live", name).unwrap(), "NetStream.Publish.Start");
    let video = Message {
        csid: 6,
        timestamp: 0,
        type_id: message::VIDEO,
        stream_id: 1,
        payload: Bytes::from_static(payload),
    };
    c.send(&video).unwrap();
    c
}

/// Bytes of an HTTP-FLV response read until `want` arrived, the stream ended, or 15 s passed
/// (a bound for a loaded machine; a live stream delivers `want` far sooner).
fn flv_bytes_until(addr: SocketAddr, path: &str, want: usize) -> usize {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut total, mut buf) = (0, [0u8; 65536]);
    while total < want && Instant::now() < deadline {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    total
}

fn publish_code(b: &Edge, app: &str, name: &str) -> String {
    let mut c = RtmpClient::connect(b.rtmp).unwrap();
    c.publish(app, name).unwrap()
}

#[test]
fn channel_keys_gate_publishing_and_survive_an_agent_restart() {
    use verge_testkit::send;
    let mut b = start_with(false);
    assert_eq!(
        publish_code(&b, "live", "cam"),
        "NetStream.Publish.BadName",
        "a bare name must be refused"
    );

    let issued = send("POST", b.manager_http, "/api/keys/live/cam");
    assert_eq!(issued.status, 201, "{}", issued.text());
    let key = issued.json()["key"].as_str().unwrap().to_string();
    let again = send("POST", b.manager_http, "/api/keys/live/cam");
    assert_eq!(
        (again.status, again.json()["key"].as_str()),
        (200, Some(key.as_str()))
    );
    assert_eq!(
        get(b.manager_http, "/api/keys")
            .unwrap()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad = send("POST", b.manager_http, "/api/keys/live/a%20b");
    assert_eq!(bad.status, 400);

    // The key reaches the agent over MQTT; a real ffmpeg publishes with it and players use the name.
    let accepted = wait_for(Duration::from_secs(15), || {
        (publish_code(&b, "live", &key) == "NetStream.Publish.Start").then_some(())
    });
    assert!(
        accepted.is_some(),
        "the agent never accepted the issued key:\n{}",
        b.agent.log_text()
    );
    let _publisher = publish(&b, "publisher", &key, 8);
    wait_for(Duration::from_secs(20), || b.listed_stream("cam"))
        .expect("keyed stream listed by its name");
    let bytes = flv_bytes_until(b.http, "/live/cam.flv", 20_000);
    assert!(bytes >= 20_000, "players use the name: got {bytes} bytes");
    assert_eq!(
        publish_code(&b, "live", "not-the-key"),
        "NetStream.Publish.BadName"
    );
    assert_eq!(
        publish_code(&b, "studio", &key),
        "NetStream.Publish.BadName",
        "a key belongs to its app"
    );

    // Keys survive an agent restart: the retained table comes back with the session.
    b.restart_agent("agent-2");
    let accepted = wait_for(Duration::from_secs(20), || {
        let mut c = RtmpClient::connect(b.rtmp).ok()?;
        (c.publish("live", &key).ok()? == "NetStream.Publish.Start").then_some(())
    });
    assert!(
        accepted.is_some(),
        "the restarted agent lost the key:\n{}",
        b.agent.log_text()
    );

    // A revoked key stops working, and its live publisher is cut off.
    let mut live = RtmpClient::connect(b.rtmp).unwrap();
    assert_eq!(
        live.publish("live", &key).unwrap(),
        "NetStream.Publish.Start"
    );
    let revoked = send("DELETE", b.manager_http, "/api/keys/live/cam");
    assert_eq!(revoked.status, 204);
    let refused = wait_for(Duration::from_secs(15), || {
        (publish_code(&b, "live", &key) == "NetStream.Publish.BadName").then_some(())
    });
    assert!(refused.is_some(), "the revoked key still publishes");
    assert!(
        live.closed_by_server(Duration::from_secs(15)),
        "the publisher with a revoked key kept publishing"
    );
    // The reason is logged just after the socket closes.
    let logged = wait_for(Duration::from_secs(15), || {
        b.agent.log_text().contains("was revoked").then_some(())
    });
    assert!(logged.is_some(), "{}", b.agent.log_text());
    let again = send("DELETE", b.manager_http, "/api/keys/live/cam");
    assert_eq!(again.status, 404);
}

#[test]
fn a_key_bound_to_an_agent_is_given_to_that_agent_only() {
    use verge_testkit::{http, send};
    let b = Edge::start(
        "rtmp-bound-keys",
        &EdgeOptions::default().manager("[[agents]]\nid = \"edge-2\"\nsecret = \"s2\"\n"),
    );
    let post = |path: &str, body: &str| {
        http(
            "POST",
            b.manager_http,
            path,
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    // Bound to edge-1: GET /api/keys says so, and edge-1 takes it.
    let mine = post("/api/keys/live/cam", r#"{"agent": "edge-1"}"#);
    assert_eq!(mine.status, 201, "{}", mine.text());
    assert_eq!(mine.json()["agent"], "edge-1");
    let mine = mine.json()["key"].as_str().unwrap().to_string();
    // Bound to edge-2 (enrolled, elsewhere): edge-1 never gets it.
    let theirs = post("/api/keys/live/other", r#"{"agent": "edge-2"}"#);
    assert_eq!(theirs.status, 201, "{}", theirs.text());
    let theirs = theirs.json()["key"].as_str().unwrap().to_string();
    let listed = get(b.manager_http, "/api/keys").unwrap().json();
    let agents: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["agent"].as_str())
        .collect();
    assert_eq!(agents.len(), 2, "{listed}");
    let accepted = wait_for(Duration::from_secs(20), || {
        (publish_code(&b, "live", &mine) == "NetStream.Publish.Start").then_some(())
    });
    assert!(
        accepted.is_some(),
        "edge-1 never took its key:\n{}",
        b.agent.log_text()
    );
    assert_eq!(
        publish_code(&b, "live", &theirs),
        "NetStream.Publish.BadName"
    );

    // Refusals with reasons: an agent nobody enrolled, a body that is not the documented one.
    let r = post("/api/keys/live/x", r#"{"agent": "ghost"}"#);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("ghost"), "{}", r.text());
    let r = post("/api/keys/live/x", r#"{"agnet": "edge-1"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    // Without a body, as before: a key for every agent.
    assert_eq!(
        send("POST", b.manager_http, "/api/keys/live/free").status,
        201
    );
}

#[test]
fn a_b_frame_stream_is_flagged_with_advice_and_a_plain_one_is_not() {
    let b = start();
    // x264 with B-frames, as its defaults (and OBS's) make them.
    let _with = b.publish(
        "ffmpeg-bframes",
        "bframes",
        &Synthetic {
            seconds: 30,
            gop: 50,
            b_frames: Some(3),
            ..Default::default()
        },
    );
    let _without = publish(&b, "ffmpeg-plain", "plain", 30);
    let flagged = wait_for(Duration::from_secs(30), || {
        b.listed_stream("bframes").filter(|s| s["bFrames"] == true)
    });
    let flagged = flagged.unwrap_or_else(|| panic!("{:?}", b.listed_stream("bframes")));
    let advice = flagged["encoderAdvice"].as_str().unwrap_or_default();
    assert!(
        advice.contains("-bf 0") && advice.contains("bframes=0"),
        "{flagged}"
    );
    let plain = wait_for(Duration::from_secs(30), || {
        b.listed_stream("plain").filter(|s| s["fps"].is_number())
    })
    .unwrap();
    assert_eq!(plain["bFrames"], false, "{plain}");
    assert!(plain.get("encoderAdvice").is_none(), "{plain}");
}
