//! A box's HTTP through the tunnel, for players and operators on the internet:
//!
//! - `GET /agents/{id}/http/{*path}`: any path of that agent's HTTP port;
//! - `GET /flv/{app}/{name}.flv`: HTTP-FLV of the stream, from whichever agent holds it;
//! - `GET /hls/{app}/{name}/{file}`: live HLS of the stream (playlist, init and media
//!   segments), from the agent's HLS listener.
//!
//! The request goes to the agent's `http` (or `hls`) tunnel target as HTTP/1.0 (so the box answers with a
//! body that ends with the connection, never chunked), the response head is read (16 KiB at
//! most, 10 s at most) and the body is streamed as it comes: a slow player holds back only its
//! own tunnel stream, whose window bounds what waits for it.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::AppState;
use super::error::ApiError;

const MAX_HEAD: usize = 16 * 1024;
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent waits up to 15 s for a new HLS feed's first segment.
const HLS_HEAD_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes between the tunnel stream and the response body.
const PIPE: usize = 64 * 1024;
/// Request headers a box's answer depends on; everything else stays here.
const FORWARDED: [HeaderName; 5] = [
    header::ACCEPT,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::USER_AGENT,
];

/// `GET /agents/{id}/http/{*path}`.
pub async fn agent_path(
    State(app): State<AppState>,
    Path((agent, path)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let target = match query {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    proxy(&app, &agent, "http", &target, &headers, HEAD_TIMEOUT).await
}

/// `GET /agents/{id}/http/`.
pub async fn agent_root(
    State(app): State<AppState>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    proxy(&app, &agent, "http", "/", &headers, HEAD_TIMEOUT).await
}

/// `GET /flv/{app}/{name}.flv`.
pub async fn flv(
    State(app): State<AppState>,
    Path((stream_app, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(name) = file.strip_suffix(".flv") else {
        return Err(ApiError::not_found("HTTP-FLV paths end in .flv"));
    };
    for (what, part) in [("app", stream_app.as_str()), ("name", name)] {
        verge_protocol::id::validate_stream_part(what, part)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    let agent = super::streams::locate(&app, &format!("{stream_app}/{name}"))?;
    let path = format!("/{stream_app}/{name}.flv");
    proxy(&app, &agent, "http", &path, &headers, HEAD_TIMEOUT).await
}

/// `GET /hls/{app}/{name}/{file}`.
pub async fn hls(
    State(app): State<AppState>,
    Path((stream_app, name, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    for (what, part) in [("app", stream_app.as_str()), ("name", name.as_str())] {
        verge_protocol::id::validate_stream_part(what, part)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    let known = file == "index.m3u8"
        || file
            .strip_suffix(".m4s")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        || file
            .strip_prefix("init-")
            .and_then(|f| f.strip_suffix(".mp4"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !known {
        return Err(ApiError::not_found(format!(
            "no HLS file {file:?}: index.m3u8, init-{{n}}.mp4 or {{n}}.m4s"
        )));
    }
    let agent = super::streams::locate(&app, &format!("{stream_app}/{name}"))?;
    let path = format!("/{stream_app}/{name}/{file}");
    // A playlist may wait on the box for a new feed's first segment.
    proxy(&app, &agent, "hls", &path, &headers, HLS_HEAD_TIMEOUT).await
}

pub(super) async fn proxy(
    app: &AppState,
    agent: &str,
    tunnel_target: &str,
    target: &str,
    headers: &HeaderMap,
    head_timeout: Duration,
) -> Result<Response, ApiError> {
    match app.registry.get(agent) {
        None => return Err(ApiError::not_found(format!("agent {agent:?} is not known"))),
        Some(record) if !record.online() => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("agent {agent:?} is offline"),
            ));
        }
        Some(_) => {}
    }
    if target.contains(['\r', '\n', ' ']) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "path with spaces or line breaks",
        ));
    }
    let bad_gateway = |why: String| ApiError::new(StatusCode::BAD_GATEWAY, why);
    let endpoint = app
        .tunnels
        .endpoint(agent)
        .map_err(|e| bad_gateway(e.to_string()))?;
    let stream = endpoint
        .open(tunnel_target)
        .await
        .map_err(|e| bad_gateway(e.to_string()))?;
    let (local, mut remote) = tokio::io::duplex(PIPE);
    let bridge = tokio::spawn(stream.bridge(local));

    let mut request = format!("GET {target} HTTP/1.0\r\nHost: {agent}\r\n");
    for name in &FORWARDED {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str("\r\n");
    let head = tokio::time::timeout(head_timeout, async {
        remote.write_all(request.as_bytes()).await?;
        read_head(&mut remote).await
    })
    .await;
    let (status, response_headers, rest) = match head {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) | Ok(Err(_)) => {
            // The stream ended early: the bridge knows why (refused, unreachable, reset).
            let why = match tokio::time::timeout(Duration::from_secs(1), bridge).await {
                Ok(Ok(Err(e))) => e.to_string(),
                _ => "the agent's HTTP port gave no valid response".to_string(),
            };
            return Err(bad_gateway(format!("agent {agent:?}: {why}")));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("agent {agent:?} sent no response head within {head_timeout:?}"),
            ));
        }
    };
    let body = Body::from_stream(ReaderStream::new(std::io::Cursor::new(rest).chain(remote)));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Ok(response)
}

/// Reads a response head; returns its status, the headers worth passing on, and the body bytes
/// read with it. `None` when the stream ends or the head is malformed or too long.
async fn read_head(
    remote: &mut tokio::io::DuplexStream,
) -> std::io::Result<Option<(StatusCode, HeaderMap, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = remote.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut parsed);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let Some(status) = response.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
                    return Ok(None);
                };
                let mut headers = HeaderMap::new();
                for h in response.headers.iter() {
                    let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                        continue;
                    };
                    if is_hop_by_hop(&name) {
                        continue;
                    }
                    if let Ok(value) = HeaderValue::from_bytes(h.value) {
                        headers.append(name, value);
                    }
                }
                return Ok(Some((status, headers, buf[len..].to_vec())));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Ok(None),
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}
