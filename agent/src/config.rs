//! `agent.toml`: every key has a default except `id` and `secret`; `conf/agent.toml` documents
//! them all.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use verge_mqtt::BrokerUrl;
use verge_mqtt::process::{ConfigFileError, load_valid, parse_valid};
use verge_protocol::topic::Topics;
use verge_protocol::whep::IceServer;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This box's name in the fleet; also its broker client id and username.
    pub id: String,
    /// Shared with the manager: broker password and message key.
    pub secret: String,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub rtmp: RtmpConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub webrtc: WebrtcConfig,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    #[serde(default)]
    pub hls: HlsConfig,
    #[serde(default)]
    pub record: RecordConfig,
    #[serde(default)]
    pub runtime: verge_mqtt::process::RuntimeConfig,
}

/// `[node]`: what this agent is for in the cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `edge` (a box: its own publishers) or `cloud` (relays streams from boxes to viewers).
    pub role: verge_protocol::relay::NodeRole,
}

/// `[record]`: recording to fMP4 + DASH on the box.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    pub dir: PathBuf,
    /// Stream patterns to record from the moment they are published (`live/*`); none: off.
    pub streams: Vec<String>,
    /// A segment lasts at least this long, to the next keyframe.
    pub segment_secs: u32,
    /// Days kept; 0 keeps everything.
    pub keep_days: u32,
    /// Days whose local copy is kept once they are wholly in the manager's `[storage]`; 0
    /// keeps them (until `keep_days`).
    pub keep_local_days: u32,
    /// `[record.upload]`: recordings copied to the manager's `[storage]`.
    pub upload: UploadConfig,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./recordings"),
            streams: Vec::new(),
            segment_secs: 4,
            keep_days: 0,
            keep_local_days: 0,
            upload: UploadConfig::default(),
        }
    }
}

/// `[record.upload]`: finished segments and each day's manifest go to the manager's
/// `[storage]` (when it has one), over HTTPS to URLs the manager presigns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Off: recordings stay on this box only, whatever the manager offers.
    pub enabled: bool,
    /// The uploads' share of the uplink, kbit/s; 0: no cap.
    pub max_kbps: u32,
    /// `[record] keep_local_days`, filled in from there.
    #[serde(skip)]
    pub keep_local_days: u32,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_kbps: 0,
            keep_local_days: 0,
        }
    }
}

impl RecordConfig {
    pub fn settings(&self) -> crate::record::RecordSettings {
        crate::record::RecordSettings {
            dir: self.dir.clone(),
            streams: self.streams.clone(),
            segment_ms: self.segment_secs.clamp(1, 60) * 1000,
            keep_days: self.keep_days,
        }
    }
}

/// `[hls]`: live HLS (fMP4 segments) of the streams someone watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// LiveGo's HLS port.
    pub listen: SocketAddr,
    /// A segment lasts at least this long, to the next keyframe.
    pub segment_secs: u32,
    /// Segments in the playlist.
    pub window: usize,
    /// A stream's segmenting stops this long after its last HLS request.
    pub idle_secs: u64,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7002)),
            segment_secs: 2,
            window: 6,
            idle_secs: 30,
        }
    }
}

impl HlsConfig {
    pub fn settings(&self) -> crate::hls::HlsSettings {
        crate::hls::HlsSettings {
            segment_ms: self.segment_secs.clamp(1, 60) * 1000,
            window: self.window.clamp(2, 100),
            idle: Duration::from_secs(self.idle_secs.max(1)),
        }
    }
}

/// `[tunnel]`: what the manager may reach on this box through the tunnel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// Targets the agent dials for the manager: `"rtmp"`, `"http"` and `"hls"` (this agent's
    /// own listeners, on loopback) or `"host:port"` exactly as the manager names it.
    pub allow: Vec<String>,
    /// Open streams survive an MQTT outage this long, then both ends reset them.
    pub resume_secs: u64,
    /// Tunnel streams open at once.
    pub max_streams: usize,
    /// Each stream's first flow-control window (what it buffers in each direction), in KiB.
    pub window_kib: u32,
    /// What a stream's window may grow to on a long fast path, in KiB: a window carries at
    /// most one window per round trip, so 100 Mbit/s over 100 ms needs about 2.5 MiB.
    pub max_window_kib: u32,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            allow: vec!["rtmp".into(), "http".into(), "hls".into()],
            resume_secs: 30,
            max_streams: 64,
            window_kib: 512,
            max_window_kib: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub url: String,
    /// Other nodes of the same broker cluster, tried in turn when `url` fails or drops.
    pub fallback_urls: Vec<String>,
    pub prefix: String,
    pub keepalive_secs: u16,
    pub ca_file: Option<PathBuf>,
    pub max_backoff_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            fallback_urls: Vec::new(),
            prefix: "verge".into(),
            keepalive_secs: 10,
            ca_file: None,
            // A box is back ≤ 2 s after its broker or manager returns, and a fleet's retries
            // are spread uniformly over those 2 s (examples/agent_swarm --restart).
            max_backoff_secs: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    /// Accept any stream name at `publish`; when false, publishers must use a channel key
    /// issued by the manager.
    pub noauth: bool,
    /// The URL publishers use, when `listen` is not what they can reach.
    pub advertise: Option<String>,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            noauth: false,
            advertise: None,
        }
    }
}

