//! Load test of the MQTT backbone: N simulated agents in this process against a real
//! `verge-manager` process with its embedded broker.
//!
//! ```text
//! cargo run --release --example agent_swarm -- --agents 1000,10000 [--pings 1000] [--concurrency 16]
//!     [--backlog 4096[,128]] [--restart DOWN_SECS] [--max-backoff 30[,3]]
//!     [--broker embedded[,mosquitto]]
//! ```
//!
//! `--broker mosquitto`: the manager uses an external mosquitto (started here, anonymous) instead
//! of its embedded broker; the row then shows the broker's RSS apart from the manager's.
//!
//! `--restart DOWN_SECS`: once all N are online, the manager is killed (SIGKILL, its embedded
//! broker with it), stays down DOWN_SECS, and starts again on the same ports; the row then
//! also shows the time from its return (ready file written) until all N are online again.
//! `--max-backoff`: the agents' `[mqtt] max_backoff_secs` (each value is a run of every N).
//!
//! `--backlog`: the broker's `[broker] backlog` (each value is a run of every N; 128 is what
//! rumqttd listens with by itself, the baseline for a burst of connections).
//!
//! For each N it prints the time until the manager lists all N online, the manager's RSS, the
//! swarm's RSS per agent, and RPC `ping` round trips (p50/p99) through the manager's HTTP API
//! with all N connected. The baseline row is the same manager with one agent, in the same run.
//! Each simulated agent is the real agent MQTT session (`verge_agent::session::run`): presence, last will,
//! state, RPC server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use verge_agent::{AgentConfig, StateHandle};
use verge_testkit::edge::open_mosquitto;
use verge_testkit::measure::{cpu_ticks, peak_kib, percentile, rss_kib};
use verge_testkit::{ANY_PORT, Proc, TempDir, bin, get, listener, reserve_port, wait_for};

const ENROLLMENT: &str = "swarm-bench-enrollment";

struct Args {
    agents: Vec<usize>,
    backlogs: Vec<u32>,
    pings: usize,
    concurrency: usize,
    restart: Option<Duration>,
    max_backoffs: Vec<u64>,
    brokers: Vec<Broker>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Broker {
    Embedded,
    Mosquitto,
}

fn parse_args() -> Args {
    let mut args = Args {
        agents: vec![1000, 10_000],
        backlogs: vec![4096],
        pings: 1000,
        concurrency: 16,
        restart: None,
        max_backoffs: vec![
            AgentConfig::with_defaults("a", "b", "mqtt://127.0.0.1:1")
                .mqtt
                .max_backoff_secs,
        ],
        brokers: vec![Broker::Embedded],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--agents" => {
                args.agents = value
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            }
            "--backlog" => {
                args.backlogs = value
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            }
            "--pings" => args.pings = value.parse().expect("--pings N"),
            "--restart" => {
                args.restart = Some(Duration::from_secs_f64(
                    value.parse().expect("--restart DOWN_SECS"),
                ))
            }
            "--max-backoff" => {
                args.max_backoffs = value
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            }
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            "--broker" => {
                args.brokers = value
                    .split(',')
                    .map(|b| match b.trim() {
                        "embedded" => Broker::Embedded,
                        "mosquitto" => Broker::Mosquitto,
                        other => panic!("--broker {other}: embedded or mosquitto"),
                    })
                    .collect()
            }
            other => panic!("unknown flag {other}; see the header of examples/agent_swarm.rs"),
        }
    }
    args
}

