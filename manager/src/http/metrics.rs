//! `GET /metrics`: the manager in Prometheus' text format. The fleet's gauges are read now from
//! the registry and the tunnels; counters and histograms come from [`crate::metrics`].

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use verge_protocol::metrics::{CONTENT_TYPE, Exposition, Kind};

use super::AppState;

pub async fn scrape(State(app): State<AppState>) -> Response {
    let mut e = Exposition::new();
    e.family(
        "verge_manager_info",
        Kind::Gauge,
        "This manager's version (always 1).",
    )
    .sample(
        "verge_manager_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    e.single(
        "verge_broker_connected",
        Kind::Gauge,
        "Whether the manager's MQTT session is up (1) or not (0).",
        flag(app.connected.load(Ordering::Relaxed)),
    );
    e.single(
        "verge_database_up",
        Kind::Gauge,
        "Whether the recording index's database answers (1) or not (0).",
        flag(app.index.db().is_ok()),
    );
    fleet(&app, &mut e);
    tunnels(&app, &mut e).await;
    let m = &app.metrics;
    e.histograms(
        "verge_rpc_duration_seconds",
        "RPC round trips to agents that got an answer, by method.",
        &["method"],
        &m.rpc_seconds,
    );
    e.counters(
        "verge_rpc_errors_total",
        "RPCs to agents that failed, by method and code (the agent's code, or timeout, offline, link…).",
        &["method", "code"],
        &m.rpc_errors,
    );
    e.counters(
        "verge_whep_offers_total",
        "WHEP offers, by the HTTP status of the answer.",
        &["status"],
        &m.whep_offers,
    );
    e.family(
        "verge_whep_signaling_seconds",
        Kind::Histogram,
        "From a WHEP offer's arrival to its answer (answered offers).",
    )
    .histogram(
        "verge_whep_signaling_seconds",
        &[],
        &m.whep_signaling_seconds,
    );
    e.counters(
        "verge_placements_total",
        "WebRTC viewers placed on a node, by outcome (origin, origin_over: past [cluster] edge_viewers for want of a cloud node with room, relay, new_relay, relay_failed, full).",
        &["outcome"],
        &m.placements,
    );
    e.family(
        "verge_relay_start_seconds",
        Kind::Histogram,
        "From asking a cloud node for a relay to the source's answer applied on it.",
    )
    .histogram("verge_relay_start_seconds", &[], &m.relay_start_seconds);
    e.counters(
        "verge_index_events_total",
        "Recording-index events from agents, by result.",
        &["result"],
        &m.index_events,
    );
    e.counters(
        "verge_index_rows_total",
        "Recording-index rows, by result (stored, refused, failed and left for a resend).",
        &["result"],
        &m.index_rows,
    );
    e.histograms(
        "verge_database_duration_seconds",
        "Database operations of the recording index, by operation.",
        &["op"],
        &m.database_seconds,
    );
    let mut response = e.finish().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

fn fleet(app: &AppState, e: &mut Exposition) {
    let agents = app.registry.list();
    cluster(&agents, e);
    let online = agents.iter().filter(|a| a.online()).count();
    e.family("verge_agents", Kind::Gauge, "Enrolled agents by state.")
        .sample("verge_agents", &[("state", "online")], online as f64)
        .sample(
            "verge_agents",
            &[("state", "offline")],
            (agents.len() - online) as f64,
        );
    let agent = ["agent"];
    e.labelled(
        "verge_agent_up",
        Kind::Gauge,
        "Whether each agent is online (1) or not (0).",
        &agent,
        agents
            .iter()
            .map(|a| (vec![a.id.as_str()], flag(a.online()))),
    );
    let online_agents = || agents.iter().filter(|a| a.online());
    e.labelled(
        "verge_agent_rpc_rtt_seconds",
        Kind::Gauge,
        "Round trip of the last RPC each online agent answered.",
        &agent,
        online_agents().filter_map(|a| Some((vec![a.id.as_str()], a.last_rtt_ms? / 1000.0))),
    );
    e.labelled(
        "verge_agent_egress_bits_per_second",
        Kind::Gauge,
        "Media each online agent hands its viewers and players (its last state report).",
        &agent,
        online_agents().filter_map(|a| {
            let kbps = a.state.as_ref()?.egress_kbps?;
            Some((vec![a.id.as_str()], f64::from(kbps) * 1000.0))
        }),
    );
    let streams: Vec<(&str, &verge_protocol::state::StreamInfo)> = agents
        .iter()
        .filter(|a| a.online())
        .flat_map(|a| {
            a.state
                .iter()
                .flat_map(|s| s.streams.iter())
                .map(move |s| (a.id.as_str(), s))
        })
        .collect();
    e.single(
        "verge_streams",
        Kind::Gauge,
        "Live streams on online agents.",
        streams.len() as f64,
    );
    e.single(
        "verge_readers",
        Kind::Gauge,
        "Readers of those streams (WHEP viewers, RTMP and HTTP-FLV players, HLS, recorders).",
        streams.iter().map(|(_, s)| f64::from(s.readers)).sum(),
    );
    let by_stream = |value: fn(&verge_protocol::state::StreamInfo) -> f64| {
        let streams = streams.iter();
        streams.map(move |(agent, s)| (vec![agent.to_string(), s.id()], value(s)))
    };
    e.labelled(
        "verge_stream_readers",
        Kind::Gauge,
        "Readers of each live stream.",
        &["agent", "stream"],
        by_stream(|s| f64::from(s.readers)),
    );
    e.labelled(
        "verge_stream_bitrate_bits_per_second",
        Kind::Gauge,
        "Bitrate of each live stream as its agent measures it.",
        &["agent", "stream"],
        by_stream(|s| f64::from(s.bitrate_kbps.unwrap_or(0)) * 1000.0),
    );
}

async fn tunnels(app: &AppState, e: &mut Exposition) {
    let mut stats = Vec::new();
    for a in app.registry.list() {
        if let Some(s) = app.tunnels.stats(&a.id).await {
            stats.push((a.id, s));
        }
    }
    e.labelled(
        "verge_tunnel_open_streams",
        Kind::Gauge,
        "Tunnel streams open to each agent.",
        &["agent"],
        stats
            .iter()
            .map(|(agent, s)| (vec![agent.as_str()], s.open_streams as f64)),
    );
    e.labelled(
        "verge_tunnel_bytes_total",
        Kind::Counter,
        "Sealed tunnel bytes to and from each agent, since its tunnel link started.",
        &["agent", "direction"],
        stats.iter().flat_map(|(agent, s)| {
            [
                (vec![agent.as_str(), "to_agent"], s.bytes_out as f64),
                (vec![agent.as_str(), "from_agent"], s.bytes_in as f64),
            ]
        }),
    );
    e.labelled(
        "verge_tunnel_packets_refused_total",
        Kind::Counter,
        "Packets on an agent's tunnel topic that did not authenticate or decode.",
        &["agent"],
        stats
            .iter()
            .map(|(agent, s)| (vec![agent.as_str()], s.packets_refused as f64)),
    );
    e.labelled(
        "verge_tunnel_resets_total",
        Kind::Counter,
        "Tunnel streams reset, by agent and reason.",
        &["agent", "reason"],
        stats.iter().flat_map(|(agent, s)| {
            let resets = s.resets.iter();
            resets.map(move |(reason, n)| (vec![agent.as_str(), reason.as_str()], *n as f64))
        }),
    );
}

/// Relays running and viewers by the role of the node serving them.
fn cluster(agents: &[crate::registry::AgentRecord], e: &mut Exposition) {
    use verge_protocol::relay::NodeRole;
    let mut relays = 0usize;
    let mut viewers = [0u64; 2];
    for a in agents.iter().filter(|a| a.online()) {
        let role = a.presence.as_ref().map(|p| p.role).unwrap_or_default();
        for s in a.state.iter().flat_map(|s| s.streams.iter()) {
            relays += usize::from(s.relay.is_some());
            viewers[usize::from(role == NodeRole::Cloud)] += u64::from(s.readers);
        }
    }
    e.single(
        "verge_relay_active",
        Kind::Gauge,
        "Relays (cascades) of a stream running on cloud nodes, as the nodes report them.",
        relays as f64,
    );
    e.family(
        "verge_viewers",
        Kind::Gauge,
        "Readers of the fleet's streams (viewers, players, relays pulling), by the role of the node serving them.",
    )
    .sample("verge_viewers", &[("role", "edge")], viewers[0] as f64)
    .sample("verge_viewers", &[("role", "cloud")], viewers[1] as f64);
}
