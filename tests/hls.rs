//! Live HLS with real processes: ffmpeg publishes H.264 + AAC over RTMP, ffprobe reads the
//! fMP4 HLS playlist from the agent's HLS port and through the manager (tunnel), decoding every
//! frame until the publisher stops and the playlist ends.

use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::ffprobe::{Frames, Probe};
use verge_testkit::{get, wait_for};

#[test]
fn ffprobe_reads_live_hls_from_the_box_and_through_the_manager_to_its_end() {
    let b = Edge::start("hls", &EdgeOptions::noauth());
    let media = Synthetic {
        fps: 25,
        gop: 25,
        // Long enough that probes joining late on a loaded machine still read 6 s and more.
        seconds: 30,
        ..Synthetic::default()
    };
    let mut ffmpeg = b.on_air("ffmpeg", "cam", &media);

    let direct = Probe::start(
        b.dir.path(),
        "ffprobe-agent",
        &format!("http://{}/live/cam/index.m3u8", b.hls),
    );
    let proxied = Probe::start(
        b.dir.path(),
        "ffprobe-manager",
        &format!("http://{}/hls/live/cam/index.m3u8", b.manager_http),
    );
    for (name, p) in [("agent", direct), ("manager", proxied)] {
        // It says nothing but its counts, or `finish` fails: a malformed box or a timestamp
        // problem would be reported.
        let Frames {
            video,
            audio,
            width,
        } = p.finish();
        println!("{name}: {video} video frames, {audio} audio frames");
        // Joined a few seconds in, at the live edge, and read to the end: at least 6 s.
        assert!(video >= 150, "{name}: {video} video frames");
        assert_eq!(width, 640, "{name}");
        assert!(audio >= 6 * 43, "{name}: {audio} audio frames");
    }
    // The playlists ended because the publisher did; it is on its way out.
    let exited = wait_for(Duration::from_secs(10), || ffmpeg.exited().then_some(()));
    assert!(exited.is_some(), "{}", ffmpeg.log_text());

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
