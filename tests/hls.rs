//! Live HLS with real processes: ffmpeg publishes H.264 + AAC over RTMP, ffprobe reads the
//! fMP4 HLS playlist from the agent's HLS port and through the manager (tunnel), decoding every
//! frame until the publisher stops and the playlist ends.

use std::time::Duration;

use verge::testkit::edge::{Edge, EdgeOptions, Synthetic, tool};
use verge::testkit::{Proc, get, wait_for};

/// ffprobe decoding every frame of `url` until the stream ends.
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

/// (video frames, width, audio frames) once the probe has finished successfully.
fn probed(p: &mut Proc) -> (u32, u32, u32) {
    let status = wait_for(Duration::from_secs(90), || p.exit_status());
    assert!(
        status.is_some_and(|s| s.success()),
        "{} failed: {status:?}\n{}",
        p.name,
        p.log_text()
    );
    let mut out = (0, 0, 0);
    for line in p.log_text().lines() {
        match line.split(',').collect::<Vec<_>>().as_slice() {
            ["video", w, _, n] => (out.0, out.1) = (n.parse().unwrap_or(0), w.parse().unwrap_or(0)),
            ["audio", n] => out.2 = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    out
}

#[test]
fn ffprobe_reads_live_hls_from_the_box_and_through_the_manager_to_its_end() {
    let b = Edge::start(
        "hls",
        &EdgeOptions {
            noauth: true,
            ..EdgeOptions::default()
        },
    );
    let media = Synthetic {
        fps: 25,
        gop: 25,
        seconds: 16,
        ..Synthetic::default()
    };
    let mut ffmpeg = b.publish("ffmpeg", "cam", &media);
    let live = wait_for(Duration::from_secs(30), || {
        b.listed_stream("cam").filter(|s| s["width"] == 640)
    });
    assert!(live.is_some(), "never live:\n{}", ffmpeg.log_text());

    let mut direct = probe(
        &b,
        "ffprobe-agent",
        &format!("http://{}/live/cam/index.m3u8", b.hls),
    );
    let mut proxied = probe(
        &b,
        "ffprobe-manager",
        &format!("http://{}/hls/live/cam/index.m3u8", b.manager_http),
    );
    for p in [&mut direct, &mut proxied] {
        let (video, width, audio) = probed(p);
        println!("{}: {video} video frames, {audio} audio frames", p.name);
        // Nothing but the counts: a malformed box or a timestamp problem would be reported.
        let log = p.log_text();
        let noise: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("video,") && !l.starts_with("audio,") && !l.is_empty())
            .collect();
        assert!(noise.is_empty(), "{}: {noise:?}", p.name);
        // Joined a few seconds in, at the live edge, and read to the end: at least 6 s.
        assert!(
            video >= 150,
            "{}: {video} video frames\n{}",
            p.name,
            p.log_text()
        );
        assert_eq!(width, 640, "{}", p.name);
        assert!(audio >= 6 * 43, "{}: {audio} audio frames", p.name);
    }
    assert!(ffmpeg.exited(), "{}", ffmpeg.log_text());

    // Refusals a player can act on.
    let r = get(b.hls, "/live/nope/index.m3u8").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let r = get(b.manager_http, "/hls/live/nope/index.m3u8").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let r = get(b.manager_http, "/hls/live/cam/..%2F..%2Fetc%2Fpasswd").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let r = get(b.hls, "/live/cam/99999.m4s").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let log = b.agent.log_text();
    assert!(log.contains("live HLS feed started"), "{log}");
}
