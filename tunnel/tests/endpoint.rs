//! Two tunnel endpoints (manager and agent) joined by an in-memory relay that stands in for the
//! broker and can lose everything while the "link" is down; real TCP on the agent's side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ring::digest::{SHA256, digest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use verge_tunnel::frame::ResetCode;
use verge_tunnel::mux::Side;
use verge_tunnel::{Endpoint, EndpointConfig, Incoming, Limits, TunnelError};

const WINDOW: u32 = 256 * 1024;

/// Both ends alike: 256 KiB windows, 128 streams, 4 MiB in flight, resume within 30 s.
fn config(side: Side, secret: &str) -> EndpointConfig {
    let limits = Limits {
        max_in_flight: 4 << 20,
        ..Limits::agent(verge_tunnel::Sizes {
            window_kib: WINDOW / 1024,
            max_window_kib: WINDOW / 1024,
            max_streams: 128,
            resume_secs: 30,
        })
    };
    EndpointConfig::link(side, secret, "manager-1", limits)
}

/// The relay between the two endpoints: counts what the manager sends, drops everything while
/// the link is down, and lets a test inject packets towards the agent.
struct Link {
    up: watch::Sender<bool>,
    connected: Arc<AtomicBool>,
    manager_bytes: Arc<AtomicU64>,
    inject: mpsc::Sender<Vec<u8>>,
    taps: mpsc::Receiver<Vec<u8>>,
}

impl Link {
    fn set_up(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        let _ = self.up.send(up);
    }
}

struct Pair {
    manager: Endpoint,
    agent_incoming: mpsc::Receiver<Incoming>,
    agent: Endpoint,
    link: Link,
}

