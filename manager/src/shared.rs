//! What the managers of one fleet share, followed: they keep no state another manager needs
//! in memory (DESIGN.md, the cluster), so each one follows the database's shared tables.
//! Every [`EVERY`] this manager reads the `versions` rows ([`crate::db::keys`]):
//!
//! - the key table moved: its copy is read again ([`KeyStore::follow`]);
//! - the agents table moved: the agents are loaded into the credentials again (enrolled or
//!   revoked through another manager), and, with an external broker, the fleet is asked to
//!   announce itself, since this manager ignored the presence of an agent it did not know.
//!
//! In its first round with the database it imports the key file of earlier releases.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::db::index::Index;
use crate::keys::{KeyStore, KeyStoreError};

/// How often the shared tables' versions are read.
pub const EVERY: Duration = Duration::from_secs(1);

/// Longest wait for the database in one round.
const ROUND_WITHIN: Duration = Duration::from_secs(3);

pub struct Follower {
    pub index: Index,
    pub keys: Arc<KeyStore>,
    pub wire: crate::wire::Wire,
    /// With an external broker: the fleet is asked to announce itself.
    pub ask: bool,
    /// `[keys] file`, imported once.
    pub key_file: PathBuf,
}

impl Follower {
    pub async fn run(self) {
        let mut agents_version = None;
        let mut imported = false;
        loop {
            if let Ok(db) = self.index.db() {
                if !imported {
                    imported = self.import().await;
                }
                let round = async {
                    let versions = db.versions().await?;
                    if self.keys.follow(versions.keys).await.unwrap_or(false) {
                        tracing::info!(
                            version = versions.keys,
                            "channel keys changed in the database"
                        );
                    }
                    if agents_version != Some(versions.agents) {
                        let rows = db.agent_rows().await?;
                        let changed = rows.iter().any(|row| {
                            row.revoked != self.wire.credentials.is_revoked(&row.id)
                                || (row.secret.is_some()
                                    && row.secret != self.wire.credentials.secret_of(&row.id))
                        });
                        crate::db::agents::load(&self.wire.credentials, &rows);
                        // Also in the first round: an agent enrolled between the start-up
                        // load and now may have announced itself to deaf ears.
                        if changed {
                            tracing::info!(
                                agents = rows.len(),
                                "agents enrolled or revoked through another manager loaded"
                            );
                            if self.ask {
                                crate::fleet::ask_fleet(&self.wire);
                            }
                        }
                        agents_version = Some(versions.agents);
                    }
                    Ok::<_, crate::db::DbError>(())
                };
                match tokio::time::timeout(ROUND_WITHIN, round).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "following the shared tables"),
                    Err(_) => {
                        tracing::debug!("the database did not answer within {ROUND_WITHIN:?}")
                    }
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    }

    /// Imports the key file; whether that is done (imported, absent, or not a key table: the
    /// operator's to fix, not retried every second).
    async fn import(&self) -> bool {
        let file = self.key_file.display().to_string();
        match self.keys.import_file(&self.key_file).await {
            Ok(0) => true,
            Ok(added) => {
                tracing::info!(%file, keys = added, "channel keys imported from the key file into the database; the file was renamed to .imported");
                true
            }
            Err(e @ KeyStoreError::Corrupt { .. }) => {
                tracing::error!(%file, error = %e, "the key file was not imported");
                true
            }
            Err(e) => {
                tracing::warn!(%file, error = %e, "the key file was not imported yet; retrying");
                false
            }
        }
    }
}
