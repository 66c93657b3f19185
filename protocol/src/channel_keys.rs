//! Channel keys (LiveGo's model): a publisher proves it may publish a stream by using a secret
//! key in place of the stream name; players use the name. The manager issues keys and keeps
//! every agent's copy in a retained message on `{p}/v1/a/{agent}/keys`, signed with that
//! agent's secret and sealed for it alone ([`SealedKeys`]: a key lets whoever holds it publish,
//! and the broker lets any client read any topic), so an agent that restarts (or reconnects)
//! has them at once.

use serde::{Deserialize, Serialize};

use crate::envelope::{Kind, Message};
use crate::sealed::{PrivateError, PrivateKey, Way};

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

/// The key table as it travels: encrypted for its agent (see [`crate::sealed`]) inside the
/// signed envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedKeys(pub serde_json::Value);

impl Message for SealedKeys {
    const KIND: Kind = Kind::Keys;
}

impl Keys {
    pub fn seal(&self, key: &PrivateKey) -> Result<SealedKeys, PrivateError> {
        let value = serde_json::to_value(self).map_err(|_| PrivateError::NotJson)?;
        key.seal(Way::Request, &value).map(SealedKeys)
    }
}

impl SealedKeys {
    pub fn open(&self, key: &PrivateKey) -> Result<Keys, PrivateError> {
        let value = key.open(Way::Request, &self.0)?;
        serde_json::from_value(value).map_err(|_| PrivateError::NotJson)
    }
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

    #[test]
    fn key_tables_travel_sealed() {
        let table = Keys {
            version: 7,
            keys: vec![ChannelKey {
                key: "secret-key".into(),
                app: "live".into(),
                name: "cam".into(),
                agent: None,
            }],
        };
        let mine = PrivateKey::new("s1");
        let sealed = table.seal(&mine).unwrap();
        assert!(
            !serde_json::to_string(&sealed)
                .unwrap()
                .contains("secret-key")
        );
        assert_eq!(sealed.open(&mine), Ok(table));
        assert!(sealed.open(&PrivateKey::new("s2")).is_err());
    }
}