fn pair(agent_secret: &str) -> Pair {
    let (up, link_rx) = watch::channel(true);
    let connected = Arc::new(AtomicBool::new(true));
    let manager_bytes = Arc::new(AtomicU64::new(0));
    let (m_out, mut m_out_rx) = mpsc::channel::<Vec<u8>>(64);
    let (a_out, mut a_out_rx) = mpsc::channel::<Vec<u8>>(64);
    let (m_in_tx, m_in) = mpsc::channel::<Vec<u8>>(64);
    let (a_in_tx, a_in) = mpsc::channel::<Vec<u8>>(64);
    let (manager, _manager_incoming) =
        Endpoint::spawn(config(Side::Manager, "s1"), m_in, m_out, link_rx.clone()).unwrap();
    let (agent, agent_incoming) =
        Endpoint::spawn(config(Side::Agent, agent_secret), a_in, a_out, link_rx).unwrap();
    let (tap_tx, taps) = mpsc::channel(4096);
    {
        let (connected, counted, a_in_tx) =
            (connected.clone(), manager_bytes.clone(), a_in_tx.clone());
        tokio::spawn(async move {
            while let Some(p) = m_out_rx.recv().await {
                counted.fetch_add(p.len() as u64, Ordering::Relaxed);
                let _ = tap_tx.try_send(p.clone());
                if connected.load(Ordering::SeqCst) && a_in_tx.send(p).await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let connected = connected.clone();
        tokio::spawn(async move {
            while let Some(p) = a_out_rx.recv().await {
                if connected.load(Ordering::SeqCst) && m_in_tx.send(p).await.is_err() {
                    return;
                }
            }
        });
    }
    Pair {
        manager,
        agent_incoming,
        agent,
        link: Link {
            up,
            connected,
            manager_bytes,
            inject: a_in_tx,
            taps,
        },
    }
}

/// The agent's side: accepts every stream to the echo server's address, refuses others.
fn serve_agent(mut incoming: mpsc::Receiver<Incoming>, allowed: String) {
    tokio::spawn(async move {
        while let Some(request) = incoming.recv().await {
            if request.target != allowed {
                let why = format!("{} is not in [tunnel] allow", request.target);
                request.refuse(ResetCode::Refused, &why).await;
                continue;
            }
            let allowed = allowed.clone();
            tokio::spawn(async move {
                let Ok(socket) = TcpStream::connect(&allowed).await else {
                    return request.refuse(ResetCode::Unreachable, "dial failed").await;
                };
                if let Ok(stream) = request.accept().await {
                    let _ = stream.bridge(socket).await;
                }
            });
        }
    });
}

/// A TCP echo server on loopback; returns its address.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` through a stream to the echo server and returns what came back.
async fn echo_through(
    manager: &Endpoint,
    target: &str,
    data: Vec<u8>,
) -> Result<Vec<u8>, TunnelError> {
    let stream = manager.open(target).await?;
    let (local, mut remote) = tokio::io::duplex(64 * 1024);
    let bridge = tokio::spawn(stream.bridge(local));
    let (mut r, mut w) = tokio::io::split(&mut remote);
    // A refused or reset stream closes the local side: then the bridge's result says why.
    let write = async {
        if w.write_all(&data).await.is_ok() {
            let _ = w.shutdown().await;
        }
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let _ = tokio::join!(write, read);
    bridge.await.unwrap()?;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_mib_arrive_intact_through_one_stream() {
    let p = pair("s1");
    let echo = echo_server().await;
    serve_agent(p.agent_incoming, echo.clone());
    let data = payload(32 << 20, 7);
    let back = tokio::time::timeout(
        Duration::from_secs(120),
        echo_through(&p.manager, &echo, data.clone()),
    )
    .await
    .expect("transfer in time")
    .expect("transfer");
    assert_eq!(back.len(), data.len());
    assert_eq!(
        digest(&SHA256, &back).as_ref(),
        digest(&SHA256, &data).as_ref()
    );
    let stats = p.manager.stats().await.unwrap();
    assert_eq!(stats.packets_refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_streams_all_complete_intact() {
    let p = pair("s1");
    let echo = echo_server().await;
    serve_agent(p.agent_incoming, echo.clone());
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let (manager, echo) = (p.manager.clone(), echo.clone());
        tasks.push(tokio::spawn(async move {
            let data = payload(200_000 + i as usize * 1000, i + 1);
            let back = echo_through(&manager, &echo, data.clone()).await.unwrap();
            assert!(back == data, "stream {i} corrupted");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("streams in time")
            .unwrap();
    }
    // Every stream was forgotten once both ends finished.
    let stats = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = p.manager.stats().await.unwrap();
            if s.open_streams == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("streams closed");
    assert_eq!(stats.packets_refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_holds_back_only_its_own_stream() {
    let p = pair("s1");
    let echo = echo_server().await;
    serve_agent(p.agent_incoming, echo.clone());
    // A stream whose local side writes 64 MiB but never reads the echo back.
    let stalled = p.manager.open(&echo).await.unwrap();
    let (local, mut remote) = tokio::io::duplex(64 * 1024);
    tokio::spawn(stalled.bridge(local));
    let data = payload(64 << 20, 3);
    let writer = tokio::spawn(async move {
        let _ = remote.write_all(&data).await;
        remote
    });
    // Wait until nothing more crosses: the echo's reply fills the manager's window, the agent
    // stops reading the echo server, which stops reading the agent's socket, whose window then
    // closes. (How much crossed first is mostly the kernel's loopback socket buffers.)
    let (mut crossed, mut still) = (0, 0);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = p.link.manager_bytes.load(Ordering::Relaxed);
        still = if now == crossed && now > 1 << 20 {
            still + 1
        } else {
            0
        };
        crossed = now;
        if still == 3 {
            break;
        }
    }
    assert_eq!(
        still, 3,
        "the stalled stream never stopped: {crossed} bytes crossed"
    );
    println!("stalled stream: {crossed} bytes crossed the link before it stopped");
    assert!(
        !writer.is_finished(),
        "the stalled writer was never held back"
    );
    // What the tunnel holds for it is bounded by its buffers, not by the 64 MiB: a send
    // buffer and a receive window each way.
    let bound = 2 * (2 * WINDOW as usize);
    for (side, endpoint) in [("manager", &p.manager), ("agent", &p.agent)] {
        let held = endpoint.stats().await.unwrap().buffered_bytes;
        println!("{side} endpoint holds {held} bytes for the stalled stream");
        assert!(
            held <= bound,
            "{side} holds {held} bytes, more than {bound}"
        );
    }
    // Another stream still flows.
    let data = payload(4 << 20, 9);
    let back = tokio::time::timeout(
        Duration::from_secs(60),
        echo_through(&p.manager, &echo, data.clone()),
    )
    .await
    .expect("the other stream in time")
    .unwrap();
    assert!(back == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_outage_within_the_resume_time_loses_nothing() {
    let p = pair("s1");
    let echo = echo_server().await;
    serve_agent(p.agent_incoming, echo.clone());
    let data = payload(8 << 20, 11);
    let manager = p.manager.clone();
    let (target, sent) = (echo.clone(), data.clone());
    let transfer = tokio::spawn(async move { echo_through(&manager, &target, sent).await });
    // Three outages mid-transfer; everything in flight meanwhile is lost by the "broker".
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        p.link.set_up(false);
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.link.set_up(true);
    }
    let back = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .expect("transfer in time")
        .unwrap()
        .expect("transfer");
    assert!(back == data, "bytes lost or duplicated across the outages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_targets_and_foreign_packets_are_refused_with_reasons() {
    let mut p = pair("s1");
    let echo = echo_server().await;
    serve_agent(p.agent_incoming, echo.clone());
    let err = echo_through(&p.manager, "10.0.0.1:22", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        TunnelError::Reset {
            code: ResetCode::Refused,
            reason: "10.0.0.1:22 is not in [tunnel] allow".into()
        }
    );
    // Replayed captures and garbage: refused, counted, and nothing else changes.
    let captured: Vec<Vec<u8>> = std::iter::from_fn(|| p.link.taps.try_recv().ok()).collect();
    assert!(!captured.is_empty());
    for packet in &captured {
        p.link.inject.send(packet.clone()).await.unwrap();
        p.link
            .inject
            .send(payload(200, packet.len() as u64))
            .await
            .unwrap();
    }
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = p.agent.stats().await.unwrap();
            if s.packets_refused >= 2 * captured.len() as u64 {
                return s.packets_refused;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every injected packet refused");
    assert_eq!(refused, 2 * captured.len() as u64);
    let back = echo_through(&p.manager, &echo, b"still works".to_vec())
        .await
        .unwrap();
    assert_eq!(back, b"still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_another_secret_opens_nothing() {
    let p = pair("not-s1");
    let echo = echo_server().await;
    serve_agent(p.agent_incoming, echo.clone());
    let result = tokio::time::timeout(
        Duration::from_secs(2),
        echo_through(&p.manager, &echo, b"secret".to_vec()),
    )
    .await;
    assert!(
        result.is_err(),
        "a stream worked across different secrets: {result:?}"
    );
    let stats = p.agent.stats().await.unwrap();
    assert!(
        stats.packets_refused > 0 && stats.open_streams == 0,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_stream_is_established_only_when_the_agent_accepts_and_refusals_say_why() {
    let mut p = pair("s1");
    let patience = Duration::from_millis(300);

    // The agent holds the request (dialling, say): the opener hears nothing meanwhile.
    let mut held = p.manager.open("127.0.0.1:1").await.unwrap();
    let request = tokio::time::timeout(Duration::from_secs(5), p.agent_incoming.recv())
        .await
        .expect("the open arrives")
        .unwrap();
    assert!(
        tokio::time::timeout(patience, held.established())
            .await
            .is_err(),
        "established before the agent accepted"
    );
    let accepted = request.accept().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held.established())
        .await
        .expect("the acceptance arrives")
        .expect("accepted");
    drop(accepted);

    // Refused, with the agent's code and reason.
    let mut refused = p.manager.open("10.0.0.1:22").await.unwrap();
    let request = p.agent_incoming.recv().await.unwrap();
    request
        .refuse(ResetCode::Refused, "10.0.0.1:22 is not in [tunnel] allow")
        .await;
    let refusal = tokio::time::timeout(Duration::from_secs(5), refused.established())
        .await
        .expect("the refusal arrives");
    assert_eq!(
        refusal,
        Err(TunnelError::Reset {
            code: ResetCode::Refused,
            reason: "10.0.0.1:22 is not in [tunnel] allow".into()
        })
    );

    // Nobody answers while the link is down: the caller's bound is what ends the wait.
    p.link.set_up(false);
    let mut lost = p.manager.open("127.0.0.1:2").await.unwrap();
    assert!(
        tokio::time::timeout(patience, lost.established())
            .await
            .is_err()
    );
}
