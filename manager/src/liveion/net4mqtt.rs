//! liveion nodes behind NAT, as live777 runs them: a liveion with `[net4mqtt]` on the
//! manager's broker announces itself on net4mqtt's topics, and the manager reaches its HTTP API
//! through net4mqtt's own tunnel (live777's `libs/net4mqtt`, commit 42205144).
//!
//! Topics (`{p}` = `[net4mqtt] prefix`, `{me}` = `[net4mqtt] alias`, everything QoS 0):
//! - `{p}/{node}/-/v/-`: presence, retained; `{"online":true}` while up, the will `{}` when
//!   gone (liveman's rule: more than 5 bytes is online).
//! - `{p}/{node}/-/x/streams`: the node's whole stream list (`GET /api/streams/`'s JSON) on
//!   each change; not retained, so the manager also asks once over the tunnel.
//! - `{p}/{node}/{me}/i/tcp/{src}/-` and `…/o/tcp/{src}/-`: one TCP connection to the node's
//!   HTTP listener per `{src}`, raw bytes each way, an empty message closing it. No handshake,
//!   no flow control, no error: a connection the node could not make is silence, so every
//!   call has its deadline (`web_client`).
//!
//! What net4mqtt cannot promise, and what Verge bounds: QoS 0 loses bytes when the broker
//! drops (an HTTP exchange then times out, and is retried by the next poll); a reader slower
//! than the node's writes has no back-pressure, so each connection's incoming queue is bounded
//! ([`QUEUE`] messages) and a connection that overflows it is closed; the node's MQTT client
//! takes messages of at most 10240 bytes, so requests go in [`CHUNK`]-byte pieces; a node with
//! so many streams that its snapshot passes that size never sends it (a liveion bug), so the
//! manager also polls its list over the tunnel every [`POLL_EVERY`]; a `{src}` the node saw
//! before is dropped by it, so each connection's is new ([`Dial`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Liveion, Target, api, monitor};
use crate::config::{Net4mqttConfig, NodeMode};
use crate::web_client::{Dialer, Dialing, Io, Url};

/// Largest piece of a request in one message (the node's MQTT client refuses more than
/// 10240 bytes, topic included).
const CHUNK: usize = 4096;
/// Messages one connection may have waiting for its reader.
const QUEUE: usize = 256;
/// The bytes hyper and the tunnel's pump hold between them, each way.
const PIPE: usize = 64 * 1024;
/// A node's list is asked for over the tunnel this often (besides its snapshots).
const POLL_EVERY: Duration = Duration::from_secs(30);

