//! The manager's embedded MQTT broker: rumqttd with Verge's listeners, limits and credential
//! check.
//!
//! - [`BrokerSettings`]: listeners (TCP, optionally TLS), payload limit, router segment sizes.
//! - [`Credentials`]: who may connect. A client's id must equal its username, and its password
//!   must be that id's secret; rumqttd asks [`Credentials::check`] on every CONNECT.
//! - [`start`]: reserves the ports (port 0 becomes a real one) and runs rumqttd on threads of
//!   its own; [`backlog`] then gives its listeners a queue sized for a fleet. The manager then waits for its own MQTT session, the proof that the broker is
//!   serving.
//!
//! rumqttd keeps every published message in a commit log per subscription filter, and a log
//! stays at its high-water mark until segments rotate out. So the few fleet-wide filters the
//! manager subscribes to (`fleet_filters`) get `segment_size × segment_count`, and every other
//! filter (one per agent: its request topic) gets the much smaller
//! `agent_segment_size × agent_segment_count`. An agent whose tunnel is used also subscribes to
//! its tunnel filter (`tunnel_filters`), whose log is `tunnel_segment_size ×
//! tunnel_segment_count`: large enough for a long fast path's bytes in flight, and paid only by
//! agents that carried tunnel traffic. The broker's log memory is then at most
//! `fleet filters × segment_size × segment_count + agents × agent_segment_size × agent_segment_count
//! + tunnelled agents × tunnel_segment_size × tunnel_segment_count`.
//!
//! Descriptors: rumqttd's accept loop logs an ERROR for every failed accept and retries at once,
//! so running out of descriptors spins a core and floods the log (issue #27). It has no cap
//! on sockets it has accepted; its router refuses a CONNECT beyond `max_connections`, and a
//! socket that sends no CONNECT is closed after `connect_timeout_ms`. So each listener pauses
//! `accept_interval_ms` after every accept, and the broker then holds at most
//! [`descriptors_at_most`] sockets: the manager's `LimitNOFILE` must leave room for them.
//!
//! rumqttd hands a new wildcard subscriber at most 100 retained messages at QoS 1 (a fixed
//! in-flight window) but up to `max_outgoing_packet_count` at QoS 0; that count is set to cover
//! every connection, so a manager that resubscribes gets the whole fleet's presence.

pub mod backlog;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rumqttd::{
    Broker, Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings, TlsConfig,
};
use verge_protocol::secret::{derive_agent_secret, secrets_equal};

/// Who may connect: enrolled agents (listed, or derived from an enrollment secret) and the
/// managers' own internal credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    inner: Arc<RwLock<CredentialTable>>,
}

#[derive(Default)]
struct CredentialTable {
    listed: HashMap<String, String>,
    enrollment_secret: Option<String>,
    /// Revoked ids: refused whatever else says (listed, derived).
    revoked: std::collections::HashSet<String>,
}

impl Credentials {
    pub fn new(
        listed: impl IntoIterator<Item = (String, String)>,
        enrollment_secret: Option<String>,
    ) -> Self {
        Self {
            inner: Arc::new(RwLock::new(CredentialTable {
                listed: listed.into_iter().collect(),
                enrollment_secret,
                revoked: Default::default(),
            })),
        }
    }

    /// Adds or replaces one identity (the manager's own, an agent enrolled at run time).
    pub fn insert(&self, id: &str, secret: &str) {
        if let Ok(mut table) = self.inner.write() {
            table.listed.insert(id.to_string(), secret.to_string());
        }
    }

    /// Refuses `id` from now on: its secret is forgotten and a derived one is not made.
    pub fn revoke(&self, id: &str) {
        if let Ok(mut table) = self.inner.write() {
            table.listed.remove(id);
            table.revoked.insert(id.to_string());
        }
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.inner
            .read()
            .map(|t| t.revoked.contains(id))
            .unwrap_or(true)
    }

    /// Whether `id` has a secret of its own (listed in the config or enrolled at run time), as
    /// opposed to one derived from the enrollment secret.
    pub fn is_listed(&self, id: &str) -> bool {
        self.inner
            .read()
            .map(|t| t.listed.contains_key(id))
            .unwrap_or(false)
    }

