//! `manager.toml`. Every key has a default, so an empty file runs a manager with its embedded
//! broker; `conf/manager.toml` documents them all. Sections that later releases read
//! (`[extra_ice.cloudflare]`) are accepted and reported as not yet used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use verge_mqtt::BrokerUrl;
use verge_mqtt::process::{ConfigFileError, load_valid, parse_valid};
use verge_protocol::topic::Topics;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ManagerConfig {
    pub http: HttpConfig,
    pub broker: BrokerConfig,
    pub mqtt: MqttConfig,
    pub enrollment: EnrollmentConfig,
    pub agents: Vec<EnrolledAgent>,
    pub keys: KeysConfig,
    pub extra_ice: ExtraIce,
    pub tunnel: TunnelConfig,
    pub rtmp: RtmpConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub cascade: CascadeConfig,
    /// `[[nodes]]`: live777 liveion nodes managed beside the agents (liveman's key).
    pub nodes: Vec<NodeConfig>,
    /// `[net4mqtt]`: liveion nodes found on the broker (liveman's section); off without it.
    pub net4mqtt: Option<Net4mqttConfig>,
    /// `[record_sync]`: liveion nodes' recordings into the index (liveman's section).
    pub record_sync: RecordSyncConfig,
    /// `[storage]`: where boxes upload their recordings; none keeps them on the boxes.
    pub storage: Option<StorageConfig>,
    pub runtime: verge_mqtt::process::RuntimeConfig,
    /// Sections this build does not read yet, kept to warn about them.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// `[cluster]`: where the manager sends a stream's WebRTC viewers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Viewers of one stream the node that holds it serves itself (within its own `sub_max`
    /// and `egress_kbps`) before viewers go to cloud nodes relaying it. Without cloud nodes
    /// online, the holder serves every viewer it can.
    pub edge_viewers: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { edge_viewers: 2 }
    }
}

/// How the manager follows a liveion node's streams (liveman's `mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeMode {
    /// `GET {url}/api/streams/` every 3 s.
    #[default]
    Poll,
    /// `GET {url}/api/sse/streams`: each change as it happens.
    Sse,
}

/// One `[[nodes]]` entry: a live777 liveion node (liveman's keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Its name in the fleet (`GET /api/nodes/`, `?nodes=`, `/api/whep/{alias}/{stream}`).
    pub alias: String,
    /// Its HTTP API, `http(s)://host:port`.
    pub url: String,
    /// Sent as `Authorization: Bearer` on every call to it (never to viewers).
    pub token: String,
    pub mode: NodeMode,
}

/// `[record_sync]`: liveion nodes' recording sessions synced into the index (liveman's keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordSyncConfig {
    pub enabled: bool,
    /// Each running node is asked this often, in milliseconds.
    pub tick_ms: u64,
    /// Sessions taken from one node per ask.
    pub limit: u32,
}

impl Default for RecordSyncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick_ms: 10_000,
            limit: 100,
        }
    }
}

/// `[net4mqtt]`: liveion nodes behind NAT that announce themselves on net4mqtt's topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Net4mqttConfig {
    /// The manager's id in net4mqtt's topics (liveman's `alias`).
    pub alias: String,
    /// The topics' first level (liveman takes it from its `mqtt_url`'s path).
    pub prefix: String,
    /// Shown as each node's URL: `http://{node}.{domain}` (liveman's).
    pub domain: String,
    /// Nodes taken from the broker at most; presence of more is ignored (a broker anyone can
    /// publish to must not grow the manager's memory).
    pub max_nodes: usize,
}

impl Default for Net4mqttConfig {
    fn default() -> Self {
        Self {
            alias: "verge".into(),
            prefix: "net4mqtt".into(),
            domain: "net4mqtt.local".into(),
            max_nodes: 1024,
        }
    }
}

/// `[cascade]`: relays of a stream to cloud nodes (liveman's section and key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// A relay without viewers for this many milliseconds is closed by its node.
    pub maximum_idle_time: u64,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self {
            maximum_idle_time: 60_000,
        }
    }
}

