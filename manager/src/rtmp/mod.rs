//! The RTMP router: `rtmp://manager/{app}/{key}` publishes into the box that owns the key.
//!
//! The router plays RTMP server until the client says `publish` (it must: encoders send the
//! key only there), looks the key up ([`route`]), opens a tunnel stream to that agent's RTMP
//! port and hands the connection over ([`verge_media::rtmp::handover`]): the agent sees every
//! byte the client sent, as if it had been dialled directly; the media never passes through a
//! decoder here. A refusal (unknown key, its agent offline or unreachable) is an `onStatus`
//! error the encoder shows, then the connection closes.
//!
//! The router is public, so [`admission`] bounds what anyone can hold: connections per source
//! address, connections in all, and connections still in their handshake (each of which must
//! reach `publish` within `handshake_timeout_secs`). Each connection's own course, from the
//! handshake to the handover, is `connection`'s.

pub mod admission;
mod connection;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::RtmpConfig;
use crate::keys::KeyStore;
use crate::registry::Registry;
use crate::tunnel::Tunnels;
use admission::{Admission, Limits};

/// What the router needs of the rest of the manager.
#[derive(Clone)]
pub struct Router {
    pub keys: Arc<KeyStore>,
    pub registry: Arc<Registry>,
    pub tunnels: Tunnels,
    pub handshake_timeout: Duration,
    /// `[auth]`: with it on, a publisher needs a write token for its stream.
    pub auth: Arc<crate::auth::Auth>,
}

/// Accepts publishers on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, router: Router, cfg: RtmpConfig) {
    let admission = Admission::new(Limits {
        per_source: cfg.max_per_source,
        connections: cfg.max_connections,
        handshakes: cfg.max_handshakes,
    });
    let mut backoff = verge_serve::accept::AcceptBackoff::default();
    loop {
        let (socket, peer) =
            verge_serve::accept::next(&listener, &mut backoff, "RTMP router").await;
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(full) => {
                tracing::warn!(%peer, reason = %full, "RTMP router: connection closed at accept");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        tokio::spawn(async move {
            match connection::run(socket, peer, ticket, &router).await {
                Ok(outcome) => tracing::info!(%peer, %outcome, "RTMP router: connection done"),
                Err(e) => tracing::info!(%peer, reason = %e, "RTMP router: connection closed"),
            }
        });
    }
}
