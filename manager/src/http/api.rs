//! REST handlers over the registry and the RPC client.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use verge_protocol::presence::Presence;
use verge_protocol::rpc::{METHOD_PING, Pong};
use verge_protocol::state::State as AgentState;

use super::AppState;
use super::error::ApiError;
use crate::registry::AgentRecord;

/// One entry of `GET /api/nodes/`: liveman's node (`alias`, `url`, `pub_max`, `sub_max`,
/// `status`, `duration`) plus what Verge knows of an agent.
#[derive(Debug, Serialize)]
pub struct Node {
    pub alias: String,
    pub url: String,
    pub pub_max: u16,
    pub sub_max: u16,
    /// `running` while the agent is online, else `stopped`.
    pub status: &'static str,
    /// Round trip of the last RPC, as liveman prints it (`12ms`), or `-`.
    pub duration: String,
    pub online: bool,
    /// Unix ms.
    pub last_seen: u64,
    pub version: Option<String>,
    /// The agent's MQTT session (Unix ms of its connection; it grows with every reconnect).
    pub session: Option<u64>,
    /// `{app}/{name}` of each live stream.
    pub streams: Vec<String>,
    /// Media the agent sends its viewers and players, kbit/s (its last state report).
    pub egress_kbps: Option<u32>,
    /// `edge` (a box) or `cloud` (a node that relays streams to viewers).
    pub role: &'static str,
    /// Readers of its streams (viewers, players, relays pulling from it).
    pub viewers: u32,
    /// Its egress budget, kbit/s (`[limits] egress_kbps`; 0: no limit).
    pub egress_max_kbps: u32,
    /// The streams it relays from other nodes.
    pub relays: Vec<String>,
    /// `verge` (`liveion` for the nodes of `[[nodes]]`).
    pub kind: &'static str,
    /// Recordings waiting for `[storage]` (`{files, bytes, last_ms, failing?}`), when any wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<verge_protocol::state::UploadBacklog>,
}

impl From<&AgentRecord> for Node {
    fn from(r: &AgentRecord) -> Self {
        let p = r.presence.as_ref();
        Self {
            alias: r.id.clone(),
            url: p.and_then(|p| p.http_url.clone()).unwrap_or_default(),
            pub_max: p.map_or(0, |p| p.pub_max),
            sub_max: p.map_or(0, |p| p.sub_max),
            status: if r.online() { "running" } else { "stopped" },
            duration: r
                .last_rtt_ms
                .map_or_else(|| "-".into(), |ms| format!("{}ms", ms.round() as u64)),
            online: r.online(),
            last_seen: r.last_seen,
            version: p.map(|p| p.version.clone()),
            session: p.map(|p| p.session),
            streams: r
                .state
                .as_ref()
                .map(|s| s.streams.iter().map(|s| s.id()).collect())
                .unwrap_or_default(),
            egress_kbps: r.state.as_ref().and_then(|s| s.egress_kbps),
            upload: r.state.as_ref().and_then(|s| s.upload.clone()),
            role: p.map(|p| p.role).unwrap_or_default().as_str(),
            viewers: r
                .state
                .iter()
                .flat_map(|s| s.streams.iter())
                .map(|s| s.readers)
                .sum(),
            egress_max_kbps: p.map_or(0, |p| p.egress_max_kbps),
            relays: r
                .state
                .iter()
                .flat_map(|s| s.streams.iter())
                .filter(|s| s.relay.is_some())
                .map(|s| s.id())
                .collect(),
            kind: "verge",
        }
    }
}

/// One entry of `GET /api/nodes/`: a Verge agent, or a liveion node.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Listed {
    Verge(Node),
    Liveion(crate::liveion::NodeView),
}

pub async fn nodes(State(app): State<AppState>) -> Json<Vec<Listed>> {
    let agents = app.registry.list();
    let verge = agents.iter().map(Node::from).map(Listed::Verge);
    let liveion = app.liveion.views().into_iter().map(Listed::Liveion);
    Json(verge.chain(liveion).collect())
}

/// `GET /api/nodes/{id}/history`: a node's last hour (see [`crate::history`]).
pub async fn node_history(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::history::Series<crate::history::NodePoint>>, ApiError> {
    app.history.node(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no history of node {id:?} in the last hour (since this manager started)"
        ))
    })
}

/// `GET /api/events`: the fleet's events of the last hour or so (publishers started and
/// stopped, nodes online and offline), oldest first.
pub async fn events(State(app): State<AppState>) -> Json<Vec<crate::history::Event>> {
    Json(app.history.events())
}

