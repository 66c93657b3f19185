//! `--link RTT_MS,MBIT`: the tunnel on a long shaped link, next to direct TCP on the same link.
//!
//! The agent runs in a network namespace at the end of a link of `MBIT` Mbit/s each way and
//! `RTT_MS` of round trip ([`verge_testkit::link`]: tbf, and a delay proxy in user space); the
//! manager, its broker and the clients run here (the cloud). The box's targets (a sink that
//! checks every byte, a source of checked bytes) listen on the box's loopback.
//!
//! For each broker (the embedded rumqttd; mosquitto when installed), and for direct TCP from
//! the box to the same sink and source through the same link:
//! - **cloud → box**: `--mib` MiB into the box's sink, one stream (the RTMP router's
//!   direction);
//! - **box → cloud**: `--mib` MiB out of the box's source, one stream (recordings, HTTP-FLV);
//! - **three streams**: three cloud → box streams at once, each a third of `--mib`: each
//!   one's rate, as a share of direct TCP's (fair would be a third each);
//! - the path the manager's end of the link measured (round trip, rate, in-flight cap) and
//!   whether it moved to the agent's tunnel filter.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use verge_testkit::edge::open_mosquitto;
use verge_testkit::link::LinkedBox;
use verge_testkit::measure::peak_kib;
use verge_testkit::{ANY_PORT, Proc, TempDir, bin, listener, wait_for};

use crate::{matches_pattern, pattern, push, push_on, serve_sink};

/// `RTT_MS,MBIT`.
pub fn parse(value: &str) -> (Duration, u32) {
    let parsed = value.split_once(',').and_then(|(rtt, mbit)| {
        Some((
            Duration::from_millis(rtt.trim().parse().ok()?),
            mbit.trim().parse().ok()?,
        ))
    });
    parsed.unwrap_or_else(|| {
        eprintln!("--link RTT_MS,MBIT (e.g. --link 100,100), not {value:?}");
        std::process::exit(2);
    })
}