    /// The secret of `id`: listed ones first, then the derived one; none once revoked.
    pub fn secret_of(&self, id: &str) -> Option<String> {
        let table = self.inner.read().ok()?;
        if table.revoked.contains(id) {
            return None;
        }
        if let Some(secret) = table.listed.get(id) {
            return Some(secret.clone());
        }
        if verge_protocol::id::validate(id).is_err() {
            return None;
        }
        table
            .enrollment_secret
            .as_deref()
            .map(|enrollment| derive_agent_secret(enrollment, id))
    }

    /// The broker's CONNECT check.
    /// The client id must be the username, or `{username}:{session}` (agents connect with a
    /// fresh id per session, see `verge_mqtt::link`).
    pub fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        let same = client_id == username
            || client_id
                .strip_prefix(username)
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|session| !session.is_empty());
        if !same {
            return false;
        }
        match self.secret_of(username) {
            Some(secret) => secrets_equal(&secret, password),
            None => false,
        }
    }
}

/// Listeners and limits of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub listen: SocketAddr,
    pub tls: Option<TlsListener>,
    /// MQTT sessions at once (rumqttd's router refuses more at CONNECT).
    pub max_connections: usize,
    /// A socket that has not sent CONNECT this long after its accept is closed.
    pub connect_timeout_ms: u16,
    /// Each listener's pause after every accept (at least 1 ms); bounds the sockets waiting for
    /// CONNECT.
    pub accept_interval_ms: u64,
    /// Each listener's accept queue (see [`backlog`]).
    pub backlog: u32,
    pub max_payload_size: usize,
    /// Filters that carry the whole fleet's traffic (`verge/v1/a/+/presence`, …).
    pub fleet_filters: Vec<String>,
    pub segment_size: usize,
    pub segment_count: usize,
    pub agent_segment_size: usize,
    pub agent_segment_count: usize,
    /// Filters (patterns) of the agents' tunnel filters (`verge/v1/a/+/tun/+`), whose logs
    /// get `tunnel_segment_size × tunnel_segment_count`.
    pub tunnel_filters: Vec<String>,
    pub tunnel_segment_size: usize,
    pub tunnel_segment_count: usize,
    /// An in-process client of the broker (no socket, no MQTT encoding) subscribed to these
    /// filters: the manager's tunnel traffic, where each hop shows in the round trip.
    pub local_link: Option<LocalLinkSpec>,
}

#[derive(Debug, Clone)]
pub struct LocalLinkSpec {
    pub client_id: String,
    pub filters: Vec<String>,
}

/// The two halves of a local link (rumqttd's own types).
pub struct LocalLink {
    pub tx: rumqttd::local::LinkTx,
    pub rx: rumqttd::local::LinkRx,
}

#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{listener} listener {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS file {0} does not exist")]
    MissingTlsFile(String),
    #[error("local link: {0}")]
    LocalLink(String),
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// The embedded broker, running on its own threads for the life of the process (rumqttd has
/// no shutdown; the threads end with the process).
pub struct EmbeddedBroker {
    /// The address bound (a configured port 0 is a real port here).
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    /// The local link asked for in [`BrokerSettings::local_link`], to be taken once.
    pub local_link: Option<LocalLink>,
    _reservations: Vec<PortReservation>,
}

