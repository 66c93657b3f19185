//! The Verge cloud manager: the fleet's public face.
//!
//! - [`config`]: the `manager.toml` keys.
//! - [`fleet`]: the manager's MQTT session ([`fleet::FleetSession`]): learns the fleet from
//!   retained presence and state (and, with an external broker, asks the fleet to announce
//!   itself), completes RPC calls, hands index rows and tunnel packets on.
//! - [`registry`]: the fleet as known from those messages.
//! - [`wire`]: what the manager speaks to its agents with ([`wire::Wire`]: its id, topics,
//!   MQTT client and the agents' secrets), shared by every part below that does.
//! - [`rpc`]: calls to agents over MQTT, with deadlines and typed failures.
//! - [`calls`]: calls from agents (LiveGo's control API asked on a box's port), answered.
//! - [`http`]: the REST API, the WHEP and WHIP proxies, the pages.
//! - [`auth`]: `[auth]`: who may do what (the policy table), tokens, passwords, login limits.
//! - [`cluster`]: where a WebRTC viewer goes (the box or a cloud node), relays of a stream to
//!   cloud nodes and their end.
//! - [`agents`]: enrolling and revoking agents at run time.
//! - [`keys`]: channel keys: issued, stored in the database, and handed to every agent
//!   retained and sealed.
//! - [`shared`]: what several managers share through the database (keys, agents), followed.
//! - [`ice`]: ICE servers for a WHEP or WHIP session (static, coturn, Cloudflare TURN).
//! - [`tunnel`]: the tunnel's links to agents, and `[[tunnel.forward]]` port forwards.
//! - [`db`]: the database (SQLite or PostgreSQL), every query the manager makes: the recording
//!   index fed by agents, the agents enrolled at run time, channel keys.
//! - [`rtmp`]: the RTMP router (`[rtmp] listen`): publishers reach their box through the tunnel.
//! - [`metrics`]: what the manager counts between scrapes.
//! - [`storage`]: `[storage]`, where boxes upload recordings (S3-compatible, or a folder).
//! - [`history`]: the last hour of each stream's and node's numbers, and the fleet's events.
//! - [`liveion`]: live777's liveion nodes in the same fleet (`[[nodes]]`): their streams, WHEP
//!   and WHIP passed on to them, cascades from Verge's streams into them.
//! - [`web_client`]: HTTP/1.1 calls to other servers' APIs (liveion, Cloudflare).
//!
//! Start-up ([`start`]): the embedded broker (unless `[mqtt] url` names an external one), the
//! MQTT link with this manager's own credential, the fleet session, then HTTP. A request such as
//! `GET /api/agents/edge-1` reads the [`registry::Registry`] and pings through
//! [`rpc::RpcClient`], whose reply comes back through [`fleet::FleetSession`].

pub mod agents;
pub mod auth;
pub mod calls;
pub mod cluster;
pub mod config;
pub mod db;
pub mod fleet;
pub mod history;
pub mod http;
pub mod ice;
pub mod keys;
pub mod liveion;
pub mod metrics;
pub mod registry;
pub mod rpc;
pub mod rtmp;
pub mod shared;
pub mod storage;
pub mod tunnel;
pub mod wire;
/// HTTP/1.1 calls to other servers' APIs, shared with the agent.
pub use verge_serve::client as web_client;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use verge_broker::{BrokerSettings, Credentials, EmbeddedBroker, TlsListener};
use verge_mqtt::link::{LinkError, LinkOptions};
use verge_mqtt::{BrokerUrl, Link};
use verge_protocol::ready::Listeners;

