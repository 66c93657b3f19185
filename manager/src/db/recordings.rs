//! The `recordings` table: the recording index, one row per stream and UTC day, the day's
//! manifest and the agent that holds it. Agents' rows are upserted (a stream-day stays with
//! the agent that indexed it first); the playback API reads streams and days.

use serde::Serialize;
use sqlx::Row;
use verge_protocol::index::IndexRow;

use super::{Db, DbError};

/// One row as the API shows it (liveman's fields, plus the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recording {
    /// Its stream-day and manifest, as the agent indexed it (the fields stand at this level).
    #[serde(flatten)]
    pub row: IndexRow,
    pub agent: String,
    pub created_at: String,
    pub updated_at: String,
    /// When the day's manifest last reached `[storage]` (RFC 3339); `None`: only on its box.
    pub stored_at: Option<String>,
    /// Where the day can be played from: `box`, or `both` (the box and `[storage]`).
    pub location: &'static str,
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    Stored,
    /// The stream-day is indexed for another agent; nothing was changed.
    OtherAgent(String),
}

impl Db {
    /// Stores `row` for `agent`, or refreshes it; a stream-day indexed for another agent is
    /// left as it is.
    pub async fn upsert(&self, row: &IndexRow, agent: &str) -> Result<Upserted, DbError> {
        let id = new_uuid();
        let now = verge_protocol::time::rfc3339(verge_protocol::now_ms());
        let sql = self.sql(
            "INSERT INTO recordings (id, stream, year, month, day, mpd_path, agent, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
             ON CONFLICT (stream, year, month, day) DO UPDATE SET \
             mpd_path = excluded.mpd_path, updated_at = excluded.updated_at \
             WHERE recordings.agent = excluded.agent \
             RETURNING agent",
            "INSERT INTO recordings (id, stream, year, month, day, mpd_path, agent) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (stream, year, month, day) DO UPDATE SET \
             mpd_path = excluded.mpd_path, updated_at = now() \
             WHERE recordings.agent = excluded.agent \
             RETURNING agent",
        );
        let stored = on_pool!(self, |pool| {
            let query = sqlx::query(sql)
                .bind(&id)
                .bind(&row.stream)
                .bind(row.year)
                .bind(row.month as i32)
                .bind(row.day as i32)
                .bind(&row.mpd_path)
                .bind(agent);
            let query = if self.stamps_times() {
                query.bind(&now)
            } else {
                query
            };
            query.fetch_optional(pool).await?.is_some()
        });
        if stored {
            return Ok(Upserted::Stored);
        }
        let holder = self
            .day(&row.stream, row.year, row.month, row.day)
            .await?
            .map(|r| r.agent)
            .unwrap_or_default();
        Ok(Upserted::OtherAgent(holder))
    }

    /// Streams with at least one recorded day, sorted.
    pub async fn streams(&self) -> Result<Vec<String>, DbError> {
        let sql = "SELECT DISTINCT stream FROM recordings ORDER BY stream";
        Ok(on_pool!(self, |pool| sqlx::query_scalar(sql)
            .fetch_all(pool)
            .await?))
    }

    /// A stream's recorded days, newest first.
    pub async fn days(&self, stream: &str) -> Result<Vec<Recording>, DbError> {
        let sql = self.sql(
            "SELECT id, stream, year, month, day, mpd_path, agent, created_at, updated_at, stored_ms \
             FROM recordings WHERE stream = ?1 ORDER BY year DESC, month DESC, day DESC",
            PG_SELECT_BY_STREAM,
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(stream).fetch_all(pool).await?;
            rows.iter().map(recording).collect()
        })
    }

    /// Notes that `agent`'s stream-day reached `[storage]` now; false when the day is not
    /// indexed for that agent.
    pub async fn mark_stored(
        &self,
        stream: &str,
        (year, month, day): (i32, u32, u32),
        agent: &str,
    ) -> Result<bool, DbError> {
        let sql = self.sql(
            "UPDATE recordings SET stored_ms = ?1 \
             WHERE stream = ?2 AND year = ?3 AND month = ?4 AND day = ?5 AND agent = ?6",
            "UPDATE recordings SET stored_ms = $1 \
             WHERE stream = $2 AND year = $3 AND month = $4 AND day = $5 AND agent = $6",
        );
        let now = verge_protocol::now_ms() as i64;
        Ok(on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(now)
                .bind(stream)
                .bind(year)
                .bind(month as i32)
                .bind(day as i32)
                .bind(agent)
                .execute(pool)
                .await?
                .rows_affected()
                > 0
        }))
    }

    /// Stream-days in storage recorded before `before` (`(year, month, day)`), oldest first,
    /// at most `limit`: `(stream, (year, month, day))`.
    pub async fn stored_before(
        &self,
        before: (i32, u32, u32),
        limit: i64,
    ) -> Result<Vec<(String, (i32, u32, u32))>, DbError> {
        let sql = self.sql(
            "SELECT stream, year, month, day FROM recordings \
             WHERE stored_ms IS NOT NULL AND year * 10000 + month * 100 + day < ?1 \
             ORDER BY year, month, day LIMIT ?2",
            "SELECT stream, year, month, day FROM recordings \
             WHERE stored_ms IS NOT NULL AND year * 10000 + month * 100 + day < $1 \
             ORDER BY year, month, day LIMIT $2",
        );
        let key = before.0 * 10000 + before.1 as i32 * 100 + before.2 as i32;
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(key)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>(0)?,
                        (
                            r.try_get::<i32, _>(1)?,
                            r.try_get::<i32, _>(2)? as u32,
                            r.try_get::<i32, _>(3)? as u32,
                        ),
                    ))
                })
                .collect()
        })
    }

    /// Removes one stream-day's row.
    pub async fn delete_day(
        &self,
        stream: &str,
        (year, month, day): (i32, u32, u32),
    ) -> Result<(), DbError> {
        let sql = self.sql(
            "DELETE FROM recordings WHERE stream = ?1 AND year = ?2 AND month = ?3 AND day = ?4",
            "DELETE FROM recordings WHERE stream = $1 AND year = $2 AND month = $3 AND day = $4",
        );
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(stream)
                .bind(year)
                .bind(month as i32)
                .bind(day as i32)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The row of one stream-day.
    pub async fn day(
        &self,
        stream: &str,
        year: i32,
        month: u32,
        day: u32,
    ) -> Result<Option<Recording>, DbError> {
        let sql = self.sql(
            "SELECT id, stream, year, month, day, mpd_path, agent, created_at, updated_at, stored_ms \
             FROM recordings WHERE stream = ?1 AND year = ?2 AND month = ?3 AND day = ?4",
            PG_SELECT_DAY,
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(stream)
                .bind(year)
                .bind(month as i32)
                .bind(day as i32)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(recording).transpose()
        })
    }
}