/// Starts rumqttd on its own threads. Any listener may ask for port 0; the returned
/// [`EmbeddedBroker`] names the addresses really bound.
pub fn start(
    settings: &BrokerSettings,
    credentials: Credentials,
) -> Result<EmbeddedBroker, BrokerError> {
    if let Some(tls) = &settings.tls {
        for file in [&tls.cert, &tls.key] {
            if !file.exists() {
                return Err(BrokerError::MissingTlsFile(file.display().to_string()));
            }
        }
    }
    // rumqttd binds by itself, logs a failed bind on its own thread and carries on without
    // the listener, and cannot tell which port 0 became. So each address is reserved here
    // first: a taken port is an error the operator sees, and port 0 gets a real port.
    let tcp = PortReservation::take("MQTT", settings.listen)?;
    let tls = match &settings.tls {
        Some(tls) => Some(PortReservation::take("MQTT TLS", tls.listen)?),
        None => None,
    };
    let mut bound = settings.clone();
    bound.listen = tcp.addr;
    if let (Some(listener), Some(reserved)) = (bound.tls.as_mut(), &tls) {
        listener.listen = reserved.addr;
    }

    let config = rumqttd_config(&bound, &credentials);
    let mut broker = Broker::new(config);
    // The router runs from `Broker::new`, so a local link can subscribe before the listeners.
    let local_link = match &settings.local_link {
        Some(spec) => {
            let (mut tx, rx) = broker
                .link(&spec.client_id)
                .map_err(|e| BrokerError::LocalLink(e.to_string()))?;
            for filter in &spec.filters {
                tx.subscribe(filter.clone())
                    .map_err(|e| BrokerError::LocalLink(e.to_string()))?;
            }
            Some(LocalLink { tx, rx })
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;

    // rumqttd binds on its own thread; clients dialling before that are refused (and log it).
    for reserved in [Some(&tcp), tls.as_ref()].into_iter().flatten() {
        if !reserved.wait_listening(std::time::Duration::from_secs(5)) {
            tracing::warn!(listen = %reserved.addr, "the embedded broker is not listening yet");
            continue;
        }
        match backlog::raise(reserved.addr, settings.backlog) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(listen = %reserved.addr,
                "the embedded broker's listener was not found: its backlog stays at 128"),
            Err(e) => tracing::warn!(listen = %reserved.addr, error = %e,
                "cannot raise the embedded broker's backlog: it stays at 128"),
        }
    }
    tracing::info!(listen = %tcp.addr, tls = ?tls.as_ref().map(|t| t.addr), "embedded MQTT broker up");
    Ok(EmbeddedBroker {
        listen: tcp.addr,
        tls_listen: tls.as_ref().map(|t| t.addr),
        local_link,
        _reservations: [Some(tcp), tls].into_iter().flatten().collect(),
    })
}

/// A port held for a server that binds it by itself (rumqttd here; mosquitto or a restarted
/// manager in the tests): a socket bound with `SO_REUSEADDR` that never listens.
///
/// On Linux a socket that is bound but not listening keeps the port out of every other
/// process's port-0 bind and outgoing connect, yet lets another `SO_REUSEADDR` socket (rumqttd's
/// listener, bound through mio; mosquitto's) bind and listen on it. Taking it fails if anyone
/// already listens there. The port stays held until the reservation is dropped.
pub struct PortReservation {
    addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl PortReservation {
    /// Holds `addr` (port 0: a free port) for `listener`, the name errors give it.
    pub fn take(listener: &'static str, addr: SocketAddr) -> Result<Self, BrokerError> {
        let bind_error = |source| BrokerError::Bind {
            listener,
            addr,
            source,
        };
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(bind_error)?;
        socket.set_reuseaddr(true).map_err(bind_error)?;
        socket.bind(addr).map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;
        Ok(Self {
            addr,
            _socket: socket,
        })
    }

    /// The address held (never port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits (polling, at most `patience`) until someone listens on the reserved address:
    /// another `SO_REUSEADDR` bind fails exactly then. No connection is made.
    pub fn wait_listening(&self, patience: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let probe = if self.addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            };
            let listening = probe
                .and_then(|p| p.set_reuseaddr(true).map(|()| p))
                .map(|p| p.bind(self.addr))
                .is_ok_and(|bound| bound.is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse));
            if listening {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// The most sockets the broker holds at once: `max_connections` sessions, plus on each of
/// `listeners` the sockets accepted within one `connect_timeout_ms` that have not yet sent
/// CONNECT (at most one per `accept_interval_ms`).
pub fn descriptors_at_most(
    max_connections: usize,
    listeners: usize,
    connect_timeout_ms: u16,
    accept_interval_ms: u64,
) -> u64 {
    let waiting = u64::from(connect_timeout_ms).div_ceil(accept_interval_ms.max(1)) + 1;
    max_connections as u64 + listeners as u64 * waiting
}

fn rumqttd_config(settings: &BrokerSettings, credentials: &Credentials) -> Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: settings.connect_timeout_ms.max(1),
        max_payload_size: settings.max_payload_size,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let creds = credentials.clone();
    connections.set_auth_handler(move |client_id: String, username: String, password: String| {
        let ok = creds.check(&client_id, &username, &password);
        if !ok {
            tracing::warn!(%client_id, %username, "refused MQTT connection: unknown id or wrong secret");
        }
        async move { ok }
    });
    let server = |name: &str, listen: SocketAddr, tls: Option<TlsConfig>| ServerSettings {
        name: name.to_string(),
        listen,
        tls,
        // At least 1 ms, or nothing bounds the sockets waiting for CONNECT.
        next_connection_delay_ms: settings.accept_interval_ms.max(1),
        connections: connections.clone(),
    };
    let mut v4 = HashMap::new();
    v4.insert("tcp".to_string(), server("mqtt-tcp", settings.listen, None));
    if let Some(tls) = &settings.tls {
        let tls_config = TlsConfig::Rustls {
            capath: None,
            certpath: tls.cert.display().to_string(),
            keypath: tls.key.display().to_string(),
        };
        v4.insert(
            "tls".to_string(),
            server("mqtt-tls", tls.listen, Some(tls_config)),
        );
    }
    // rumqttd panics on segments under 1 KiB or a count of 0.
    let fleet_segment = SegmentConfig {
        max_segment_size: settings.segment_size.max(1024),
        max_segment_count: settings.segment_count.max(1),
    };
    let tunnel_segment = SegmentConfig {
        max_segment_size: settings.tunnel_segment_size.max(1024),
        max_segment_count: settings.tunnel_segment_count.max(1),
    };
    // rumqttd applies every pattern that matches a new filter, in no set order: the fleet
    // and tunnel patterns must never match the same filter (they differ in level count or in
    // a fixed level).
    let custom_segment = settings
        .fleet_filters
        .iter()
        .map(|filter| (filter.clone(), fleet_segment.clone()))
        .chain(
            settings
                .tunnel_filters
                .iter()
                .map(|filter| (filter.clone(), tunnel_segment.clone())),
        )
        .collect();
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: settings.max_connections,
            // Also the number of retained messages a QoS 0 subscriber gets at once.
            max_outgoing_packet_count: (2 * settings.max_connections).max(1000) as u64,
            max_segment_size: settings.agent_segment_size.max(1024),
            max_segment_count: settings.agent_segment_count.max(1),
            custom_segment: Some(custom_segment),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_need_matching_id_and_secret() {
        let creds = Credentials::new(
            [("edge-1".to_string(), "s1".to_string())],
            Some("fleet".into()),
        );
        assert!(creds.check("edge-1", "edge-1", "s1"));
        assert!(!creds.check("edge-1", "edge-1", "s2"), "wrong secret");
        assert!(
            !creds.check("edge-2", "edge-1", "s1"),
            "client id must equal username"
        );
        let derived = derive_agent_secret("fleet", "edge-9");
        assert!(creds.check("edge-9", "edge-9", &derived));
        assert!(
            !creds.check("edge-8", "edge-8", &derived),
            "derived secrets are per agent"
        );
        assert!(
            !creds.check("a/b", "a/b", &derive_agent_secret("fleet", "a/b")),
            "invalid ids are never derived"
        );
        creds.insert("verge-manager:m", "internal");
        assert!(creds.check("verge-manager:m", "verge-manager:m", "internal"));

        // Revoked: neither the listed nor the derived secret opens the door again.
        creds.revoke("edge-1");
        creds.revoke("edge-9");
        assert!(!creds.check("edge-1", "edge-1", "s1"));
        assert!(!creds.check("edge-9:s2", "edge-9", &derived));
        assert_eq!(creds.secret_of("edge-9"), None);
        assert!(creds.is_revoked("edge-9") && !creds.is_listed("edge-1"));
    }

    #[test]
    fn the_descriptor_bound_counts_sessions_and_sockets_waiting_for_connect() {
        // The defaults: 20,000 sessions, and 1,000 accepts a second for 10 s per listener.
        assert_eq!(descriptors_at_most(20_000, 1, 10_000, 1), 30_001);
        assert_eq!(descriptors_at_most(20_000, 2, 10_000, 1), 40_002);
        assert_eq!(descriptors_at_most(32, 1, 1_000, 20), 83);
        assert_eq!(
            descriptors_at_most(32, 1, 1_000, 0),
            1_033,
            "0 is taken as 1 ms"
        );
    }

    #[test]
    fn without_enrollment_only_listed_agents_connect() {
        let creds = Credentials::new([], None);
        assert!(!creds.check("x", "x", ""));
        assert_eq!(creds.secret_of("x"), None);
    }
}
