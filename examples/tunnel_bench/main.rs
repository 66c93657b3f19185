//! Tunnel benchmark: bytes through a `[[tunnel.forward]]` of a real `verge-manager` to a target
//! behind a real `verge-agent`, next to direct loopback TCP to the same target, in one run.
//!
//! ```text
//! cargo run --release --example tunnel_bench -- [--mib 256] [--streams 8] [--round-trips 2000]
//!     [--agent-segment-kib 256] [--worker-threads N] [--rounds 1]
//! cargo run --release --example tunnel_bench -- --link RTT_MS,MBIT [--mib 64]   (root)
//! ```
//!
//! `--link` measures the tunnel on a long shaped link instead ([`link`]). Otherwise, on
//! loopback:
//!
//! For each path (direct TCP; the tunnel through the manager's embedded rumqttd; the tunnel
//! through mosquitto, when installed):
//! - **one stream**: `--mib` MiB to a sink that checks every byte against what was sent, then
//!   answers with the count; throughput is bytes over the time until that answer;
//! - **parallel**: `--streams` connections sharing `--mib` MiB at once;
//! - **round trip**: 64 bytes to an echo and back, `--round-trips` times: p50 and p99;
//! - the CPU time per round trip of the processes on the path (manager, agent, and mosquitto
//!   when it is the broker), from their utime + stime, and per MB of the one stream (those
//!   processes and this one, which runs the client and the checking sink);
//! - the peak resident memory (VmHWM) of the manager and the agent after the run.
//!
//! `--rounds N` measures every path N times, alternating between them, and prints the median
//! and the range of each number: this VM's speed drifts by a fifth between minutes, more than
//! most changes move a tunnel number. `--worker-threads` sets `[runtime] worker_threads` of both the manager and the agent (their
//! default: one per core).
//!
//! Next to each broker's tunnel, the bare broker path in the same run ([`bare`]): QoS 0
//! publishes of a tunnel packet's size from one client to another, and a 64-byte MQTT
//! ping-pong, through the same broker with no tunnel logic: the ceiling of what a tunnel over
//! it can do.
//!
//! Sealing (ChaCha20-Poly1305) is always on. The targets run in this process.

mod bare;
mod link;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use verge_testkit::edge::open_mosquitto;
use verge_testkit::measure::{TICKS_PER_SEC, cpu_ticks, peak_kib, percentile};
use verge_testkit::{ANY_PORT, Proc, TempDir, bin, listener, wait_for};

/// The pattern every stream sends, repeated: 1 MiB that does not compress, the SHA-256 of
/// each block's index in turn.
fn pattern() -> Vec<u8> {
    (0u32..(1 << 20) / 32)
        .flat_map(|i| {
            ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes())
                .as_ref()
                .to_vec()
        })
        .collect()
}