/// `[http]`: the API, WHEP, the dashboard; and what one peer can hold (see `verge_serve::http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Connections served at once; more wait in the kernel's queue until one closes.
    pub max_connections: usize,
    /// A request's headers must be complete this long after the accept or the previous
    /// response (so also the keep-alive wait for the next request).
    pub header_timeout_secs: u64,
    /// A connection with no byte moving either way this long is closed.
    pub idle_timeout_secs: u64,
    /// The manager's URL as other servers reach it (liveman's key), e.g.
    /// `https://manager.example.com`: liveion nodes pull cascades from its `/whep/`. Default:
    /// `http://` and `listen` (with `127.0.0.1` for an unspecified address).
    pub public: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = verge_serve::http::Limits::default();
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            // The public face: browsers, players and API clients by the thousand.
            max_connections: 8192,
            header_timeout_secs: limits.header_timeout.as_secs(),
            idle_timeout_secs: limits.idle_timeout.as_secs(),
            public: None,
        }
    }
}

impl HttpConfig {
    /// `public` without a trailing `/`, or the default (see `public`).
    pub fn public_url(&self) -> String {
        match self.public.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => p.trim_end_matches('/').to_string(),
            None => {
                let mut at = self.listen;
                if at.ip().is_unspecified() {
                    at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{at}")
            }
        }
    }
}

/// `[tunnel]`: TCP streams to agents behind NAT, carried over MQTT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// Open streams survive an MQTT outage this long, then both ends reset them.
    pub resume_secs: u64,
    /// Tunnel streams open at once to one agent.
    pub max_streams: usize,
    /// Each stream's first flow-control window (what it buffers in each direction), in KiB.
    pub window_kib: u32,
    /// What a stream's window may grow to on a long fast path, in KiB: a window carries at
    /// most one window per round trip, so 100 Mbit/s over 100 ms needs about 2.5 MiB.
    pub max_window_kib: u32,
    /// Port forwards: a listener here whose connections reach `target` on `agent`.
    pub forward: Vec<Forward>,
    /// A SOCKS5 proxy into the fleet: host `{agent}` or `{agent}.verge`, port one of the
    /// agent's own listeners.
    pub socks_listen: Option<SocketAddr>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            resume_secs: 30,
            max_streams: 256,
            window_kib: 512,
            max_window_kib: 4096,
            forward: Vec::new(),
            socks_listen: None,
        }
    }
}

/// `[storage]`: recordings uploaded by the boxes, so they outlive them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(rename = "type")]
    pub kind: StorageKind,
    /// `fs`: the folder objects go under.
    #[serde(default)]
    pub root: Option<std::path::PathBuf>,
    /// `s3`: the bucket, and the endpoint of an S3-compatible server (AWS's own when empty).
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` win.
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// Put before every object's path (`recordings/`).
    #[serde(default)]
    pub prefix: String,
    /// `https://host/bucket/key` rather than `https://bucket.host/key` (MinIO-like servers).
    #[serde(default)]
    pub path_style: bool,
    /// Playback answers 302 to a presigned GET instead of streaming through the manager.
    #[serde(default)]
    pub redirect: bool,
    /// How long an upload or download URL stays valid, seconds.
    #[serde(default = "default_presign_secs")]
    pub presign_secs: u64,
    /// Days kept in storage (whole UTC days, today included): older days' objects and index
    /// rows are deleted hourly. 0 keeps everything.
    #[serde(default)]
    pub keep_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Fs,
    S3,
}

impl StorageConfig {
    fn validate(&self) -> Result<(), String> {
        match self.kind {
            StorageKind::Fs if self.root.is_none() => Err("type = \"fs\" needs root".into()),
            StorageKind::S3 if self.bucket.is_empty() => Err("type = \"s3\" needs bucket".into()),
            _ if !(1..=604_800).contains(&self.presign_secs) => {
                Err("presign_secs must be 1..=604800 (S3's longest)".into())
            }
            _ if !self.prefix.is_empty() && !self.prefix.ends_with('/') => {
                Err(format!("prefix {:?} must end with /", self.prefix))
            }
            _ => Ok(()),
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_presign_secs() -> u64 {
    900
}

/// `[database]` (liveman's keys): the recording index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres(ql)://…`; the `DATABASE_URL` environment variable wins.
    pub url: String,
    pub max_connections: u32,
    /// Seconds to wait for a connection.
    pub connect_timeout: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://./liveman.db?mode=rwc".into(),
            max_connections: 10,
            connect_timeout: 30,
        }
    }
}