struct Row {
    agents: usize,
    broker: Broker,
    /// The external broker's RSS (MiB).
    broker_rss_mib: Option<f64>,
    backlog: u32,
    max_backoff: u64,
    /// From the restarted manager's return until all are online again.
    back_online: Option<Duration>,
    all_online: Duration,
    manager_rss_mib: f64,
    manager_peak_mib: f64,
    swarm_kib_per_agent: f64,
    p50_ms: f64,
    p99_ms: f64,
    http_p50_ms: f64,
    failed: usize,
    idle_cpu_percent: f64,
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    for &broker in &args.brokers {
        for n in std::iter::once(1).chain(args.agents.iter().copied()) {
            for &backlog in &args.backlogs {
                for &max_backoff in &args.max_backoffs {
                    eprintln!(
                        "== {n} agent(s), {broker:?} broker, backlog {backlog}, max backoff {max_backoff} s"
                    );
                    rows.push(run_one(&runtime, n, broker, backlog, max_backoff, &args));
                }
            }
        }
    }
    println!();
    println!(
        "| agents | broker | backlog | max backoff | all online | back online after a restart | manager RSS (peak) | manager KiB/agent | broker RSS | manager CPU idle | swarm RSS/agent | ping p50 | ping p99 | HTTP p50 | failed |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let label = if r.agents == 1 {
            "1 (baseline)".to_string()
        } else {
            r.agents.to_string()
        };
        let back = r
            .back_online
            .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
        let broker_rss = r
            .broker_rss_mib
            .map_or("in the manager".to_string(), |m| format!("{m:.1} MiB"));
        println!(
            "| {label} | {:?} | {} | {} s | {:.2} s | {back} | {:.1} MiB ({:.1}) | {:.1} | {broker_rss} | {:.0} % | {:.1} KiB | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            r.broker,
            r.backlog,
            r.max_backoff,
            r.all_online.as_secs_f64(),
            r.manager_rss_mib,
            r.manager_peak_mib,
            r.manager_peak_mib * 1024.0 / r.agents as f64,
            r.idle_cpu_percent,
            r.swarm_kib_per_agent,
            r.p50_ms,
            r.p99_ms,
            r.http_p50_ms,
            r.failed
        );
    }
}

