//! live777's liveion nodes in the fleet, beside Verge's agents (issue #23).
//!
//! - [`api`]: the parts of liveion's JSON the manager reads.
//! - [`monitor`]: one task per node following its streams (`[[nodes]] mode`: poll or SSE) and
//!   its limits, marking it `running` or `stopped` with the reason.
//! - [`proxy`]: WHEP and WHIP offers and their sessions passed on to a node with its token,
//!   under the manager's own session URLs.
//! - [`net4mqtt`]: nodes behind NAT found on the broker (live777's net4mqtt), their HTTP API
//!   reached through net4mqtt's tunnel.
//! - [`records`]: the nodes' recording sessions synced into the index and acknowledged.
//! - [`cascade`]: a node pulling a stream from the manager's `/whep/` (a box's stream, or
//!   another node's), checked, and closed when idle.
//!
//! A node's session URL on the manager is `/session/{stream}/{alias}@{id}` (or
//! `/whip-session/…`): the node is named in it, as an agent is in its sessions, so any manager
//! routes PATCH and DELETE without a table. A liveion stream `cam` is Verge's `live/cam`.

pub mod api;
pub mod cascade;
pub mod monitor;
pub mod net4mqtt;
pub mod proxy;
pub mod records;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::config::{NodeConfig, NodeMode};
use crate::web_client::{Call, Dialer, Url};

/// What `GET /api/nodes/` shows of a liveion node (liveman's shape plus Verge's).
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub alias: String,
    pub url: String,
    /// `running` while it answers, else `stopped`.
    pub status: &'static str,
    /// Round trip of the last call, as liveman prints it (`12ms`), or `-`.
    pub duration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<api::Strategy>,
    pub kind: &'static str,
    /// `[[nodes]]` (`config`) or found on the broker (`net4mqtt`).
    pub source: &'static str,
    pub mode: &'static str,
    pub online: bool,
    /// Why it is stopped: the error or the node's refusal (`401 …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix ms of its last answer.
    pub last_seen: u64,
    /// Ids of its streams with a publisher.
    pub streams: Vec<String>,
    /// Open subscriber sessions over all its streams.
    pub viewers: u32,
    /// `each_stream_max_sub`, liveman's `sub_max`.
    pub sub_max: u16,
}

/// What the manager needs to call a node.
#[derive(Clone)]
pub struct Target {
    pub alias: String,
    pub url: Url,
    pub token: String,
    /// How to reach it when not over TCP to `url` (net4mqtt).
    pub via: Option<Arc<dyn Dialer>>,
}

impl Target {
    /// A GET of `url` (on this node) with its token, over its way there.
    pub fn get<'a>(&'a self, url: &'a Url) -> Call<'a> {
        let mut call = Call::get(url, &self.token);
        call.via = self.via.clone();
        call
    }
}

struct Node {
    target: Target,
    mode: NodeMode,
    source: &'static str,
    running: bool,
    reason: Option<String>,
    duration_ms: Option<u64>,
    last_seen: u64,
    strategy: Option<api::Strategy>,
    streams: Vec<api::Stream>,
}

/// Viewers `n` may still take of its stream `s` (`each_stream_max_sub` minus its open
/// subscribers).
fn room_for(n: &Node, s: &api::Stream) -> i64 {
    i64::from(sub_max(n)) - s.subscribers() as i64
}

/// `each_stream_max_sub` of `n` (no limit until its strategy is read).
fn sub_max(n: &Node) -> u16 {
    n.strategy
        .as_ref()
        .map_or(u16::MAX, |s| s.each_stream_max_sub)
}