/// What the manager holds of net4mqtt: its MQTT client, and the connections open through it.
pub struct Net4mqtt {
    client: AsyncClient,
    cfg: Net4mqttConfig,
    /// Incoming topic (`…/o/tcp/{src}/-`) → the connection's queue.
    routes: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
    /// Makes every `{src}` new: this process's nonce and a counter.
    nonce: String,
    next: AtomicU64,
    /// Each discovered node's follower task.
    followers: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// A parsed net4mqtt topic the manager listens to.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    Presence { node: &'a str },
    Streams { node: &'a str },
    Data { topic: &'a str },
    Other,
}

impl Net4mqtt {
    pub fn new(client: AsyncClient, cfg: Net4mqttConfig) -> Arc<Self> {
        let nonce: String = verge_protocol::secret::random_secret()
            .chars()
            .take(8)
            .collect();
        Arc::new(Self {
            client,
            cfg,
            routes: Mutex::new(HashMap::new()),
            nonce,
            next: AtomicU64::new(0),
            followers: Mutex::new(HashMap::new()),
        })
    }

    /// The filters to subscribe to after every connect.
    pub fn filters(&self) -> [String; 3] {
        let (p, me) = (&self.cfg.prefix, &self.cfg.alias);
        [
            format!("{p}/+/+/v/#"),
            format!("{p}/+/+/x/#"),
            format!("{p}/+/{me}/o/#"),
        ]
    }

    pub async fn subscribe(&self) {
        for filter in self.filters() {
            if let Err(e) = self.client.subscribe(filter, QoS::AtMostOnce).await {
                tracing::warn!("net4mqtt: subscribing: {e}");
            }
        }
    }

    fn parse<'a>(&self, topic: &'a str) -> Message<'a> {
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            [p, node, _, "v", ..] if *p == self.cfg.prefix && *node != "-" => {
                Message::Presence { node }
            }
            [p, node, _, "x", "streams"] if *p == self.cfg.prefix && *node != "-" => {
                Message::Streams { node }
            }
            [p, _, me, "o", _, _, _] if *p == self.cfg.prefix && *me == self.cfg.alias => {
                Message::Data { topic }
            }
            _ => Message::Other,
        }
    }

    /// One message from the broker.
    pub fn handle(self: &Arc<Self>, liveion: &Liveion, topic: &str, payload: &Bytes) {
        match self.parse(topic) {
            Message::Presence { node } => {
                if payload.len() > 5 {
                    self.online(liveion, node);
                } else {
                    self.offline(liveion, node);
                }
            }
            Message::Streams { node } => {
                if self.is_ours(node) {
                    match serde_json::from_slice::<Vec<api::Stream>>(payload) {
                        Ok(streams) => liveion.answered(node, streams, None, None),
                        Err(e) => {
                            tracing::warn!(%node, "net4mqtt: a snapshot that is not a list of streams: {e}")
                        }
                    }
                }
            }
            Message::Data { topic } => {
                let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(queue) = routes.get(topic)
                    && queue.try_send(payload.clone()).is_err()
                {
                    // Full (its reader fell behind: net4mqtt has no back-pressure) or gone.
                    routes.remove(topic);
                }
            }
            Message::Other => {}
        }
    }

    fn is_ours(&self, node: &str) -> bool {
        self.followers.lock().is_ok_and(|f| f.contains_key(node))
    }

    fn online(self: &Arc<Self>, liveion: &Liveion, node: &str) {
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        if followers.get(node).is_some_and(|t| !t.is_finished()) {
            return;
        }
        if verge_protocol::id::validate(node).is_err() {
            tracing::warn!(%node, "net4mqtt: a node id Verge cannot route sessions to, ignored");
            return;
        }
        if !followers.contains_key(node) && followers.len() >= self.cfg.max_nodes {
            tracing::warn!(%node, max = self.cfg.max_nodes, "net4mqtt: [net4mqtt] max_nodes reached, node ignored");
            return;
        }
        let Ok(url) = Url::parse(&format!("http://{node}.{}", self.cfg.domain)) else {
            return;
        };
        let target = Target {
            alias: node.to_string(),
            url,
            token: String::new(),
            via: Some(Arc::new(Dial {
                net: self.clone(),
                node: node.to_string(),
            })),
        };
        if !liveion.discovered(target.clone(), "net4mqtt") {
            tracing::warn!(%node, "net4mqtt: a node of [[nodes]] has this alias; the configured one is kept");
            return;
        }
        tracing::info!(%node, "net4mqtt: liveion node announced itself");
        let task = tokio::spawn(monitor::follow(
            liveion.clone(),
            target,
            NodeMode::Poll,
            POLL_EVERY,
        ));
        followers.insert(node.to_string(), task);
    }

    fn offline(&self, liveion: &Liveion, node: &str) {
        let followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = followers.get(node) {
            task.abort();
            // The entry stays (aborted) so the node keeps its place and shows why it stopped.
            liveion.failed(node, "left the broker (its net4mqtt will)".into());
        }
        drop(followers);
    }

    /// A new connection to `node`'s HTTP listener.
    fn connect(self: &Arc<Self>, node: &str) -> std::io::Result<Box<dyn Io>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let src = format!("verge-{}-{n}", self.nonce);
        let (p, me) = (&self.cfg.prefix, &self.cfg.alias);
        let out = format!("{p}/{node}/{me}/i/tcp/{src}/-");
        let back = format!("{p}/{node}/{me}/o/tcp/{src}/-");
        let (queue, incoming) = mpsc::channel(QUEUE);
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(back.clone(), queue);
        let (ours, theirs) = tokio::io::duplex(PIPE);
        tokio::spawn(pump(self.clone(), theirs, out, back, incoming));
        Ok(Box::new(ours))
    }
}

/// Takes net4mqtt's messages from `link` until it ends.
pub async fn run(net: Arc<Net4mqtt>, mut link: verge_mqtt::link::Link, liveion: Liveion) {
    while let Some(event) = link.events.recv().await {
        match event {
            verge_mqtt::link::LinkEvent::Connected { .. } => net.subscribe().await,
            verge_mqtt::link::LinkEvent::Message { topic, payload } => {
                net.handle(&liveion, &topic, &payload);
            }
            verge_mqtt::link::LinkEvent::Disconnected { reason, .. } => {
                tracing::warn!("net4mqtt: MQTT session down: {reason}");
            }
        }
    }
}

