//! Channel keys: issued and revoked through the API, kept in a JSON file so they survive a
//! manager restart, and handed to every agent as a retained, signed message on
//! `{p}/v1/a/{agent}/keys` (the whole table each time: it is small, and a retained whole table
//! cannot be half-applied).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rumqttc::{AsyncClient, QoS};
use verge_broker::Credentials;
use verge_protocol::channel_keys::{ChannelKey, Keys, SealedKeys};
use verge_protocol::envelope;
use verge_protocol::sealed::PrivateKey;
use verge_protocol::secret::MacKey;
use verge_protocol::topic::Topics;

use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
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

/// What [`KeyStore::issue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    New,
    Existing,
    /// The key existed and now names another agent.
    Rebound,
}

pub struct KeyStore {
    path: PathBuf,
    table: RwLock<Keys>,
}

impl KeyStore {
    /// Loads the table from `path`; a missing file is an empty table.
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        let shown = path.display().to_string();
        let table = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| KeyStoreError::Corrupt {
                    path: shown.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Keys::default(),
            Err(source) => {
                return Err(KeyStoreError::Io {
                    path: shown,
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            table: RwLock::new(table),
        })
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

    /// The key of `app/name`, issued now if it has none; with `agent`, bound to that agent
    /// (an existing key keeps its secret and moves to it).
    pub fn issue(
        &self,
        app: &str,
        name: &str,
        agent: Option<&str>,
    ) -> Result<(ChannelKey, Issued), KeyStoreError> {
        self.change(|table| {
            if let Some(existing) = table
                .keys
                .iter_mut()
                .find(|k| k.app == app && k.name == name)
            {
                if agent.is_some() && existing.agent.as_deref() != agent {
                    existing.agent = agent.map(str::to_string);
                    return ((existing.clone(), Issued::Rebound), true);
                }
                return ((existing.clone(), Issued::Existing), false);
            }
            let key = ChannelKey {
                key: verge_protocol::secret::random_secret(),
                app: app.to_string(),
                name: name.to_string(),
                agent: agent.map(str::to_string),
            };
            table.keys.push(key.clone());
            ((key, Issued::New), true)
        })
    }

    /// Revokes the key of `app/name`; false if it had none.
    pub fn revoke(&self, app: &str, name: &str) -> Result<bool, KeyStoreError> {
        self.change(|table| {
            let before = table.keys.len();
            table.keys.retain(|k| !(k.app == app && k.name == name));
            (before != table.keys.len(), before != table.keys.len())
        })
    }

    /// Applies `f`; when it reports a change, bumps the version and writes the file first.
    fn change<T>(&self, f: impl FnOnce(&mut Keys) -> (T, bool)) -> Result<T, KeyStoreError> {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut next = table.clone();
        let (out, changed) = f(&mut next);
        if changed {
            next.version = verge_protocol::now_ms().max(table.version + 1);
            self.write(&next)?;
            *table = next;
        }
        Ok(out)
    }

    /// Writes atomically (temp file + rename), so a crash never leaves half a table.
    fn write(&self, table: &Keys) -> Result<(), KeyStoreError> {
        let shown = self.path.display().to_string();
        let io = |source| KeyStoreError::Io {
            path: shown.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(table).expect("key tables serialize");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Publishes the key table to agents, retained and signed with each agent's secret.
#[derive(Clone)]
pub struct KeyDistributor {
    pub store: Arc<KeyStore>,
    pub client: AsyncClient,
    pub topics: Topics,
    pub credentials: Credentials,
    pub manager_id: String,
}

impl KeyDistributor {
    /// To one agent; on a task, since a publish may wait for the link.
    pub fn send_to(&self, agent: &str) {
        let Some(secret) = self.credentials.secret_of(agent) else {
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
            &self.manager_id,
            verge_protocol::now_ms(),
            &sealed,
        );
        let (client, topic, agent) = (
            self.client.clone(),
            self.topics.keys(agent),
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
        let Some(secret) = self.credentials.secret_of(agent) else {
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

    #[test]
    fn keys_are_issued_once_revoked_and_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("verge-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let store = KeyStore::open(&path).unwrap();
        let (first, issued) = store.issue("live", "cam", None).unwrap();
        assert_eq!(issued, Issued::New);
        let (again, issued) = store.issue("live", "cam", None).unwrap();
        assert_eq!(issued, Issued::Existing);
        assert_eq!(first, again);
        // Binding it to an agent keeps its secret.
        let (bound, issued) = store.issue("live", "cam", Some("edge-1")).unwrap();
        assert_eq!(issued, Issued::Rebound);
        assert_eq!(
            (bound.key.as_str(), bound.agent.as_deref()),
            (first.key.as_str(), Some("edge-1"))
        );
        let (_, issued) = store.issue("live", "cam", Some("edge-1")).unwrap();
        assert_eq!(issued, Issued::Existing);
        let first = bound;
        let v1 = store.snapshot().version;
        assert!(v1 > 0);

        let reopened = KeyStore::open(&path).unwrap();
        assert_eq!(reopened.snapshot().keys, vec![first]);
        assert!(reopened.revoke("live", "cam").unwrap());
        assert!(!reopened.revoke("live", "cam").unwrap());
        assert!(reopened.snapshot().version > v1);
        assert!(KeyStore::open(&path).unwrap().snapshot().keys.is_empty());

        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            KeyStore::open(&path),
            Err(KeyStoreError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