/// `[http]`: the agent's HTTP port; its limits apply to the HLS port as well, each port
/// counting its own connections (see `verge_serve::http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    /// Connections served at once per port; more wait in the kernel's queue.
    pub max_connections: usize,
    /// A request's headers must be complete this long after the accept or the previous
    /// response (so also the keep-alive wait for the next request).
    pub header_timeout_secs: u64,
    /// A connection with no byte moving either way this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = verge_serve::http::Limits::default();
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7001)),
            advertise: None,
            max_connections: 256,
            header_timeout_secs: limits.header_timeout.as_secs(),
            idle_timeout_secs: limits.idle_timeout.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub pub_max: u16,
    pub sub_max: u16,
    /// RPC calls handled at once; more are answered `busy`.
    pub rpc_concurrency: usize,
    /// WebRTC sessions one source address may hold at once (0: no cap).
    pub sessions_per_address: usize,
    /// WebRTC sessions one token may hold at once (0: no cap).
    pub sessions_per_token: usize,
    /// Media this node may send its viewers, kbit/s (its uplink budget); 0: no limit. The
    /// manager places viewers elsewhere past it.
    pub egress_kbps: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pub_max: 8,
            sub_max: 64,
            rpc_concurrency: 16,
            sessions_per_address: 16,
            sessions_per_token: 0,
            egress_kbps: 0,
        }
    }
}

/// `[webrtc]`: how WHEP viewers' peer connections are made.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// Local addresses for ICE host candidates; `0.0.0.0` means every non-loopback interface.
    pub udp_ips: Vec<IpAddr>,
    /// Public addresses to advertise instead (a box behind a known 1:1 NAT).
    pub nat_ips: Vec<String>,
    /// STUN/TURN servers the agent uses besides those the manager sends with each offer.
    pub ice_servers: Vec<IceServer>,
    /// Longest wait for ICE candidates before answering with those gathered so far.
    pub gather_timeout_ms: u64,
    /// A viewer whose connection is not up this long after the answer is dropped.
    pub connect_timeout_secs: u64,
    /// ICE without traffic this long is `disconnected`…
    pub disconnected_secs: u64,
    /// …and this much longer, `failed`: the viewer is closed.
    pub failed_secs: u64,
    /// What WebRTC viewers get of a stream with B-frames: `send` (every frame, which browsers
    /// decode and show in order, at the cost of the decoder's reorder delay) or `drop` (the I
    /// and P frames only: a fraction of the frame rate, no added delay).
    pub b_frames: BFrames,
    /// What WebRTC viewers hear: `opus` (the stream's AAC-LC transcoded once per stream while
    /// someone watches) or `off` (video only).
    pub audio: WebrtcAudio,
    /// Opus bitrate, kbit/s (6–510).
    pub audio_kbps: u32,
    /// A new viewer's cached GOP goes at this many times real time; 0: all at once.
    pub backlog_speedup: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebrtcAudio {
    #[default]
    Opus,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BFrames {
    #[default]
    Send,
    Drop,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        Self {
            udp_ips: vec![IpAddr::from([0, 0, 0, 0])],
            nat_ips: Vec::new(),
            ice_servers: Vec::new(),
            gather_timeout_ms: 1500,
            connect_timeout_secs: 15,
            disconnected_secs: 5,
            failed_secs: 10,
            b_frames: BFrames::Send,
            audio: WebrtcAudio::Opus,
            audio_kbps: 64,
            backlog_speedup: 4,
        }
    }
}

