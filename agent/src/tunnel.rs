//! The agent's end of the tunnel: one link per manager that talks to it, started by that
//! manager's first packet. A stream the manager opens is dialled only if `[tunnel] allow` names
//! its target; anything else is refused with a reset that says why.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use verge_protocol::topic::Topics;
use verge_tunnel::frame::ResetCode;
use verge_tunnel::mux::Side;
use verge_tunnel::{EndpointConfig, Incoming, Limits, MqttTunnel};

use crate::config::AgentConfig;

/// Managers with a tunnel link at once; packets of further ones are dropped.
const MAX_MANAGERS: usize = 8;
/// How long dialling a target may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the manager may reach: names resolved to addresses.
#[derive(Debug, Clone)]
pub struct Allow {
    entries: Vec<(String, String)>,
}

impl Allow {
    /// `[tunnel] allow` with `rtmp`, `http` and `hls` standing for this agent's own listeners.
    pub fn new(allow: &[String], own: &[(&str, SocketAddr)]) -> Self {
        let entries = allow
            .iter()
            .map(|entry| {
                let addr = match own.iter().find(|(name, _)| name == entry) {
                    Some((_, addr)) => loopback(*addr).to_string(),
                    None => entry.clone(),
                };
                (entry.clone(), addr)
            })
            .collect();
        Self { entries }
    }

    /// The address to dial for `target`, if allowed: an entry's name, or `localhost:{port}`
    /// for an allowed entry that is a loopback address with that port (what SOCKS5 clients of
    /// the manager ask for).
    pub fn resolve(&self, target: &str) -> Option<&str> {
        if let Some(found) = self.entries.iter().find(|(name, _)| name == target) {
            return Some(found.1.as_str());
        }
        let port: u16 = target.strip_prefix("localhost:")?.parse().ok()?;
        self.entries
            .iter()
            .find(|(_, addr)| {
                addr.parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().is_loopback() && a.port() == port)
            })
            .map(|(_, addr)| addr.as_str())
    }
}

/// The address a local client dials for a listener bound to `addr`.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    }
}

pub struct Tunnels {
    agent: String,
    secret: String,
    client: AsyncClient,
    topics: Topics,
    link_up: watch::Receiver<bool>,
    allow: Arc<Allow>,
    limits: Limits,
    links: HashMap<String, MqttTunnel>,
    /// Set on the first tunnel packet: this agent listens on its tunnel filter from then on
    /// (subscribed now, and again on every connection by the announcer).
    listening: Arc<AtomicBool>,
}

impl Tunnels {
    pub fn new(
        cfg: &AgentConfig,
        client: AsyncClient,
        topics: Topics,
        link_up: watch::Receiver<bool>,
        listening: Arc<AtomicBool>,
    ) -> Self {
        Self {
            listening,
            agent: cfg.id.clone(),
            secret: cfg.secret.clone(),
            client,
            topics,
            link_up,
            allow: Arc::new(Allow::new(
                &cfg.tunnel.allow,
                &[
                    ("rtmp", cfg.rtmp.listen),
                    ("http", cfg.http.listen),
                    ("hls", cfg.hls.listen),
                ],
            )),
            limits: Limits::agent(verge_tunnel::Sizes {
                window_kib: cfg.tunnel.window_kib,
                max_window_kib: cfg.tunnel.max_window_kib,
                max_streams: cfg.tunnel.max_streams,
                resume_secs: cfg.tunnel.resume_secs,
            }),
            links: HashMap::new(),
        }
    }

