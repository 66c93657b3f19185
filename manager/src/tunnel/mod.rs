//! The manager's end of the tunnel: one link per agent, started when something here opens a
//! stream to that agent or when the agent's first packet arrives, and dropped when the agent
//! goes offline (its streams end at once with a reset that says so). Links exist only for
//! agents that are online and have proven it (a signed reply to this manager): packets named
//! after any other id are dropped before they cost memory, whoever holds broker credentials.
//!
//! - [`forward`]: `[[tunnel.forward]]` port forwards: a listener here, a target on an agent.
//! - [`socks`]: `[tunnel] socks_listen`, a SOCKS5 proxy whose hosts are agents.
//! - [`local`]: with the embedded broker, the tunnel's packets use an in-process link to it
//!   instead of the manager's MQTT connection.

pub mod forward;
pub mod local;
pub mod socks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wire::Wire;
use tokio::sync::{mpsc, watch};
use verge_tunnel::frame::ResetCode;
use verge_tunnel::mux::Side;
use verge_tunnel::{Endpoint, EndpointConfig, EndpointStats, Incoming, Limits, MqttTunnel};

use crate::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelOpenError {
    #[error("agent {0} is not enrolled")]
    UnknownAgent(String),
    #[error("agent {0} is offline")]
    Offline(String),
    #[error("cannot start a tunnel link to {agent}: {reason}")]
    Link { agent: String, reason: String },
}

/// The tunnel links of this manager, by agent.
#[derive(Clone)]
pub struct Tunnels {
    inner: Arc<Inner>,
}

struct Inner {
    wire: Wire,
    /// Who is online: links are made for those agents only.
    registry: Arc<Registry>,
    link_up: watch::Receiver<bool>,
    /// Every link's sizes (`ManagerConfig::tunnel_limits`).
    limits: Limits,
    links: Mutex<HashMap<String, MqttTunnel>>,
    /// With the embedded broker: packets to agents go into it directly (see [`local`]).
    local: Option<local::Publisher>,
}

impl Tunnels {
    pub fn new(
        wire: Wire,
        registry: Arc<Registry>,
        link_up: watch::Receiver<bool>,
        limits: Limits,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                local: None,
                wire,
                registry,
                link_up,
                limits,
                links: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Tunnel packets go through `publisher` (the embedded broker's local link) instead of the
    /// MQTT client. Only on a new value, before it is shared.
    pub fn over_local_link(mut self, publisher: local::Publisher) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.local = Some(publisher),
            None => tracing::error!("tunnel: local link set after start; using the MQTT client"),
        }
        self
    }

    /// The endpoint of the link to `agent`, started if there is none and the agent is online.
    pub fn endpoint(&self, agent: &str) -> Result<Endpoint, TunnelOpenError> {
        let inner = &self.inner;
        let mut links = inner.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(agent).filter(|l| l.is_running()) {
            return Ok(link.endpoint.clone());
        }
        let secret = inner
            .wire
            .credentials
            .secret_of(agent)
            .ok_or_else(|| TunnelOpenError::UnknownAgent(agent.to_string()))?;
        if !inner.registry.is_online(agent) {
            return Err(TunnelOpenError::Offline(agent.to_string()));
        }
        let cfg =
            EndpointConfig::link(Side::Manager, &secret, &inner.wire.manager_id, inner.limits);
        // Packets start on the agent's own filter and move to its tunnel filter once the agent
        // answers there (docs/protocol.md §16).
        let topic = inner.wire.topics.tunnel_down(agent, &inner.wire.manager_id);
        let wide = inner
            .wire
            .topics
            .tunnel_down_wide(agent, &inner.wire.manager_id);
        let spawned = match &inner.local {
            Some(local) => MqttTunnel::spawn_on(
                cfg,
                local.for_topic(topic),
                Some(local.for_topic(wide)),
                local.link_up(),
            ),
            None => MqttTunnel::spawn(
                cfg,
                inner.wire.client.clone(),
                topic,
                Some(wide),
                inner.link_up.clone(),
            ),
        };
        let (link, incoming) = spawned.map_err(|e| TunnelOpenError::Link {
            agent: agent.to_string(),
            reason: e.to_string(),
        })?;
        tokio::spawn(refuse_all(incoming, agent.to_string()));
        tracing::info!(%agent, "tunnel link up");
        let endpoint = link.endpoint.clone();
        links.insert(agent.to_string(), link);
        Ok(endpoint)
    }

    /// A sealed packet from `agent`; never waits. Packets of an online agent this manager
    /// has no link to start one, so that streams the agent still holds (from before a manager
    /// restart) are answered with resets; packets of any other id are dropped without a word
    /// (anyone with broker credentials can name any id: a log line each would be theirs to
    /// write).
    pub fn deliver(&self, agent: &str, payload: &[u8]) {
        if let Err(e) = self.endpoint(agent) {
            tracing::trace!(%agent, error = %e, "tunnel packet dropped");
            return;
        }
        let links = self.inner.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(agent)
            && !link.deliver(payload.to_vec())
        {
            tracing::warn!(%agent, "tunnel endpoint behind; packet dropped (it will be resent)");
        }
    }

    /// `agent` went offline: its streams end now.
    pub fn agent_offline(&self, agent: &str) {
        let removed = self
            .inner
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(agent);
        if removed.is_some() {
            tracing::info!(%agent, "agent offline: its tunnel streams are reset");
        }
    }

    /// Numbers of the link to `agent`, if there is one.
    pub async fn stats(&self, agent: &str) -> Option<EndpointStats> {
        let endpoint = {
            let links = self.inner.links.lock().unwrap_or_else(|e| e.into_inner());
            links.get(agent).map(|l| l.endpoint.clone())
        }?;
        // A link busy moving data answers in microseconds; one that does not is reported
        // as having no numbers rather than holding up the API or a metrics scrape.
        tokio::time::timeout(STATS_TIMEOUT, endpoint.stats())
            .await
            .ok()?
            .ok()
    }
}

/// Longest wait for a link's numbers.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Agents do not open streams to the manager (yet): each is refused with a reason.
async fn refuse_all(mut incoming: mpsc::Receiver<Incoming>, agent: String) {
    while let Some(request) = incoming.recv().await {
        tracing::warn!(%agent, target = %request.target, "agent opened a tunnel stream; refused");
        request
            .refuse(ResetCode::Refused, "the manager accepts no tunnel streams")
            .await;
    }
}
