//! The manager's database: SQLite (embedded, the default) or PostgreSQL, chosen by the URL's
//! scheme, migrated at start-up (one migration set per backend in `manager/migrations/`: the
//! column types differ, `UUID` and `TIMESTAMPTZ` on PostgreSQL, text on SQLite). Every query
//! the manager makes is in this folder, a file per table:
//!
//! - [`recordings`]: the recording index's rows (a stream-day each): upserts from agents, and
//!   the playback API's reads.
//! - [`node_recordings`]: liveion nodes' recording sessions, synced from the nodes
//!   (`crate::liveion::records`), and the playback API's reads of them.
//! - [`agents`]: agents enrolled or revoked at run time, and loading them into the broker's
//!   credentials.
//! - [`keys`]: channel keys, and the version of each table the managers share.
//! - [`index`]: [`index::Index`], the database as the rest of the manager holds it: ready or
//!   not (migrated once it answers, then checked every 5 s), and the worker that stores the
//!   index rows agents send and acknowledges them.
//!
//! The pool connects lazily, so a manager whose database is down still starts: the index
//! answers "not ready" (the API says 503 with the reason, index events stay unacknowledged)
//! and becomes ready once the database answers and the migrations have run.

/// `$body` with `$pool` bound to the pool of whichever backend `$db` is: the same code, typed
/// once per backend (sqlx's queries carry their backend in their type).
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

pub mod agents;
pub mod index;
pub mod keys;
pub mod node_recordings;
pub mod recordings;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("[database] url {0:?}: not sqlite:// or postgres(ql)://")]
    Scheme(String),
    #[error("[database] url: {0}")]
    Url(sqlx::Error),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// A lazily connecting pool for `url`.
    pub fn open(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Self, DbError> {
        let max = max_connections.max(1);
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(DbError::Url)?
                .busy_timeout(connect_timeout);
            Ok(Db::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(connect_timeout)
                    .connect_lazy_with(options),
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(DbError::Url)?;
            Ok(Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(connect_timeout)
                    .connect_lazy_with(options),
            ))
        } else {
            Err(DbError::Scheme(redact(url)))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// The statement for this backend: `sqlite`'s or `postgres`'s.
    fn sql(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Db::Sqlite(_) => sqlite,
            Db::Postgres(_) => postgres,
        }
    }

    /// Whether the rows' times are stamped by the manager (SQLite has no time type, so the
    /// manager binds them as RFC 3339 text) rather than by the database (`now()`).
    fn stamps_times(&self) -> bool {
        matches!(self, Db::Sqlite(_))
    }

    /// Runs the migrations of this backend (idempotent).
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A migrated SQLite database in a fresh folder under the system's temp dir, for unit tests:
/// the database and the folder (the test removes it).
#[cfg(test)]
pub(crate) async fn scratch(label: &str) -> (Db, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("verge-db-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let url = format!("sqlite://{}/index.db?mode=rwc", dir.display());
    let db = Db::open(&url, 2, Duration::from_secs(5)).expect("open");
    db.migrate().await.expect("migrate");
    (db, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(matches!(
            Db::open("mysql://x", 1, Duration::from_secs(1)),
            Err(DbError::Scheme(_))
        ));
        assert_eq!(
            redact("postgresql://user:secret@db:5432/verge"),
            "postgresql://user:***@db:5432/verge"
        );
        assert_eq!(redact("sqlite://./liveman.db"), "sqlite://./liveman.db");
    }
}
