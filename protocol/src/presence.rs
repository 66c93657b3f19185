//! What an agent announces about itself, retained on `{p}/v1/a/{agent}/presence`. The same
//! message with `status: offline` is the agent's last will and its goodbye on shutdown.

use serde::{Deserialize, Serialize};

use crate::envelope::{Kind, Message};
use crate::relay::NodeRole;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub status: Status,
    /// The agent's build version.
    pub version: String,
    /// When this agent process started (Unix ms).
    pub started_at: u64,
    /// The MQTT session this message belongs to; grows with every connection. An `offline`
    /// from an older session is a late will of a connection already replaced.
    #[serde(default)]
    pub session: u64,
    /// Features this agent serves (`rpc`, `rtmp`, `http-flv`, …).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `rtmp://host:port` publishers on the agent's network use.
    #[serde(default)]
    pub rtmp_url: Option<String>,
    /// `http://host:port` of the agent's own HTTP server.
    #[serde(default)]
    pub http_url: Option<String>,
    /// The MQTT keepalive the agent uses; the broker declares it gone after 1.5 × this.
    #[serde(default)]
    pub keepalive_secs: u16,
    /// Most publishers the agent accepts at once.
    #[serde(default)]
    pub pub_max: u16,
    /// Most viewers the agent serves at once.
    #[serde(default)]
    pub sub_max: u16,
    /// What the node is for (`[node] role`); absent means an edge box.
    #[serde(default, skip_serializing_if = "NodeRole::is_edge")]
    pub role: NodeRole,
    /// Most media the node may send its viewers, kbit/s (`[limits] egress_kbps`); 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_max_kbps: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Message for Presence {
    const KIND: Kind = Kind::Presence;
}

/// A manager's request that every agent publish its presence and state again, on `{p}/v1/ask`
/// as plain JSON (no envelope: one message for a fleet has no one agent's secret to sign
/// with). A manager sends it when it cannot count on the broker's retained messages: after it
/// connects to an external broker, whose cluster may keep them per node. Since anyone the
/// broker lets publish there can send it, an agent answers at most once per
/// [`ANNOUNCE_AT_MOST_EVERY_MS`] whatever asks, and a broker with ACLs lets only managers
/// write the topic (conf/mosquitto/acl).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceRequest {
    /// The manager asking, for logs.
    #[serde(default)]
    pub from: String,
}

impl AnnounceRequest {
    /// Parses a request; anything that is not one is `None`.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if payload.len() > 1024 {
            return None;
        }
        serde_json::from_slice(payload).ok()
    }
}

/// Requests to announce within this long of the last announcement are answered by it.
pub const ANNOUNCE_AT_MOST_EVERY_MS: u64 = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_requests_parse_loosely_and_refuse_junk() {
        let asked = AnnounceRequest::parse(br#"{"from":"m1","later":1}"#).unwrap();
        assert_eq!(asked.from, "m1");
        assert_eq!(AnnounceRequest::parse(b"{}").unwrap().from, "");
        assert!(AnnounceRequest::parse(b"").is_none());
        assert!(AnnounceRequest::parse(b"[1]").is_none());
        assert!(AnnounceRequest::parse(b"\xff\x00").is_none());
        let big = format!(r#"{{"from":"{}"}}"#, "m".repeat(2000));
        assert!(AnnounceRequest::parse(big.as_bytes()).is_none());
    }

    #[test]
    fn minimal_presence_decodes_with_defaults() {
        let p: Presence =
            serde_json::from_str(r#"{"status":"offline","version":"0.1.0","started_at":5}"#)
                .unwrap();
        assert_eq!(p.status, Status::Offline);
        assert!(p.capabilities.is_empty() && p.rtmp_url.is_none() && p.pub_max == 0);
        assert!(
            serde_json::from_str::<Presence>(r#"{"status":"asleep","version":"x","started_at":5}"#)
                .is_err()
        );
    }
}