    /// A sealed packet from `manager`; never waits.
    pub fn on_packet(&mut self, manager: &str, payload: &[u8]) {
        if !self.listening.swap(true, Ordering::AcqRel) {
            // The tunnel is in use: listen on the tunnel filter, whose broker log holds a
            // long path's bytes in flight. Managers move there once they see us answer.
            // Subscribed at QoS 1 though the packets are QoS 0 (they arrive at QoS 0): rumqttd
            // serves a QoS 0 subscription in bursts of up to `max_outgoing_packet_count`, and
            // 1 % of the tunnel's round trips then took 43 ms instead of 0.5 (tunnel_bench,
            // docs/benchmarks.md).
            let filter = self.topics.agent_tunnel(&self.agent);
            match self.client.try_subscribe(&filter, QoS::AtLeastOnce) {
                Ok(()) => {
                    tracing::info!(agent = %self.agent, %filter, "listening on the tunnel filter")
                }
                Err(e) => {
                    tracing::warn!(agent = %self.agent, error = %e, "cannot subscribe to the tunnel filter; subscribing on the next connection")
                }
            }
        }
        self.links.retain(|_, link| link.is_running());
        if !self.links.contains_key(manager) {
            if self.links.len() >= MAX_MANAGERS {
                tracing::warn!(agent = %self.agent, %manager, "tunnel packet dropped: {MAX_MANAGERS} managers have links already");
                return;
            }
            let cfg = EndpointConfig::link(Side::Agent, &self.secret, manager, self.limits);
            let topic = self.topics.tunnel_up(manager, &self.agent);
            match MqttTunnel::spawn(cfg, self.client.clone(), topic, None, self.link_up.clone()) {
                Ok((link, incoming)) => {
                    tracing::info!(agent = %self.agent, %manager, "tunnel link up");
                    tokio::spawn(serve(incoming, self.allow.clone(), manager.to_string()));
                    self.links.insert(manager.to_string(), link);
                }
                Err(e) => {
                    tracing::error!(agent = %self.agent, %manager, error = %e, "cannot start a tunnel link");
                    return;
                }
            }
        }
        if let Some(link) = self.links.get(manager)
            && !link.deliver(payload.to_vec())
        {
            tracing::warn!(agent = %self.agent, %manager, "tunnel endpoint behind; packet dropped (it will be resent)");
        }
    }
}

/// Dials what the manager opens, if allowed, and bridges it.
async fn serve(mut incoming: mpsc::Receiver<Incoming>, allow: Arc<Allow>, manager: String) {
    while let Some(request) = incoming.recv().await {
        let target = request.target.clone();
        let Some(addr) = allow.resolve(&target).map(str::to_string) else {
            tracing::warn!(%manager, %target, "tunnel stream refused: not in [tunnel] allow");
            let why = format!("{target} is not in this agent's [tunnel] allow");
            request.refuse(ResetCode::Refused, &why).await;
            continue;
        };
        let manager = manager.clone();
        tokio::spawn(async move {
            let socket = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&addr)).await {
                Ok(Ok(socket)) => socket,
                Ok(Err(e)) => {
                    let why = format!("dialling {target} ({addr}): {e}");
                    tracing::info!(%manager, %target, "tunnel stream refused: {why}");
                    // The opener tells its client which (a SOCKS5 reply code, say).
                    let code = match e.kind() {
                        std::io::ErrorKind::ConnectionRefused => ResetCode::TargetRefused,
                        _ => ResetCode::Unreachable,
                    };
                    return request.refuse(code, &why).await;
                }
                Err(_) => {
                    let why = format!("dialling {target} ({addr}) took over {DIAL_TIMEOUT:?}");
                    return request.refuse(ResetCode::Unreachable, &why).await;
                }
            };
            let _ = socket.set_nodelay(true);
            let id = request.id();
            let Ok(stream) = request.accept().await else {
                return;
            };
            tracing::debug!(%manager, %target, stream = id, "tunnel stream open");
            match stream.bridge(socket).await {
                Ok(moved) => {
                    tracing::debug!(%manager, %target, stream = id, up = moved.up, down = moved.down, "tunnel stream done")
                }
                Err(e) => {
                    tracing::info!(%manager, %target, stream = id, error = %e, "tunnel stream ended")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_names_own_listeners_and_exact_targets_only() {
        let allow = Allow::new(
            &["rtmp".into(), "http".into(), "10.0.0.5:554".into()],
            &[
                ("rtmp", "0.0.0.0:1935".parse().unwrap()),
                ("http", "127.0.0.1:7001".parse().unwrap()),
                ("hls", "127.0.0.1:7002".parse().unwrap()),
            ],
        );
        assert_eq!(allow.resolve("hls"), None, "not in this allow list");
        assert_eq!(allow.resolve("rtmp"), Some("127.0.0.1:1935"));
        assert_eq!(allow.resolve("http"), Some("127.0.0.1:7001"));
        assert_eq!(allow.resolve("10.0.0.5:554"), Some("10.0.0.5:554"));
        assert_eq!(allow.resolve("10.0.0.5:22"), None);
        assert_eq!(
            allow.resolve("127.0.0.1:1935"),
            None,
            "only the names listed"
        );
        assert_eq!(allow.resolve("localhost:7001"), Some("127.0.0.1:7001"));
        assert_eq!(allow.resolve("localhost:554"), None, "not a loopback entry");
        assert_eq!(allow.resolve("localhost:22"), None);
    }
}
