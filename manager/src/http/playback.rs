//! Recordings through the manager (liveman's API): which streams have recordings, a stream's
//! recorded days, and any recorded object fetched from the agent that holds it, through the
//! tunnel (ranges pass through, so players seek).
//!
//! - `GET /api/playback`: `["live/cam", …]`;
//! - `GET /api/playback/{stream}` (`{name}` in app `live`, or `{app}/{name}`): the days, newest
//!   first: `[{"year", "month", "day", "mpd_path", "agent", "id", "created_at", …}]`;
//! - `GET /api/record/object/{path}`: e.g. `live/cam/2026/12/01/manifest.mpd`, and the
//!   segments it names beside it; `@{node}/{stream}/{record}/{file}` for a session a liveion
//!   node recorded (synced by `crate::liveion::records`), passed on from the node.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::AppState;
use super::agent_http::{HEAD_TIMEOUT, proxy};
use super::error::ApiError;
use crate::auth::Grant;
use crate::db::Db;
use crate::db::recordings::Recording;
use crate::web_client;
use verge_protocol::index::IndexRow;
use verge_serve::path::StreamPath;

fn database(app: &AppState) -> Result<&Db, ApiError> {
    app.index
        .db()
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
}

/// The recorded streams the request's token may read (on boxes and on liveion nodes).
pub async fn streams(
    State(app): State<AppState>,
    Extension(grant): Extension<Grant>,
) -> Result<Json<Vec<String>>, ApiError> {
    let db = database(&app)?;
    let mut streams = db.streams().await.map_err(unavailable)?;
    streams.extend(db.node_streams().await.map_err(unavailable)?);
    streams.sort();
    streams.dedup();
    streams.retain(|s| grant.may_read(s));
    Ok(Json(streams))
}

/// A recording a liveion node holds, as `/api/playback/{stream}` lists it beside the boxes'
/// days: `mpd_path` is the manager's (`@{node}/…`), so it plays through
/// `/api/record/object/{mpd_path}` as theirs do.
#[derive(Debug, Serialize)]
pub struct NodeEntry {
    /// The session as a stream-day row (the fields stand at this level).
    #[serde(flatten)]
    pub row: IndexRow,
    /// The node (named `agent` as on the boxes' rows, for the same readers).
    pub agent: String,
    pub node: String,
    /// liveman's record id.
    pub record: String,
    pub status: String,
    pub duration_ms: Option<i32>,
    pub created_at: String,
    pub updated_at: String,
}

/// One entry of `/api/playback/{stream}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Day(Recording),
    Node(NodeEntry),
}

pub async fn days(
    State(app): State<AppState>,
    stream: StreamPath,
) -> Result<Json<Vec<Entry>>, ApiError> {
    days_of(&app, &stream.app, &stream.name).await
}