/// A source: each connection names a byte count (u64, big-endian) and gets that many bytes of
/// the pattern, then the end.
fn serve_source(server: TcpListener) -> SocketAddr {
    let addr = server.local_addr().unwrap();
    let data = pattern();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = server.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut want = [0u8; 8];
                if socket.read_exact(&mut want).await.is_err() {
                    return;
                }
                let (want, mut sent) = (u64::from_be_bytes(want), 0u64);
                while sent < want {
                    let n = (want - sent).min(data.len() as u64) as usize;
                    if socket.write_all(&data[..n]).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

/// Reads `bytes` from the source behind `socket`, checking each; the seconds it took.
async fn pull(mut socket: TcpStream, bytes: u64) -> Result<f64, String> {
    let expected = pattern();
    let started = Instant::now();
    socket
        .write_all(&bytes.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match socket.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if !matches_pattern(&expected, got, &buf[..n]) {
                    return Err(format!("a wrong byte after {got}"));
                }
                got += n as u64;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    match got == bytes {
        true => Ok(started.elapsed().as_secs_f64()),
        false => Err(format!("got {got} of {bytes} bytes")),
    }
}

/// A std socket made in the box, for tokio.
fn tokio_stream(socket: std::net::TcpStream) -> TcpStream {
    socket.set_nonblocking(true).unwrap();
    TcpStream::from_std(socket).unwrap()
}

fn tokio_listener(socket: std::net::TcpListener) -> TcpListener {
    socket.set_nonblocking(true).unwrap();
    TcpListener::from_std(socket).unwrap()
}

/// The numbers of one path.
struct Row {
    name: String,
    down: Result<f64, String>,
    up: Result<f64, String>,
    /// Each of three cloud → box streams' rate.
    three: Result<Vec<f64>, String>,
    path: String,
    peak: String,
}

/// Three pushes at once; each one's rate in MB/s.
async fn three(addr: SocketAddr, bytes: u64) -> Result<Vec<f64>, String> {
    let share = bytes / 3;
    let pushes: Vec<_> = (0..3).map(|_| tokio::spawn(push(addr, share))).collect();
    let mut rates = Vec::new();
    for p in pushes {
        let secs = p.await.map_err(|e| e.to_string())??;
        rates.push(share as f64 / secs / 1e6);
    }
    Ok(rates)
}

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The manager's account of its link to the box, from `GET /api/nodes/{agent}`.
fn path_of(http: SocketAddr) -> String {
    let Ok(node) = verge_testkit::get(http, "/api/agents/edge-1") else {
        return "-".into();
    };
    let t = &node.json()["tunnel"];
    if t.is_null() {
        return "-".into();
    }
    format!(
        "rtt {:.0} ms (min {:.0}), {:.1} MB/s, in flight ≤ {} KiB of {} KiB{}",
        t["rtt_us"].as_f64().unwrap_or(0.0) / 1000.0,
        t["min_rtt_us"].as_f64().unwrap_or(0.0) / 1000.0,
        t["delivery_rate"].as_f64().unwrap_or(0.0) / 1e6,
        t["in_flight_cap"].as_u64().unwrap_or(0) / 1024,
        t["max_in_flight"].as_u64().unwrap_or(0) / 1024,
        if t["wide"] == true {
            ", on the tunnel filter"
        } else {
            ""
        },
    )
}

pub fn run(rtt: Duration, mbit: u32, mib: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let linked = LinkedBox::new(rtt, mbit);
    let dir = TempDir::new("tunnel-bench-link");
    let bytes = mib << 20;
    let limit = Duration::from_secs(30 + 3 * bytes * 8 / (u64::from(mbit) * 100_000));
    // The box's targets, on its loopback.
    let (box_sink, box_source) = rt.block_on(async {
        let sink = tokio_listener(linked.bind("127.0.0.1:0".parse().unwrap()));
        let source = tokio_listener(linked.bind("127.0.0.1:0".parse().unwrap()));
        (serve_sink(sink), serve_source(source))
    });
    let mut rows = Vec::new();

    // Direct TCP from the box to a sink and a source here, through the same link.
    rt.block_on(async {
        let sink = serve_sink(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let source = serve_source(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let (to_sink, to_source) = (linked.delay_to(sink).await, linked.delay_to(source).await);
        let up = within(limit, async {
            let socket = tokio_stream(linked.connect(to_sink).map_err(|e| e.to_string())?);
            push_on(socket, bytes).await
        })
        .await;
        let down = within(limit, async {
            let socket = tokio_stream(linked.connect(to_source).map_err(|e| e.to_string())?);
            pull(socket, bytes).await
        })
        .await;
        let three_down = within(limit, async {
            let share = bytes / 3;
            let pulls: Vec<_> = (0..3)
                .map(|_| {
                    let socket = linked.connect(to_source).map(tokio_stream);
                    tokio::spawn(
                        async move { pull(socket.map_err(|e| e.to_string())?, share).await },
                    )
                })
                .collect();
            let mut rates = Vec::new();
            for p in pulls {
                rates.push(share as f64 / p.await.map_err(|e| e.to_string())?? / 1e6);
            }
            Ok(rates)
        })
        .await;
        rows.push(Row {
            name: "direct TCP".into(),
            down: down.map(|s| bytes as f64 / s / 1e6),
            up: up.map(|s| bytes as f64 / s / 1e6),
            three: three_down,
            path: "-".into(),
            peak: "-".into(),
        });
    });

    let mut brokers: Vec<(&str, Option<(Proc, SocketAddr)>)> = vec![("embedded rumqttd", None)];
    if let Some(mosquitto) = open_mosquitto(&dir) {
        brokers.push(("mosquitto", Some(mosquitto)));
    }
    for (label, broker) in &brokers {
        let external = broker.as_ref().map(|(_, addr)| *addr);
        let tag = if external.is_some() {
            "mosquitto"
        } else {
            "embedded"
        };
        let (manager, agent, http, forward_sink, forward_source) =
            start_linked_pair(&rt, &dir, &linked, tag, external, box_sink, box_source);
        let (down, up, three_down) = rt.block_on(async {
            // Warm the link up: the first stream moves it to the agent's tunnel filter.
            let _ = within(limit, push(forward_sink, 1 << 20)).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let down = within(limit, push(forward_sink, bytes)).await;
            let up = within(limit, async {
                let socket = TcpStream::connect(forward_source)
                    .await
                    .map_err(|e| e.to_string())?;
                pull(socket, bytes).await
            })
            .await;
            let three_down = within(limit, three(forward_sink, bytes)).await;
            (down, up, three_down)
        });
        let peak = peak_kib(manager.pid())
            .zip(peak_kib(agent.pid()))
            .map(|(m, a)| format!("{:.0} / {:.0}", m as f64 / 1024.0, a as f64 / 1024.0))
            .unwrap_or_else(|| "-".into());
        rows.push(Row {
            name: format!("tunnel, {label}"),
            down: down.map(|s| bytes as f64 / s / 1e6),
            up: up.map(|s| bytes as f64 / s / 1e6),
            three: three_down,
            path: path_of(http),
            peak,
        });
    }

    println!(
        "\nlink: {} ms round trip, {mbit} Mbit/s each way (tbf + a delay proxy); {mib} MiB per \
         transfer, every byte checked; sealing on\n",
        rtt.as_millis()
    );
    println!(
        "| path | cloud → box MB/s | × direct | box → cloud MB/s | × direct | 3 streams cloud → box MB/s each (share of direct) | manager's path | peak RSS manager / agent MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (direct_down, direct_up) = (rows[0].down.clone().ok(), rows[0].up.clone().ok());
    let show = |r: &Result<f64, String>| match r {
        Ok(v) => format!("{v:.2}"),
        Err(e) => format!("failed: {e}"),
    };
    let ratio = |r: &Result<f64, String>, d: Option<f64>| match (r, d) {
        (Ok(v), Some(d)) if d > 0.0 => format!("{:.2}", v / d),
        _ => "-".into(),
    };
    for row in &rows {
        let three = match &row.three {
            Ok(rates) => rates
                .iter()
                .map(|r| match direct_down {
                    Some(d) if d > 0.0 => format!("{r:.2} ({:.2})", r / d),
                    _ => format!("{r:.2}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("failed: {e}"),
        };
        println!(
            "| {} | {} | {} | {} | {} | {three} | {} | {} |",
            row.name,
            show(&row.down),
            ratio(&row.down, direct_down),
            show(&row.up),
            ratio(&row.up, direct_up),
            row.path,
            row.peak,
        );
    }
}

/// A manager here and an agent in the box whose MQTT connection crosses the link, with
/// forwards to the box's sink (`forward-0`) and source (`forward-1`).
fn start_linked_pair(
    rt: &tokio::runtime::Runtime,
    dir: &TempDir,
    linked: &LinkedBox,
    label: &str,
    broker: Option<SocketAddr>,
    sink: SocketAddr,
    source: SocketAddr,
) -> (Proc, Proc, SocketAddr, SocketAddr, SocketAddr) {
    let broker_toml = match broker {
        Some(addr) => format!("[mqtt]\nurl = \"mqtt://{addr}\"\n"),
        None => format!("[broker]\nlisten = \"{ANY_PORT}\"\n"),
    };
    let manager_cfg = dir.write(
        &format!("{label}-manager.toml"),
        &format!(
            "[http]\nlisten = \"{ANY_PORT}\"\n{broker_toml}[keys]\nfile = \"{}\"\n\
             [[agents]]\nid = \"edge-1\"\nsecret = \"bench-secret\"\n\
             [[tunnel.forward]]\nlisten = \"{ANY_PORT}\"\nagent = \"edge-1\"\ntarget = \"{sink}\"\n\
             [[tunnel.forward]]\nlisten = \"{ANY_PORT}\"\nagent = \"edge-1\"\ntarget = \"{source}\"\n",
            dir.path().join(format!("{label}-keys.json")).display()
        ),
    );
    let (manager, bound) = Proc::spawn_ready_with_env(
        &format!("{label}-manager"),
        &bin("verge-manager"),
        &["--config", manager_cfg.to_str().unwrap()],
        dir.path(),
        &[("RUST_LOG", "info,rumqttd=warn")],
    );
    let mqtt = broker.unwrap_or_else(|| listener(&bound, "mqtt"));
    let across = rt.block_on(linked.delay_to(mqtt));
    let agent_cfg = dir.write(
        &format!("{label}-agent.toml"),
        &format!(
            "id = \"edge-1\"\nsecret = \"bench-secret\"\n[mqtt]\nurl = \"mqtt://{across}\"\n\
             [rtmp]\nlisten = \"{ANY_PORT}\"\n[http]\nlisten = \"{ANY_PORT}\"\n[hls]\nlisten = \"{ANY_PORT}\"\n\
             [tunnel]\nallow = [\"{sink}\", \"{source}\"]\n"
        ),
    );
    let (agent, _) = linked.spawn_ready(
        &format!("{label}-agent"),
        &bin("verge-agent"),
        &["--config", agent_cfg.to_str().unwrap()],
        dir.path(),
    );
    let http = listener(&bound, "http");
    let online = wait_for(Duration::from_secs(30), || {
        let nodes = verge_testkit::get(http, "/api/nodes/").ok()?.json();
        (nodes[0]["online"] == true).then_some(())
    });
    assert!(online.is_some(), "agent not online:\n{}", agent.log_text());
    (
        manager,
        agent,
        http,
        listener(&bound, "forward-0"),
        listener(&bound, "forward-1"),
    )
}
