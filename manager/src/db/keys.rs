//! The `channel_keys` table and the `versions` rows: channel keys issued through any manager,
//! and the version of each table the managers share, raised in the same transaction as every
//! change so that a manager learns of another's change by polling a few rows
//! ([`Db::versions`]).

use sqlx::Row;
use verge_protocol::channel_keys::{ChannelKey, Keys};

use super::{Db, DbError};

/// What [`Db::issue_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    New,
    Existing,
    /// The key existed and now names another agent.
    Rebound,
}

/// The version of each shared table (0: never changed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    pub keys: u64,
    pub agents: u64,
}

/// The table names in `versions`.
pub(super) const KEYS: &str = "keys";
pub(super) const AGENTS: &str = "agents";

/// Raises `$name`'s version to at least now (Unix ms) and above its last, inside `$tx`; the
/// new version.
macro_rules! bump {
    ($db:expr, $tx:expr, $name:expr) => {{
        let sql = $db.sql(
            "INSERT INTO versions (name, version) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE \
             SET version = MAX(versions.version + 1, excluded.version) RETURNING version",
            "INSERT INTO versions (name, version) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE \
             SET version = GREATEST(versions.version + 1, excluded.version) RETURNING version",
        );
        let now = verge_protocol::now_ms() as i64;
        let version: i64 = sqlx::query(sql)
            .bind($name)
            .bind(now)
            .fetch_one(&mut *$tx)
            .await?
            .try_get(0)?;
        version.max(0) as u64
    }};
}
pub(super) use bump;

impl Db {
    /// The version of every shared table.
    pub async fn versions(&self) -> Result<Versions, DbError> {
        let sql = "SELECT name, version FROM versions";
        let rows: Vec<(String, i64)> = on_pool!(self, |pool| {
            sqlx::query(sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?
        });
        let mut versions = Versions::default();
        for (name, version) in rows {
            let version = version.max(0) as u64;
            match name.as_str() {
                KEYS => versions.keys = version,
                AGENTS => versions.agents = version,
                _ => {}
            }
        }
        Ok(versions)
    }

    /// The whole key table with its version, read in one transaction.
    pub async fn key_table(&self) -> Result<Keys, DbError> {
        let version_sql = self.sql(
            "SELECT version FROM versions WHERE name = ?1",
            "SELECT version FROM versions WHERE name = $1",
        );
        let keys_sql = "SELECT key, app, name, agent FROM channel_keys ORDER BY app, name";
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let version: Option<i64> = sqlx::query(version_sql)
                .bind(KEYS)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
            let keys = sqlx::query(keys_sql)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| {
                    Ok(ChannelKey {
                        key: row.try_get(0)?,
                        app: row.try_get(1)?,
                        name: row.try_get(2)?,
                        agent: row.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            tx.commit().await?;
            Ok(Keys {
                version: version.unwrap_or(0).max(0) as u64,
                keys,
            })
        })
    }

    /// The key of `app/name`: `fresh` is stored as its key if it has none; with `agent`, the
    /// key is bound to that agent (an existing key keeps its secret and moves to it). Two
    /// managers issuing the same stream's key at once both get the one stored.
    pub async fn issue_key(
        &self,
        app: &str,
        name: &str,
        agent: Option<&str>,
        fresh: &str,
    ) -> Result<(ChannelKey, Issued), DbError> {
        let insert = self.sql(
            "INSERT INTO channel_keys (app, name, key, agent) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (app, name) DO NOTHING",
            "INSERT INTO channel_keys (app, name, key, agent) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app, name) DO NOTHING",
        );
        let rebind = self.sql(
            "UPDATE channel_keys SET agent = ?3 WHERE app = ?1 AND name = ?2 \
             AND (agent IS NULL OR agent <> ?3)",
            "UPDATE channel_keys SET agent = $3 WHERE app = $1 AND name = $2 \
             AND (agent IS NULL OR agent <> $3)",
        );
        let select = self.sql(
            "SELECT key, agent FROM channel_keys WHERE app = ?1 AND name = ?2",
            "SELECT key, agent FROM channel_keys WHERE app = $1 AND name = $2",
        );
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(insert)
                .bind(app)
                .bind(name)
                .bind(fresh)
                .bind(agent)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            let rebound = match agent {
                Some(agent) if !inserted => {
                    sqlx::query(rebind)
                        .bind(app)
                        .bind(name)
                        .bind(agent)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1
                }
                _ => false,
            };
            let row = sqlx::query(select)
                .bind(app)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            let key = ChannelKey {
                key: row.try_get(0)?,
                app: app.to_string(),
                name: name.to_string(),
                agent: row.try_get(1)?,
            };
            if inserted || rebound {
                bump!(self, tx, KEYS);
            }
            tx.commit().await?;
            let issued = match (inserted, rebound) {
                (true, _) => Issued::New,
                (false, true) => Issued::Rebound,
                (false, false) => Issued::Existing,
            };
            Ok((key, issued))
        })
    }