/// Moves one connection's bytes between hyper's end of the pipe and the broker.
async fn pump(
    net: Arc<Net4mqtt>,
    mut pipe: tokio::io::DuplexStream,
    out: String,
    back: String,
    mut incoming: mpsc::Receiver<Bytes>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                // hyper's end is gone: the exchange is over (one connection per call), and a
                // node that keeps the connection alive must not keep this pump and its route.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if net.client.publish(out.as_str(), QoS::AtMostOnce, false, chunk).await.is_err() {
                        break;
                    }
                }
            },
            message = incoming.recv() => match message {
                // The node closed, or the queue overflowed (see `handle`).
                None => break,
                Some(bytes) if bytes.is_empty() => break,
                Some(bytes) => {
                    if pipe.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    net.routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&back);
    // An empty message closes the node's end (its TCP connection to its own listener).
    let _ = net
        .client
        .publish(out.as_str(), QoS::AtMostOnce, false, Bytes::new())
        .await;
    let _ = pipe.shutdown().await;
}

/// Dials one node through net4mqtt.
struct Dial {
    net: Arc<Net4mqtt>,
    node: String,
}

impl Dialer for Dial {
    fn dial(&self) -> Dialing<'_> {
        Box::pin(async move { self.net.connect(&self.node) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Arc<Net4mqtt> {
        let (client, _eventloop) =
            AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 10);
        Net4mqtt::new(client, Net4mqttConfig::default())
    }

    #[tokio::test]
    async fn net4mqtt_topics_as_liveion_and_liveman_write_them() {
        let n = net();
        assert_eq!(
            n.filters(),
            [
                "net4mqtt/+/+/v/#",
                "net4mqtt/+/+/x/#",
                "net4mqtt/+/verge/o/#"
            ]
        );
        assert_eq!(
            n.parse("net4mqtt/n1/-/v/-"),
            Message::Presence { node: "n1" }
        );
        assert_eq!(
            n.parse("net4mqtt/n1/-/x/streams"),
            Message::Streams { node: "n1" }
        );
        let data = "net4mqtt/n1/verge/o/tcp/verge-x-1/-";
        assert_eq!(n.parse(data), Message::Data { topic: data });
        for other in [
            "net4mqtt/-/m1/v/-",                  // another manager
            "net4mqtt/n1/-/x/other",              // not the streams
            "net4mqtt/n1/m1/o/tcp/127.0.0.1:5/-", // liveman's connection
            "other/n1/-/v/-",
            "net4mqtt/n1/verge/o/tcp/too/many/levels",
            "",
        ] {
            assert_eq!(n.parse(other), Message::Other, "{other}");
        }
    }

    #[tokio::test]
    async fn presence_adds_and_stops_nodes_and_bounds_them() {
        let n = Net4mqtt::new(
            AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 10).0,
            Net4mqttConfig {
                max_nodes: 2,
                ..Net4mqttConfig::default()
            },
        );
        let liveion = Liveion::default();
        let online = Bytes::from_static(br#"{"online":true}"#);
        n.handle(&liveion, "net4mqtt/n1/-/v/-", &online);
        n.handle(&liveion, "net4mqtt/n1/-/v/-", &online);
        n.handle(&liveion, "net4mqtt/bad id/-/v/-", &online);
        n.handle(&liveion, "net4mqtt/n2/-/v/-", &online);
        n.handle(&liveion, "net4mqtt/n3/-/v/-", &online);
        let aliases: Vec<String> = liveion.views().into_iter().map(|v| v.alias).collect();
        assert_eq!(aliases, ["n1", "n2"]);
        let view = &liveion.views()[0];
        assert_eq!(
            (view.source, view.url.as_str()),
            ("net4mqtt", "http://n1.net4mqtt.local")
        );
        // A snapshot makes it running with its streams; the will stops it.
        let snapshot = Bytes::from_static(br#"[{"id":"s1","publish":{"leaveAt":0,"sessions":[{"id":"p","leaveAt":0,"state":"connected"}]}}]"#);
        n.handle(&liveion, "net4mqtt/n1/-/x/streams", &snapshot);
        assert_eq!(liveion.views()[0].status, "running");
        assert_eq!(liveion.streams().len(), 1);
        n.handle(
            &liveion,
            "net4mqtt/n1/-/x/streams",
            &Bytes::from_static(b"{not json"),
        );
        assert_eq!(liveion.streams().len(), 1);
        n.handle(&liveion, "net4mqtt/n1/-/v/-", &Bytes::from_static(b"{}"));
        let view = &liveion.views()[0];
        assert_eq!(view.status, "stopped");
        assert!(view.reason.as_deref().is_some_and(|r| r.contains("will")));
        assert!(liveion.streams().is_empty());
        // Data for a connection nobody opened goes nowhere.
        n.handle(
            &liveion,
            "net4mqtt/n1/verge/o/tcp/nobody/-",
            &Bytes::from_static(b"x"),
        );
    }
}
