//! Cluster benchmarks: a crowd joining a box at once, and what one core of a cloud node serves
//! against the box itself and against live777's liveion, each printed next to its baseline
//! from the same run.
//!
//! ```text
//! cargo run --release --example cluster_bench -- [--viewers 50] [--seconds 20] [--serve-speedup N]
//! ```
//!
//! (`--serve-speedup` sets `[webrtc] backlog_speedup` of the box and the cloud node in part 2;
//! by default they run with the agent's default.)
//!
//! Setup, as in `whep_bench`: real `verge-manager` (embedded broker) and `verge-agent`
//! processes on loopback; ffmpeg publishes a pre-encoded 1280x720 30 fps H.264 High clip at
//! 2 Mbit/s with a keyframe every 2 s and no B-frames (`-c copy` in a loop) to `live/cam`;
//! viewers are `verge::whep::Viewer`s (webrtc 0.21) in this process. With two or more cores the
//! server under test is pinned to core 0 and everything else (this process, ffmpeg, the
//! manager, the other servers) to core 1, so its CPU is one core's.
//!
//! 1. **Crowd join**: two rounds, each with a fresh manager and agent: `[webrtc]
//!    backlog_speedup = 0` (the baseline: a new viewer's cached GOP is sent at once) and `= 4`
//!    (the keyframe at once, the rest of the backlog at 4× real time). A probe viewer finds the
//!    GOP's phase, so the crowd joins about a second into a GOP (a backlog of ~30 frames each);
//!    then `--viewers` viewers connect to the agent's own WHEP port concurrently (all within
//!    about a second) and each watches `--seconds`. Per round: viewers with a first keyframe,
//!    access units lost (depacketizer drops) before each viewer's first frame (while its
//!    session started) and after it, RTP sequence breaks after it, keyframe requests (PLIs),
//!    frames received against 30 fps × seconds and against the span of RTP time they cover,
//!    first-frame p50/p99, the agent's resyncs and skips (from its "WHEP viewer ended" log
//!    lines), and the machine's UDP receive-buffer drops (`/proc/net/snmp`) meanwhile: where
//!    the frames were lost.
//! 2. **Viewers per core**: the same stream, `--viewers` viewers served (a) by the box itself
//!    (its own WHEP port), (b) by a cloud node relaying it (`[cluster] edge_viewers = 0`,
//!    viewers through the manager's `/whep/cam`), (c) by liveion (`../shared/bin/live777`, or `VERGE_LIVE777`)
//!    pulling it from the box with `POST /api/cascade/cam` and serving its own `/whep/cam`. The
//!    first viewer joins alone (it starts the relay or the cascade), the rest in batches of 10;
//!    after an 8 s settle (liveion asks its source for keyframes until 7.5 s after a viewer
//!    joins), `--seconds` are measured: the serving process's CPU (of its core), frames received
//!    against 30 fps, access units lost, RSS. Viewers per core = viewers ÷ (CPU share of a core)
//!    at that delivery. Then 10 viewers one after the other at the box's port and 10 at the cloud
//!    node's own port (alternating), and 10 at liveion's: POST → first complete keyframe.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use verge::whep::{Stats, Viewer, ViewerOptions, WhepError};
use verge_testkit::edge::{Edge, EdgeOptions, encode_clip, publish_loop};
use verge_testkit::measure::{TICKS_PER_SEC, cpu_ticks, percentile, pin, rss_kib};
use verge_testkit::{ANY_PORT, Proc, TempDir, bin, get, listener, request, wait_for};

const FPS: f64 = 30.0;
/// RTP ticks (90 kHz) between frames at 30 fps.
const FRAME_TICKS: f64 = 3000.0;
const STREAM: &str = "cam";
/// What the agent needs to take the benchmark's viewers, all from 127.0.0.1.
const LIMITS: &str =
    "[limits]\npub_max = 4\nsub_max = 4000\nsessions_per_address = 0\nrpc_concurrency = 64\n";
/// Between the last viewer's join and the measured window. liveion asks its source for a
/// keyframe up to 7.5 s after a viewer's first packet (its "startup PLI burst").
const SETTLE: Duration = Duration::from_secs(8);
/// Sessions one after the other per path in the first-frame comparison.
const PROBES: usize = 10;

