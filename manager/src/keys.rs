//! Channel keys: issued and revoked through any manager's API, kept in the database
//! ([`crate::db::keys`]) so every manager's RTMP router and API see the same table, and handed
//! to every agent as a retained, signed message on `{p}/v1/a/{agent}/keys` (the whole table
//! each time: it is small, and a retained whole table cannot be half-applied).
//!
//! Each manager keeps a copy of the table for the paths that must not wait on the database
//! (routing a publisher, sealing the table for an agent); it is read again when the table's
//! version in the database changes ([`KeyStore::follow`], from the versions [`crate::shared`]
//! polls; [`KeyStore::refresh`], by the RTMP router before it routes), so a key issued through
//! another manager works here at once. With the database down the copy keeps serving; changes
//! wait for it.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rumqttc::QoS;
use verge_protocol::channel_keys::{ChannelKey, Keys, SealedKeys};
use verge_protocol::envelope;
use verge_protocol::sealed::PrivateKey;
use verge_protocol::secret::MacKey;

use crate::db::index::Index;
pub use crate::db::keys::Issued;
use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The database cannot be used now (starting, or down): keys cannot change.
    #[error("channel keys cannot change now: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not a key table: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

/// Longest wait for the database when reading the table again.
pub const REFRESH_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

pub struct KeyStore {
    index: Index,
    table: RwLock<Keys>,
}

impl KeyStore {
    /// An empty copy until the database answers ([`KeyStore::refresh`]).
    pub fn new(index: Index) -> Self {
        Self {
            index,
            table: RwLock::new(Keys::default()),
        }
    }