impl DatabaseConfig {
    /// The URL in effect: `DATABASE_URL` if set, else `url`.
    pub fn effective_url(&self) -> String {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| self.url.clone())
    }
}

/// `[auth]` (liveman's keys): who may use the HTTP API, WHEP and the RTMP router. With none of
/// `tokens`, `secret` or `accounts` set, everything is open.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static bearer tokens with every right.
    pub tokens: Vec<String>,
    /// The HS256 key of JWTs (`{id, exp, mode}`). Without it, a random key is made at start, so
    /// logins work but their tokens end with the process.
    pub secret: Option<String>,
    /// Dashboard and API accounts; `POST /api/login` turns one into an admin JWT.
    pub accounts: Vec<Account>,
    /// Lifetime of the JWT `POST /api/login` returns, in seconds.
    pub login_ttl_secs: Option<u64>,
}

/// `[[auth.accounts]]`: `password` is plain text, or an argon2 PHC string (`$argon2id$…`,
/// made by `verge-manager hash-password`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub username: String,
    pub password: String,
}

/// `[rtmp]`: the RTMP router. Publishers dial `rtmp://manager/{app}/{key}`; the router finds
/// the agent that owns the key and hands the connection to it through the tunnel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// The router's listener; none (the default): no router.
    pub listen: Option<SocketAddr>,
    /// From accept to `publish` (handshake, `connect`, `createStream`): a client slower than
    /// this is closed.
    pub handshake_timeout_secs: u64,
    /// Connections one source address may hold open, publishing or not.
    pub max_per_source: usize,
    /// Connections that have not yet reached `publish`, from all sources together; more are
    /// closed at accept, so a flood never holds publishers already through.
    pub max_handshakes: usize,
    /// Connections in all.
    pub max_connections: usize,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            handshake_timeout_secs: 10,
            max_per_source: 8,
            max_handshakes: 64,
            max_connections: 1024,
        }
    }
}

/// `[[tunnel.forward]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub listen: SocketAddr,
    pub agent: String,
    /// What the agent dials: `rtmp`, `http` or a `host:port` of its `[tunnel] allow`.
    pub target: String,
}

/// `[extra_ice]`: ICE servers handed to WHEP viewers (in `Link` headers) and to the agent's
/// peer connection: the static list, coturn credentials and Cloudflare's TURN.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ExtraIce {
    pub ice_servers: Vec<verge_protocol::whep::IceServer>,
    /// coturn's TURN REST credentials (`use-auth-secret` / `static-auth-secret`): each WHEP
    /// session gets its own username and password, valid for `ttl` seconds.
    pub coturn: Option<Coturn>,
    /// Cloudflare's Realtime TURN: credentials from its API.
    pub cloudflare: Option<Cloudflare>,
    /// Viewers get only the manager's servers, not also the agent's own (`[webrtc]
    /// ice_servers`, which the agent reports with each answer).
    pub override_upstream_ice_servers: bool,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// `[extra_ice.coturn]` (liveman's keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coturn {
    /// coturn's `static-auth-secret`.
    pub secret: String,
    /// e.g. `["turn:turn.example.net:3478?transport=udp", "turns:turn.example.net:5349"]`.
    pub urls: Vec<String>,
    /// Seconds a credential stays valid.
    #[serde(default = "default_coturn_ttl")]
    pub ttl: u64,
}

fn default_coturn_ttl() -> u64 {
    86_400
}

/// `[extra_ice.cloudflare]` (liveman's keys, plus `api_url` for a stand-in).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloudflare {
    /// The TURN key's id.
    pub key_id: String,
    /// The TURN key's API token.
    pub api_token: String,
    /// Seconds the credentials stay valid (Cloudflare allows at most 172800).
    #[serde(default = "default_cloudflare_ttl")]
    pub ttl: u64,
    #[serde(default = "default_cloudflare_api")]
    pub api_url: String,
}

fn default_cloudflare_ttl() -> u64 {
    86_400
}

