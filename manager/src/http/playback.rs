//! Recordings through the manager (liveman's API): which streams have recordings, a stream's
//! recorded days, and any recorded object fetched from the agent that holds it, through the
//! tunnel (ranges pass through, so players seek).
//!
//! - `GET /api/playback`: `["live/cam", …]`;
//! - `GET /api/playback/{stream}` (`{name}` in app `live`, or `{app}/{name}`): the days, newest
//!   first: `[{"year", "month", "day", "mpd_path", "agent", "id", "created_at", …}]`;
//! - `GET /api/record/object/{path}`: e.g. `live/cam/2026/12/01/manifest.mpd`, and the
//!   segments it names beside it.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::AppState;
use super::agent_http::{HEAD_TIMEOUT, proxy};
use super::error::ApiError;
use crate::auth::Grant;
use crate::db::Db;
use crate::db::recordings::Recording;
use verge_serve::path::StreamPath;

fn database(app: &AppState) -> Result<&Db, ApiError> {
    app.index
        .db()
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
}

/// The recorded streams the request's token may read.
pub async fn streams(
    State(app): State<AppState>,
    Extension(grant): Extension<Grant>,
) -> Result<Json<Vec<String>>, ApiError> {
    let mut streams = database(&app)?.streams().await.map_err(unavailable)?;
    streams.retain(|s| grant.may_read(s));
    Ok(Json(streams))
}

pub async fn days(
    State(app): State<AppState>,
    stream: StreamPath,
) -> Result<Json<Vec<Recording>>, ApiError> {
    days_of(&app, &stream.app, &stream.name).await
}

async fn days_of(
    app: &AppState,
    stream_app: &str,
    name: &str,
) -> Result<Json<Vec<Recording>>, ApiError> {
    for (what, part) in [("app", stream_app), ("name", name)] {
        verge_protocol::id::validate_stream_part(what, part)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    let stream = format!("{stream_app}/{name}");
    let days = database(app)?.days(&stream).await.map_err(unavailable)?;
    if days.is_empty() {
        return Err(ApiError::not_found(format!("no recordings of {stream}")));
    }
    Ok(Json(days))
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
