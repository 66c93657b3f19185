//! `[storage]` over HTTP: uploads to the `fs` backend (`PUT /api/storage/put/{key}`, allowed
//! by the URL's signature), and recorded objects read back from storage for playback.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::storage::{Storage, StorageError};

/// `PUT /api/storage/put/{key}?expires=…&sig=…`.
pub async fn put(
    State(app): State<AppState>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let fs = app
        .storage
        .as_ref()
        .and_then(|s| s.fs())
        .ok_or_else(|| ApiError::not_found("no [storage] type = \"fs\" here"))?;
    let (mut expires, mut sig) = (0u64, "");
    for pair in query.as_deref().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.parse().unwrap_or(0),
            Some(("sig", v)) => sig = v,
            _ => {}
        }
    }
    let now = verge_protocol::now_ms() / 1000;
    if !fs.allows("PUT", &key, expires, sig, now) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the upload URL is not valid (expired, or not signed for this object)",
        ));
    }
    let bytes = fs
        .put(&key, body)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::debug!(%key, bytes, "stored an uploaded object");
    Ok(StatusCode::OK.into_response())
}

/// A recorded object (`{app}/{name}/{yyyy}/{mm}/{dd}/{file}`) from storage: streamed with
/// ranges, or a 302 to a presigned GET with `[storage] redirect`. `Ok(None)`: not there.
pub async fn object(
    storage: &Storage,
    path: &str,
    headers: &HeaderMap,
) -> Result<Option<Response>, ApiError> {
    let failed = |e: StorageError| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string());
    if storage.redirect
        && let Some(url) = storage.download_url(path).await.map_err(failed)?
    {
        let response = Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, url)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
            .body(Body::empty());
        return response
            .map(Some)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let fetched = match storage.get(path, range).await {
        Ok(fetched) => fetched,
        Err(StorageError::NotFound) => return Ok(None),
        Err(StorageError::Range(len)) => {
            let response = Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty());
            return response
                .map(Some)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
        Err(e) => return Err(failed(e)),
    };
    let content_type =
        verge_serve::range::recording_type(path).unwrap_or("application/octet-stream");
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header("x-verge-from", "storage");
    response = match fetched.range {
        Some((a, b)) => response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{}", fetched.len),
            )
            .header(header::CONTENT_LENGTH, b - a + 1),
        None => response
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, fetched.len),
    };
    response
        .body(fetched.body)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