fn run_one(
    runtime: &tokio::runtime::Runtime,
    n: usize,
    broker: Broker,
    backlog: u32,
    max_backoff: u64,
    args: &Args,
) -> Row {
    let dir = TempDir::new("swarm");
    // Held across a restart, so the agents find the new broker where the old one was.
    let broker_port = reserve_port();
    let external = match broker {
        Broker::Embedded => None,
        Broker::Mosquitto => Some(open_mosquitto(&dir).expect("mosquitto is installed")),
    };
    let external_url = external
        .as_ref()
        .map(|(_, addr)| format!("url = \"mqtt://{addr}\"\n"))
        .unwrap_or_default();
    let config = dir.write(
        "manager.toml",
        &format!(
            "[http]\nlisten = \"{ANY_PORT}\"\n[broker]\nlisten = \"{}\"\nbacklog = {backlog}\nmax_connections = {}\n\
             [mqtt]\n{external_url}rpc_timeout_ms = 5000\n[enrollment]\nsecret = \"{ENROLLMENT}\"\n",
            broker_port.addr(),
            n + 100
        ),
    );
    let start_manager = |label: &str| {
        Proc::spawn_ready_with_env(
            label,
            &bin("verge-manager"),
            &["--config", config.to_str().unwrap()],
            dir.path(),
            &[("RUST_LOG", "warn")],
        )
    };
    let (manager, bound) = start_manager("manager");
    let http = listener(&bound, "http");
    let mqtt = external
        .as_ref()
        .map_or_else(|| listener(&bound, "mqtt"), |(_, addr)| *addr);

    let rss_before = rss_kib(std::process::id()).unwrap_or(0);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let url = format!("mqtt://{mqtt}");
    let agents: Vec<_> = (0..n)
        .map(|i| {
            let id = format!("sim-{i:05}");
            let secret = verge_protocol::secret::derive_agent_secret(ENROLLMENT, &id);
            let mut cfg = AgentConfig::with_defaults(&id, &secret, &url);
            cfg.mqtt.max_backoff_secs = max_backoff;
            let mut stop = stop_rx.clone();
            runtime.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                // A bare session: no media, only presence, state and RPC.
                let inputs = verge_agent::session::Inputs {
                    state: StateHandle::new(),
                    keys: Default::default(),
                    whep: None,
                    index: None,
                    hub: Default::default(),
                    calls: Default::default(),
                };
                verge_agent::session::run(&cfg, inputs, shutdown).await
            })
        })
        .collect();

    let mut last_report = Instant::now();
    let all_online = wait_for(Duration::from_secs(300), || {
        let health = get(http, "/api/health").ok()?.json();
        let online = health["online"].as_u64().unwrap_or(0) as usize;
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "   {online}/{n} online after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        (online == n).then(|| started.elapsed())
    })
    .expect("all agents online within 300 s");
    eprintln!("   all {n} online after {:.2} s", all_online.as_secs_f64());
    let swarm_kib_per_agent = rss_kib(std::process::id())
        .unwrap_or(0)
        .saturating_sub(rss_before) as f64
        / n as f64;

    // CPU the manager burns holding N idle sessions (keepalives only).
    let cpu_before = cpu_ticks(manager.pid()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu_percent = cpu_ticks(manager.pid())
        .unwrap_or(0)
        .saturating_sub(cpu_before) as f64
        / 5.0;

    let (rtts, http_times, failed) = ping_load(http, n, args.pings, args.concurrency);
    let (manager_rss, manager_peak) = (
        rss_kib(manager.pid()).unwrap_or(0),
        peak_kib(manager.pid()).unwrap_or(0),
    );
    let broker_rss_mib = external
        .as_ref()
        .map(|(broker, _)| rss_kib(broker.pid()).unwrap_or(0) as f64 / 1024.0);

    // The manager (and its broker) killed, down a while, back on the same ports.
    let mut manager = manager;
    let back_online = args.restart.map(|down| {
        manager.signal("KILL");
        let _ = wait_for(Duration::from_secs(10), || manager.exited().then_some(()));
        std::thread::sleep(down);
        let (again, bound) = start_manager("manager-again");
        let back = Instant::now();
        manager = again;
        let http = listener(&bound, "http");
        let took = wait_for(Duration::from_secs(300), || {
            let online = get(http, "/api/health").ok()?.json()["online"].as_u64()?;
            (online as usize == n).then(|| back.elapsed())
        })
        .expect("all agents back online within 300 s");
        eprintln!(
            "   all {n} back online {:.2} s after the manager returned",
            took.as_secs_f64()
        );
        took
    });

    let _ = stop_tx.send(true);
    runtime.block_on(async {
        for agent in agents {
            let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
        }
    });
    drop(manager);
    drop(external);
    Row {
        agents: n,
        broker,
        broker_rss_mib,
        backlog,
        max_backoff,
        back_online,
        all_online,
        manager_rss_mib: manager_rss as f64 / 1024.0,
        manager_peak_mib: manager_peak as f64 / 1024.0,
        swarm_kib_per_agent,
        p50_ms: percentile(&rtts, 0.50),
        p99_ms: percentile(&rtts, 0.99),
        http_p50_ms: percentile(&http_times, 0.50),
        failed,
        idle_cpu_percent,
    }
}

/// `pings` calls of `GET /api/agents/{id}` (each a live RPC ping) to agents spread over the
/// fleet, `concurrency` at a time. Returns the manager-measured RTTs, the HTTP times, failures.
fn ping_load(
    http: SocketAddr,
    n: usize,
    pings: usize,
    concurrency: usize,
) -> (Vec<f64>, Vec<f64>, usize) {
    let per_worker = pings.div_ceil(concurrency.max(1));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            std::thread::spawn(move || {
                let (mut rtts, mut times, mut failed) = (vec![], vec![], 0);
                for k in 0..per_worker {
                    // A stride walk so workers hit different agents.
                    let id = format!("sim-{:05}", (w * 7919 + k * 104_729) % n);
                    let t = Instant::now();
                    match get(http, &format!("/api/agents/{id}")).map(|r| r.json()) {
                        Ok(v) if v["ping"]["rtt_ms"].is_number() => {
                            times.push(t.elapsed().as_secs_f64() * 1000.0);
                            rtts.push(v["ping"]["rtt_ms"].as_f64().unwrap_or(0.0));
                        }
                        _ => failed += 1,
                    }
                }
                (rtts, times, failed)
            })
        })
        .collect();
    let (mut rtts, mut times, mut failed) = (vec![], vec![], 0);
    for w in workers {
        let (r, t, f) = w.join().expect("ping worker");
        rtts.extend(r);
        times.extend(t);
        failed += f;
    }
    (rtts, times, failed)
}