use config::ConfigError;
pub use config::ManagerConfig;
use fleet::FleetSession;
use registry::Registry;
use rpc::RpcClient;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] auth::AuthConfigError),
    #[error("[storage]: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("embedded broker: {0}")]
    Broker(#[from] verge_broker::BrokerError),
    #[error("MQTT link: {0}")]
    Link(#[from] LinkError),
    #[error("the embedded broker did not accept this manager's session within {0:?}")]
    BrokerNotReady(Duration),
    #[error(transparent)]
    Keys(#[from] keys::KeyStoreError),
    #[error(transparent)]
    ReadyFile(#[from] verge_protocol::ready::ReadyFileError),
    #[error("SOCKS5 listener {addr}: {source}")]
    Socks {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("[[tunnel.forward]] listener {addr}: {source}")]
    Forward {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("[rtmp] listen {addr}: {source}")]
    Rtmp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error("HTTP listener {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started manager.
pub struct Manager {
    pub http_addr: SocketAddr,
    pub broker: Option<EmbeddedBroker>,
    pub registry: Arc<Registry>,
    pub rpc: Arc<RpcClient>,
    pub tunnels: tunnel::Tunnels,
    /// `[[tunnel.forward]]` listeners as bound, in the config's order.
    pub forwards: Vec<SocketAddr>,
    /// `[tunnel] socks_listen` as bound.
    pub socks: Option<SocketAddr>,
    /// `[rtmp] listen` as bound.
    pub rtmp: Option<SocketAddr>,
    listener_tasks: Vec<tokio::task::JoinHandle<()>>,
    client: rumqttc::AsyncClient,
    http: tokio::task::JoinHandle<()>,
    stop_http: tokio::sync::oneshot::Sender<()>,
}

/// Starts every part and returns once HTTP accepts connections.
pub async fn start(cfg: &ManagerConfig) -> Result<Manager, ManagerError> {
    cfg.validate()?;
    let auth = Arc::new(auth::Auth::new(&cfg.auth)?);
    if !auth.enabled() {
        tracing::info!("[auth] is off: the HTTP API and WHEP are open to anyone who reaches them");
    } else if cfg.auth.secret.is_none() {
        tracing::warn!(
            "[auth] secret is not set: tokens from /api/login and /api/token end with this process"
        );
    }
    for section in cfg.unknown.keys() {
        tracing::warn!(%section, "config section not used by this release; ignored");
    }
    for key in cfg.extra_ice.unknown.keys() {
        tracing::warn!(section = %format!("extra_ice.{key}"), "config key not used by this release; ignored");
    }
    let topics = cfg.topics()?;
    // HTTP first: a taken port fails the start before anything else runs.
    let listener = verge_serve::listen(cfg.http.listen).map_err(|source| ManagerError::Http {
        addr: cfg.http.listen,
        source,
    })?;
    let http_addr = listener.local_addr().map_err(|source| ManagerError::Http {
        addr: cfg.http.listen,
        source,
    })?;
    // The manager's URL as other servers reach it: liveion nodes, boxes uploading to `fs`.
    let public_url = match cfg.http.public.as_deref().filter(|p| !p.is_empty()) {
        Some(_) => cfg.http.public_url(),
        None => {
            let mut at = http_addr;
            if at.ip().is_unspecified() {
                at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{at}")
        }
    };
    let storage = match &cfg.storage {
        Some(c) => {
            let storage = storage::Storage::new(c, &public_url)?;
            tracing::info!(storage = %storage.describe(), "recordings are uploaded to storage");
            Some(Arc::new(storage))
        }
        None => None,
    };
    let mut forward_listeners = Vec::new();
    for forward in &cfg.tunnel.forward {
        let bound = tokio::net::TcpListener::bind(forward.listen)
            .await
            .map_err(|source| ManagerError::Forward {
                addr: forward.listen,
                source,
            })?;
        forward_listeners.push(bound);
    }
    let socks_listener = bind_if_set(cfg.tunnel.socks_listen, |addr, source| {
        ManagerError::Socks { addr, source }
    })
    .await?;
    let rtmp_listener = bind_if_set(cfg.rtmp.listen, |addr, source| ManagerError::Rtmp {
        addr,
        source,
    })
    .await?;
    let credentials = Credentials::new(
        cfg.agents.iter().map(|a| (a.id.clone(), a.secret.clone())),
        cfg.enrollment.secret.clone().filter(|s| !s.is_empty()),
    );
    // ':' cannot appear in an agent id, so no agent can take this client id.
    let client_id = format!("verge-manager:{}", cfg.mqtt.id);

    let (url, mut broker, username, password, broker_kind) = match cfg.external_broker()? {
        Some(url) => {
            tracing::info!(broker = %url, "using an external MQTT broker");
            (
                url,
                None,
                cfg.mqtt.username.clone(),
                cfg.mqtt.password.clone(),
                "external",
            )
        }
        None => {
            let internal_secret = verge_protocol::secret::random_secret();
            credentials.insert(&client_id, &internal_secret);
            let settings = BrokerSettings {
                listen: cfg.broker.listen,
                tls: cfg.broker.tls_listen.map(|listen| TlsListener {
                    listen,
                    cert: cfg.broker.cert.clone().unwrap_or_default(),
                    key: cfg.broker.key.clone().unwrap_or_default(),
                }),
                max_connections: cfg.broker.max_connections,
                connect_timeout_ms: cfg.broker.connect_timeout_ms,
                accept_interval_ms: cfg.broker.accept_interval_ms,
                backlog: cfg.broker.backlog,
                max_payload_size: cfg.broker.max_payload_size,
                fleet_filters: vec![
                    topics.all_presence(),
                    topics.all_state(),
                    topics.reply("+"),
                    topics.tunnel_up_all(&cfg.mqtt.id),
                    topics.all_index(),
                    topics.all_calls(),
                ],
                segment_size: cfg.broker.segment_size,
                segment_count: cfg.broker.segment_count,
                agent_segment_size: cfg.broker.agent_segment_size,
                agent_segment_count: cfg.broker.agent_segment_count,
                tunnel_filters: vec![topics.all_agent_tunnels()],
                tunnel_segment_size: cfg.broker.tunnel_segment_size,
                tunnel_segment_count: cfg.broker.tunnel_segment_count,
                local_link: Some(verge_broker::LocalLinkSpec {
                    client_id: format!("verge-manager-tunnel:{}", cfg.mqtt.id),
                    filters: vec![topics.tunnel_up_all(&cfg.mqtt.id)],
                }),
            };
            let broker = tokio::task::spawn_blocking({
                let credentials = credentials.clone();
                move || verge_broker::start(&settings, credentials)
            })
            .await
            .expect("the broker start-up task does not panic")?;
            let local = loopback_for(broker.listen);
            let url = BrokerUrl::parse(&format!("mqtt://{local}")).map_err(ConfigError::Url)?;
            (
                url,
                Some(broker),
                Some(client_id.clone()),
                Some(internal_secret),
                "embedded",
            )
        }
    };

    let mut opts = LinkOptions::new(url, &client_id);
    if broker.is_none() {
        opts.fallbacks = cfg.fallback_urls()?;
        // A client id per session, as agents have: a broker cluster may keep what an old
        // session left on a dead node under its client id (RabbitMQ 3.10 keeps a QoS 1
        // subscription's queue there and refuses the same id's SUBSCRIBE on another node).
        opts.session_client_ids = true;
    }
    opts.username = username;
    opts.password = password;
    opts.ca_file = cfg.mqtt.ca_file.clone();
    opts.keepalive = Duration::from_secs(u64::from(cfg.mqtt.keepalive_secs.max(1)));
    opts.queue = 4096;
    // As the agents': back ≤ 2 s after an external broker returns.
    opts.max_backoff = Duration::from_secs(2);
    // Tunnel packets are delivered by the MQTT link's own task (see `verge_mqtt::link::Tap`);
    // the links exist once the client does, hence the cell.
    let tunnel_cell = Arc::new(std::sync::OnceLock::<tunnel::Tunnels>::new());
    let tap: verge_mqtt::link::Tap = {
        let (cell, topics, manager_id) = (tunnel_cell.clone(), topics.clone(), cfg.mqtt.id.clone());
        Box::new(move |topic, payload| match topics.parse(topic) {
            Ok(verge_protocol::topic::Topic::TunnelUp { manager, agent })
                if manager == manager_id =>
            {
                if let Some(tunnels) = cell.get() {
                    tunnels.deliver(&agent, payload);
                }
                true
            }
            _ => false,
        })
    };
    let Link { client, events, .. } = Link::spawn_tapped(&opts, None, Some(tap))?;
    let wire = wire::Wire {
        manager_id: cfg.mqtt.id.clone(),
        topics: topics.clone(),
        client: client.clone(),
        credentials: credentials.clone(),
    };

    let registry = Arc::new(Registry::new());
    let metrics = Arc::new(metrics::Metrics::default());
    let database_url = cfg.database.effective_url();
    let database = db::Db::open(
        &database_url,
        cfg.database.max_connections,
        Duration::from_secs(cfg.database.connect_timeout.max(1)),
    )?;
    let index = db::index::Index::start(
        database,
        db::redact(&database_url),
        db::index::Replies {
            wire: wire.clone(),
            metrics: metrics.clone(),
        },
    );
    let keys = keys::KeyDistributor {
        store: Arc::new(keys::KeyStore::new(index.clone())),
        wire: wire.clone(),
    };
    tokio::spawn(
        shared::Follower {
            index: index.clone(),
            keys: keys.store.clone(),
            wire: wire.clone(),
            ask: broker.is_none(),
            key_file: cfg.keys.file.clone(),
        }
        .run(),
    );
    let rpc = Arc::new(RpcClient::new(
        wire.clone(),
        registry.clone(),
        metrics.clone(),
    ));
    let connected = Arc::new(AtomicBool::new(false));
    let (link_up, link_up_rx) = tokio::sync::watch::channel(false);
    // With the embedded broker the tunnel rides an in-process link to it.
    let (local_publisher, local_rx) = match broker.as_mut().and_then(|b| b.local_link.take()) {
        Some(link) => (Some(tunnel::local::Publisher::new(link.tx)), Some(link.rx)),
        None => (None, None),
    };
    let tunnel_over_session = local_publisher.is_none();
    let tunnels = tunnel::Tunnels::new(
        wire.clone(),
        registry.clone(),
        link_up_rx,
        cfg.tunnel_limits(broker.is_some()),
    );
    let tunnels = match local_publisher {
        Some(publisher) => tunnels.over_local_link(publisher),
        None => tunnels,
    };
    if let Some(rx) = local_rx {
        tokio::spawn(tunnel::local::receive(
            rx,
            topics.clone(),
            cfg.mqtt.id.clone(),
            tunnels.clone(),
        ));
    }
    let _ = tunnel_cell.set(tunnels.clone());
    let session = FleetSession {
        // rumqttd hands a QoS 1 subscriber only 100 retained messages; at QoS 0 it hands all
        // (see verge-broker). mosquitto drops QoS 0 beyond its queue limit, so QoS 1 there.
        retained_qos: if broker.is_some() {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        },
        wire: wire.clone(),
        registry: registry.clone(),
        rpc: rpc.clone(),
        connected: connected.clone(),
        link_up,
        tunnels: tunnels.clone(),
        keys: keys.clone(),
        index: index.clone(),
        calls: Arc::new(calls::CallServer::new(calls::Parts {
            wire: wire.clone(),
            keys: keys.clone(),
            registry: registry.clone(),
            auth: auth.clone(),
            store: calls::Store {
                storage: storage.clone(),
                index: index.clone(),
            },
        })),
        tunnel_over_session,
        verifying: Default::default(),
        ask_fleet: broker.is_none(),
        last_ask: Default::default(),
    };
    tokio::spawn(session.run(events));
    if broker.is_some() {
        // Our own session coming up is the proof that the embedded broker serves.
        let patience = Duration::from_secs(10);
        let ready = tokio::time::timeout(patience, async {
            while !connected.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        ready
            .await
            .map_err(|_| ManagerError::BrokerNotReady(patience))?;
    }

    let key_store = keys.store.clone();
    let rtmp_router = rtmp_listener.as_ref().and_then(|l| l.local_addr().ok());
    let liveion = liveion::Liveion::start(&cfg.nodes);
    let cluster = cluster::Cluster::new(
        registry.clone(),
        rpc.clone(),
        cfg.rpc_timeout(),
        metrics.clone(),
        &cfg.cluster,
        &cfg.cascade,
        liveion.clone(),
    );
    let reconciler = tokio::spawn(cluster.clone().reconcile());
    let history = history::History::default();
    let sampler = tokio::spawn(history.clone().run(
        registry.clone(),
        tunnels.clone(),
        liveion.clone(),
    ));
    let record_sync = tokio::spawn(liveion::records::sync(
        liveion.clone(),
        index.clone(),
        cfg.record_sync.clone(),
    ));
    let index_for_retention = index.clone();
    let net4mqtt = match &cfg.net4mqtt {
        Some(n4) => {
            // Its own MQTT session, under the manager's credential: net4mqtt's messages are
            // many, small and unsigned, and stay off the fleet session.
            let mut n4_opts = LinkOptions::new(opts.url.clone(), format!("{client_id}:net4mqtt"));
            n4_opts.fallbacks = opts.fallbacks.clone();
            n4_opts.username = opts.username.clone();
            n4_opts.password = opts.password.clone();
            n4_opts.ca_file = opts.ca_file.clone();
            n4_opts.queue = 1024;
            n4_opts.max_backoff = Duration::from_secs(5);
            let link = Link::spawn(&n4_opts, None)?;
            let net = liveion::net4mqtt::Net4mqtt::new(link.client.clone(), n4.clone());
            tracing::info!(prefix = %n4.prefix, alias = %n4.alias, "net4mqtt: listening for liveion nodes");
            Some(tokio::spawn(liveion::net4mqtt::run(
                net,
                link,
                liveion.clone(),
            )))
        }
        None => None,
    };
    let app = http::router(http::AppState {
        registry: registry.clone(),
        rpc: rpc.clone(),
        connected,
        broker: broker_kind,
        keys,
        rpc_timeout: cfg.rpc_timeout(),
        ice: Arc::new(cfg.extra_ice.clone()),
        cloudflare: cfg
            .extra_ice
            .cloudflare
            .clone()
            .map(|c| Arc::new(ice::cloudflare::Cloudflare::new(c))),
        tunnels: tunnels.clone(),
        index: index.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
        enrolment: agents::Enrolment {
            wire: wire.clone(),
            registry: registry.clone(),
            rpc: rpc.clone(),
            tunnels: tunnels.clone(),
            index,
        },
        rtmp_router,
        cluster,
        liveion: liveion.clone(),
        public_url,
        cascade_idle: Duration::from_millis(cfg.cascade.maximum_idle_time),
        storage: storage.clone(),
        history: history.clone(),
    });
    let mut forwards = Vec::new();
    let mut listener_tasks = vec![reconciler];
    listener_tasks.extend(net4mqtt);
    listener_tasks.push(record_sync);
    listener_tasks.push(sampler);
    if let Some(storage) = &storage {
        listener_tasks.push(tokio::spawn(storage::retention::run(
            index_for_retention,
            storage.clone(),
        )));
    }
    for (listener, forward) in forward_listeners.into_iter().zip(&cfg.tunnel.forward) {
        let addr = listener
            .local_addr()
            .map_err(|source| ManagerError::Forward {
                addr: forward.listen,
                source,
            })?;
        tracing::info!(listen = %addr, agent = %forward.agent, target = %forward.target, "port forward");
        forwards.push(addr);
        listener_tasks.push(tokio::spawn(tunnel::forward::serve(
            listener,
            forward.clone(),
            tunnels.clone(),
        )));
    }
    let mut socks = None;
    if let Some(listener) = socks_listener {
        let addr = listener
            .local_addr()
            .map_err(|source| ManagerError::Socks {
                addr: cfg.tunnel.socks_listen.unwrap_or(http_addr),
                source,
            })?;
        tracing::info!(listen = %addr, "SOCKS5 into the fleet");
        socks = Some(addr);
        listener_tasks.push(tokio::spawn(tunnel::socks::serve(
            listener,
            tunnels.clone(),
        )));
    }
    let mut rtmp = None;
    if let Some(listener) = rtmp_listener {
        let addr = listener.local_addr().map_err(|source| ManagerError::Rtmp {
            addr: cfg.rtmp.listen.unwrap_or(http_addr),
            source,
        })?;
        tracing::info!(listen = %addr, "RTMP router");
        rtmp = Some(addr);
        let router = rtmp::Router {
            keys: key_store,
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            handshake_timeout: Duration::from_secs(cfg.rtmp.handshake_timeout_secs.max(1)),
            auth: auth.clone(),
        };
        listener_tasks.push(tokio::spawn(rtmp::serve(
            listener,
            router,
            cfg.rtmp.clone(),
        )));
    }
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(verge_serve::http::serve(
        listener,
        app,
        verge_serve::http::Limits::from_config(
            cfg.http.max_connections,
            cfg.http.header_timeout_secs,
            cfg.http.idle_timeout_secs,
        ),
        "HTTP",
        async {
            let _ = stopped.await;
        },
    ));
    let manager = Manager {
        http_addr,
        broker,
        registry,
        rpc,
        client,
        http,
        stop_http,
        tunnels,
        forwards,
        socks,
        rtmp,
        listener_tasks,
    };
    tracing::info!(listening = %manager.listeners().summary(), broker = broker_kind, "manager up");
    Ok(manager)
}

impl Manager {
    /// What this manager listens on, as bound: `http`, and with the embedded broker `mqtt`
    /// (and `mqtts` with its TLS listener). The ready file's contents.
    pub fn listeners(&self) -> Listeners {
        let mut listeners = Listeners::new().with("http", self.http_addr);
        for (i, addr) in self.forwards.iter().enumerate() {
            listeners = listeners.with(&format!("forward-{i}"), *addr);
        }
        if let Some(addr) = self.socks {
            listeners = listeners.with("socks", addr);
        }
        if let Some(addr) = self.rtmp {
            listeners = listeners.with("rtmp", addr);
        }
        if let Some(broker) = &self.broker {
            listeners = listeners.with("mqtt", broker.listen);
            if let Some(tls) = broker.tls_listen {
                listeners = listeners.with("mqtts", tls);
            }
        }
        listeners
    }

    /// Stops HTTP and leaves the broker cleanly.
    pub async fn stop(self) {
        for task in &self.listener_tasks {
            task.abort();
        }
        let _ = self.stop_http.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
    }
}

/// Runs a manager until `shutdown` completes; once it is up, writes what it bound to
/// `ready_file` (see [`verge_protocol::ready`]).
pub async fn run(
    cfg: &ManagerConfig,
    ready_file: Option<&Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ManagerError> {
    let manager = start(cfg).await?;
    if let Some(path) = ready_file
        && let Err(e) = manager.listeners().write_atomic(path)
    {
        manager.stop().await;
        return Err(e.into());
    }
    shutdown.await;
    manager.stop().await;
    Ok(())
}

/// A listener on `addr` when one is set; `error` says which failed to bind.
async fn bind_if_set(
    addr: Option<SocketAddr>,
    error: fn(SocketAddr, std::io::Error) -> ManagerError,
) -> Result<Option<tokio::net::TcpListener>, ManagerError> {
    match addr {
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| error(addr, source)),
        None => Ok(None),
    }
}

/// The address a local client dials to reach a listener bound to `addr`.
pub fn loopback_for(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}
