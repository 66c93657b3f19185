//! liveion nodes' recording sessions into the index, as liveman's record sync does: every
//! `[record_sync] tick_ms`, each running node's `GET /api/recordings` (at most `limit`
//! sessions), each stored (`node_recordings`), then acknowledged at the node with `PATCH
//! /api/recordings`, so the node stops listing it. A session still recording is stored but
//! acknowledged only once it completes (its duration and manifest change until then). Nothing
//! is acknowledged that was not stored: with the database down the node keeps listing it.

use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Liveion, Target};
use crate::config::RecordSyncConfig;
use crate::db::index::Index;
use crate::db::node_recordings::NodeSession;
use crate::web_client;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// One session of `GET /api/recordings` (live777's `api::recorder::RecordingSession`).
#[derive(Debug, Deserialize)]
struct Session {
    id: Option<String>,
    stream: String,
    start_ts: i64,
    duration_ms: Option<i32>,
    mpd_path: String,
    status: String,
}

#[derive(Debug, Deserialize)]
struct Pulled {
    sessions: Vec<Session>,
}

#[derive(Debug, Serialize)]
struct Key<'a> {
    stream: &'a str,
    record: &'a str,
}

pub async fn sync(liveion: Liveion, index: Index, cfg: RecordSyncConfig) {
    if !cfg.enabled {
        return;
    }
    let tick = Duration::from_millis(cfg.tick_ms.max(100));
    let mut last_error: std::collections::HashMap<String, String> = Default::default();
    loop {
        tokio::time::sleep(tick).await;
        let Ok(db) = index.db() else {
            continue;
        };
        for target in liveion.running_targets() {
            match sync_node(db, &target, cfg.limit).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(node = %target.alias, sessions = n, "recordings of a liveion node indexed");
                    }
                    last_error.remove(&target.alias);
                }
                Err(e) => {
                    // Once per change of reason: a node without its recorder says so every tick.
                    if last_error.get(&target.alias) != Some(&e) {
                        tracing::warn!(node = %target.alias, "record sync: {e}");
                        last_error.insert(target.alias.clone(), e);
                    }
                }
            }
        }
    }
}

/// One node's sessions stored and acknowledged; how many were stored.
async fn sync_node(db: &crate::db::Db, target: &Target, limit: u32) -> Result<usize, String> {
    let url = target
        .url
        .with_path(&format!("/api/recordings?limit={limit}"));
    let answer = web_client::send(target.get(&url), TIMEOUT, MAX_ANSWER)
        .await
        .map_err(|e| format!("GET /api/recordings: {e}"))?;
    if !(200..300).contains(&answer.status) {
        return Err(format!(
            "GET /api/recordings answered {}: {}",
            answer.status,
            answer.text().chars().take(200).collect::<String>()
        ));
    }
    let pulled: Pulled = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("GET /api/recordings answered something else: {e}"))?;
    let mut stored = 0;
    let mut ack = Vec::new();
    for s in &pulled.sessions {
        let Some(session) = checked(&target.alias, s) else {
            tracing::warn!(node = %target.alias, stream = %s.stream, mpd_path = %s.mpd_path,
                "record sync: a session Verge cannot serve safely, skipped");
            continue;
        };
        db.upsert_node_session(&session)
            .await
            .map_err(|e| format!("database: {e}"))?;
        stored += 1;
        if session.status != "Active" {
            ack.push((s.stream.clone(), session.record.clone()));
        }
    }
    if !ack.is_empty() {
        let records: Vec<Key> = ack
            .iter()
            .map(|(stream, record)| Key { stream, record })
            .collect();
        let body = serde_json::json!({ "records": records }).to_string();
        let url = target.url.with_path("/api/recordings");
        let call = target
            .get(&url)
            .with_body(Method::PATCH, "application/json", Bytes::from(body));
        let answer = web_client::send(call, TIMEOUT, 64 * 1024)
            .await
            .map_err(|e| format!("PATCH /api/recordings: {e}"))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!("PATCH /api/recordings answered {}", answer.status));
        }
    }
    Ok(stored)
}

/// The session as stored, if its names are safe to serve: a stream name, a record id and a
/// manifest path under `{stream}/{record}/` with nothing that climbs out.
fn checked(node: &str, s: &Session) -> Option<NodeSession> {
    verge_protocol::id::validate_stream_part("stream", &s.stream).ok()?;
    let record = s.id.clone().filter(|r| !r.trim().is_empty())?;
    verge_protocol::id::validate_stream_part("record", &record).ok()?;
    let rest = s
        .mpd_path
        .strip_prefix(&format!("{}/{record}/", s.stream))?;
    verge_protocol::id::validate_stream_part("file", rest).ok()?;
    Some(NodeSession {
        node: node.to_string(),
        stream: format!("live/{}", s.stream),
        record,
        mpd_path: s.mpd_path.clone(),
        start_us: s.start_ts,
        status: s.status.clone(),
        duration_ms: s.duration_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(stream: &str, id: Option<&str>, mpd: &str) -> Session {
        Session {
            id: id.map(str::to_string),
            stream: stream.into(),
            start_ts: 1,
            duration_ms: None,
            mpd_path: mpd.into(),
            status: "Completed".into(),
        }
    }

    #[test]
    fn only_sessions_with_safe_names_are_taken() {
        let ok = checked("n", &session("cam", Some("17"), "cam/17/manifest.mpd")).unwrap();
        assert_eq!((ok.stream.as_str(), ok.record.as_str()), ("live/cam", "17"));
        for bad in [
            session("cam", None, "cam/17/manifest.mpd"),
            session("cam", Some(" "), "cam/17/manifest.mpd"),
            session("cam", Some("17"), "cam/18/manifest.mpd"),
            session("cam", Some("17"), "cam/17/../../etc/passwd"),
            session("cam", Some("17"), "cam/17/sub/manifest.mpd"),
            session("../x", Some("17"), "../x/17/manifest.mpd"),
            session("cam", Some("../17"), "cam/../17/manifest.mpd"),
        ] {
            assert!(checked("n", &bad).is_none(), "{bad:?}");
        }
        // liveion's own answer.
        let pulled: Pulled = serde_json::from_str(r#"{"sessions":[{"id":"1796500607","stream":"rec","start_ts":1796500607552495,"end_ts":1796500615629328,"duration_ms":8076,"mpd_path":"rec/1796500607/manifest.mpd","status":"Completed"}],"last_ts":1796500615629332}"#).unwrap();
        assert!(checked("n", &pulled.sessions[0]).is_some());
    }
}