async fn days_of(
    app: &AppState,
    stream_app: &str,
    name: &str,
) -> Result<Json<Vec<Entry>>, ApiError> {
    for (what, part) in [("app", stream_app), ("name", name)] {
        verge_protocol::id::validate_stream_part(what, part)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    let stream = format!("{stream_app}/{name}");
    let db = database(app)?;
    let mut entries: Vec<Entry> = db
        .days(&stream)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(Entry::Day)
        .collect();
    for r in db.node_sessions(&stream).await.map_err(unavailable)? {
        entries.push(Entry::Node(NodeEntry {
            row: IndexRow {
                mpd_path: format!("@{}/{}", r.node, r.node_mpd_path),
                id: r.id,
                stream: r.stream,
                year: r.year,
                month: r.month,
                day: r.day,
            },
            agent: r.node.clone(),
            node: r.node,
            record: r.record,
            status: r.status,
            duration_ms: r.duration_ms,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }));
    }
    if entries.is_empty() {
        return Err(ApiError::not_found(format!("no recordings of {stream}")));
    }
    // Newest day first, whoever holds it.
    let day = |e: &Entry| match e {
        Entry::Day(Recording { row, .. }) | Entry::Node(NodeEntry { row, .. }) => {
            (row.year, row.month, row.day)
        }
    };
    entries.sort_by_key(|e| std::cmp::Reverse(day(e)));
    Ok(Json(entries))
}

/// `@{node}/{stream}/{record}/{file}`: a liveion node's recorded file.
pub(crate) fn parse_node_object(path: &str) -> Result<(String, String, String, String), String> {
    let rest = path.strip_prefix('@').ok_or("not a node's object")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [node, stream, record, file] = parts.as_slice() else {
        return Err(format!(
            "{path:?} is not @{{node}}/{{stream}}/{{record}}/{{file}}"
        ));
    };
    verge_protocol::id::validate(node).map_err(|e| e.to_string())?;
    for (what, part) in [("stream", stream), ("record", record), ("file", file)] {
        verge_protocol::id::validate_stream_part(what, part)?;
    }
    Ok((
        node.to_string(),
        stream.to_string(),
        record.to_string(),
        file.to_string(),
    ))
}

/// A file of a session a liveion node recorded, passed on from the node with its status,
/// type and ranges.
async fn node_object(
    app: &AppState,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (node, stream, record, file) =
        parse_node_object(path).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    database(app)?
        .node_session(&node, &format!("live/{stream}"), &record)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            ApiError::not_found(format!("no recording {record} of {stream} on node {node}"))
        })?;
    let target = app
        .liveion
        .target(&node)
        .filter(|t| app.liveion.is_running(&t.alias))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("liveion node {node:?} is not running"),
            )
        })?;
    let url = target
        .url
        .with_path(&format!("/api/record/object/{stream}/{record}/{file}"));
    let mut call = target.get(&url);
    for name in [
        header::RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
    ] {
        if let Some(v) = headers.get(&name) {
            call.headers.push((name, v.clone()));
        }
    }
    let answer = web_client::open(call, HEAD_TIMEOUT).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("liveion node {node:?}: {e}"),
        )
    })?;
    let mut response = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY));
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::ETAG,
        header::LAST_MODIFIED,
        header::CACHE_CONTROL,
    ] {
        if let Some(v) = answer.headers.get(&name) {
            response = response.header(name, v.clone());
        }
    }
    response
        .body(axum::body::Body::new(answer.into_body()))
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
}

/// `{app}/{name}/{yyyy}/{mm}/{dd}/{file}`: the stream-day and the file, or why not.
pub(crate) fn parse_object(path: &str) -> Result<(String, i32, u32, u32), String> {
    let parts: Vec<&str> = path.split('/').collect();
    let [app, name, year, month, day, file] = parts.as_slice() else {
        return Err(format!(
            "{path:?} is not {{app}}/{{name}}/{{yyyy}}/{{mm}}/{{dd}}/{{file}}"
        ));
    };
    for (what, part) in [("app", app), ("name", name), ("file", file)] {
        verge_protocol::id::validate_stream_part(what, part)?;
    }
    let number = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| format!("{s:?} is not a {len}-digit number"))
    };
    Ok((
        format!("{app}/{name}"),
        number(year, 4)? as i32,
        number(month, 2)?,
        number(day, 2)?,
    ))
}

pub async fn object(
    State(app): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if path.starts_with('@') {
        return node_object(&app, &path, &headers).await;
    }
    let (stream, year, month, day) =
        parse_object(&path).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let row = database(&app)?
        .day(&stream, year, month, day)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no recording of {stream} on {year:04}-{month:02}-{day:02}"
            ))
        })?;
    // A day in storage plays from there (the box's uplink is spared, the box may be gone);
    // what storage lacks (uploads still behind) comes from the box.
    if row.stored_at.is_some()
        && let Some(storage) = &app.storage
        && let Some(response) = super::storage::object(storage, &path, &headers).await?
    {
        return Ok(response);
    }
    proxy(
        &app,
        &row.agent,
        "http",
        &format!("/recordings/{path}"),
        &headers,
        HEAD_TIMEOUT,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths() {
        assert_eq!(
            parse_object("live/cam/2026/12/01/manifest.mpd"),
            Ok(("live/cam".into(), 2026, 12, 1))
        );
        assert!(parse_object("live/cam/2026/12/01/p1-v-4000.m4s").is_ok());
        for bad in [
            "live/cam/2026/12/01",
            "live/../2026/12/01/x.mpd",
            "live/cam/2026/12/01/../x",
            "/etc/passwd",
            "live/cam/26/12/01/manifest.mpd",
            "live/cam/2026/12/01/a/manifest.mpd",
        ] {
            assert!(parse_object(bad).is_err(), "{bad}");
        }
    }
}