/// A sink that checks each byte against the pattern and answers the count (u64, big-endian),
/// or u64::MAX at the first wrong byte.
async fn sink_server() -> SocketAddr {
    serve_sink(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// [`sink_server`] on a listener of the caller's.
fn serve_sink(server: TcpListener) -> SocketAddr {
    let addr = server.local_addr().unwrap();
    let expected = pattern();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = server.accept().await {
            let expected = expected.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let (mut count, mut intact) = (0u64, true);
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            intact &= matches_pattern(&expected, count, &buf[..n]);
                            count += n as u64;
                        }
                    }
                }
                let answer = if intact { count } else { u64::MAX };
                let _ = socket.write_all(&answer.to_be_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

/// Whether `got`, found at offset `at` of the stream, is the pattern there. Compared a slice
/// at a time: a byte-wise check cost the bench a quarter of the machine's CPU at 150 MB/s,
/// taken from the processes it measures.
fn matches_pattern(pattern: &[u8], at: u64, got: &[u8]) -> bool {
    let mut offset = (at % pattern.len() as u64) as usize;
    let mut rest = got;
    while !rest.is_empty() {
        let n = rest.len().min(pattern.len() - offset);
        if rest[..n] != pattern[offset..offset + n] {
            return false;
        }
        rest = &rest[n..];
        offset = 0;
    }
    true
}

async fn echo_server() -> SocketAddr {
    serve_echo(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// [`echo_server`] on a listener of the caller's.
fn serve_echo(server: TcpListener) -> SocketAddr {
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = server.accept().await {
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `bytes` of the pattern to the sink at `addr`; the seconds until it confirmed them all.
async fn push(addr: SocketAddr, bytes: u64) -> Result<f64, String> {
    let socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    push_on(socket, bytes).await
}

/// [`push`] on a connection of the caller's (the clock starts now).
async fn push_on(mut socket: TcpStream, bytes: u64) -> Result<f64, String> {
    let data = pattern();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(data.len() as u64) as usize;
        socket
            .write_all(&data[..n])
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    socket.shutdown().await.map_err(|e| e.to_string())?;
    let mut answer = [0u8; 8];
    socket
        .read_exact(&mut answer)
        .await
        .map_err(|e| format!("no answer from the sink: {e}"))?;
    match u64::from_be_bytes(answer) {
        n if n == bytes => Ok(started.elapsed().as_secs_f64()),
        u64::MAX => Err("the sink saw a wrong byte".into()),
        n => Err(format!("the sink got {n} of {bytes} bytes")),
    }
}

/// Round trips of 64 bytes, in microseconds.
async fn round_trips(addr: SocketAddr, count: usize) -> Result<Vec<f64>, String> {
    let mut socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ping, mut pong) = ([7u8; 64], [0u8; 64]);
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        socket.write_all(&ping).await.map_err(|e| e.to_string())?;
        socket
            .read_exact(&mut pong)
            .await
            .map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(times)
}

struct Args {
    mib: u64,
    streams: u64,
    round_trips: usize,
    /// The embedded broker's `agent_segment_size` in KiB (its default otherwise): what bounds
    /// the bytes in flight towards an agent.
    agent_segment_kib: Option<u64>,
    /// `[runtime] worker_threads` of the manager and the agent (their default otherwise).
    worker_threads: Option<usize>,
    /// Times each path is measured, alternating between them.
    rounds: usize,
    /// `--link RTT_MS,MBIT`: on a shaped link instead of loopback.
    link: Option<(Duration, u32)>,
    mib_given: bool,
}

const USAGE: &str = "tunnel_bench [--mib 256] [--streams 8] [--round-trips 2000] \
                     [--agent-segment-kib 256] [--worker-threads N] [--rounds 1] \
                     [--link RTT_MS,MBIT]";

fn parse_args() -> Args {
    let mut args = Args {
        mib: 256,
        streams: 8,
        round_trips: 2000,
        agent_segment_kib: None,
        worker_threads: None,
        rounds: 1,
        link: None,
        mib_given: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--mib" => {
                args.mib = value.parse().expect("--mib N");
                args.mib_given = true;
            }
            "--link" => args.link = Some(link::parse(&value)),
            "--streams" => args.streams = value.parse().expect("--streams N"),
            "--round-trips" => args.round_trips = value.parse().expect("--round-trips N"),
            "--agent-segment-kib" => {
                args.agent_segment_kib = Some(value.parse().expect("--agent-segment-kib N"))
            }
            "--rounds" => args.rounds = value.parse::<usize>().expect("--rounds N").max(1),
            "--worker-threads" => {
                args.worker_threads = Some(value.parse().expect("--worker-threads N"))
            }
            other => {
                eprintln!("unknown option {other}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    args
}

/// One path's numbers in one round.
struct Sample {
    one: Result<f64, String>,
    parallel: Result<f64, String>,
    rtt: Result<(f64, f64), String>,
    /// CPU time of the path's processes per round trip.
    rtt_cpu_us: Option<f64>,
    /// CPU time of the path's processes and of this one (the client and the sink) per MB of
    /// the one stream.
    one_cpu_us_per_mb: Option<f64>,
}

/// CPU ticks of `pids` and of this process together.
fn cpu_with_self(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .chain(&[std::process::id()])
        .map(|&pid| cpu_ticks(pid))
        .sum()
}

/// CPU µs per MB moved, from ticks before and after.
fn cpu_per_mb(before: Option<u64>, after: Option<u64>, bytes: f64) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    Some(ticks as f64 / TICKS_PER_SEC * 1e6 / (bytes / 1e6))
}

/// `pids`: the processes on the path (manager, agent, broker) whose CPU time the round trips
/// are charged.
async fn measure(sink: SocketAddr, echo: SocketAddr, args: &Args, pids: &[u32]) -> Sample {
    let total = args.mib << 20;
    let mbps = |secs: f64| total as f64 / secs / 1e6;
    let one_cpu = cpu_with_self(pids);
    let one = tokio::time::timeout(Duration::from_secs(600), push(sink, total))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
        .map(mbps);
    let one_cpu_us_per_mb = cpu_per_mb(one_cpu, cpu_with_self(pids), total as f64);
    let share = total / args.streams;
    let started = Instant::now();
    let pushes: Vec<_> = (0..args.streams)
        .map(|_| tokio::spawn(push(sink, share)))
        .collect();
    let mut parallel = Ok(0.0);
    for p in pushes {
        if let Ok(Err(e)) | Err(e) = p.await.map_err(|e| e.to_string()) {
            parallel = Err(e);
        }
    }
    let parallel =
        parallel.map(|_| (share * args.streams) as f64 / started.elapsed().as_secs_f64() / 1e6);
    let cpu = || pids.iter().map(|&pid| cpu_ticks(pid)).sum::<Option<u64>>();
    let cpu_before = cpu();
    let rtt = round_trips(echo, args.round_trips)
        .await
        .map(|t| (percentile(&t, 0.5), percentile(&t, 0.99)));
    let rtt_cpu_us = match (cpu_before, cpu()) {
        (Some(before), Some(after)) if !pids.is_empty() && rtt.is_ok() => {
            Some((after - before) as f64 / TICKS_PER_SEC * 1e6 / args.round_trips.max(1) as f64)
        }
        _ => None,
    };
    Sample {
        one,
        parallel,
        rtt,
        rtt_cpu_us,
        one_cpu_us_per_mb,
    }
}

/// A path under test, the processes on it, and its samples.
struct Route {
    name: &'static str,
    sink: SocketAddr,
    echo: SocketAddr,
    /// Manager and agent, whose peak memory is shown.
    pair: Option<(Proc, Proc)>,
    /// Whose CPU time the round trips are charged.
    pids: Vec<u32>,
    samples: Vec<Sample>,
    /// The broker of a tunnel path, measured bare.
    broker: Option<SocketAddr>,
    bare: Vec<bare::Bare>,
    /// The broker's process, whose CPU time the bare path is charged (with this one's).
    bare_pids: Vec<u32>,
}

impl Route {
    fn tunnel(name: &'static str, pair: Pair, broker: Option<u32>) -> Self {
        let Pair {
            manager,
            agent,
            sink,
            echo,
            mqtt,
        } = pair;
        let pids: Vec<u32> = [manager.pid(), agent.pid()]
            .into_iter()
            .chain(broker)
            .collect();
        // The bare path's broker process: mosquitto, or the manager that embeds rumqttd.
        let bare_pids = vec![broker.unwrap_or(manager.pid())];
        Self {
            name,
            sink,
            echo,
            pair: Some((manager, agent)),
            pids,
            samples: Vec::new(),
            broker: Some(mqtt),
            bare: Vec::new(),
            bare_pids,
        }
    }
}

/// A manager and an agent with forwards to the sink and the echo, and their broker.
struct Pair {
    manager: Proc,
    agent: Proc,
    sink: SocketAddr,
    echo: SocketAddr,
    mqtt: SocketAddr,
}

/// Enrolled on the embedded broker for the bare measurements.
const BARE_A: (&str, &str) = ("bare-a", "bare-secret-a");
const BARE_B: (&str, &str) = ("bare-b", "bare-secret-b");

/// mosquitto on loopback, open to anyone, queueing deep enough for the tunnel's packets (when
/// it is installed).
/// The median of `values`, and with more than one their range.
fn spread(values: &[f64], digits: usize) -> String {
    let median = percentile(values, 0.5);
    match (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    ) {
        (Some(min), Some(max)) if values.len() > 1 => {
            format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
        }
        _ => format!("{median:.digits$}"),
    }
}

/// One column over all rounds: the first failure, or the spread of the values.
fn column(values: impl IntoIterator<Item = Result<f64, String>>, digits: usize) -> String {
    let mut ok = Vec::new();
    for value in values {
        match value {
            Ok(v) => ok.push(v),
            Err(e) => return format!("failed: {e}"),
        }
    }
    spread(&ok, digits)
}

/// A manager (embedded broker, or the external one at `broker`) and an agent, with forwards
/// to the sink (`forward-0`) and the echo (`forward-1`).
fn start_pair(
    dir: &TempDir,
    label: &str,
    broker: Option<SocketAddr>,
    args: &Args,
    sink: SocketAddr,
    echo: SocketAddr,
) -> Pair {
    let runtime_toml = args
        .worker_threads
        .map(|n| format!("[runtime]\nworker_threads = {n}\n"))
        .unwrap_or_default();
    let broker_toml = match broker {
        Some(addr) => format!("[mqtt]\nurl = \"mqtt://{addr}\"\n"),
        None => format!(
            "[broker]\nlisten = \"{ANY_PORT}\"\n{}",
            args.agent_segment_kib
                .map(|kib| format!("agent_segment_size = {}\n", kib * 1024))
                .unwrap_or_default()
        ),
    };
    let manager_cfg = dir.write(
        &format!("{label}-manager.toml"),
        &format!(
            "{runtime_toml}[http]\nlisten = \"{ANY_PORT}\"\n{broker_toml}[keys]\nfile = \"{}\"\n\
             [[agents]]\nid = \"edge-1\"\nsecret = \"bench-secret\"\n\
             [[agents]]\nid = \"{}\"\nsecret = \"{}\"\n\
             [[agents]]\nid = \"{}\"\nsecret = \"{}\"\n\
             [[tunnel.forward]]\nlisten = \"{ANY_PORT}\"\nagent = \"edge-1\"\ntarget = \"{sink}\"\n\
             [[tunnel.forward]]\nlisten = \"{ANY_PORT}\"\nagent = \"edge-1\"\ntarget = \"{echo}\"\n",
            dir.path().join(format!("{label}-keys.json")).display(),
            BARE_A.0,
            BARE_A.1,
            BARE_B.0,
            BARE_B.1,
        ),
    );
    let (manager, bound) = Proc::spawn_ready_with_env(
        &format!("{label}-manager"),
        &bin("verge-manager"),
        &["--config", manager_cfg.to_str().unwrap()],
        dir.path(),
        &[("RUST_LOG", "warn")],
    );
    let mqtt = broker.unwrap_or_else(|| listener(&bound, "mqtt"));
    let agent_cfg = dir.write(
        &format!("{label}-agent.toml"),
        &format!(
            "id = \"edge-1\"\nsecret = \"bench-secret\"\n[mqtt]\nurl = \"mqtt://{mqtt}\"\n\
             [rtmp]\nlisten = \"{ANY_PORT}\"\n[http]\nlisten = \"{ANY_PORT}\"\n[hls]\nlisten = \"{ANY_PORT}\"\n\
             [tunnel]\nallow = [\"{sink}\", \"{echo}\"]\n{runtime_toml}"
        ),
    );
    let (agent, _) = Proc::spawn_ready_with_env(
        &format!("{label}-agent"),
        &bin("verge-agent"),
        &["--config", agent_cfg.to_str().unwrap()],
        dir.path(),
        &[("RUST_LOG", "warn")],
    );
    let http = listener(&bound, "http");
    let online = wait_for(Duration::from_secs(20), || {
        let nodes = verge_testkit::get(http, "/api/nodes/").ok()?.json();
        (nodes[0]["online"] == true).then_some(())
    });
    assert!(online.is_some(), "agent not online:\n{}", agent.log_text());
    Pair {
        manager,
        agent,
        sink: listener(&bound, "forward-0"),
        echo: listener(&bound, "forward-1"),
        mqtt,
    }
}

fn main() {
    let args = parse_args();
    if let Some((rtt, mbit)) = args.link {
        let mib = if args.mib_given { args.mib } else { 64 };
        return link::run(rtt, mbit, mib);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (sink, echo) = rt.block_on(async { (sink_server().await, echo_server().await) });
    let dir = TempDir::new("tunnel-bench");
    let mut routes = vec![Route {
        name: "direct TCP",
        sink,
        echo,
        pair: None,
        pids: Vec::new(),
        samples: Vec::new(),
        broker: None,
        bare: Vec::new(),
        bare_pids: Vec::new(),
    }];
    routes.push(Route::tunnel(
        "tunnel, embedded rumqttd",
        start_pair(&dir, "embedded", None, &args, sink, echo),
        None,
    ));
    let _broker = open_mosquitto(&dir).map(|(broker, addr)| {
        routes.push(Route::tunnel(
            "tunnel, mosquitto",
            start_pair(&dir, "mosquitto", Some(addr), &args, sink, echo),
            Some(broker.pid()),
        ));
        broker
    });

    // Rounds alternate the paths, so a slower minute of the machine falls on all of them.
    for round in 1..=args.rounds {
        for route in &mut routes {
            let sample = rt.block_on(measure(route.sink, route.echo, &args, &route.pids));
            route.samples.push(sample);
            if let Some(broker) = route.broker {
                let bytes = args.mib << 20;
                let pids = route.bare_pids.clone();
                let cpu = move || cpu_with_self(&pids);
                let bare = bare::measure(broker, BARE_A, BARE_B, bytes, args.round_trips, cpu);
                route.bare.push(rt.block_on(bare));
            }
        }
        if args.rounds > 1 {
            eprintln!("round {round} of {} done", args.rounds);
        }
    }

    println!(
        "\n{} MiB one stream, {} streams in parallel, {} round trips of 64 bytes; sealing on; \
         worker threads of the manager and the agent: {}; {}\n",
        args.mib,
        args.streams,
        args.round_trips,
        args.worker_threads
            .map_or("one per core".to_string(), |n| n.to_string()),
        if args.rounds > 1 {
            format!("{} rounds: median (min–max)", args.rounds)
        } else {
            "one round".to_string()
        }
    );
    println!(
        "| path | one stream MB/s | × direct | CPU µs per MB | {} streams MB/s | RTT p50 µs | RTT p99 µs | CPU per RTT µs | peak RSS manager / agent MiB |",
        args.streams
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let direct: Vec<Option<f64>> = routes[0]
        .samples
        .iter()
        .map(|s| s.one.as_ref().ok().copied().filter(|d| *d > 0.0))
        .collect();
    for route in &routes {
        let samples = &route.samples;
        let ratio = column(
            samples.iter().zip(&direct).map(|(s, d)| match (&s.one, d) {
                (Ok(v), Some(d)) => Ok(v / d),
                _ => Err("-".to_string()),
            }),
            2,
        );
        let cpu = if route.pids.is_empty() {
            "-".to_string()
        } else {
            column(
                samples
                    .iter()
                    .map(|s| s.rtt_cpu_us.ok_or_else(|| "-".to_string())),
                0,
            )
        };
        let peak = route
            .pair
            .as_ref()
            .and_then(|(m, a)| peak_kib(m.pid()).zip(peak_kib(a.pid())))
            .map(|(m, a)| format!("{:.0} / {:.0}", m as f64 / 1024.0, a as f64 / 1024.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {} | {ratio} | {} | {} | {} | {} | {cpu} | {peak} |",
            route.name,
            column(samples.iter().map(|s| s.one.clone()), 0),
            column(
                samples
                    .iter()
                    .map(|s| s.one_cpu_us_per_mb.ok_or_else(|| "-".to_string())),
                0
            ),
            column(samples.iter().map(|s| s.parallel.clone()), 0),
            column(samples.iter().map(|s| s.rtt.clone().map(|r| r.0)), 0),
            column(samples.iter().map(|s| s.rtt.clone().map(|r| r.1)), 0),
        );
    }

    println!(
        "\nSealing and opening, on one core of this process: {:.0} µs per MB (32 KiB packets)",
        seal_cost_us_per_mb()
    );
    println!("\nThe same brokers bare (two MQTT clients, QoS 0, no tunnel), in the same rounds:\n");
    println!(
        "| broker | bare MB/s (dropped) | tunnel one stream × bare | CPU µs per MB bare / tunnel | bare RTT p50 / p99 µs | tunnel RTT p50 × bare |"
    );
    println!("|---|---|---|---|---|---|");
    for route in routes.iter().filter(|r| r.broker.is_some()) {
        let rate = column(route.bare.iter().map(|b| b.rate.clone().map(|r| r.0)), 0);
        let dropped = column(
            route
                .bare
                .iter()
                .map(|b| b.rate.clone().map(|r| r.1 * 100.0)),
            1,
        );
        let one_x = column(
            route
                .samples
                .iter()
                .zip(&route.bare)
                .map(|(s, b)| match (&s.one, &b.rate) {
                    (Ok(t), Ok((bare, _))) if *bare > 0.0 => Ok(t / bare),
                    _ => Err("-".to_string()),
                }),
            2,
        );
        let rtt_x = column(
            route
                .samples
                .iter()
                .zip(&route.bare)
                .map(|(s, b)| match (&s.rtt, &b.rtt) {
                    (Ok(t), Ok(bare)) if bare.0 > 0.0 => Ok(t.0 / bare.0),
                    _ => Err("-".to_string()),
                }),
            2,
        );
        let cpu = format!(
            "{} / {}",
            column(
                route
                    .bare
                    .iter()
                    .map(|b| b.cpu_us_per_mb.ok_or_else(|| "-".to_string())),
                0
            ),
            column(
                route
                    .samples
                    .iter()
                    .map(|s| s.one_cpu_us_per_mb.ok_or_else(|| "-".to_string())),
                0
            ),
        );
        println!(
            "| {} | {rate} ({dropped} %) | {one_x} | {cpu} | {} / {} | {rtt_x} |",
            route.name.trim_start_matches("tunnel, "),
            column(route.bare.iter().map(|b| b.rtt.clone().map(|r| r.0)), 0),
            column(route.bare.iter().map(|b| b.rtt.clone().map(|r| r.1)), 0),
        );
    }
}

/// What sealing and opening cost per MB (ChaCha20-Poly1305 through `verge_tunnel::seal`), the
/// crypto every tunnel byte pays once at each end: 64 MiB in packets of 32 KiB of frames.
fn seal_cost_us_per_mb() -> f64 {
    use verge_tunnel::seal::{Direction, Epoch, Opener, Sealer};
    let epoch = Epoch::new(verge_protocol::now_ms()).expect("an epoch");
    let mut sealer = Sealer::new(b"bench-secret", Direction::ToAgent, b"manager", epoch);
    let mut opener = Opener::new(b"bench-secret", Direction::ToAgent, b"manager");
    let frames = vec![0x42u8; 32 * 1024];
    let packets = 2048;
    let started = Instant::now();
    for _ in 0..packets {
        let packet = sealer.seal(&frames).expect("sealed");
        let (opened, _) = opener.open(&packet).expect("opened");
        assert_eq!(opened.len(), frames.len());
    }
    started.elapsed().as_secs_f64() * 1e6 / (packets as f64 * frames.len() as f64 / 1e6)
}
