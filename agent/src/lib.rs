//! The Verge edge agent. It connects *out* to the fleet's MQTT broker, so it works behind NAT.
//!
//! - [`config`]: the `agent.toml` keys.
//! - [`session`]: the MQTT session: retained presence with an `offline` last will, retained
//!   state, the RPC server, the goodbye on shutdown.
//! - [`rpc`]: the methods the manager can call.
//! - [`state`]: the live snapshot the session publishes when it changes.
//! - [`rtmp`]: the RTMP listener; publishers feed the hub, players read from it.
//! - [`http`]: the agent's HTTP server (HTTP-FLV, WHEP).
//! - [`webrtc`]: WHEP viewers: peer connections fed from the hub.
//! - [`keys`]: the channel keys the manager hands out; with `[rtmp] noauth = false` a publisher
//!   must use one.
//! - [`streams`]: stream names, and the hub's streams copied into the state snapshot.
//!
//! A publish's path: OBS connects to [`rtmp::serve`]; the connection's
//! `verge_media::rtmp::session::Session` asks to publish `live/cam`; the hub accepts it;
//! [`streams::report`] puts the stream into the retained state, which the manager lists.
//!
//! A call's path: the manager publishes a signed request on `{p}/v1/a/{id}/req`; the link task
//! hands it to [`session::run`]'s loop, which opens it, checks it is not a replay, and runs
//! [`rpc::dispatch`] on a task of its own; the signed reply goes to the manager's `res` topic.

pub mod config;
pub mod http;
pub mod keys;
pub mod rpc;
pub mod rtmp;
pub mod session;
pub mod state;
pub mod streams;
pub mod webrtc;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::AgentConfig;
pub use session::AgentError;
pub use state::StateHandle;
use verge_media::hub::{Hub, HubConfig};

/// Runs the whole agent (RTMP, HTTP, the MQTT session) until `shutdown` completes.
pub async fn run(cfg: &AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    cfg.validate()?;
    let hub = Arc::new(Hub::new(HubConfig {
        max_streams: usize::from(cfg.limits.pub_max.max(1)),
        max_readers: usize::from(cfg.limits.sub_max.max(1)),
        ..HubConfig::default()
    }));
    let state = StateHandle::new();
    let keys = keys::KeyTable::default();
    let rtmp_listener = bind(cfg.rtmp.listen, "RTMP").await?;
    let http_listener = bind(cfg.http.listen, "HTTP").await?;
    tracing::info!(agent = %cfg.id, rtmp = %cfg.rtmp.listen, http = %cfg.http.listen, "media listeners up");
    let whep = webrtc::Whep::new(&cfg.id, hub.clone(), cfg.webrtc.settings());
    let router = http::router(hub.clone(), Some(whep.clone()));
    let tasks = [
        tokio::spawn(rtmp::serve(
            rtmp_listener,
            hub.clone(),
            rtmp::RtmpSettings {
                keys: (!cfg.rtmp.noauth).then(|| keys.clone()),
                ..rtmp::RtmpSettings::default()
            },
        )),
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router).await {
                tracing::error!(error = %e, "agent HTTP server stopped");
            }
        }),
        tokio::spawn(streams::report(hub, state.clone(), Duration::from_secs(10))),
    ];
    let result = session::run(cfg, state, keys, Some(whep.clone()), shutdown).await;
    // Viewers hear from us (DTLS close) rather than waiting out an ICE timeout.
    whep.close_all(Duration::from_millis(500)).await;
    for task in tasks {
        task.abort();
    }
    result
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Listen { what, addr, source })
}