/// `GET /api/agents/{id}`: what the registry holds, and a live ping.
#[derive(Debug, Serialize)]
pub struct AgentDetail {
    pub id: String,
    pub online: bool,
    pub last_seen: u64,
    pub presence: Option<Presence>,
    pub state: Option<AgentState>,
    pub ping: Option<Ping>,
    /// Why there is no ping (offline, timeout, …).
    pub ping_error: Option<String>,
    /// The tunnel link to this agent, while there is one.
    pub tunnel: Option<TunnelStats>,
}

/// Numbers of the tunnel link to one agent (since the link started).
#[derive(Debug, Serialize)]
pub struct TunnelStats {
    pub open_streams: usize,
    /// Bytes the link's streams hold (send buffers, unread received bytes).
    pub buffered_bytes: usize,
    /// Sealed bytes and packets to and from the agent.
    pub bytes_to_agent: u64,
    pub bytes_from_agent: u64,
    pub packets_to_agent: u64,
    pub packets_from_agent: u64,
    /// Packets from the agent's topic that did not authenticate or decode.
    pub packets_refused: u64,
    /// Stream resets by reason (`refused`, `unreachable`, `link lost`, …).
    pub resets: std::collections::BTreeMap<String, u64>,
    /// The path to the agent as the link measures it (its fields stand at this level).
    #[serde(flatten)]
    pub path: verge_tunnel::PathStats,
    /// Packets to the agent go on its tunnel filter.
    pub wide: bool,
}

#[derive(Debug, Serialize)]
pub struct Ping {
    pub rtt_ms: f64,
    /// The agent's clock minus the manager's at the middle of the round trip, in ms.
    pub clock_offset_ms: i64,
}

pub async fn agent(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    if app.registry.get(&id).is_none() {
        return Err(ApiError::not_found(format!(
            "agent {id:?} is not known to this manager"
        )));
    }
    let sent = verge_protocol::now_ms();
    let started = std::time::Instant::now();
    let ping = app
        .rpc
        .call(&id, METHOD_PING, serde_json::Value::Null, app.rpc_timeout)
        .await;
    let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ping, ping_error) = match ping.map(serde_json::from_value::<Pong>) {
        Ok(Ok(pong)) => {
            let middle = sent as i64 + (rtt_ms / 2.0) as i64;
            (
                Some(Ping {
                    rtt_ms,
                    clock_offset_ms: pong.agent_time as i64 - middle,
                }),
                None,
            )
        }
        Ok(Err(e)) => (None, Some(format!("bad ping reply: {e}"))),
        Err(e) => (None, Some(e.to_string())),
    };
    let record = app
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("agent {id:?} is not known to this manager")))?;
    Ok(Json(AgentDetail {
        id: record.id.clone(),
        online: record.online(),
        last_seen: record.last_seen,
        presence: record.presence,
        state: record.state,
        ping,
        ping_error,
        tunnel: app.tunnels.stats(&id).await.map(|t| TunnelStats {
            open_streams: t.open_streams,
            buffered_bytes: t.buffered_bytes,
            bytes_to_agent: t.bytes_out,
            bytes_from_agent: t.bytes_in,
            packets_to_agent: t.packets_out,
            packets_from_agent: t.packets_in,
            packets_refused: t.packets_refused,
            resets: t.resets.into_iter().collect(),
            path: t.path,
            wide: t.wide,
        }),
    }))
}

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub broker: &'static str,
    pub broker_connected: bool,
    pub agents: usize,
    pub online: usize,
    /// `[auth]` is on: requests need a token.
    pub auth: bool,
    /// `POST /api/login` takes accounts.
    pub accounts: bool,
    /// The RTMP router's port, when it runs (publishers use `rtmp://{this host}:{port}/…`).
    pub rtmp_router_port: Option<u16>,
    /// The recording index's database: `ready`, `starting` (connecting or migrating; its
    /// endpoints answer 503 meanwhile) or `down: {why}`.
    pub database: String,
}

pub async fn health(State(app): State<AppState>) -> Json<Health> {
    let (agents, online) = app.registry.counts();
    let broker_connected = app.connected.load(Ordering::Relaxed);
    Json(Health {
        status: if broker_connected { "ok" } else { "degraded" },
        broker: app.broker,
        broker_connected,
        agents,
        online,
        auth: app.auth.enabled(),
        accounts: app.auth.has_accounts(),
        rtmp_router_port: app.rtmp_router.map(|a| a.port()),
        database: match app.index.readiness() {
            crate::db::index::Readiness::Ready => "ready".into(),
            crate::db::index::Readiness::Starting => "starting".into(),
            crate::db::index::Readiness::Down(why) => format!("down: {why}"),
        },
    })
}