/// PostgreSQL's columns as the API's strings.
macro_rules! pg_columns {
    () => {
        "id::text, stream, year, month, day, mpd_path, agent, \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), stored_ms"
    };
}

const PG_SELECT_BY_STREAM: &str = concat!(
    "SELECT ",
    pg_columns!(),
    " FROM recordings WHERE stream = $1 ORDER BY year DESC, month DESC, day DESC"
);

const PG_SELECT_DAY: &str = concat!(
    "SELECT ",
    pg_columns!(),
    " FROM recordings WHERE stream = $1 AND year = $2 AND month = $3 AND day = $4"
);

/// A row of either backend, columns in the order both selects name them.
fn recording<R: Row>(row: &R) -> Result<Recording, DbError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let stored: Option<i64> = row.try_get(9)?;
    Ok(Recording {
        row: IndexRow {
            id: row.try_get(0)?,
            stream: row.try_get(1)?,
            year: row.try_get(2)?,
            month: row.try_get::<i32, _>(3)? as u32,
            day: row.try_get::<i32, _>(4)? as u32,
            mpd_path: row.try_get(5)?,
        },
        agent: row.try_get(6)?,
        created_at: row.try_get(7)?,
        updated_at: row.try_get(8)?,
        stored_at: stored.map(|ms| verge_protocol::time::rfc3339(ms.max(0) as u64)),
        location: if stored.is_some() { "both" } else { "box" },
    })
}

/// A random (version 4) UUID.
pub(super) fn new_uuid() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The days of `stream` the index lists, newest first (for tests).
#[cfg(test)]
pub(crate) async fn day_numbers(db: &Db, stream: &str) -> Vec<u32> {
    let days = db.days(stream).await.expect("days");
    days.iter().map(|r| r.row.day).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stream: &str, day: u32) -> IndexRow {
        IndexRow {
            id: "r".into(),
            stream: stream.into(),
            year: 2026,
            month: 12,
            day,
            mpd_path: format!("{stream}/2026/12/{day:02}/manifest.mpd"),
        }
    }

    #[tokio::test]
    async fn upserts_are_idempotent_and_a_day_stays_with_its_agent() {
        let (db, dir) = super::super::scratch("recordings").await;
        db.migrate().await.unwrap();
        assert_eq!(
            db.upsert(&row("live/cam", 1), "edge-1").await.unwrap(),
            Upserted::Stored
        );
        let first = db.day("live/cam", 2026, 12, 1).await.unwrap().unwrap();
        assert_eq!(
            db.upsert(&row("live/cam", 1), "edge-1").await.unwrap(),
            Upserted::Stored
        );
        let again = db.day("live/cam", 2026, 12, 1).await.unwrap().unwrap();
        assert_eq!(
            (first.row.id.clone(), first.created_at.clone()),
            (again.row.id, again.created_at)
        );
        assert_eq!(
            db.upsert(&row("live/cam", 1), "edge-2").await.unwrap(),
            Upserted::OtherAgent("edge-1".into())
        );
        db.upsert(&row("live/cam", 2), "edge-1").await.unwrap();
        db.upsert(&row("door/x", 2), "edge-2").await.unwrap();
        assert_eq!(db.streams().await.unwrap(), ["door/x", "live/cam"]);
        let days = day_numbers(&db, "live/cam").await;
        assert_eq!(days, [2, 1], "newest first");
        assert_eq!(first.row.id.len(), 36);
        assert!(first.created_at.ends_with('Z'));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
