//! The HLS listener (`[hls] listen`, LiveGo's port 7002): `GET /{app}/{name}/index.m3u8`,
//! `/{app}/{name}/init-{n}.mp4` and `/{app}/{name}/{sequence}.m4s`, with CORS for players on
//! other origins (hls.js).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use super::live::{FeedError, LiveHls};
use crate::streams::StreamName;

/// How long a playlist request waits for a new feed's first segment: a GOP or two.
const FIRST_SEGMENT_PATIENCE: Duration = Duration::from_secs(15);

pub fn router(live: LiveHls) -> Router {
    Router::new()
        .route("/{app}/{name}/{file}", get(file))
        .with_state(live)
}

async fn file(
    State(live): State<LiveHls>,
    Path((app, name, file)): Path<(String, String, String)>,
) -> Response {
    let stream = match StreamName::parse(&app, &name) {
        Ok(stream) => stream.id(),
        Err(why) => return reply(StatusCode::BAD_REQUEST, "text/plain", why.into()),
    };
    if file == "index.m3u8" {
        return match live.playlist(&stream, FIRST_SEGMENT_PATIENCE).await {
            Ok(Some(text)) => reply(StatusCode::OK, "application/vnd.apple.mpegurl", text.into()),
            Ok(None) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!(
                    "{stream} has no segment yet: no keyframe within {FIRST_SEGMENT_PATIENCE:?}\n"
                )
                .into(),
            ),
            Err(e @ FeedError::NotLive(_)) => {
                reply(StatusCode::NOT_FOUND, "text/plain", format!("{e}\n").into())
            }
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{e}\n").into(),
            ),
        };
    }
    let found = if let Some(version) = file
        .strip_prefix("init-")
        .and_then(|f| f.strip_suffix(".mp4"))
        .and_then(|v| v.parse().ok())
    {
        live.init(&stream, version)
    } else if let Some(sequence) = file.strip_suffix(".m4s").and_then(|s| s.parse().ok()) {
        live.segment(&stream, sequence)
    } else {
        None
    };
    match found {
        Some(bytes) => reply(StatusCode::OK, "video/mp4", bytes),
        None => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no {file} in the live window of {stream}\n").into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    // Playlists change every segment; segments never change but leave the window.
    let cache = if content_type == "video/mp4" {
        "max-age=60"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}
