//! WHIP publish → first frame at a WHEP viewer, next to RTMP publish → first frame, both
//! through the manager and measured in the same run.
//!
//! ```text
//! cargo run --release --example whip_bench -- [--rounds 5]
//! ```
//!
//! Each round starts a publisher of a new stream and, at the same moment, a viewer
//! (`verge::whep::Viewer`) that offers to the manager's `/whep/{stream}` every 20 ms until it
//! is answered (404 while the stream is not live) and waits for its first complete keyframe.
//! The time is from the publisher's start to that keyframe: the publisher's own start-up
//! (a process, an encoder, for WHIP also ICE and DTLS), the agent's report of the stream to the
//! manager, WHEP signaling over MQTT and the viewer's connection.
//!
//! - **RTMP** (the baseline): ffmpeg publishes a 640x360 25 fps test pattern (x264
//!   `ultrafast`, `zerolatency`, keyframe every 2 s) with AAC to the agent.
//! - **WHIP**: headless Chromium opens the manager's `/publish/{stream}` page, which sends its
//!   fake camera (640x480 and up, H.264) and microphone over WHIP through the manager.
//!
//! Everything runs in a network namespace of its own with only loopback (the program starts
//! itself again inside one).

use std::time::{Duration, Instant};

use verge::whep::{Viewer, ViewerOptions, WhepError};
use verge_testkit::chromium::{Chromium, is_private_netns, rerun_in_private_netns};
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::measure::percentile;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !is_private_netns() {
        verge_testkit::bin("verge-manager");
        let status = rerun_in_private_netns(&args);
        std::process::exit(status.code().unwrap_or(1));
    }
    let mut rounds = 5usize;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next().and_then(|v| v.parse().ok())) {
            ("--rounds", Some(n)) => rounds = std::cmp::max(n, 1),
            _ => {
                eprintln!("usage: whip_bench [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    let edge = Edge::start("whip-bench", &EdgeOptions::noauth());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut rtmp, mut whip, mut offers) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("rtmp{round}");
        let started = Instant::now();
        let publisher = edge.publish(
            "ffmpeg",
            &name,
            &Synthetic {
                seconds: 30,
                gop: 50,
                ..Synthetic::default()
            },
        );
        match rt.block_on(first_frame(&edge, &name, started)) {
            Some(ms) => rtmp.push(ms),
            None => eprintln!("round {round}: RTMP stream {name} never reached the viewer"),
        }
        drop(publisher);

        let name = format!("whip{round}");
        let started = Instant::now();
        let started_wall = seconds_of_day(std::time::SystemTime::now());
        let page = format!("http://{}/publish/{name}", edge.manager_http);
        let chromium = Chromium::open(
            &page,
            &edge.dir.path().join(format!("chromium-{round}")),
            &edge.dir.path().join(format!("chromium-{round}.log")),
        );
        match rt.block_on(first_frame(&edge, &name, started)) {
            Some(ms) => whip.push(ms),
            None => eprintln!("round {round}: WHIP stream {name} never reached the viewer"),
        }
        // When the page's offer reached the manager: Chromium's own start-up before it.
        if let Some(at) = edge
            .manager
            .log_text()
            .lines()
            .filter(|l| l.contains("WHIP session created") && l.contains(&format!("live/{name} ")))
            .find_map(log_seconds_of_day)
        {
            offers.push((at - started_wall) * 1000.0);
        }
        drop(chromium);
        println!(
            "round {round}: RTMP {} ms, WHIP {} ms",
            rtmp.last().map_or("-".into(), |v| format!("{v:.0}")),
            whip.last().map_or("-".into(), |v| format!("{v:.0}"))
        );
    }
    println!(
        "publisher start → first keyframe at a WHEP viewer through the manager ({rounds} rounds):"
    );
    println!(
        "  {:<28} {:>8} {:>8} {:>8}",
        "publisher", "p50 ms", "min ms", "max ms"
    );
    let after_offer: Vec<f64> = whip.iter().zip(&offers).map(|(w, o)| w - o).collect();
    for (label, v) in [
        ("RTMP, ffmpeg (baseline)", &rtmp),
        ("WHIP, Chromium", &whip),
        ("  of which Chromium → offer", &offers),
        ("  of which offer → frame", &after_offer),
    ] {
        println!(
            "  {:<28} {:>8.0} {:>8.0} {:>8.0}",
            label,
            percentile(v, 0.5),
            percentile(v, 0.0),
            percentile(v, 1.0)
        );
    }
}

/// Offers every 20 ms until the stream is live, then waits for its first keyframe; the time
/// since `started` in ms.
async fn first_frame(edge: &Edge, name: &str, started: Instant) -> Option<f64> {
    let url = format!("http://{}/whep/{name}", edge.manager_http);
    let opts = ViewerOptions::for_url(&url);
    let deadline = started + Duration::from_secs(30);
    let mut viewer = loop {
        match Viewer::connect(&url, &opts).await {
            Ok(v) => break v,
            Err(WhepError::Refused { status: 404, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                return None;
            }
        }
    };
    while Instant::now() < deadline {
        match viewer.next_frame(Duration::from_secs(10)).await {
            Ok(Some(unit)) if unit.keyframe => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                viewer.close().await;
                return Some(ms);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    viewer.close().await;
    None
}

/// Seconds since midnight UTC.
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    secs % 86_400.0
}

/// Seconds since midnight UTC of a log line's leading `2026-12-01T11:17:09.394889Z`.
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let time = line
        .split_whitespace()
        .next()?
        .split_once('T')?
        .1
        .strip_suffix('Z')?;
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}