fn default_cloudflare_api() -> String {
    "https://rtc.live.cloudflare.com/v1/turn/keys".into()
}

/// The embedded broker; not started when `[mqtt] url` names an external one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// MQTT sessions at once (agents and managers); more are refused at CONNECT.
    pub max_connections: usize,
    /// A connection that has not sent CONNECT this long after it was accepted is closed.
    pub connect_timeout_ms: u16,
    /// Each listener's pause after every accept, at least 1: with `connect_timeout_ms`, the
    /// bound on connections waiting for CONNECT (see [`ManagerConfig::descriptors_needed`]).
    pub accept_interval_ms: u64,
    /// Each listener's queue of connections not yet accepted (capped by the kernel's
    /// `net.core.somaxconn`): a fleet reconnecting at once must not overflow it.
    pub backlog: u32,
    pub max_payload_size: usize,
    /// Commit-log segment size of each fleet-wide filter (presence, state, replies), in bytes.
    pub segment_size: usize,
    /// Segments kept per fleet-wide filter.
    pub segment_count: usize,
    /// Commit-log segment size of each agent's own request filter, in bytes.
    pub agent_segment_size: usize,
    /// Segments kept per agent filter.
    pub agent_segment_count: usize,
    /// Commit-log segment size of each agent's tunnel filter, in bytes: what the manager may
    /// have in flight towards one agent's tunnel streams is three quarters of
    /// `tunnel_segment_size × (tunnel_segment_count − 1)`. The log exists only for agents
    /// whose tunnel was used, and stays at its high-water mark.
    pub tunnel_segment_size: usize,
    /// Segments kept per agent tunnel filter.
    pub tunnel_segment_count: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls_listen: None,
            cert: None,
            key: None,
            max_connections: 20_000,
            connect_timeout_ms: 10_000,
            accept_interval_ms: 1,
            backlog: 4096,
            max_payload_size: verge_protocol::envelope::MAX_PAYLOAD + 64 * 1024,
            segment_size: 4 * 1024 * 1024,
            segment_count: 4,
            agent_segment_size: 256 * 1024,
            agent_segment_count: 2,
            tunnel_segment_size: 1024 * 1024,
            tunnel_segment_count: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// An external broker (`mqtt://user:pass@host:1883`); empty runs the embedded one.
    pub url: Option<String>,
    /// Other nodes of the external broker's cluster, tried in turn when `url` fails or drops.
    pub fallback_urls: Vec<String>,
    pub prefix: String,
    /// This manager instance's id: its RPC replies come back on `{p}/v1/m/{id}/res`.
    pub id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub keepalive_secs: u16,
    /// Default RPC timeout.
    pub rpc_timeout_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            fallback_urls: Vec::new(),
            prefix: "verge".into(),
            id: "manager".into(),
            username: None,
            password: None,
            ca_file: None,
            keepalive_secs: 10,
            rpc_timeout_ms: 3000,
        }
    }
}

/// Channel keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Where keys were kept before the database held them: imported into the database once it
    /// answers, then renamed to `….imported`. Nothing is written here any more.
    pub file: PathBuf,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("verge-keys.json"),
        }
    }
}

/// Admits agents whose secret is derived from this one (`verge secret <id>` prints it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolledAgent {
    pub id: String,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Runtime(String),
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("[mqtt] url: {0}")]
    Url(#[from] verge_mqtt::url::UrlError),
    #[error("[mqtt] prefix {0:?} is not a valid topic prefix")]
    Prefix(String),
    #[error("[mqtt] id {id:?}: {source}")]
    ManagerId {
        id: String,
        source: verge_protocol::id::IdError,
    },
    #[error("[[agents]] id {id:?}: {source}")]
    AgentId {
        id: String,
        source: verge_protocol::id::IdError,
    },
    #[error("[[tunnel.forward]] target {0:?} must be 1 to 255 bytes (rtmp, http or host:port)")]
    ForwardTarget(String),
    #[error("[[agents]] {0:?} is listed twice")]
    DuplicateAgent(String),
    #[error("[[agents]] {0:?} has an empty secret")]
    EmptySecret(String),
    #[error("[broker] tls_listen needs both cert and key")]
    TlsFiles,
    #[error(
        "[broker] accept_interval_ms = 0: at least 1, or nothing bounds the connections that never send CONNECT"
    )]
    AcceptInterval,
    #[error("[extra_ice.cloudflare] needs key_id and api_token, and ttl 1..=172800")]
    Cloudflare,
    #[error("[storage] {0}")]
    Storage(String),
    #[error("[[nodes]] alias {alias:?}: {source}")]
    NodeAlias {
        alias: String,
        source: verge_protocol::id::IdError,
    },
    #[error("[[nodes]] {0:?} is listed twice")]
    DuplicateNode(String),
    #[error("[[nodes]] {alias:?} url {url:?}: {reason}")]
    NodeUrl {
        alias: String,
        url: String,
        reason: String,
    },
    #[error("[http] public {0:?} is not an http(s):// URL")]
    PublicUrl(String),
    #[error("[net4mqtt] {0}")]
    Net4mqtt(String),
}

