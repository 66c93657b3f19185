//! The cluster: which node serves a stream's next WebRTC viewer, relays (cascades) of a stream
//! from the node that holds it to cloud nodes, and their end.
//!
//! - [`placement`]: the decision, a pure function of the nodes' reports and this manager's
//!   recent placements.
//! - [`Cluster`] (here): the live part. It builds the nodes' view from the registry, adds the
//!   placements it made that the nodes have not reported yet (a state received less than
//!   [`REPORT_LAG`] after a placement may predate it; none is counted longer than
//!   [`PENDING_FOR`]), so a burst of offers does not all land on one node; it starts relays
//!   (three RPCs, see [`verge_protocol::relay`]), one at a time per stream; and its reconciler
//!   stops relays whose source no longer has the stream.
//!
//! - [`from_liveion`]: relays whose source is a liveion node's stream (`POST /api/cascade`).
//!
//! Nothing here must survive a restart: relays run and close on their nodes by themselves
//! (`idle_ms`), and a restarted manager sees them in the nodes' retained state.

mod from_liveion;
pub mod placement;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use verge_protocol::relay::{
    self, RelayAnswerParams, RelayOf, RelayOfferParams, RelayOfferResult, RelayStopParams,
};
use verge_protocol::whep::{self, IceServer, OfferParams, OfferResult, SessionParams, SessionRole};

use crate::config::{CascadeConfig, ClusterConfig};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rpc::{CallError, RpcClient};
use placement::{NoPlace, Node, Placement};

/// A node's state received this soon after a placement may not count the placed viewer yet
/// (the viewer's reader is made while the offer is answered).
pub const REPORT_LAG: Duration = Duration::from_secs(2);
/// A placement not reported after this long is forgotten (nodes report at least every 10 s).
pub const PENDING_FOR: Duration = Duration::from_secs(15);
/// How often relays are checked against their sources.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// A relay whose node is offline this long is taken for gone (its node died).
const OFFLINE_GRACE: Duration = Duration::from_secs(10);
/// Checks in a row a relay's source must lack the stream before the relay is stopped (a
/// source's state may lag its viewers' by a moment when a manager starts).
const STRIKES: u32 = 2;

/// Why a viewer could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("stream {0} is not live on any online node")]
    NotLive(String),
    #[error("{0}")]
    Full(String),
}

/// A reader placed on a node and not reported by it yet.
#[derive(Debug, Clone)]
struct Placed {
    node: String,
    stream: String,
    kbps: u32,
    at: Instant,
}

/// A relay started and not reported by its node yet (forgotten once reported).
#[derive(Debug, Clone)]
struct Started {
    node: String,
    stream: String,
    of: RelayOf,
    kbps: u32,
    at: Instant,
}

