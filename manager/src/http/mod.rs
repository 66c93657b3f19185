//! The manager's HTTP face (axum).
//!
//! - [`api`]: the REST API: `/api/nodes/` (liveman's shape), `/api/agents/{id}`, `/api/health`.
//! - [`streams`]: `/api/streams/`, every agent's live streams in liveman's shape.
//! - [`keys`]: channel keys, `/api/keys`.
//! - [`whip`]: the WHIP proxy, `POST /whip/{stream}` and `/whip-session/{stream}/{session}`.
//! - [`whep`]: the WHEP proxy, `POST /whep/{stream}` and `/session/{stream}/{session}`,
//!   forwarded over MQTT RPC to the agent holding the stream.
//! - [`pages`]: the browser pages: `/` (the dashboard), `/play/{stream}` (a minimal WHEP
//!   player), `/publish/{stream}` (a WHIP publisher).
//! - [`agent_http`]: a box's HTTP through the tunnel: `/agents/{id}/http/{*path}` and
//!   `/flv/{app}/{name}.flv`, `/hls/{app}/{name}/{file}`.
//! - [`agents`]: `POST /api/agents` (enrol), `DELETE /api/agents/{id}` (revoke).
//! - [`auth`]: `[auth]` in front of every route, `POST /api/login`, `POST /api/token`.
//! - [`playback`]: recordings: `/api/playback` (streams and their recorded days from the
//!   database), `/api/record/object/{*path}` (a recorded file fetched from its agent).
//! - [`record`]: starting and stopping recordings at run time, `/api/record/{stream}`.
//! - [`livego`]: LiveGo's control API, `/control/get|reset|delete?room={name}`, and
//!   `/stat/livestat`.
//! - [`liveion`]: offers and sessions of streams on liveion nodes, liveman's node-pinned
//!   `/api/whep/{alias}/{stream}` and `/api/whip/{alias}/{stream}`, `POST /api/cascade/{stream}`.
//! - [`metrics`]: `GET /metrics`, Prometheus' text format.
//! - [`error`]: errors as a status and a one-line reason a client can act on.

pub mod agent_http;
mod agents;
pub mod api;
mod auth;
pub mod error;
pub mod keys;
pub(crate) mod livego;
mod liveion;
mod metrics;
pub mod pages;
pub(crate) mod playback;
mod record;
mod storage;
pub mod streams;
pub mod whep;
pub mod whip;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};

use crate::liveion::proxy::Kind;
use crate::registry::Registry;
use crate::rpc::RpcClient;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub rpc: Arc<RpcClient>,
    pub connected: Arc<AtomicBool>,
    pub broker: &'static str,
    pub keys: crate::keys::KeyDistributor,
    pub rpc_timeout: Duration,
    /// `[extra_ice]`: ICE servers for viewers (`Link`) and the agent's peer connection, with
    /// per-session TURN credentials (see [`crate::ice`]).
    pub ice: Arc<crate::config::ExtraIce>,
    /// `[extra_ice.cloudflare]`, when configured.
    pub cloudflare: Option<Arc<crate::ice::cloudflare::Cloudflare>>,
    pub tunnels: crate::tunnel::Tunnels,
    pub index: crate::db::index::Index,
    pub auth: Arc<crate::auth::Auth>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub enrolment: crate::agents::Enrolment,
    /// The RTMP router's address, when it runs.
    pub rtmp_router: Option<std::net::SocketAddr>,
    /// Where WebRTC viewers go, and relays to cloud nodes.
    pub cluster: crate::cluster::Cluster,
    /// live777's liveion nodes in the fleet (`[[nodes]]`).
    pub liveion: crate::liveion::Liveion,
    /// The manager's URL as other servers reach it (`[http] public`, or the listener's).
    pub public_url: String,
    /// `[cascade] maximum_idle_time`.
    pub cascade_idle: Duration,
    /// `[storage]`, when recordings are uploaded.
    pub storage: Option<Arc<crate::storage::Storage>>,
    /// The last hour of streams' and nodes' numbers.
    pub history: crate::history::History,
}

pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/", get(pages::dashboard))
        .route("/api/health", get(api::health))
        .route("/api/nodes", get(api::nodes))
        .route("/api/nodes/", get(api::nodes))
        .route("/api/agents", get(api::nodes).post(agents::enrol))
        .route("/api/agents/", get(api::nodes).post(agents::enrol))
        .route("/api/agents/{id}", get(api::agent).delete(agents::revoke))
        .route("/api/keys", get(keys::list))
        .route("/api/keys/", get(keys::list))
        .route(
            "/api/keys/{app}/{name}",
            post(keys::issue).delete(keys::revoke),
        )
        .route("/api/streams", get(streams::list))
        .route("/api/streams/", get(streams::list))
        .route("/api/streams/{stream}", get(streams::one))
        .route("/api/streams/{app}/{name}", get(streams::one_in_app))
        .route("/api/streams/{stream}/history", get(streams::history))
        .route(
            "/api/streams/{app}/{name}/history",
            get(streams::history_in_app),
        )
        .route("/api/nodes/{id}/history", get(api::node_history))
        .route("/api/events", get(api::events));
    let router = verge_serve::webrtc::routes(
        router,
        verge_serve::webrtc::Handlers {
            whep_offer: post(whep::offer).options(whep::preflight),
            whip_offer: post(whip::offer).options(whep::preflight),
            session: patch(whep::patch)
                .delete(whep::delete)
                .options(whep::preflight),
        },
    );
    router
        .route("/agents/{id}/http/", get(agent_http::agent_root))
        .route("/agents/{id}/http/{*path}", get(agent_http::agent_path))
        .route("/flv/{app}/{file}", get(agent_http::flv))
        .route("/hls/{app}/{name}/{file}", get(agent_http::hls))
        .route("/api/playback", get(playback::streams))
        .route("/api/playback/{name}", get(playback::days))
        .route("/api/playback/{app}/{name}", get(playback::days))
        .route("/api/record/object/{*path}", get(playback::object))
        .route("/api/storage/put/{*key}", axum::routing::put(storage::put))
        .route(
            "/api/record/{name}",
            get(record::state).post(record::start).delete(record::stop),
        )
        .route(
            "/api/record/{app}/{name}",
            get(record::state).post(record::start).delete(record::stop),
        )
        .route("/play/{name}", get(pages::page))
        .route("/play/{app}/{name}", get(pages::page))
        .route("/assets/webrtc.js", get(pages::script))
        .route("/publish/{name}", get(pages::publish_page))
        .route("/publish/{app}/{name}", get(pages::publish_page))
        .route("/metrics", get(metrics::scrape))
        .route(
            "/api/whep/{alias}/{name}",
            liveion::pinned_offer(Kind::Whep),
        )
        .route(
            "/api/whip/{alias}/{name}",
            liveion::pinned_offer(Kind::Whip),
        )
        .route("/api/cascade/{name}", post(liveion::cascade))
        .route("/control/get", axum::routing::any(livego::get))
        .route("/control/reset", axum::routing::any(livego::reset))
        .route("/control/delete", axum::routing::any(livego::delete))
        .route("/stat/livestat", get(livego::livestat))
        .route("/api/login", post(auth::login))
        .route("/api/token", post(auth::token))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .layer(DefaultBodyLimit::max(whep::MAX_BODY))
        .with_state(state)
}