impl ManagerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_valid(path, Self::validate)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        parse_valid(text, "manager config", Self::validate)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.topics()?;
        if let Some(cf) = &self.extra_ice.cloudflare
            && (cf.key_id.is_empty() || cf.api_token.is_empty() || !(1..=172_800).contains(&cf.ttl))
        {
            return Err(ConfigError::Cloudflare);
        }
        self.external_broker()?;
        self.fallback_urls()?;
        if let Some(storage) = &self.storage {
            storage.validate().map_err(ConfigError::Storage)?;
        }
        verge_protocol::id::validate(&self.mqtt.id).map_err(|source| ConfigError::ManagerId {
            id: self.mqtt.id.clone(),
            source,
        })?;
        let mut seen = std::collections::HashSet::new();
        for agent in &self.agents {
            verge_protocol::id::validate(&agent.id).map_err(|source| ConfigError::AgentId {
                id: agent.id.clone(),
                source,
            })?;
            if !seen.insert(agent.id.as_str()) {
                return Err(ConfigError::DuplicateAgent(agent.id.clone()));
            }
            if agent.secret.is_empty() {
                return Err(ConfigError::EmptySecret(agent.id.clone()));
            }
        }
        for forward in &self.tunnel.forward {
            verge_protocol::id::validate(&forward.agent).map_err(|source| {
                ConfigError::AgentId {
                    id: forward.agent.clone(),
                    source,
                }
            })?;
            if forward.target.is_empty() || forward.target.len() > 255 {
                return Err(ConfigError::ForwardTarget(forward.target.clone()));
            }
        }
        if self.broker.tls_listen.is_some()
            && (self.broker.cert.is_none() || self.broker.key.is_none())
        {
            return Err(ConfigError::TlsFiles);
        }
        if self.broker.accept_interval_ms == 0 {
            return Err(ConfigError::AcceptInterval);
        }
        self.runtime.check().map_err(ConfigError::Runtime)?;
        let mut aliases = std::collections::HashSet::new();
        for node in &self.nodes {
            verge_protocol::id::validate(&node.alias).map_err(|source| ConfigError::NodeAlias {
                alias: node.alias.clone(),
                source,
            })?;
            if !aliases.insert(node.alias.as_str()) {
                return Err(ConfigError::DuplicateNode(node.alias.clone()));
            }
            crate::web_client::Url::parse(&node.url).map_err(|e| ConfigError::NodeUrl {
                alias: node.alias.clone(),
                url: node.url.clone(),
                reason: e.to_string(),
            })?;
        }
        if let Some(n) = &self.net4mqtt {
            for (key, value) in [("alias", &n.alias), ("prefix", &n.prefix)] {
                if value.is_empty() || value.contains(['/', '+', '#']) {
                    return Err(ConfigError::Net4mqtt(format!(
                        "{key} {value:?} must be one topic level (not empty, no '/', '+', '#')"
                    )));
                }
            }
        }
        let public = self.http.public_url();
        if crate::web_client::Url::parse(&public).is_err() {
            return Err(ConfigError::PublicUrl(public));
        }
        Ok(())
    }

    /// The sizes of every tunnel link to an agent: `[tunnel]`, and with the embedded broker
    /// (`embedded`) the `[broker]` segments that bound what it holds for one agent
    /// (`verge_tunnel::Limits` says where each value comes from).
    pub fn tunnel_limits(&self, embedded: bool) -> verge_tunnel::Limits {
        let broker = if embedded {
            verge_tunnel::Broker::Embedded {
                agent_segment_size: self.broker.agent_segment_size,
                agent_segment_count: self.broker.agent_segment_count,
                tunnel_segment_size: self.broker.tunnel_segment_size,
                tunnel_segment_count: self.broker.tunnel_segment_count,
            }
        } else {
            verge_tunnel::Broker::External
        };
        let sizes = verge_tunnel::Sizes {
            window_kib: self.tunnel.window_kib,
            max_window_kib: self.tunnel.max_window_kib,
            max_streams: self.tunnel.max_streams,
            resume_secs: self.tunnel.resume_secs,
        };
        verge_tunnel::Limits::manager(sizes, broker)
    }

    /// Descriptors this configuration lets peers hold at once, plus the manager's own: what
    /// the open-files limit (systemd's `LimitNOFILE`) must allow, or a flood of connections
    /// stops every listener at once (issue #27). HTTP, the embedded broker and the RTMP router
    /// are capped; `[[tunnel.forward]]` and `socks_listen` are not, so they are not counted.
    pub fn descriptors_needed(&self) -> u64 {
        /// The manager's own: runtime, database files, log, the broker's threads and links.
        const OWN: u64 = 256;
        let broker = if self.external_broker().ok().flatten().is_some() {
            0
        } else {
            let listeners = 1 + usize::from(self.broker.tls_listen.is_some());
            verge_broker::descriptors_at_most(
                self.broker.max_connections,
                listeners,
                self.broker.connect_timeout_ms,
                self.broker.accept_interval_ms,
            )
        };
        let rtmp = if self.rtmp.listen.is_some() {
            self.rtmp.max_connections as u64
        } else {
            0
        };
        OWN + self.http.max_connections.max(1) as u64
            + broker
            + rtmp
            + u64::from(self.database.max_connections)
    }

    pub fn topics(&self) -> Result<Topics, ConfigError> {
        Topics::new(&self.mqtt.prefix).map_err(|_| ConfigError::Prefix(self.mqtt.prefix.clone()))
    }

    /// The external broker, if one is configured.
    pub fn external_broker(&self) -> Result<Option<BrokerUrl>, ConfigError> {
        match self.mqtt.url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Ok(Some(BrokerUrl::parse(url)?)),
            None => Ok(None),
        }
    }

    /// `[mqtt] fallback_urls`, parsed.
    pub fn fallback_urls(&self) -> Result<Vec<BrokerUrl>, ConfigError> {
        let urls = self.mqtt.fallback_urls.iter().map(|u| BrokerUrl::parse(u));
        Ok(urls.collect::<Result<_, _>>()?)
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.mqtt.rpc_timeout_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_runs_the_embedded_broker_on_livego_and_liveman_ports() {
        let cfg = ManagerConfig::parse("").unwrap();
        assert_eq!(cfg.http.listen.port(), 8080);
        assert_eq!(cfg.broker.listen.port(), 1883);
        assert!(cfg.external_broker().unwrap().is_none());
        assert!(cfg.broker.max_payload_size >= 1024 * 1024);
    }

    #[test]
    fn the_documented_config_parses_with_the_defaults_it_states() {
        let cfg = ManagerConfig::parse(include_str!("../../conf/manager.toml")).unwrap();
        assert!(cfg.unknown.is_empty(), "{:?}", cfg.unknown.keys());
        let defaults = ManagerConfig::parse("").unwrap();
        assert_eq!(format!("{cfg:?}"), format!("{defaults:?}"));
        let err = ManagerConfig::parse("[runtime]\nworker_threads = 257").unwrap_err();
        assert!(err.to_string().contains("at most 256"), "{err}");
    }

    #[test]
    fn liveion_nodes_take_livemans_keys_and_bad_ones_are_refused() {
        let cfg = ManagerConfig::parse(
            "[http]\npublic = \"https://m.example.com/\"\n\
             [[nodes]]\nalias = \"sfu-1\"\nurl = \"http://10.0.0.5:7777\"\ntoken = \"t\"\n\
             [[nodes]]\nalias = \"sfu-2\"\nurl = \"https://sfu2.example.com\"\nmode = \"sse\"\n",
        )
        .unwrap();
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(
            (cfg.nodes[0].mode, cfg.nodes[1].mode),
            (NodeMode::Poll, NodeMode::Sse)
        );
        assert_eq!(cfg.http.public_url(), "https://m.example.com");
        assert_eq!(
            ManagerConfig::parse("").unwrap().http.public_url(),
            "http://127.0.0.1:8080"
        );
        for (bad, says) in [
            ("[[nodes]]\nalias = \"a b\"\nurl = \"http://x\"\n", "alias"),
            ("[[nodes]]\nalias = \"\"\nurl = \"http://x\"\n", "alias"),
            ("[[nodes]]\nalias = \"a\"\nurl = \"x:7777\"\n", "url"),
            (
                "[[nodes]]\nalias = \"a\"\nurl = \"http://x\"\n[[nodes]]\nalias = \"a\"\nurl = \"http://y\"\n",
                "twice",
            ),
            (
                "[[nodes]]\nalias = \"a\"\nurl = \"http://x\"\nmode = \"push\"\n",
                "mode",
            ),
            (
                "[[nodes]]\nalias = \"a\"\nurl = \"http://x\"\nsub_max = 3\n",
                "sub_max",
            ),
            ("[http]\npublic = \"manager:8080\"\n", "public"),
        ] {
            let err = ManagerConfig::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn seed_sections_are_read() {
        let cfg = ManagerConfig::parse(
            "[database]\nurl = \"sqlite://./x.db\"\nmax_connections = 3\n[auth]\ntokens = [\"t\"]\n\
             [[auth.accounts]]\nusername = \"live777\"\npassword = \"live777\"\n\
             [[agents]]\nid = \"e1\"\nsecret = \"s\"\n",
        )
        .unwrap();
        assert_eq!(cfg.database.url, "sqlite://./x.db");
        assert_eq!(cfg.database.max_connections, 3);
        assert_eq!(cfg.auth.tokens, ["t"]);
        assert_eq!(cfg.auth.accounts[0].username, "live777");
        assert!(cfg.unknown.is_empty());
        assert_eq!(cfg.agents.len(), 1);
        let default = ManagerConfig::parse("").unwrap();
        assert_eq!(default.database.url, "sqlite://./liveman.db?mode=rwc");
        assert_eq!(default.database.connect_timeout, 30);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = |t: &str| ManagerConfig::parse(t).unwrap_err().to_string();
        assert!(
            err("[[agents]]\nid = \"a\"\nsecret = \"s\"\n[[agents]]\nid = \"a\"\nsecret = \"t\"")
                .contains("twice")
        );
        assert!(err("[[agents]]\nid = \"a b\"\nsecret = \"s\"").contains("\"a b\""));
        assert!(err("[[agents]]\nid = \"a\"\nsecret = \"\"").contains("empty secret"));
        assert!(err("[mqtt]\nurl = \"tcp://x\"").contains("mqtt://"));
        assert!(err("[broker]\ntls_listen = \"0.0.0.0:8883\"").contains("cert and key"));
        assert!(err("[http]\nlisten = \"nowhere\"").contains("listen"));
        assert!(err("[broker]\nlisen = \"0.0.0.0:1\"").contains("unknown field"));
        assert!(err("[broker]\naccept_interval_ms = 0").contains("at least 1"));
        assert!(err("[broker]\nconnect_timeout_ms = 70000").contains("connect_timeout_ms"));
    }

    #[test]
    fn the_defaults_fit_in_the_shipped_open_files_limit() {
        // conf/systemd/verge-manager.service: LimitNOFILE=65536.
        let mut cfg = ManagerConfig::parse("").unwrap();
        assert_eq!(cfg.descriptors_needed(), 256 + 8192 + 30_001 + 10);
        cfg.broker.tls_listen = Some(SocketAddr::from(([0, 0, 0, 0], 8883)));
        cfg.rtmp.listen = Some(SocketAddr::from(([0, 0, 0, 0], 1935)));
        assert!(
            cfg.descriptors_needed() < 65_536,
            "{}",
            cfg.descriptors_needed()
        );
    }
}
