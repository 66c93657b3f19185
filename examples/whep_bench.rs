//! WHEP benchmarks, each printed next to its baseline from the same run.
//!
//! ```text
//! cargo run --release --example whep_bench -- [--sessions 40] [--max-viewers 400] [--seconds 5]
//! ```
//!
//! Setup: a real `verge-manager` (embedded broker) and `verge-agent` on loopback; ffmpeg
//! publishes a pre-encoded 1280x720 30 fps H.264 High clip at 2 Mbit/s with a keyframe every
//! 2 s (`-c copy` in a loop, so the publisher costs almost nothing). The clip has no B-frames,
//! as live encoders are set up, so RTP time (PTS) follows send order and lateness can be read
//! from it. Viewers are
//! `verge::whep::Viewer`s (webrtc 0.21), in this process. With two or more cores the agent is
//! pinned to core 0 and everything else (this process, ffmpeg, the manager) to core 1, so the
//! agent's numbers are one core's.
//!
//! 1. **Signaling and first frame**: `--sessions` viewers one after the other, alternating
//!    between the manager's URL (HTTP → MQTT RPC → agent) and the agent's own WHEP port (the
//!    baseline). For each: POST → 201 (signaling), and POST → first complete keyframe at the
//!    client (the goal is under 300 ms with a 2 s GOP). p50/p99 per path; "after PLI" counts
//!    sessions whose first keyframe was lost and resent on the client's keyframe request.
//! 2. **Viewers per agent core**: viewers are added in steps (through the agent's port; the
//!    media path is the same either way). After a 3 s settle, each step is measured for
//!    `--seconds`: frames received against the 30 fps sent, the lateness of each frame (its
//!    arrival minus its RTP time, above the best of that viewer in the window), the agent's CPU
//!    (of its one core) and RSS. A step is **late** when viewers got fewer than 95 % of the
//!    frames or p99 lateness is over 150 ms. The first row (1 viewer) is the baseline cost. When
//!    this process's own core is full ("client-bound"), the viewers, not the agent, are the limit
//!    and the agent's CPU per viewer is what to extrapolate from.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use verge::whep::{Viewer, ViewerOptions};
use verge_testkit::edge::{Edge, EdgeOptions, encode_clip, publish_loop};
use verge_testkit::measure::{TICKS_PER_SEC, cpu_ticks, numeric_flags, percentile, pin, rss_kib};
use verge_testkit::wait_for;

const FPS: f64 = 30.0;
const LATE_MS: f64 = 150.0;

struct Args {
    sessions: usize,
    max_viewers: usize,
    seconds: u64,
}

fn args() -> Args {
    let [sessions, max_viewers, seconds] = numeric_flags(
        "whep_bench",
        [("--sessions", 40), ("--max-viewers", 400), ("--seconds", 5)],
    );
    Args {
        sessions: sessions.max(2) as usize,
        max_viewers: max_viewers.max(1) as usize,
        seconds: seconds.max(1),
    }
}