    /// Revokes the key of `app/name`; false if it had none.
    pub async fn revoke_key(&self, app: &str, name: &str) -> Result<bool, DbError> {
        let delete = self.sql(
            "DELETE FROM channel_keys WHERE app = ?1 AND name = ?2",
            "DELETE FROM channel_keys WHERE app = $1 AND name = $2",
        );
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query(delete)
                .bind(app)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if deleted {
                bump!(self, tx, KEYS);
            }
            tx.commit().await?;
            Ok(deleted)
        })
    }

    /// Adds the keys of a table kept before the database held them (`[keys] file`): streams
    /// that have a key keep theirs. Returns how many were added.
    pub async fn import_keys(&self, table: &Keys) -> Result<usize, DbError> {
        let insert = self.sql(
            "INSERT INTO channel_keys (app, name, key, agent) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING",
            "INSERT INTO channel_keys (app, name, key, agent) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        );
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut added = 0;
            for k in &table.keys {
                added += sqlx::query(insert)
                    .bind(&k.app)
                    .bind(&k.name)
                    .bind(&k.key)
                    .bind(k.agent.as_deref())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as usize;
            }
            if added > 0 {
                bump!(self, tx, KEYS);
            }
            tx.commit().await?;
            Ok(added)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_issued_once_rebound_revoked_and_versioned() {
        let (db, dir) = crate::db::scratch("keys").await;
        assert_eq!(db.versions().await.unwrap(), Versions::default());
        let (first, issued) = db.issue_key("live", "cam", None, "k1").await.unwrap();
        assert_eq!((issued, first.key.as_str()), (Issued::New, "k1"));
        let v1 = db.versions().await.unwrap().keys;
        assert!(v1 > 0);
        // Another manager issuing the same stream gets the stored key, and nothing changes.
        let (again, issued) = db.issue_key("live", "cam", None, "k2").await.unwrap();
        assert_eq!((issued, again.key.as_str()), (Issued::Existing, "k1"));
        assert_eq!(db.versions().await.unwrap().keys, v1);
        let (bound, issued) = db
            .issue_key("live", "cam", Some("edge-1"), "k3")
            .await
            .unwrap();
        assert_eq!(issued, Issued::Rebound);
        assert_eq!(
            (bound.key.as_str(), bound.agent.as_deref()),
            ("k1", Some("edge-1"))
        );
        let (_, issued) = db
            .issue_key("live", "cam", Some("edge-1"), "k4")
            .await
            .unwrap();
        assert_eq!(issued, Issued::Existing);
        let v2 = db.versions().await.unwrap().keys;
        assert!(
            v2 > v1,
            "every change raises the version, even within a millisecond"
        );
        let table = db.key_table().await.unwrap();
        assert_eq!((table.version, table.keys), (v2, vec![bound]));

        assert!(db.revoke_key("live", "cam").await.unwrap());
        assert!(!db.revoke_key("live", "cam").await.unwrap());
        let table = db.key_table().await.unwrap();
        assert!(table.keys.is_empty() && table.version > v2);

        // An old file's table: new streams are added, a stream with a key keeps its own.
        db.issue_key("live", "kept", None, "mine").await.unwrap();
        let old = Keys {
            version: 5,
            keys: vec![
                ChannelKey {
                    key: "old-kept".into(),
                    app: "live".into(),
                    name: "kept".into(),
                    agent: None,
                },
                ChannelKey {
                    key: "old-new".into(),
                    app: "live".into(),
                    name: "new".into(),
                    agent: Some("edge-2".into()),
                },
            ],
        };
        assert_eq!(db.import_keys(&old).await.unwrap(), 1);
        assert_eq!(db.import_keys(&old).await.unwrap(), 0);
        let keys: Vec<_> = db
            .key_table()
            .await
            .unwrap()
            .keys
            .into_iter()
            .map(|k| (k.name, k.key))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("kept".to_string(), "mine".to_string()),
                ("new".to_string(), "old-new".to_string())
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
