//! The `node_recordings` table: liveion nodes' recording sessions, synced from the nodes
//! (`crate::liveion::records`). One row per node, stream and record; the files stay on the
//! node, which serves them (`GET {node}/api/record/object/{path}`).

use serde::Serialize;
use sqlx::Row;

use super::{Db, DbError};

/// A session as the sync stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSession {
    pub node: String,
    /// `app/name` (`live/{stream}` for a liveion stream).
    pub stream: String,
    pub record: String,
    /// The node's own path of the manifest, e.g. `cam/1796500607/manifest.mpd`.
    pub mpd_path: String,
    /// Its start, Unix microseconds (the day it is listed under, UTC).
    pub start_us: i64,
    /// liveion's `Active`, `Completed`, `Failed`.
    pub status: String,
    pub duration_ms: Option<i32>,
}

/// A row as the playback API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRecording {
    pub id: String,
    pub node: String,
    pub stream: String,
    pub record: String,
    /// The node's path of the manifest.
    pub node_mpd_path: String,
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub status: String,
    pub duration_ms: Option<i32>,
    pub created_at: String,
    pub updated_at: String,
}

impl Db {
    /// Stores `s`, or refreshes its manifest, status and duration.
    pub async fn upsert_node_session(&self, s: &NodeSession) -> Result<(), DbError> {
        let (year, month, day) =
            verge_protocol::time::civil_from_days(s.start_us.max(0) / 86_400_000_000);
        let id = super::recordings::new_uuid();
        let now = verge_protocol::time::rfc3339(verge_protocol::now_ms());
        let sql = self.sql(
            "INSERT INTO node_recordings (id, node, stream, record, mpd_path, year, month, day, status, duration_ms, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11) \
             ON CONFLICT (node, stream, record) DO UPDATE SET \
             mpd_path = excluded.mpd_path, status = excluded.status, \
             duration_ms = excluded.duration_ms, updated_at = excluded.updated_at",
            "INSERT INTO node_recordings (id, node, stream, record, mpd_path, year, month, day, status, duration_ms) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (node, stream, record) DO UPDATE SET \
             mpd_path = excluded.mpd_path, status = excluded.status, \
             duration_ms = excluded.duration_ms, updated_at = now()",
        );
        on_pool!(self, |pool| {
            let query = sqlx::query(sql)
                .bind(&id)
                .bind(&s.node)
                .bind(&s.stream)
                .bind(&s.record)
                .bind(&s.mpd_path)
                .bind(year)
                .bind(month as i32)
                .bind(day as i32)
                .bind(&s.status)
                .bind(s.duration_ms);
            let query = if self.stamps_times() {
                query.bind(&now)
            } else {
                query
            };
            query.execute(pool).await?;
        });
        Ok(())
    }

    /// A stream's node sessions, newest first.
    pub async fn node_sessions(&self, stream: &str) -> Result<Vec<NodeRecording>, DbError> {
        let sql = self.sql(
            concat!(
                "SELECT ",
                sqlite_columns!(),
                " FROM node_recordings WHERE stream = ?1 ",
                "ORDER BY year DESC, month DESC, day DESC, record DESC"
            ),
            concat!(
                "SELECT ",
                pg_node_columns!(),
                " FROM node_recordings WHERE stream = $1 ",
                "ORDER BY year DESC, month DESC, day DESC, record DESC"
            ),
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(stream).fetch_all(pool).await?;
            rows.iter().map(node_recording).collect()
        })
    }

    /// One session of one node.
    pub async fn node_session(
        &self,
        node: &str,
        stream: &str,
        record: &str,
    ) -> Result<Option<NodeRecording>, DbError> {
        let sql = self.sql(
            concat!(
                "SELECT ",
                sqlite_columns!(),
                " FROM node_recordings WHERE node = ?1 AND stream = ?2 AND record = ?3"
            ),
            concat!(
                "SELECT ",
                pg_node_columns!(),
                " FROM node_recordings WHERE node = $1 AND stream = $2 AND record = $3"
            ),
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(node)
                .bind(stream)
                .bind(record)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(node_recording).transpose()
        })
    }

    /// Streams with node sessions.
    pub async fn node_streams(&self) -> Result<Vec<String>, DbError> {
        let sql = "SELECT DISTINCT stream FROM node_recordings ORDER BY stream";
        Ok(on_pool!(self, |pool| sqlx::query_scalar(sql)
            .fetch_all(pool)
            .await?))
    }
}

macro_rules! sqlite_columns {
    () => {
        "id, node, stream, record, mpd_path, year, month, day, status, duration_ms, created_at, updated_at"
    };
}
use sqlite_columns;

macro_rules! pg_node_columns {
    () => {
        "id::text, node, stream, record, mpd_path, year, month, day, status, duration_ms, \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    };
}
use pg_node_columns;

fn node_recording<R: Row>(row: &R) -> Result<NodeRecording, DbError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i32>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(NodeRecording {
        id: row.try_get(0)?,
        node: row.try_get(1)?,
        stream: row.try_get(2)?,
        record: row.try_get(3)?,
        node_mpd_path: row.try_get(4)?,
        year: row.try_get(5)?,
        month: row.try_get::<i32, _>(6)? as u32,
        day: row.try_get::<i32, _>(7)? as u32,
        status: row.try_get(8)?,
        duration_ms: row.try_get(9)?,
        created_at: row.try_get(10)?,
        updated_at: row.try_get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn node_sessions_are_stored_once_and_refreshed() {
        let (db, dir) = super::super::scratch("nodes").await;
        let mut s = NodeSession {
            node: "sfu-1".into(),
            stream: "live/cam".into(),
            record: "1796500607".into(),
            mpd_path: "cam/1796500607/manifest.mpd".into(),
            // 2026-12-05T19:56:47Z
            start_us: 1_796_500_607_552_495,
            status: "Active".into(),
            duration_ms: None,
        };
        db.upsert_node_session(&s).await.unwrap();
        s.status = "Completed".into();
        s.duration_ms = Some(8076);
        db.upsert_node_session(&s).await.unwrap();
        let rows = db.node_sessions("live/cam").await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!((r.year, r.month, r.day), (2026, 12, 5));
        assert_eq!(
            (r.status.as_str(), r.duration_ms),
            ("Completed", Some(8076))
        );
        assert_eq!(
            db.node_session("sfu-1", "live/cam", "1796500607")
                .await
                .unwrap()
                .as_ref(),
            Some(r)
        );
        assert!(
            db.node_session("sfu-2", "live/cam", "1796500607")
                .await
                .unwrap()
                .is_none()
        );
        // Another node's session of the same record id is its own row.
        s.node = "sfu-2".into();
        db.upsert_node_session(&s).await.unwrap();
        assert_eq!(db.node_sessions("live/cam").await.unwrap().len(), 2);
        assert_eq!(db.node_streams().await.unwrap(), ["live/cam"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