/// Every liveion node the manager knows, and what each last said.
#[derive(Clone, Default)]
pub struct Liveion {
    nodes: Arc<RwLock<BTreeMap<String, Node>>>,
    turns: Arc<std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Liveion {
    /// Follows every `[[nodes]]` entry (URLs were checked with the config). The tasks end with
    /// the runtime.
    pub fn start(configs: &[NodeConfig]) -> Self {
        let liveion = Self::default();
        for cfg in configs {
            let Ok(url) = Url::parse(&cfg.url) else {
                continue;
            };
            let target = Target {
                alias: cfg.alias.clone(),
                url,
                token: cfg.token.clone(),
                via: None,
            };
            liveion.add(target.clone(), cfg.mode, "config");
            tokio::spawn(monitor::follow(
                liveion.clone(),
                target,
                cfg.mode,
                monitor::POLL_EVERY,
            ));
        }
        liveion
    }

    fn add(&self, target: Target, mode: NodeMode, source: &'static str) {
        if let Ok(mut nodes) = self.nodes.write() {
            nodes.insert(
                target.alias.clone(),
                Node {
                    target,
                    mode,
                    source,
                    running: false,
                    reason: Some("not reached yet".into()),
                    duration_ms: None,
                    last_seen: 0,
                    strategy: None,
                    streams: Vec::new(),
                },
            );
        }
    }

    /// A node found at run time (net4mqtt): added, or its way there renewed; false when a
    /// `[[nodes]]` entry has its alias.
    pub(crate) fn discovered(&self, target: Target, source: &'static str) -> bool {
        let Ok(mut nodes) = self.nodes.write() else {
            return false;
        };
        match nodes.get_mut(&target.alias) {
            Some(n) if n.source != source => false,
            Some(n) => {
                n.target = target;
                true
            }
            None => {
                drop(nodes);
                self.add(target, NodeMode::Poll, source);
                true
            }
        }
    }

    fn update(&self, alias: &str, f: impl FnOnce(&mut Node)) {
        if let Ok(mut nodes) = self.nodes.write()
            && let Some(node) = nodes.get_mut(alias)
        {
            f(node);
        }
    }

    /// The node answered: its streams (and limits, when read) are as given.
    pub(crate) fn answered(
        &self,
        alias: &str,
        streams: Vec<api::Stream>,
        duration_ms: Option<u64>,
        strategy: Option<api::Strategy>,
    ) {
        self.update(alias, |n| {
            if !n.running {
                tracing::info!(node = %alias, "liveion node running");
            }
            n.running = true;
            n.reason = None;
            n.streams = streams;
            n.last_seen = verge_protocol::now_ms();
            if duration_ms.is_some() {
                n.duration_ms = duration_ms;
            }
            if strategy.is_some() {
                n.strategy = strategy;
            }
        });
    }

    /// The node did not answer, or refused: stopped, its streams gone, and why.
    pub(crate) fn failed(&self, alias: &str, reason: String) {
        self.update(alias, |n| {
            if n.running || n.reason.as_deref() != Some(reason.as_str()) {
                tracing::warn!(node = %alias, %reason, "liveion node stopped");
            }
            n.running = false;
            n.reason = Some(reason);
            n.streams.clear();
            n.duration_ms = None;
        });
    }

    pub fn views(&self) -> Vec<NodeView> {
        let Ok(nodes) = self.nodes.read() else {
            return Vec::new();
        };
        nodes
            .values()
            .map(|n| NodeView {
                alias: n.target.alias.clone(),
                url: n.target.url.to_string(),
                status: if n.running { "running" } else { "stopped" },
                duration: n
                    .duration_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
                strategy: n.strategy.clone(),
                kind: "liveion",
                source: n.source,
                mode: match n.mode {
                    NodeMode::Poll => "poll",
                    NodeMode::Sse => "sse",
                },
                online: n.running,
                reason: n.reason.clone(),
                last_seen: n.last_seen,
                streams: n
                    .streams
                    .iter()
                    .filter(|s| s.has_publisher())
                    .map(|s| s.id.clone())
                    .collect(),
                viewers: n.streams.iter().map(|s| s.subscribers() as u32).sum(),
                sub_max: sub_max(n),
            })
            .collect()
    }

    /// Every stream of every running node (as liveman lists them: those without a
    /// publisher too), with its node's alias.
    pub fn streams(&self) -> Vec<(String, api::Stream)> {
        let Ok(nodes) = self.nodes.read() else {
            return Vec::new();
        };
        nodes
            .values()
            .filter(|n| n.running)
            .flat_map(|n| {
                n.streams
                    .iter()
                    .map(|s| (n.target.alias.clone(), s.clone()))
            })
            .collect()
    }

    /// One stream as a node last reported it.
    pub fn stream(&self, alias: &str, id: &str) -> Option<api::Stream> {
        let nodes = self.nodes.read().ok()?;
        nodes
            .get(alias)?
            .streams
            .iter()
            .find(|s| s.id == id)
            .cloned()
    }

    /// The node called `alias`, running or not.
    pub fn target(&self, alias: &str) -> Option<Target> {
        let nodes = self.nodes.read().ok()?;
        nodes.get(alias).map(|n| n.target.clone())
    }

    pub fn is_running(&self, alias: &str) -> bool {
        self.nodes
            .read()
            .is_ok_and(|n| n.get(alias).is_some_and(|n| n.running))
    }

    /// The running node with the most room for another viewer of `id` among those holding
    /// it (liveman's `maximum_idle_node`): `None` when none holds it or all are full.
    pub fn viewer_node(&self, id: &str) -> Result<Option<Target>, String> {
        let Ok(nodes) = self.nodes.read() else {
            return Ok(None);
        };
        let mut holders = 0;
        let best = nodes
            .values()
            .filter(|n| n.running)
            .filter_map(|n| {
                let s = n.streams.iter().find(|s| s.id == id && s.has_publisher())?;
                holders += 1;
                let room = room_for(n, s);
                (room > 0).then_some((room, n))
            })
            .max_by_key(|(room, _)| *room)
            .map(|(_, n)| n.target.clone());
        match (best, holders) {
            (Some(t), _) => Ok(Some(t)),
            (None, 0) => Ok(None),
            (None, _) => Err(format!(
                "stream {id} is on {holders} liveion node(s), each at its each_stream_max_sub"
            )),
        }
    }

    /// A running node holding a connected copy of `id` pulled from `source` (a URL prefix)
    /// with room for another viewer, the one with most.
    pub fn copy_node(&self, id: &str, source: &str) -> Option<Target> {
        let nodes = self.nodes.read().ok()?;
        nodes
            .values()
            .filter(|n| n.running)
            .filter_map(|n| {
                let s = n.streams.iter().find(|s| s.id == id)?;
                s.pulled_from().filter(|from| from.starts_with(source))?;
                let room = room_for(n, s);
                (room > 0).then_some((room, n))
            })
            .max_by_key(|(room, _)| *room)
            .map(|(_, n)| n.target.clone())
    }

    /// The running node with the fewest streams that does not have `id`.
    pub fn publish_node_without(&self, id: &str) -> Option<Target> {
        let nodes = self.nodes.read().ok()?;
        nodes
            .values()
            .filter(|n| n.running && !n.streams.iter().any(|s| s.id == id))
            .min_by_key(|n| n.streams.len())
            .map(|n| n.target.clone())
    }

    /// Reads `target`'s streams now (after a change the manager made there).
    pub async fn refresh(&self, target: &Target) {
        if let Ok(streams) = monitor::streams_of(target).await {
            self.answered(&target.alias, streams, None, None);
        }
    }

    /// Held while deciding where `id`'s next viewer goes among the nodes, so a burst of
    /// viewers starts one cascade, not one each.
    pub async fn turn(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            // Locks nobody holds or waits for are dropped: the map stays as small as the
            // streams being placed at this moment.
            turns.retain(|_, l| Arc::strong_count(l) > 1);
            turns.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The running node a new stream is published into: the one with the fewest streams.
    pub fn publish_node(&self) -> Option<Target> {
        let nodes = self.nodes.read().ok()?;
        nodes
            .values()
            .filter(|n| n.running)
            .min_by_key(|n| n.streams.iter().filter(|s| s.has_publisher()).count())
            .map(|n| n.target.clone())
    }

    pub fn running_targets(&self) -> Vec<Target> {
        self.nodes.read().map_or_else(
            |_| Vec::new(),
            |n| {
                n.values()
                    .filter(|n| n.running)
                    .map(|n| n.target.clone())
                    .collect()
            },
        )
    }

    pub fn running_aliases(&self) -> Vec<String> {
        self.nodes.read().map_or_else(
            |_| Vec::new(),
            |n| {
                n.values()
                    .filter(|n| n.running)
                    .map(|n| n.target.alias.clone())
                    .collect()
            },
        )
    }
}