impl WebrtcConfig {
    pub fn settings(&self, limits: &Limits) -> crate::webrtc::WhepSettings {
        crate::webrtc::WhepSettings {
            client_caps: crate::webrtc::ClientCaps {
                per_address: limits.sessions_per_address,
                per_token: limits.sessions_per_token,
            },
            ice: crate::webrtc::IceSettings {
                udp_ips: self.udp_ips.clone(),
                nat_ips: self.nat_ips.clone(),
                disconnected_after: Duration::from_secs(self.disconnected_secs.max(1)),
                failed_after: Duration::from_secs(self.failed_secs.max(1)),
            },
            ice_servers: self.ice_servers.clone(),
            gather_timeout: Duration::from_millis(self.gather_timeout_ms.max(1)),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs.max(1)),
            drop_b_frames: self.b_frames == BFrames::Drop,
            backlog_speedup: self.backlog_speedup,
            opus_bitrate: (self.audio == WebrtcAudio::Opus)
                .then(|| self.audio_kbps.clamp(6, 510) * 1000),
            role: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("id {id:?}: {source}")]
    Id {
        id: String,
        source: verge_protocol::id::IdError,
    },
    #[error("secret must not be empty")]
    EmptySecret,
    #[error("[mqtt] url: {0}")]
    Url(#[from] verge_mqtt::url::UrlError),
    #[error("[mqtt] prefix {0:?} is not a valid topic prefix")]
    Prefix(String),
    #[error("[mqtt] keepalive_secs must be at least 1")]
    Keepalive,
    #[error("[webrtc] udp_ips must list at least one address")]
    NoUdpIps,
    #[error("{0}")]
    Runtime(String),
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_valid(path, Self::validate)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        parse_valid(text, "agent config", Self::validate)
    }

    /// A config for `id` with every default, for `verge up` and the swarm example.
    pub fn with_defaults(id: &str, secret: &str, url: &str) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
            mqtt: MqttConfig {
                url: url.into(),
                ..MqttConfig::default()
            },
            rtmp: RtmpConfig::default(),
            http: HttpConfig::default(),
            node: NodeConfig::default(),
            limits: Limits::default(),
            webrtc: WebrtcConfig::default(),
            tunnel: TunnelConfig::default(),
            hls: HlsConfig::default(),
            record: RecordConfig::default(),
            runtime: Default::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        verge_protocol::id::validate(&self.id).map_err(|source| ConfigError::Id {
            id: self.id.clone(),
            source,
        })?;
        if self.secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        self.broker_url()?;
        self.fallback_urls()?;
        self.topics()?;
        if self.mqtt.keepalive_secs == 0 {
            return Err(ConfigError::Keepalive);
        }
        if self.webrtc.udp_ips.is_empty() {
            return Err(ConfigError::NoUdpIps);
        }
        self.runtime.check().map_err(ConfigError::Runtime)?;
        Ok(())
    }

    pub fn broker_url(&self) -> Result<BrokerUrl, ConfigError> {
        Ok(BrokerUrl::parse(&self.mqtt.url)?)
    }

    /// `[mqtt] fallback_urls`, parsed.
    pub fn fallback_urls(&self) -> Result<Vec<BrokerUrl>, ConfigError> {
        let urls = self.mqtt.fallback_urls.iter().map(|u| BrokerUrl::parse(u));
        Ok(urls.collect::<Result<_, _>>()?)
    }

    pub fn topics(&self) -> Result<Topics, ConfigError> {
        Topics::new(&self.mqtt.prefix).map_err(|_| ConfigError::Prefix(self.mqtt.prefix.clone()))
    }

    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(u64::from(self.mqtt.keepalive_secs))
    }

    pub fn rtmp_url(&self) -> String {
        self.rtmp
            .advertise
            .clone()
            .unwrap_or_else(|| format!("rtmp://{}", reachable(self.rtmp.listen)))
    }

    pub fn http_url(&self) -> String {
        self.http
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", reachable(self.http.listen)))
    }
}

/// A listen address as others would dial it: a wildcard address becomes this host's name.
fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = AgentConfig::parse("id = \"edge-1\"\nsecret = \"s\"\n").unwrap();
        assert_eq!(cfg.mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(cfg.mqtt.prefix, "verge");
        assert_eq!(cfg.rtmp.listen.port(), 1935);
        assert_eq!(cfg.http.listen.port(), 7001);
        assert_eq!(cfg.keepalive(), Duration::from_secs(10));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = |text: &str| AgentConfig::parse(text).unwrap_err().to_string();
        assert!(err("secret = \"s\"").contains("missing field `id`"));
        assert!(err("id = \"a/b\"\nsecret = \"s\"").contains("id \"a/b\""));
        assert!(err("id = \"a\"\nsecret = \"\"").contains("secret"));
        assert!(err("id = \"a\"\nsecret = \"s\"\n[mqtt]\nurl = \"http://x\"").contains("mqtt://"));
        assert!(err("id = \"a\"\nsecret = \"s\"\n[mqtt]\nprefix = \"a/+\"").contains("prefix"));
        assert!(err("id = \"a\"\nsecret = \"s\"\ntypo = 1").contains("unknown field"));
        assert!(
            err("id = \"a\"\nsecret = \"s\"\n[runtime]\nworker_threads = 1000")
                .contains("at most 256")
        );
    }

    #[test]
    fn the_documented_config_parses_with_the_defaults_it_states() {
        let cfg = AgentConfig::parse(include_str!("../../conf/agent.toml")).unwrap();
        let defaults = AgentConfig::with_defaults("edge-1", "change-me", &cfg.mqtt.url);
        assert_eq!(format!("{cfg:?}"), format!("{defaults:?}"));
    }
}
