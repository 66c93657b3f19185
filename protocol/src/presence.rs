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

#[cfg(test)]
mod tests {
    use super::*;

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
