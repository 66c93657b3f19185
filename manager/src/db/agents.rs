//! The `agents` table: agents enrolled (`POST /api/agents`) or revoked (`DELETE
//! /api/agents/{id}`) at run time, each with its secret until it is revoked. At start, once the
//! database answers, the table is loaded into the broker's credentials ([`load`]), so that an
//! agent enrolled or revoked at run time stays so across restarts. Every change raises the
//! `agents` version, so the other managers load the table again (`crate::shared`).

use sqlx::Row;
use verge_broker::Credentials;

use super::keys::{AGENTS, bump};
use super::{Db, DbError};

/// One row of the `agents` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    /// None once revoked.
    pub secret: Option<String>,
    pub revoked: bool,
}

impl Db {
    /// Every row, for loading the credentials at start.
    pub async fn agent_rows(&self) -> Result<Vec<AgentRow>, DbError> {
        let sql = "SELECT id, secret, revoked_at IS NOT NULL AS revoked FROM agents ORDER BY id";
        on_pool!(self, |pool| sqlx::query(sql)
            .fetch_all(pool)
            .await?
            .iter()
            .map(agent_row)
            .collect())
    }

    /// Stores a new agent; `false` if the id has a row already (enrolled or revoked).
    pub async fn insert_agent(&self, id: &str, secret: &str) -> Result<bool, DbError> {
        let sql = self.sql(
            "INSERT INTO agents (id, secret, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (id) DO NOTHING",
            "INSERT INTO agents (id, secret) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        );
        let now = verge_protocol::time::rfc3339(verge_protocol::now_ms());
        let inserted = on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let query = sqlx::query(sql).bind(id).bind(secret);
            let query = if self.stamps_times() {
                query.bind(&now)
            } else {
                query
            };
            let inserted = query.execute(&mut *tx).await?.rows_affected() == 1;
            if inserted {
                bump!(self, tx, AGENTS);
            }
            tx.commit().await?;
            inserted
        });
        Ok(inserted)
    }

    /// Marks `id` revoked (adding its row if it had none) and forgets its secret.
    pub async fn revoke_agent(&self, id: &str) -> Result<(), DbError> {
        let sql = self.sql(
            "INSERT INTO agents (id, secret, created_at, revoked_at) VALUES (?1, NULL, ?2, ?2) \
             ON CONFLICT (id) DO UPDATE SET secret = NULL, \
             revoked_at = COALESCE(agents.revoked_at, excluded.revoked_at)",
            "INSERT INTO agents (id, secret, revoked_at) VALUES ($1, NULL, now()) \
             ON CONFLICT (id) DO UPDATE SET secret = NULL, \
             revoked_at = COALESCE(agents.revoked_at, excluded.revoked_at)",
        );
        let now = verge_protocol::time::rfc3339(verge_protocol::now_ms());
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let query = sqlx::query(sql).bind(id);
            let query = if self.stamps_times() {
                query.bind(&now)
            } else {
                query
            };
            query.execute(&mut *tx).await?;
            bump!(self, tx, AGENTS);
            tx.commit().await?;
        });
        Ok(())
    }
}

/// A row of either backend.
fn agent_row<R: Row>(row: &R) -> Result<AgentRow, DbError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AgentRow {
        id: row.try_get(0)?,
        secret: row.try_get(1)?,
        revoked: row.try_get(2)?,
    })
}

/// Applies the table to the broker's credentials (at start, once the database answers).
pub fn load(credentials: &Credentials, rows: &[AgentRow]) {
    for row in rows {
        match (&row.secret, row.revoked) {
            (_, true) => credentials.revoke(&row.id),
            (Some(secret), false) => credentials.insert(&row.id, secret),
            (None, false) => {}
        }
    }
}
