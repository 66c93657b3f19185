//! The agent's copy of the fleet's channel keys, filled from the retained, signed message the
//! manager keeps on `{p}/v1/a/{agent}/keys` and read by the RTMP listener at `publish`.

use std::sync::{Arc, RwLock};

use verge_protocol::channel_keys::{ChannelKey, Keys};

#[derive(Clone, Default)]
pub struct KeyTable {
    inner: Arc<RwLock<Keys>>,
    /// The version held, for publishers that must stop when their key is revoked.
    version: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Shows how many keys are held, never the keys.
impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyTable({} keys)", self.len())
    }
}

impl KeyTable {
    /// Takes a table from the manager unless it is older than the one held.
    pub fn replace(&self, keys: Keys) -> bool {
        let mut held = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if keys.version < held.version {
            return false;
        }
        let version = keys.version;
        *held = keys;
        drop(held);
        self.version.send_replace(version);
        true
    }

    /// Notified whenever a new table is taken.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The stream a key publishes to.
    pub fn lookup(&self, key: &str) -> Option<ChannelKey> {
        let held = self.inner.read().unwrap_or_else(|p| p.into_inner());
        held.keys
            .iter()
            .find(|k| verge_protocol::secret::secrets_equal(&k.key, key))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|k| k.keys.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(version: u64, key: &str) -> Keys {
        Keys {
            version,
            keys: vec![ChannelKey {
                key: key.into(),
                app: "live".into(),
                name: "cam".into(),
                agent: None,
            }],
        }
    }

    #[test]
    fn newer_tables_replace_older_ones_and_keys_map_to_streams() {
        let t = KeyTable::default();
        assert!(t.replace(table(2, "k2")));
        assert!(!t.replace(table(1, "k1")), "an older table is ignored");
        assert_eq!(t.lookup("k2").map(|k| k.name), Some("cam".into()));
        assert_eq!(t.lookup("k1"), None);
        assert!(t.replace(Keys {
            version: 3,
            keys: vec![]
        }));
        assert!(t.is_empty());
    }
}