struct Args {
    viewers: usize,
    seconds: u64,
    /// `[webrtc] backlog_speedup` of the box and the cloud node in part 2; None: the default.
    serve_speedup: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        viewers: 50,
        seconds: 20,
        serve_speedup: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--viewers", Some(v)) => a.viewers = v.max(1),
            ("--seconds", Some(v)) => a.seconds = v.max(1) as u64,
            ("--serve-speedup", Some(v)) => a.serve_speedup = Some(v as u32),
            _ => {
                eprintln!("usage: cluster_bench [--viewers N] [--seconds N] [--serve-speedup N]");
                std::process::exit(2);
            }
        }
    }
    a
}

fn main() {
    let args = args();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && pin(std::process::id(), "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scratch = TempDir::new("cluster-bench");
    let clip = encode_clip(scratch.path());
    println!(
        "setup: 1280x720 30 fps H.264 High, 2 Mbit/s, keyframe every 2 s; {cores} cores; server under test {}",
        if pinned {
            "pinned to core 0, the rest to core 1"
        } else {
            "not pinned"
        }
    );
    let rounds: Vec<Crowd> = [0, 4]
        .into_iter()
        .map(|speedup| crowd_round(&rt, &clip, speedup, &args, pinned))
        .collect();
    print_crowd(&rounds, &args);
    serving(&rt, &clip, &args, pinned);
}

// ---- 1. Crowd join ----

/// One crowd round.
struct Crowd {
    speedup: u32,
    /// How long the stream had been published when the crowd joined.
    age: Duration,
    watched: Vec<Watched>,
    failed: Vec<String>,
    /// From the first offer's start to the last answer.
    join_spread: Duration,
    /// Of the agent's "WHEP viewer ended" lines: (sessions, resyncs, skips).
    ended: (u64, u64, u64),
    /// `/proc/net/snmp` Udp counters over the round.
    udp: BTreeMap<String, i64>,
    agent_cpu: f64,
}

/// What one viewer saw in its watch.
struct Watched {
    stats: Stats,
    /// `stats.lost` and `stats.sequence_breaks` when the first frame was handed out: what was
    /// lost while the session started (before the client could decrypt, say), not afterwards.
    at_first: (u64, u64),
    /// Distinct RTP timestamps received, and the frames their span covers at 30 fps.
    distinct: u64,
    span: u64,
    /// The server ended the session before the watch was over.
    ended: bool,
}

fn crowd_round(
    rt: &tokio::runtime::Runtime,
    clip: &Path,
    speedup: u32,
    args: &Args,
    pinned: bool,
) -> Crowd {
    // Appended under the fixture's [webrtc].
    let agent = format!("backlog_speedup = {speedup}\n{LIMITS}");
    let edge = Edge::start("cluster-crowd", &EdgeOptions::noauth().agent(&agent));
    if pinned {
        pin(edge.agent.pid(), "0");
        pin(edge.manager.pid(), "1");
    }
    let (_publisher, published) = on_air(&edge, clip, pinned);
    let url = format!("http://{}/whep/{STREAM}", edge.http);
    let agent_pid = edge.agent.pid();
    let (watched, failed, join_spread, udp, agent_cpu, log_mark, age) = rt.block_on(async {
        into_gop(&url, Duration::from_millis(900)).await;
        // After the probe's session, whose end is logged by now.
        let log_mark = std::fs::metadata(&edge.agent.log).map_or(0, |m| m.len());
        let age = published.elapsed();
        let udp0 = udp_counters();
        let cpu0 = cpu_ticks(agent_pid).unwrap_or(0);
        let t0 = Instant::now();
        let watch = Duration::from_secs(args.seconds);
        let tasks: Vec<_> = (0..args.viewers)
            .map(|_| tokio::spawn(watch_for(url.clone(), watch)))
            .collect();
        let mut watched = Vec::new();
        let mut failed = Vec::new();
        let mut last_answer = t0;
        for task in tasks {
            match task.await {
                Ok(Ok((w, answered))) => {
                    last_answer = last_answer.max(answered);
                    watched.push(w);
                }
                Ok(Err(e)) => failed.push(e),
                Err(e) => failed.push(e.to_string()),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(agent_pid).unwrap_or(0) - cpu0) as f64 / TICKS_PER_SEC / secs * 100.0;
        let udp1 = udp_counters();
        let udp = udp1
            .iter()
            .map(|(k, v)| (k.clone(), v - udp0.get(k).copied().unwrap_or(0)))
            .collect();
        (watched, failed, last_answer - t0, udp, cpu, log_mark, age)
    });
    // The agent logs each session's end (with its resyncs and skips) once the DELETE is done.
    let ended = wait_for(Duration::from_secs(10), || {
        let e = ended_sessions(&edge.agent.log, log_mark);
        (e.0 >= watched.len() as u64).then_some(e)
    })
    .unwrap_or_else(|| ended_sessions(&edge.agent.log, log_mark));
    Crowd {
        speedup,
        age,
        watched,
        failed,
        join_spread,
        ended,
        udp,
        agent_cpu,
    }
}

/// Returns `delay` after a keyframe left the agent: a probe viewer past its backlog sees
/// keyframes as they are published.
async fn into_gop(url: &str, delay: Duration) {
    let Ok(mut probe) = Viewer::connect(url, &ViewerOptions::for_url(url)).await else {
        return;
    };
    let mut keyframes = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut at = Instant::now();
    while keyframes < 2 && Instant::now() < deadline {
        match probe.next_frame(Duration::from_secs(3)).await {
            Ok(Some(unit)) if unit.keyframe => {
                keyframes += 1;
                at = Instant::now();
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let _ = probe.delete().await;
    probe.close().await;
    tokio::time::sleep((at + delay).saturating_duration_since(Instant::now())).await;
}

/// Connects to `url` and watches for `watch` after the answer; then DELETEs the session.
/// Returns what it saw and when the answer came.
async fn watch_for(url: String, watch: Duration) -> Result<(Watched, Instant), String> {
    let mut v = Viewer::connect(&url, &ViewerOptions::for_url(&url))
        .await
        .map_err(|e| e.to_string())?;
    let answered = Instant::now();
    let until = answered + watch;
    let mut clock = verge_testkit::measure::RtpClock::default();
    let mut seen = HashSet::new();
    let mut ended = false;
    let mut at_first = None;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match v.next_frame(left).await {
            Ok(Some(unit)) => {
                seen.insert(clock.ticks(unit.rtp_timestamp));
                at_first.get_or_insert((v.stats.lost, v.stats.sequence_breaks));
            }
            Ok(None) => {
                ended = true;
                break;
            }
            Err(WhepError::Stalled(_)) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = v.delete().await;
    v.close().await;
    let span = match (seen.iter().min(), seen.iter().max()) {
        (Some(lo), Some(hi)) => ((hi - lo) as f64 / FRAME_TICKS).round() as u64 + 1,
        _ => 0,
    };
    Ok((
        Watched {
            at_first: at_first.unwrap_or((v.stats.lost, v.stats.sequence_breaks)),
            stats: v.stats.clone(),
            distinct: seen.len() as u64,
            span,
            ended,
        },
        answered,
    ))
}

/// Sessions, resyncs and skips of the agent's "WHEP viewer ended" lines after byte `from`.
fn ended_sessions(log: &Path, from: u64) -> (u64, u64, u64) {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or(0)
    };
    text.lines()
        .filter(|l| l.contains("WHEP viewer ended"))
        .fold((0, 0, 0), |(n, r, s), l| {
            (n + 1, r + field(l, "resyncs="), s + field(l, "skips="))
        })
}

/// The `Udp:` counters of `/proc/net/snmp` (this network namespace).
fn udp_counters() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    match rows.as_slice() {
        [names, values, ..] => names
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
            .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn print_crowd(rounds: &[Crowd], args: &Args) {
    let expected = (FPS * args.seconds as f64) as u64 * args.viewers as u64;
    println!();
    println!(
        "Crowd join: {} viewers at the agent's own WHEP port, started together ~0.9 s into a GOP, each watching {} s",
        args.viewers, args.seconds
    );
    println!(
        "(frames: complete access units received, of 30 fps x {} s x {} = {expected}; a viewer also gets the backlog it joined with, so up to ~{}% is whole.",
        args.seconds,
        args.viewers,
        100 + (100.0 / args.seconds as f64).round() as u64
    );
    println!(
        " missing: frames in the RTP time span each viewer covered that never arrived complete)"
    );
    println!(
        " lost: access units the client dropped (gaps, damage), while its session started (before its first frame) and after;"
    );
    println!(
        " breaks after: RTP sequence breaks after the first frame; resyncs: the agent resent the cached GOP on a PLI; rcvbuf: UDP datagrams dropped at full receive buffers)"
    );
    println!(
        "{:<26} {:>7} {:>8} {:>8} {:>6} {:>6} {:>5} {:>8} {:>7} {:>8} {:>9} {:>9} {:>8} {:>7} {:>7}",
        "round",
        "joined",
        "keyframe",
        "lost 1st",
        "after",
        "breaks",
        "PLIs",
        "frames",
        "frames%",
        "missing",
        "first p50",
        "first p99",
        "resyncs",
        "rcvbuf",
        "agent"
    );
    for r in rounds {
        let w = &r.watched;
        let sum = |f: fn(&Watched) -> u64| w.iter().map(f).sum::<u64>();
        let first: Vec<f64> = w.iter().filter_map(|w| w.stats.first_frame_ms).collect();
        let frames = sum(|w| w.stats.frames);
        println!(
            "{:<26} {:>3}/{:<3} {:>8} {:>8} {:>6} {:>6} {:>5} {:>8} {:>6.1}% {:>8} {:>7.1}ms {:>7.1}ms {:>8} {:>7} {:>6.1}%",
            format!(
                "backlog_speedup = {}{}",
                r.speedup,
                if r.speedup == 0 { " (old)" } else { " (now)" }
            ),
            w.len(),
            args.viewers,
            first.len(),
            sum(|w| w.at_first.0),
            sum(|w| w.stats.lost - w.at_first.0),
            sum(|w| w.stats.sequence_breaks - w.at_first.1),
            sum(|w| w.stats.keyframe_requests),
            frames,
            frames as f64 / expected as f64 * 100.0,
            sum(|w| w.span.saturating_sub(w.distinct)),
            percentile(&first, 0.5),
            percentile(&first, 0.99),
            r.ended.1,
            r.udp.get("RcvbufErrors").copied().unwrap_or(0),
            r.agent_cpu,
        );
    }
    for r in rounds {
        let w = &r.watched;
        let lossy = w.iter().filter(|w| w.stats.lost > w.at_first.0).count();
        let ended = w.iter().filter(|w| w.ended).count();
        let skipped: u64 = w.iter().map(|w| w.stats.skipped).sum();
        let repaired = w
            .iter()
            .filter(|w| w.stats.keyframe_requests > 0 && w.at_first.0 + w.stats.skipped > 0)
            .count();
        println!(
            "  speedup {}: joined {:.1} s after the publisher started, within {:.0} ms; {lossy} viewers lost frames after their first; \
             {repaired} needed a PLI for their first keyframe ({skipped} frames before it unusable); {ended} sessions ended early; \
             agent: {} sessions ended, {} skips; UDP over the round: {}{}",
            r.speedup,
            r.age.as_secs_f64(),
            r.join_spread.as_secs_f64() * 1000.0,
            r.ended.0,
            r.ended.2,
            ["InDatagrams", "RcvbufErrors", "SndbufErrors", "InErrors"]
                .iter()
                .map(|k| format!("{k} {}", r.udp.get(*k).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", "),
            if r.failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {:?}", r.failed)
            }
        );
    }
}

// ---- 2. Box, relay, liveion ----

/// One serving phase: `viewers` on one server.
struct Phase {
    label: &'static str,
    joined: usize,
    failed: Vec<String>,
    /// Sessions per serving node (from the session URL).
    served_by: BTreeMap<String, usize>,
    idle_cpu: f64,
    cpu: f64,
    bench_cpu: f64,
    frames_pct: f64,
    /// Access units lost before each viewer's first frame, after it, and in the window.
    lost_start: u64,
    lost_after: u64,
    lost_window: u64,
    /// RTP sequence breaks after each viewer's first frame.
    breaks_after: u64,
    plis: u64,
    /// Of the serving Verge node's "WHEP viewer ended" lines: (sessions, resyncs, skips).
    ended: Option<(u64, u64, u64)>,
    /// How long the stream had been published when the first viewer joined.
    age: Duration,
    rss_idle_kib: u64,
    rss_kib: u64,
    first_ms: Vec<f64>,
}

fn serving(rt: &tokio::runtime::Runtime, clip: &Path, args: &Args, pinned: bool) {
    // Under the box's and the cloud node's [webrtc].
    let speedup = args
        .serve_speedup
        .map(|s| format!("backlog_speedup = {s}\n"))
        .unwrap_or_default();
    let edge = Edge::start(
        "cluster-serve",
        &EdgeOptions::noauth()
            .manager(
                "[[agents]]\nid = \"cloud-a\"\nsecret = \"sa\"\n\
                           [cluster]\nedge_viewers = 0\n[cascade]\nmaximum_idle_time = 600000\n",
            )
            .agent(&format!("{speedup}{LIMITS}")),
    );
    let (cloud, cloud_http) = start_cloud_node(&edge, "cloud-a", "sa", &speedup);
    let online = wait_for(Duration::from_secs(30), || {
        let nodes = get(edge.manager_http, "/api/nodes/").ok()?.json();
        let all = nodes.as_array()?.clone();
        all.iter()
            .any(|n| n["alias"] == "cloud-a" && n["online"] == true)
            .then_some(())
    });
    assert!(online.is_some(), "the cloud node never came online");
    if pinned {
        pin(edge.agent.pid(), "0");
        pin(edge.manager.pid(), "1");
        pin(cloud.pid(), "1");
    }
    let (_publisher, published) = on_air(&edge, clip, pinned);
    let n = args.viewers;
    let server = |pid: u32, log: Option<&Path>| Server {
        pid,
        log: log.map(Path::to_path_buf),
        published,
    };
    let box_url = format!("http://{}/whep/{STREAM}", edge.http);
    let manager_url = format!("http://{}/whep/{STREAM}", edge.manager_http);
    let relay_url = format!("http://{cloud_http}/whep/{STREAM}");

    let mut phases = Vec::new();
    phases.push(rt.block_on(phase(
        "(a) box (agent's own port)",
        &box_url,
        server(edge.agent.pid(), Some(&edge.agent.log)),
        n,
        args.seconds,
    )));
    if pinned {
        pin(cloud.pid(), "0");
        pin(edge.agent.pid(), "1");
    }
    phases.push(rt.block_on(phase(
        "(b) cloud node relay (manager)",
        &manager_url,
        server(cloud.pid(), Some(&cloud.log)),
        n,
        args.seconds,
    )));
    if pinned {
        pin(edge.agent.pid(), "0");
    }
    // First frames: the box and the relay (it stays up: maximum_idle_time is 10 min).
    let (box_first, relay_first) = rt.block_on(async {
        let mut box_first = Vec::new();
        let mut relay_first = Vec::new();
        for _ in 0..PROBES {
            box_first.extend(first_frame(&box_url).await);
            relay_first.extend(first_frame(&relay_url).await);
        }
        (box_first, relay_first)
    });
    drop(cloud);

    // (c) liveion pulls the stream from the box (cascade) and serves the viewers.
    let mut liveion_first = Vec::new();
    let live777_bin = verge_testkit::liveion::live777_path();
    let live777 = live777_bin.as_path();
    if live777.exists() {
        let box_mark = std::fs::metadata(&edge.agent.log).map_or(0, |m| m.len());
        match start_liveion(edge.dir.path(), live777, edge.http) {
            Ok((proc, addr)) => {
                if pinned {
                    pin(proc.pid(), "0");
                    pin(edge.agent.pid(), "1");
                }
                let url = format!("http://{addr}/whep/{STREAM}");
                phases.push(rt.block_on(phase(
                    "(c) liveion cascade",
                    &url,
                    server(proc.pid(), None),
                    n,
                    args.seconds,
                )));
                rt.block_on(async {
                    for _ in 0..PROBES {
                        liveion_first.extend(first_frame(&url).await);
                    }
                });
                let log = proc.log_text();
                drop(proc);
                // Warnings by where they come from: (count, the first one's text).
                let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
                for line in log.lines().filter(|l| {
                    (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("set log level")
                }) {
                    // After the timestamp, the level and the thread: the module, file:line.
                    let words: Vec<&str> = line.split_whitespace().skip(3).collect();
                    let place = words.iter().take(2).copied().collect::<Vec<_>>().join(" ");
                    // The module and the message, without the source path.
                    let text: String = words
                        .iter()
                        .filter(|w| !w.contains(".rs:"))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .chars()
                        .take(160)
                        .collect();
                    kinds.entry(place).or_insert((0, text)).0 += 1;
                }
                for (count, text) in kinds.values() {
                    println!("liveion log: {count} x {text}");
                }
                // The box's session that fed liveion ends with it: how often a keyframe
                // request from liveion made the box resend its cached GOP.
                let fed = wait_for(Duration::from_secs(10), || {
                    let e = ended_sessions(&edge.agent.log, box_mark);
                    (e.0 > 0).then_some(e)
                });
                if let Some((_, resyncs, skips)) = fed {
                    println!(
                        "the box's session feeding liveion: {resyncs} resyncs (cached GOP resent on liveion's PLIs), {skips} skips"
                    );
                }
            }
            Err(e) => println!("(c) liveion: {e}"),
        }
    } else {
        println!(
            "(c) liveion: {} is missing, skipped (VERGE_LIVE777 names it)",
            live777.display()
        );
    }
    print_serving(&phases, args, &box_first, &relay_first, &liveion_first);
}

/// A cloud node `id` (`[node] role = "cloud"`) on the fixture's broker, with the benchmark's
/// limits; returns it and its HTTP address.
fn start_cloud_node(edge: &Edge, id: &str, secret: &str, webrtc: &str) -> (Proc, SocketAddr) {
    let mqtt = listener(&edge.manager_listeners, "mqtt");
    let cfg = edge.dir.write(
        &format!("{id}.toml"),
        &format!(
            "id = \"{id}\"\nsecret = \"{secret}\"\n[node]\nrole = \"cloud\"\n\
             [mqtt]\nurl = \"mqtt://{mqtt}\"\n[rtmp]\nlisten = \"{ANY_PORT}\"\n\
             [http]\nlisten = \"{ANY_PORT}\"\n[hls]\nlisten = \"{ANY_PORT}\"\n\
             [webrtc]\nudp_ips = [\"127.0.0.1\"]\n{webrtc}{LIMITS}"
        ),
    );
    let (node, bound) = Proc::spawn_ready(
        id,
        &bin("verge-agent"),
        &["--config", cfg.to_str().unwrap_or_default()],
        edge.dir.path(),
    );
    (node, listener(&bound, "http"))
}

/// liveion on a free loopback port, its stream `cam` pulled from the box's WHEP port.
fn start_liveion(
    dir: &Path,
    program: &Path,
    box_http: SocketAddr,
) -> Result<(Proc, SocketAddr), String> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?;
    let cfg = dir.join("live777.toml");
    std::fs::write(
        &cfg,
        format!("[http]\nlisten = \"{addr}\"\n[webrtc]\nice_udp_addrs = [\"127.0.0.1:0\"]\n"),
    )
    .map_err(|e| e.to_string())?;
    let proc = Proc::spawn(
        "live777",
        program,
        &["-c", cfg.to_str().unwrap_or_default()],
        dir,
    );
    wait_for(Duration::from_secs(10), || get(addr, "/api/streams/").ok())
        .ok_or_else(|| format!("liveion did not answer:\n{}", proc.log_text()))?;
    let body = serde_json::json!({ "sourceUrl": format!("http://{box_http}/whep/{STREAM}") });
    let pulled = request(
        "POST",
        addr,
        &format!("/api/cascade/{STREAM}"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
        Duration::from_secs(15),
    )
    .map_err(|e| format!("POST /api/cascade: {e}"))?;
    if !(200..300).contains(&pulled.status) {
        return Err(format!(
            "POST /api/cascade answered {}: {}",
            pulled.status,
            pulled.text()
        ));
    }
    let connected = wait_for(Duration::from_secs(15), || {
        let streams = get(addr, "/api/streams/").ok()?.json();
        let stream = streams
            .as_array()?
            .iter()
            .find(|s| s["id"] == STREAM)?
            .clone();
        (stream["publish"]["sessions"][0]["state"] == "connected").then_some(())
    });
    connected.map(|_| (proc, addr)).ok_or_else(|| {
        format!(
            "liveion's cascade never connected: {:?}",
            get(addr, "/api/streams/").map(|r| r.text())
        )
    })
}

/// The process that serves a phase's viewers.
struct Server {
    pid: u32,
    /// Its log, for a Verge node's "WHEP viewer ended" lines.
    log: Option<PathBuf>,
    /// When the stream's publisher started.
    published: Instant,
}

/// `n` viewers of `url` (the first alone, until its first frame: it may start a relay), then
/// `seconds` measured after a 3 s settle.
async fn phase(label: &'static str, url: &str, server: Server, n: usize, seconds: u64) -> Phase {
    let pid = server.pid;
    // The serving process alone (ingest, and for a relay the pull), before viewers.
    let idle = Duration::from_secs(2);
    let c0 = cpu_ticks(pid).unwrap_or(0);
    tokio::time::sleep(idle).await;
    let idle_cpu =
        (cpu_ticks(pid).unwrap_or(0) - c0) as f64 / TICKS_PER_SEC / idle.as_secs_f64() * 100.0;
    let rss_idle_kib = rss_kib(pid).unwrap_or(0);
    let log_mark = server
        .log
        .as_deref()
        .and_then(|l| std::fs::metadata(l).ok())
        .map_or(0, |m| m.len());
    let age = server.published.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    // Per viewer: frames received, access units lost.
    let mut counters: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)> = Vec::new();
    let mut tasks = Vec::new();
    let mut failed = Vec::new();
    let mut served_by = BTreeMap::new();
    let mut joined = 0;
    while joined + failed.len() < n {
        let batch = if joined + failed.len() == 0 {
            1
        } else {
            (n - joined - failed.len()).min(10)
        };
        let offers: Vec<_> = (0..batch)
            .map(|_| {
                let url = url.to_string();
                tokio::spawn(async move {
                    let mut v = Viewer::connect(&url, &ViewerOptions::for_url(&url)).await?;
                    // Playing: a first frame within 10 s.
                    v.next_frame(Duration::from_secs(10)).await?;
                    let at_first = (v.stats.lost, v.stats.sequence_breaks);
                    Ok::<_, WhepError>((v, at_first))
                })
            })
            .collect();
        for offer in offers {
            let (mut v, at_first) = match offer.await {
                Ok(Ok(joined)) => joined,
                Ok(Err(e)) => {
                    failed.push(e.to_string());
                    continue;
                }
                Err(e) => {
                    failed.push(e.to_string());
                    continue;
                }
            };
            joined += 1;
            *served_by.entry(served_by_node(&v)).or_insert(0) += 1;
            let frames = Arc::new(AtomicU64::new(0));
            let lost = Arc::new(AtomicU64::new(v.stats.lost));
            counters.push((frames.clone(), lost.clone()));
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let got = v.next_frame(Duration::from_secs(1)).await;
                    lost.store(v.stats.lost, Ordering::Relaxed);
                    match got {
                        Ok(Some(_)) => {
                            frames.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => break,
                        Err(WhepError::Stalled(_)) => {}
                        Err(_) => break,
                    }
                }
                let _ = v.delete().await;
                v.close().await;
                (v.stats.clone(), at_first)
            }));
        }
        if failed.len() > n / 2 {
            break;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let me = std::process::id();
    let count = || {
        counters.iter().fold((0, 0), |(f, l), (frames, lost)| {
            (
                f + frames.load(Ordering::Relaxed),
                l + lost.load(Ordering::Relaxed),
            )
        })
    };
    let (c0, b0, (f0, l0)) = (
        cpu_ticks(pid).unwrap_or(0),
        cpu_ticks(me).unwrap_or(0),
        count(),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let secs = t0.elapsed().as_secs_f64();
    let (c1, b1, (f1, l1)) = (
        cpu_ticks(pid).unwrap_or(0),
        cpu_ticks(me).unwrap_or(0),
        count(),
    );
    let rss = rss_kib(pid).unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let mut stats = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            stats.push(s);
        }
    }
    let expected = FPS * secs * joined as f64;
    // The node logs each session's end once its DELETE is done.
    let mut ended = None;
    if let Some(log) = server.log.as_deref() {
        for _ in 0..100 {
            let e = ended_sessions(log, log_mark);
            ended = Some(e);
            if e.0 >= joined as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Phase {
        label,
        joined,
        failed,
        served_by,
        idle_cpu,
        cpu: (c1 - c0) as f64 / TICKS_PER_SEC / secs * 100.0,
        bench_cpu: (b1 - b0) as f64 / TICKS_PER_SEC / secs * 100.0,
        frames_pct: if expected > 0.0 {
            (f1 - f0) as f64 / expected * 100.0
        } else {
            0.0
        },
        lost_start: stats.iter().map(|(_, at)| at.0).sum(),
        lost_after: stats.iter().map(|(s, at)| s.lost - at.0).sum(),
        lost_window: l1 - l0,
        breaks_after: stats.iter().map(|(s, at)| s.sequence_breaks - at.1).sum(),
        plis: stats.iter().map(|(s, _)| s.keyframe_requests).sum(),
        ended,
        age,
        rss_idle_kib,
        rss_kib: rss,
        first_ms: stats.iter().filter_map(|(s, _)| s.first_frame_ms).collect(),
    }
}

/// POST → first complete keyframe of one session at `url`, or nothing if there was none in 5 s.
async fn first_frame(url: &str) -> Option<f64> {
    let mut v = Viewer::connect(url, &ViewerOptions::for_url(url))
        .await
        .ok()?;
    let got = v.next_frame(Duration::from_secs(5)).await;
    let _ = v.delete().await;
    v.close().await;
    match got {
        Ok(Some(_)) => v.stats.first_frame_ms,
        _ => None,
    }
}

/// The node a session belongs to: Verge's session URLs end in `{agent}~{random}`; others
/// (liveion's) have no node in them.
fn served_by_node(v: &Viewer) -> String {
    let session = v.session_url.path.rsplit('/').next().unwrap_or_default();
    match session.split_once('~') {
        Some((node, _)) => node.to_string(),
        None => v.session_url.authority.clone(),
    }
}

fn print_serving(
    phases: &[Phase],
    args: &Args,
    box_first: &[f64],
    relay_first: &[f64],
    liveion_first: &[f64],
) {
    println!();
    println!(
        "Viewers per core: {} viewers of one 2 Mbit/s stream per server, {} s settle then {} s measured; CPU of the serving process only (one core = 100 %)",
        args.viewers,
        SETTLE.as_secs(),
        args.seconds
    );
    println!(
        " (marg/view: above the idle CPU; lost: access units lost in the window; viewers/core: viewers / CPU share at that delivery)"
    );
    println!(
        "{:<32} {:>7} {:>9} {:>8} {:>8} {:>9} {:>9} {:>12} {:>11} {:>6} {:>9} {:>10}",
        "server",
        "viewers",
        "idle CPU",
        "CPU",
        "frames %",
        "CPU/view",
        "marg/view",
        "viewers/core",
        "RSS/viewer",
        "lost",
        "bench CPU",
        "first p50"
    );
    let mut per_core = BTreeMap::new();
    for p in phases {
        let viewers_per_core = if p.cpu > 0.0 {
            p.joined as f64 / (p.cpu / 100.0)
        } else {
            f64::NAN
        };
        per_core.insert(p.label.chars().nth(1).unwrap_or('?'), viewers_per_core);
        let per = |v: f64| {
            if p.joined > 0 {
                v / p.joined as f64
            } else {
                f64::NAN
            }
        };
        println!(
            "{:<32} {:>7} {:>8.1}% {:>7.1}% {:>7.1}% {:>8.3}% {:>8.3}% {:>12.0} {:>7.2} MiB {:>6} {:>8.1}% {:>8.1}ms",
            p.label,
            p.joined,
            p.idle_cpu,
            p.cpu,
            p.frames_pct,
            per(p.cpu),
            per(p.cpu - p.idle_cpu),
            viewers_per_core,
            per(p.rss_kib.saturating_sub(p.rss_idle_kib) as f64 / 1024.0),
            p.lost_window,
            p.bench_cpu,
            percentile(&p.first_ms, 0.5),
        );
    }
    for p in phases {
        let ended = p.ended.map_or(String::new(), |(n, resyncs, skips)| {
            format!("; the node logged {n} sessions ended, {resyncs} resyncs, {skips} skips")
        });
        println!(
            "  {}: first viewer {:.0} s after the publisher started; served by {:?}; lost {} before the first frame, {} after; {} sequence breaks after; {} PLIs{ended}; RSS {:.1} -> {:.1} MiB{}",
            p.label,
            p.age.as_secs_f64(),
            p.served_by,
            p.lost_start,
            p.lost_after,
            p.breaks_after,
            p.plis,
            p.rss_idle_kib as f64 / 1024.0,
            p.rss_kib as f64 / 1024.0,
            if p.failed.is_empty() {
                String::new()
            } else {
                let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
                for f in &p.failed {
                    *kinds.entry(f.as_str()).or_insert(0) += 1;
                }
                format!("; {} failed: {kinds:?}", p.failed.len())
            }
        );
    }
    println!();
    println!(
        "First frame (POST -> first complete keyframe), {PROBES} sessions each one after the other, box and relay alternating"
    );
    println!("{:<32} {:>6} {:>9} {:>9}", "path", "played", "p50", "p99");
    for (label, v) in [
        ("box (agent's own port)", box_first),
        ("relay (cloud node's own port)", relay_first),
        ("liveion cascade", liveion_first),
    ] {
        println!(
            "{:<32} {:>3}/{PROBES:<2} {:>7.1}ms {:>7.1}ms",
            label,
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99)
        );
    }
    println!();
    let ratio = per_core.get(&'b').copied().unwrap_or(f64::NAN)
        / per_core.get(&'c').copied().unwrap_or(f64::NAN);
    println!("Verge cloud node viewers/core / liveion viewers/core: {ratio:.2} (goal >= 2)");
    let first = percentile(relay_first, 0.5) / percentile(box_first, 0.5);
    println!("relay first frame p50 / box first frame p50: {first:.2} (goal <= 1.2)");
}

// ---- shared ----

/// The clip published in a loop to the box's stream, once live; with when it was started.
fn on_air(edge: &Edge, clip: &Path, pinned: bool) -> (Proc, Instant) {
    let url = format!("rtmp://{}/live/{STREAM}", edge.rtmp);
    let publisher = publish_loop(edge.dir.path(), &url, clip, pinned);
    let published = Instant::now();
    edge.wait_live(STREAM, &publisher);
    (publisher, published)
}
