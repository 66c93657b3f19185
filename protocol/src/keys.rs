//! Channel keys (LiveGo's model): a publisher proves it may publish a stream by using a secret
//! key in place of the stream name; players use the name. The manager issues keys and keeps
//! every agent's copy in a retained message on `{p}/v1/a/{agent}/keys`, signed with that
//! agent's secret, so an agent that restarts (or reconnects) has them at once.

use serde::{Deserialize, Serialize};

use crate::envelope::{Kind, Message};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelKey {
    pub key: String,
    pub app: String,
    pub name: String,
    /// The agent this key publishes into; only that agent is given it. None: every agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// The whole key table; each message replaces the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// Grows with every change (Unix ms of the change), so an agent can ignore an older table.
    pub version: u64,
    #[serde(default)]
    pub keys: Vec<ChannelKey>,
}

impl Message for Keys {
    const KIND: Kind = Kind::Keys;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_table_wire_shape() {
        let keys: Keys = serde_json::from_str(
            r#"{"version":3,"keys":[{"key":"k","app":"live","name":"cam","extra":1}]}"#,
        )
        .unwrap();
        assert_eq!(keys.keys[0].name, "cam");
        assert_eq!(
            keys.keys[0].agent, None,
            "a key without an agent is for every agent"
        );
        let bound = ChannelKey {
            key: "k".into(),
            app: "live".into(),
            name: "cam".into(),
            agent: Some("edge-1".into()),
        };
        let text = serde_json::to_string(&bound).unwrap();
        assert!(text.contains(r#""agent":"edge-1""#), "{text}");
        assert_eq!(serde_json::from_str::<ChannelKey>(&text).unwrap(), bound);
        assert!(
            serde_json::from_str::<Keys>(r#"{"keys":[]}"#).is_err(),
            "version is required"
        );
    }
}