    pub fn snapshot(&self) -> Keys {
        self.table.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// The agent the key of `app/name` is bound to, if it has a key and the key an agent.
    pub fn bound_agent(&self, app: &str, name: &str) -> Option<String> {
        self.snapshot()
            .keys
            .into_iter()
            .find(|k| k.app == app && k.name == name)
            .and_then(|k| k.agent)
    }

    fn db(&self) -> Result<&crate::db::Db, KeyStoreError> {
        self.index.db().map_err(KeyStoreError::Unavailable)
    }

    /// Reads the table again if its version in the database moved; whether it did. Gives up
    /// after [`REFRESH_WITHIN`] (a publisher waits on it), keeping the copy held.
    pub async fn refresh(&self) -> Result<bool, KeyStoreError> {
        let db = self.db()?;
        let refresh = async {
            let version = db.versions().await?.keys;
            self.follow(version).await
        };
        tokio::time::timeout(REFRESH_WITHIN, refresh)
            .await
            .unwrap_or_else(|_| {
                Err(KeyStoreError::Unavailable(format!(
                    "the database did not answer within {REFRESH_WITHIN:?}"
                )))
            })
    }

    /// Reads the table again if `version` (the database's, just read) is not the copy's;
    /// whether it was not.
    pub async fn follow(&self, version: u64) -> Result<bool, KeyStoreError> {
        if version == self.snapshot().version {
            return Ok(false);
        }
        self.reload(self.db()?).await?;
        Ok(true)
    }

    async fn reload(&self, db: &crate::db::Db) -> Result<(), KeyStoreError> {
        let table = db.key_table().await?;
        let mut held = self.table.write().unwrap_or_else(|p| p.into_inner());
        // Two reads racing: the newer table wins.
        if table.version >= held.version {
            *held = table;
        }
        Ok(())
    }

    /// The key of `app/name`, issued now if it has none; with `agent`, bound to that agent
    /// (an existing key keeps its secret and moves to it).
    pub async fn issue(
        &self,
        app: &str,
        name: &str,
        agent: Option<&str>,
    ) -> Result<(ChannelKey, Issued), KeyStoreError> {
        let db = self.db()?;
        let fresh = verge_protocol::secret::random_secret();
        let issued = db.issue_key(app, name, agent, &fresh).await?;
        self.reload(db).await?;
        Ok(issued)
    }

    /// Revokes the key of `app/name`; false if it had none.
    pub async fn revoke(&self, app: &str, name: &str) -> Result<bool, KeyStoreError> {
        let db = self.db()?;
        let revoked = db.revoke_key(app, name).await?;
        self.reload(db).await?;
        Ok(revoked)
    }

    /// Moves the keys of a key file (where they were kept before the database held them) into
    /// the database, then renames the file to `….imported` so that a key revoked later is not
    /// brought back by the next start. Returns how many keys were added; 0 without a file.
    pub async fn import_file(&self, path: &Path) -> Result<usize, KeyStoreError> {
        let shown = path.display().to_string();
        let io = |source| KeyStoreError::Io {
            path: shown.clone(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        let table: Keys =
            serde_json::from_slice(&bytes).map_err(|source| KeyStoreError::Corrupt {
                path: shown.clone(),
                source,
            })?;
        let db = self.db()?;
        let added = db.import_keys(&table).await?;
        let mut imported = path.as_os_str().to_owned();
        imported.push(".imported");
        std::fs::rename(path, &imported).map_err(io)?;
        self.reload(db).await?;
        Ok(added)
    }
}

/// Publishes the key table to agents, retained and signed with each agent's secret.
#[derive(Clone)]
pub struct KeyDistributor {
    pub store: Arc<KeyStore>,
    pub wire: crate::wire::Wire,
}

impl KeyDistributor {
    /// To one agent; on a task, since a publish may wait for the link.
    pub fn send_to(&self, agent: &str) {
        let Some(secret) = self.wire.credentials.secret_of(agent) else {
            return;
        };
        let mut table = self.store.snapshot();
        // An agent gets the keys bound to it and those bound to none.
        table
            .keys
            .retain(|k| k.agent.as_deref().is_none_or(|a| a == agent));
        if table.version == 0 {
            // No key was ever issued: agents start empty anyway, and a fleet connecting at
            // once should not cost the broker a retained topic per agent for nothing.
            return;
        }
        let sealed = match table.seal(&PrivateKey::new(&secret)) {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::error!(%agent, error = %e, "could not seal the key table");
                return;
            }
        };
        let payload = envelope::seal(
            &MacKey::new(&secret),
            &self.wire.manager_id,
            verge_protocol::now_ms(),
            &sealed,
        );
        let (client, topic, agent) = (
            self.wire.client.clone(),
            self.wire.topics.keys(agent),
            agent.to_string(),
        );
        tokio::spawn(async move {
            if let Err(e) = client.publish(topic, QoS::AtLeastOnce, true, payload).await {
                tracing::warn!(%agent, error = %e, "could not publish channel keys");
            }
        });
    }

    /// Whether the retained table of `agent` (as the broker now holds it) must be sent again:
    /// cleared, replaced by something that does not open, or older than the store's.
    pub fn clobbered(&self, agent: &str, payload: &[u8]) -> bool {
        let Some(secret) = self.wire.credentials.secret_of(agent) else {
            return false;
        };
        let version = self.store.snapshot().version;
        if version == 0 {
            return false;
        }
        match envelope::open::<SealedKeys>(payload, &MacKey::new(&secret)) {
            Ok(opened) => match opened.body.open(&PrivateKey::new(&secret)) {
                Ok(keys) => keys.version < version,
                Err(_) => true,
            },
            Err(_) => true,
        }
    }

    /// To every agent the registry knows.
    pub fn send_to_all(&self, registry: &Registry) {
        for agent in registry.list() {
            self.send_to(&agent.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_file_is_imported_once_and_the_copy_follows_the_database() {
        let (db, dir) = crate::db::scratch("keystore").await;
        let index = Index::ready_for_tests(db.clone());
        let store = KeyStore::new(index);
        let path = dir.join("keys.json");
        assert_eq!(store.import_file(&path).await.unwrap(), 0, "no file");
        let old = Keys {
            version: 7,
            keys: vec![ChannelKey {
                key: "from-file".into(),
                app: "live".into(),
                name: "cam".into(),
                agent: Some("edge-1".into()),
            }],
        };
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(store.import_file(&path).await.unwrap(), 1);
        assert!(!path.exists() && dir.join("keys.json.imported").exists());
        assert_eq!(store.bound_agent("live", "cam").as_deref(), Some("edge-1"));

        // Another manager (the same database) revokes it: the copy follows on refresh.
        assert!(db.revoke_key("live", "cam").await.unwrap());
        assert!(store.refresh().await.unwrap());
        assert!(store.snapshot().keys.is_empty());
        assert!(!store.refresh().await.unwrap(), "nothing moved");
        let (key, issued) = store.issue("live", "cam", None).await.unwrap();
        assert_eq!(issued, Issued::New);
        assert_eq!(store.snapshot().keys, vec![key]);

        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            store.import_file(&path).await,
            Err(KeyStoreError::Corrupt { .. })
        ));
        assert!(
            path.exists(),
            "a file that does not parse is left for the operator"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