fn main() {
    let args = args();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && pin(std::process::id(), "1");
    let edge = Edge::start(
        "whep-bench",
        &EdgeOptions::noauth()
            .agent("[limits]\npub_max = 4\nsub_max = 4000\nrpc_concurrency = 64\n"),
    );
    if pinned {
        pin(edge.agent.pid(), "0");
        pin(edge.manager.pid(), "1");
    }
    let clip = encode_clip(edge.dir.path());
    let _publisher = publish_loop(
        edge.dir.path(),
        &format!("rtmp://{}/live/bench", edge.rtmp),
        &clip,
        pinned,
    );
    let live = wait_for(Duration::from_secs(20), || {
        edge.listed_stream("bench").filter(|s| s["width"].is_u64())
    });
    assert!(live.is_some(), "the stream never went live");
    println!(
        "setup: 1280x720 30 fps H.264 High, 2 Mbit/s, keyframe every 2 s; {cores} cores; agent {}",
        if pinned {
            "pinned to core 0, the rest to core 1"
        } else {
            "not pinned"
        }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(signaling(&edge, args.sessions));
    rt.block_on(scaling(&edge, &args));
}

async fn signaling(edge: &Edge, sessions: usize) {
    let paths = [
        (
            "agent's own port (baseline)",
            format!("http://{}/whep/bench", edge.http),
        ),
        (
            "manager + MQTT",
            format!("http://{}/whep/bench", edge.manager_http),
        ),
    ];
    let mut answer = [Vec::new(), Vec::new()];
    let mut first = [Vec::new(), Vec::new()];
    let mut failed = [0usize; 2];
    let mut repaired = [0usize; 2];
    for i in 0..sessions {
        let k = i % 2;
        let url = &paths[k].1;
        match Viewer::connect(url, &ViewerOptions::for_url(url)).await {
            Ok(mut v) => {
                let got = v.next_frame(Duration::from_secs(5)).await;
                match (v.stats.answer_ms, v.stats.first_frame_ms, got) {
                    (Some(a), Some(f), Ok(Some(_))) => {
                        answer[k].push(a);
                        first[k].push(f);
                        if v.stats.keyframe_requests > 0 {
                            repaired[k] += 1;
                        }
                    }
                    _ => failed[k] += 1,
                }
                let _ = v.delete().await;
                v.close().await;
            }
            Err(e) => {
                eprintln!("{}: {e}", paths[k].0);
                failed[k] += 1;
            }
        }
    }
    println!();
    println!(
        "WHEP signaling (POST -> 201) and POST -> first complete keyframe, {sessions} sessions alternating"
    );
    println!(
        "{:<30} {:>8} {:>8} {:>10} {:>10} {:>7} {:>9}",
        "path", "sig p50", "sig p99", "frame p50", "frame p99", "failed", "after PLI"
    );
    for k in 0..2 {
        println!(
            "{:<30} {:>6.2}ms {:>6.2}ms {:>8.1}ms {:>8.1}ms {:>7} {:>9}",
            paths[k].0,
            percentile(&answer[k], 0.5),
            percentile(&answer[k], 0.99),
            percentile(&first[k], 0.5),
            percentile(&first[k], 0.99),
            failed[k],
            repaired[k]
        );
    }
}

/// What one viewer saw: (arrival, RTP timestamp unwrapped to seconds) per frame, and losses.
#[derive(Default)]
struct Seen {
    frames: Vec<(Instant, f64)>,
    lost: u64,
}

async fn scaling(edge: &Edge, args: &Args) {
    let url = format!("http://{}/whep/bench", edge.http);
    let steps: Vec<usize> = [1, 10, 25, 50, 100, 150, 200, 300, 400, 600, 800]
        .into_iter()
        .filter(|&n| n <= args.max_viewers)
        .collect();
    let mut viewers: Vec<Arc<Mutex<Seen>>> = Vec::new();
    let mut tasks = Vec::new();
    println!();
    println!(
        "Viewers of one 2 Mbit/s stream on one agent core ({} s per step, late: < 95 % of frames or p99 lateness > {LATE_MS} ms)",
        args.seconds
    );
    println!(
        "{:>7} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10} {:>9} {:>6}",
        "viewers",
        "frames %",
        "late p50",
        "late p99",
        "agent CPU",
        "CPU/view",
        "agent RSS",
        "bench CPU",
        "lost"
    );
    for &n in &steps {
        // Join in batches so signaling does not all land at once.
        while viewers.len() < n {
            let batch = (n - viewers.len()).min(10);
            let joins = (0..batch).map(|_| {
                let url = url.clone();
                async move { Viewer::connect(&url, &ViewerOptions::for_url(&url)).await }
            });
            for joined in futures_join(joins).await {
                let mut v = match joined {
                    Ok(v) => v,
                    Err(e) => {
                        println!("{n:>7} could not join: {e}");
                        return;
                    }
                };
                let seen = Arc::new(Mutex::new(Seen::default()));
                viewers.push(seen.clone());
                tasks.push(tokio::spawn(async move {
                    let mut unwrap = verge_testkit::measure::RtpClock::default();
                    while let Ok(Some(unit)) = v.next_frame(Duration::from_secs(10)).await {
                        let t = unwrap.seconds(unit.rtp_timestamp);
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        s.frames.push((Instant::now(), t));
                        s.lost = v.stats.lost;
                    }
                    v.close().await;
                }));
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let agent_pid = edge.agent.pid();
        let bench_pid = std::process::id();
        let (a0, b0, lost0) = (
            cpu_ticks(agent_pid).unwrap_or(0),
            cpu_ticks(bench_pid).unwrap_or(0),
            total_lost(&viewers),
        );
        let window_start = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let window = window_start.elapsed();
        let (a1, b1) = (
            cpu_ticks(agent_pid).unwrap_or(0),
            cpu_ticks(bench_pid).unwrap_or(0),
        );
        let secs = window.as_secs_f64();
        let agent_cpu = (a1 - a0) as f64 / TICKS_PER_SEC / secs * 100.0;
        let bench_cpu = (b1 - b0) as f64 / TICKS_PER_SEC / secs * 100.0;
        let rss = rss_kib(agent_pid).unwrap_or(0) as f64 / 1024.0;
        let (got, lateness) = measure(&viewers, window_start, window_start + window);
        let expected = FPS * secs * viewers.len() as f64;
        let frames_pct = got as f64 / expected * 100.0;
        let (p50, p99) = (percentile(&lateness, 0.5), percentile(&lateness, 0.99));
        let lost = total_lost(&viewers) - lost0;
        let late = frames_pct < 95.0 || p99 > LATE_MS;
        let client_bound = bench_cpu > 90.0;
        println!(
            "{:>7} {:>8.1}% {:>8.1}ms {:>8.1}ms {:>9.1}% {:>8.2}% {:>7.1}MiB {:>8.1}% {:>6}{}{}",
            viewers.len(),
            frames_pct,
            p50,
            p99,
            agent_cpu,
            agent_cpu / viewers.len() as f64,
            rss,
            bench_cpu,
            lost,
            if late { "  LATE" } else { "" },
            if client_bound { "  client-bound" } else { "" },
        );
        for v in &viewers {
            v.lock().unwrap_or_else(|p| p.into_inner()).frames.clear();
        }
        if late || agent_cpu > 95.0 {
            break;
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// Frames that arrived in the window, and each one's lateness in ms.
fn measure(viewers: &[Arc<Mutex<Seen>>], from: Instant, to: Instant) -> (usize, Vec<f64>) {
    let mut count = 0;
    let mut lateness = Vec::new();
    for v in viewers {
        let s = v.lock().unwrap_or_else(|p| p.into_inner());
        let inside: Vec<&(Instant, f64)> = s
            .frames
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .collect();
        count += inside.len();
        let offsets: Vec<f64> = inside
            .iter()
            .map(|(at, t)| at.duration_since(from).as_secs_f64() - t)
            .collect();
        let best = offsets.iter().copied().fold(f64::INFINITY, f64::min);
        lateness.extend(offsets.iter().map(|o| (o - best) * 1000.0));
    }
    (count, lateness)
}

fn total_lost(viewers: &[Arc<Mutex<Seen>>]) -> u64 {
    viewers
        .iter()
        .map(|v| v.lock().unwrap_or_else(|p| p.into_inner()).lost)
        .sum()
}

/// Awaits every future, concurrently, in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
