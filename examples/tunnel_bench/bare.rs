//! The broker path with no tunnel on it: the ceiling the tunnel's loopback numbers are read
//! against. Two MQTT clients (rumqttc, as the manager and the agent use) on the same broker:
//!
//! - **throughput**: one client publishes `bytes` at QoS 0 in payloads of a sealed tunnel
//!   packet's size to the other's tunnel filter (`{p}/v1/a/{id}/tun/+`, the log the tunnel's
//!   manager → agent direction uses), as fast as its client takes them; the other counts what
//!   arrives. The rate is the bytes that arrived over the time from the first publish to the
//!   last arrival; QoS 0 has no flow control, so what the broker dropped is reported too.
//! - **round trip**: 64 bytes published to the other client, which publishes them back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use verge_testkit::measure::percentile;

/// A sealed tunnel packet of a full 32 KiB of frames.
const PACKET: usize = 32 * 1024 + 40;

pub struct Bare {
    /// MB/s that arrived, and the share of the bytes the broker dropped.
    pub rate: Result<(f64, f64), String>,
    /// Round-trip p50 and p99, µs.
    pub rtt: Result<(f64, f64), String>,
    /// CPU µs per MB that arrived, of the broker and both clients.
    pub cpu_us_per_mb: Option<f64>,
}

/// Two clients' credentials (id, password) on `broker` (ids must be enrolled on an embedded
/// broker; anything goes on the bench's mosquitto). `cpu` reads the CPU ticks to charge the
/// throughput with.
pub async fn measure(
    broker: SocketAddr,
    a: (&str, &str),
    b: (&str, &str),
    bytes: u64,
    round_trips: usize,
    cpu: impl Fn() -> Option<u64>,
) -> Bare {
    let before = cpu();
    let rate = tokio::time::timeout(Duration::from_secs(120), throughput(broker, a, b, bytes))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    let after = cpu();
    // Charged for the bytes that arrived.
    let delivered = rate.as_ref().map_or(0.0, |(_, lost)| 1.0 - lost);
    let cpu_us_per_mb = crate::cpu_per_mb(before, after, bytes as f64 * delivered);
    let rtt = tokio::time::timeout(
        Duration::from_secs(120),
        ping_pong(broker, a, b, round_trips),
    )
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    Bare {
        rate,
        rtt,
        cpu_us_per_mb,
    }
}

/// A connected client, its event loop run by a task that forwards incoming payloads.
async fn client(
    broker: SocketAddr,
    (id, secret): (&str, &str),
    filter: &str,
) -> Result<(AsyncClient, mpsc::Receiver<(String, bytes::Bytes)>), String> {
    let mut opts = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    opts.set_credentials(id, secret);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events): (AsyncClient, EventLoop) = AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::channel(4096);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let filter = filter.to_string();
    let subscriber = client.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if subscriber
                        .subscribe(filter.as_str(), QoS::AtMostOnce)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = p.topic.clone();
                    if tx.send((topic, p.payload)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .map_err(|_| format!("{id}: no SUBACK in 10 s"))?
        .map_err(|_| format!("{id}: the connection failed"))?;
    Ok((client, rx))
}

fn tunnel_filter(id: &str) -> String {
    format!("verge/v1/a/{id}/tun/+")
}

fn tunnel_topic(id: &str) -> String {
    format!("verge/v1/a/{id}/tun/bench")
}

async fn throughput(
    broker: SocketAddr,
    a: (&str, &str),
    b: (&str, &str),
    bytes: u64,
) -> Result<(f64, f64), String> {
    let (publisher, _) = client(broker, a, &tunnel_filter(a.0)).await?;
    let (_subscriber, mut arrivals) = client(broker, b, &tunnel_filter(b.0)).await?;
    let topic = tunnel_topic(b.0);
    let packets = bytes.div_ceil(PACKET as u64);
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let payload = vec![0x5au8; PACKET];
        for _ in 0..packets {
            if publisher
                .publish(topic.as_str(), QoS::AtMostOnce, false, payload.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (mut got, mut last) = (0u64, started);
    let total = packets * PACKET as u64;
    while got < total {
        // Quiet for a second after the sender finished: the rest was dropped.
        match tokio::time::timeout(Duration::from_secs(1), arrivals.recv()).await {
            Ok(Some((_, payload))) => {
                got += payload.len() as u64;
                last = Instant::now();
            }
            Ok(None) => break,
            Err(_) if sender.is_finished() => break,
            Err(_) => {}
        }
    }
    let secs = last.duration_since(started).as_secs_f64().max(1e-6);
    Ok((got as f64 / secs / 1e6, 1.0 - got as f64 / total as f64))
}

async fn ping_pong(
    broker: SocketAddr,
    a: (&str, &str),
    b: (&str, &str),
    count: usize,
) -> Result<(f64, f64), String> {
    let (pinger, mut pongs) = client(broker, a, &tunnel_filter(a.0)).await?;
    let (ponger, mut pings) = client(broker, b, &tunnel_filter(b.0)).await?;
    let back = tunnel_topic(a.0);
    tokio::spawn(async move {
        while let Some((_, payload)) = pings.recv().await {
            if ponger
                .publish(back.as_str(), QoS::AtMostOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let to = tunnel_topic(b.0);
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        pinger
            .publish(to.as_str(), QoS::AtMostOnce, false, vec![7u8; 64])
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(5), pongs.recv()).await {
            Ok(Some(_)) => times.push(t.elapsed().as_secs_f64() * 1e6),
            _ => return Err("a ping was not answered in 5 s".into()),
        }
    }
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}
