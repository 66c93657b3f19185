//! `[[tunnel.forward]]`: a TCP listener on the manager whose every connection is carried to
//! `target` on `agent` through the tunnel.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::Tunnels;
use crate::config::Forward;

/// Accepts connections on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, forward: Forward, tunnels: Tunnels) {
    let mut backoff = verge_serve::accept::AcceptBackoff::default();
    loop {
        let (socket, peer) =
            verge_serve::accept::next(&listener, &mut backoff, "port forward").await;
        let _ = socket.set_nodelay(true);
        let (tunnels, forward) = (tunnels.clone(), forward.clone());
        tokio::spawn(async move { carry(socket, peer, &forward, &tunnels).await });
    }
}

async fn carry(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    forward: &Forward,
    tunnels: &Tunnels,
) {
    let (agent, target) = (&forward.agent, &forward.target);
    let endpoint = match tunnels.endpoint(agent) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::warn!(%peer, %agent, %target, error = %e, "port forward refused");
            return;
        }
    };
    let stream = match endpoint.open(target).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(%peer, %agent, %target, error = %e, "port forward refused");
            return;
        }
    };
    let id = stream.id();
    tracing::debug!(%peer, %agent, %target, stream = id, "port forward open");
    match stream.bridge(socket).await {
        Ok(moved) => {
            tracing::debug!(%peer, %agent, %target, stream = id, up = moved.up, down = moved.down, "port forward done")
        }
        Err(e) => {
            tracing::info!(%peer, %agent, %target, stream = id, error = %e, "port forward ended")
        }
    }
}