#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    rpc: Arc<RpcClient>,
    rpc_timeout: Duration,
    metrics: Arc<Metrics>,
    edge_viewers: u32,
    idle_ms: u64,
    placed: Mutex<Vec<Placed>>,
    started: Mutex<Vec<Started>>,
    /// One placement at a time per stream, so two offers never start two relays for one gap.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// liveion nodes, which may be a relay's source.
    liveion: crate::liveion::Liveion,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    pub fn new(
        registry: Arc<Registry>,
        rpc: Arc<RpcClient>,
        rpc_timeout: Duration,
        metrics: Arc<Metrics>,
        cluster: &ClusterConfig,
        cascade: &CascadeConfig,
        liveion: crate::liveion::Liveion,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                rpc,
                rpc_timeout,
                metrics,
                edge_viewers: cluster.edge_viewers,
                idle_ms: cascade.maximum_idle_time,
                placed: Mutex::default(),
                started: Mutex::default(),
                turns: Mutex::default(),
                liveion,
            }),
        }
    }

    /// The online nodes as placement sees them: their reports plus what this manager placed
    /// and started since.
    fn nodes(&self) -> Vec<Node> {
        let records: Vec<_> = self
            .inner
            .registry
            .list()
            .into_iter()
            .filter(|r| r.online())
            .collect();
        let mut nodes: Vec<Node> = records.iter().filter_map(Node::from_record).collect();
        let reported = |node: &str, at: Instant| {
            records
                .iter()
                .find(|r| r.id == node)
                .and_then(|r| r.state_received)
                .is_some_and(|received| received > at + REPORT_LAG)
        };
        let mut started = lock(&self.inner.started);
        // Once its node reports a relay, the report is what counts (a relay that closed must
        // not be placed on).
        started.retain(|s| {
            let reported = nodes
                .iter()
                .any(|n| n.id == s.node && n.streams.contains_key(&s.stream));
            s.at.elapsed() < PENDING_FOR && !reported
        });
        for s in started.iter() {
            if let Some(node) = nodes.iter_mut().find(|n| n.id == s.node) {
                node.streams.insert(
                    s.stream.clone(),
                    placement::Stream {
                        relay: Some(s.of.clone()),
                        readers: 0,
                        bitrate_kbps: s.kbps,
                    },
                );
            }
        }
        drop(started);
        let mut placed = lock(&self.inner.placed);
        placed.retain(|p| p.at.elapsed() < PENDING_FOR);
        for p in placed.iter().filter(|p| !reported(&p.node, p.at)) {
            if let Some(node) = nodes.iter_mut().find(|n| n.id == p.node) {
                node.add_reader(&p.stream, p.kbps);
            }
        }
        nodes
    }

    fn turn(&self, stream: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = lock(&self.inner.turns);
        turns.retain(|_, t| Arc::strong_count(t) > 1);
        turns.entry(stream.to_string()).or_default().clone()
    }

    /// Whether the next viewer of `stream` is past what Verge's nodes should carry (see
    /// [`placement::overflows`]).
    pub fn overflows(&self, stream: &str) -> bool {
        placement::overflows(&self.nodes(), stream, self.inner.edge_viewers)
    }

    /// Chooses the node for a viewer of `stream`, starting a relay there first when that is
    /// the choice; `servers` are the session's ICE servers (the relay's connection uses them
    /// too). Returns the node the viewer's offer goes to.
    /// Nodes in `exclude` (one that just failed this viewer) are left out, unless the
    /// stream's origin is among them.
    pub async fn place(
        &self,
        stream: &str,
        servers: &[IceServer],
        exclude: &[String],
    ) -> Result<String, PlaceError> {
        let turn = self.turn(stream);
        let _turn = turn.lock().await;
        let mut nodes = self.nodes();
        nodes.retain(|n| {
            !exclude.contains(&n.id) || n.streams.get(stream).is_some_and(|s| s.relay.is_none())
        });
        let kbps = nodes
            .iter()
            .find_map(|n| n.streams.get(stream).filter(|s| s.relay.is_none()))
            .map_or(0, |s| s.bitrate_kbps);
        let decision = placement::place(&nodes, stream, self.inner.edge_viewers);
        let mut choice = match decision {
            Err(NoPlace::NotLive) => return Err(PlaceError::NotLive(stream.to_string())),
            Err(NoPlace::Full(why)) => {
                self.inner.metrics.placements.add(&["full"], 1);
                return Err(PlaceError::Full(why));
            }
            Ok(choice) => choice,
        };
        if let Placement::NewRelay { node, source, via } = &choice {
            match self
                .start_relay(node, stream, source, via, servers, kbps)
                .await
            {
                Ok(()) => {}
                Err(why) => {
                    tracing::warn!(%stream, node = %node, %source, "relay not started: {why}");
                    self.inner.metrics.placements.add(&["relay_failed"], 1);
                    // The viewer is served by the origin if it can be at all.
                    let origin = nodes
                        .iter()
                        .find(|n| n.streams.get(stream).is_some_and(|s| s.relay.is_none()))
                        .map(|n| n.id.clone())
                        .ok_or_else(|| PlaceError::NotLive(stream.to_string()))?;
                    choice = Placement::Origin {
                        node: origin,
                        over: true,
                    };
                }
            }
        }
        self.inner.metrics.placements.add(&[choice.outcome()], 1);
        let node = choice.node().to_string();
        lock(&self.inner.placed).push(Placed {
            node: node.clone(),
            stream: stream.to_string(),
            kbps,
            at: Instant::now(),
        });
        tracing::debug!(%stream, %node, outcome = choice.outcome(), "viewer placed");
        Ok(node)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        node: &str,
        method: &str,
        params: impl serde::Serialize,
    ) -> Result<T, String> {
        let params = serde_json::to_value(params).map_err(|e| e.to_string())?;
        let value = self
            .inner
            .rpc
            .call(node, method, params, self.inner.rpc_timeout)
            .await
            .map_err(|e: CallError| e.to_string())?;
        serde_json::from_value(value).map_err(|e| format!("{node} answered {method}: {e}"))
    }

    /// Makes `node` relay `stream` from `source`: its offer, the source's answer, applied.
    async fn start_relay(
        &self,
        node: &str,
        stream: &str,
        source: &str,
        via: &[String],
        servers: &[IceServer],
        kbps: u32,
    ) -> Result<(), String> {
        let started = Instant::now();
        let params = RelayOfferParams {
            stream: stream.to_string(),
            source: source.to_string(),
            via: via.to_vec(),
            ice_servers: servers.to_vec(),
            idle_ms: self.inner.idle_ms,
        };
        let offer: RelayOfferResult = self.call(node, relay::METHOD_RELAY_OFFER, &params).await?;
        let answered: Result<OfferResult, String> = self
            .call(
                source,
                whep::METHOD_OFFER,
                OfferParams {
                    stream: stream.to_string(),
                    sdp: offer.sdp,
                    ice_servers: servers.to_vec(),
                    client: None,
                },
            )
            .await;
        let answered = answered.map(|a| (a.sdp, a.session));
        self.apply_answer(node, stream, &offer.relay, answered)
            .await?;
        let secs = started.elapsed().as_secs_f64();
        self.inner.metrics.relay_start_seconds.observe(secs);
        lock(&self.inner.started).push(Started {
            node: node.to_string(),
            stream: stream.to_string(),
            of: RelayOf {
                source: source.to_string(),
                via: via.to_vec(),
                session: None,
            },
            kbps,
            at: Instant::now(),
        });
        // The source sends one more copy.
        lock(&self.inner.placed).push(Placed {
            node: source.to_string(),
            stream: stream.to_string(),
            kbps,
            at: Instant::now(),
        });
        tracing::info!(%stream, %node, %source, relay = %offer.relay,
            signaling_ms = (secs * 1000.0) as u64, "relay started");
        Ok(())
    }

    /// The source's answer (`sdp`, `session`) to the relay `relay` on `node`, or, when there
    /// is none or the node refuses it, the relay stopped and why.
    async fn apply_answer(
        &self,
        node: &str,
        stream: &str,
        relay: &str,
        answered: Result<(String, String), String>,
    ) -> Result<(), String> {
        let applied = match answered {
            Ok((sdp, session)) => self
                .call::<serde_json::Value>(
                    node,
                    relay::METHOD_RELAY_ANSWER,
                    RelayAnswerParams {
                        relay: relay.to_string(),
                        sdp,
                        session,
                    },
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(why) = applied {
            self.stop(node, stream, "the relay could not be set up")
                .await;
            return Err(why);
        }
        Ok(())
    }

    async fn stop(&self, node: &str, stream: &str, reason: &str) {
        let params = RelayStopParams {
            stream: stream.to_string(),
            reason: reason.to_string(),
        };
        if let Err(e) = self
            .call::<serde_json::Value>(node, relay::METHOD_RELAY_STOP, params)
            .await
        {
            tracing::debug!(%node, %stream, "relay stop: {e}");
        }
    }

    /// Until the manager stops: stops relays whose source no longer has their stream (it
    /// ended, or the source went offline), and ends the source's session of a relay that is
    /// gone (closed for idleness, or its node died), so the source's uplink is free at once
    /// rather than when ICE times out.
    pub async fn reconcile(self) {
        let mut strikes: HashMap<(String, String), u32> = HashMap::new();
        // Relays seen, by (node, stream): their source and session, and since when they are
        // missing while their node is offline.
        let mut known: HashMap<(String, String), (RelayOf, Option<Instant>)> = HashMap::new();
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tick.tick().await;
            let nodes = self.nodes();
            let mut orphans = Vec::new();
            for node in &nodes {
                for (stream, s) in &node.streams {
                    let Some(of) = &s.relay else { continue };
                    let key = (node.id.clone(), stream.clone());
                    known.insert(key.clone(), (of.clone(), None));
                    let fed = nodes
                        .iter()
                        .any(|n| n.id == of.source && n.streams.contains_key(stream))
                        || self.liveion_feeds(&of.source, stream);
                    if fed {
                        strikes.remove(&key);
                        continue;
                    }
                    let count = strikes.entry(key.clone()).or_default();
                    *count += 1;
                    if *count >= STRIKES {
                        strikes.remove(&key);
                        orphans.push((key, of.source.clone()));
                    }
                }
            }
            // Nodes and streams that are gone take their strikes with them.
            strikes.retain(|(node, stream), _| {
                nodes
                    .iter()
                    .any(|n| n.id == *node && n.streams.contains_key(stream))
            });
            for ((node, stream), source) in orphans {
                tracing::info!(%node, %stream, %source, "relay's source lost the stream: stopping it");
                lock(&self.inner.started).retain(|s| !(s.node == node && s.stream == stream));
                self.stop(
                    &node,
                    &stream,
                    &format!("{source} no longer has the stream"),
                )
                .await;
            }
            for ((node, stream), of) in self.gone(&nodes, &mut known) {
                let Some(session) = of.session else { continue };
                tracing::info!(%node, %stream, source = %of.source, %session,
                    "relay gone: ending its session at the source");
                if self
                    .end_liveion_session(&of.source, &stream, &session)
                    .await
                {
                    continue;
                }
                let params = SessionParams {
                    session,
                    stream: Some(stream),
                    role: SessionRole::Viewer,
                };
                if let Err(e) = self
                    .call::<serde_json::Value>(&of.source, whep::METHOD_DELETE, params)
                    .await
                {
                    tracing::debug!(source = %of.source, "relay session delete: {e}");
                }
            }
        }
    }

    /// The relays in `known` that are gone: from the report of a node that is online, or
    /// missing for [`OFFLINE_GRACE`] while their node is offline (an MQTT blip does not end a
    /// relay whose media still flows).
    fn gone(
        &self,
        nodes: &[Node],
        known: &mut HashMap<(String, String), (RelayOf, Option<Instant>)>,
    ) -> Vec<((String, String), RelayOf)> {
        let mut gone = Vec::new();
        known.retain(|(node, stream), (of, missing_since)| {
            let online = nodes.iter().find(|n| n.id == *node);
            if online.is_some_and(|n| n.streams.contains_key(stream)) {
                return true;
            }
            let ended = online.is_some()
                || missing_since.get_or_insert_with(Instant::now).elapsed() >= OFFLINE_GRACE;
            if ended {
                gone.push(((node.clone(), stream.clone()), of.clone()));
            }
            !ended
        });
        gone
    }
}
