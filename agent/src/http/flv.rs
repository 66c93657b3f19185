//! HTTP-FLV (`GET /{app}/{name}.flv`, LiveGo's URL) from the hub, with CORS so flv.js pages on
//! other origins can play it.
//!
//! Each viewer is a hub reader feeding a small bounded channel to the response body. A viewer
//! that stops reading makes that channel fill; the hub then makes it skip to the next keyframe,
//! and after `stall_timeout` without progress the response ends.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use verge_media::flv::mux;
use verge_media::hub::{Frame, HubError, Reader, ReaderKind};

use super::{AppState, plain};
use crate::streams::StreamName;

pub(super) async fn flv(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path((app_name, file)): Path<(String, String)>,
) -> Response {
    let Some(name) = file.strip_suffix(".flv") else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no such resource /{app_name}/{file}"),
        );
    };
    let stream = match StreamName::parse(&app_name, name) {
        Ok(stream) => stream,
        Err(why) => return plain(StatusCode::BAD_REQUEST, why),
    };
    let reader = match app.hub.subscribe_as(&stream.id(), ReaderKind::Flv) {
        Ok(reader) => reader,
        Err(e @ HubError::TooManyReaders(_)) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(e) => return plain(StatusCode::NOT_FOUND, e.to_string()),
    };
    tracing::info!(stream = %stream.id(), %peer, "HTTP-FLV viewer joined");
    reader.set_label(format!("http://{peer}"));
    // A stream whose audio players cannot take (a WHIP publisher's Opus) is announced as
    // video only: ffmpeg waits for an announced audio track that never comes.
    let id = stream.id();
    let has_audio = !app
        .hub
        .status()
        .iter()
        .any(|s| s.id == id && s.audio.as_deref().is_some_and(|a| !a.starts_with("AAC")));
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(pump(reader, tx, app.stall_timeout, has_audio));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("video/x-flv"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Muxes hub frames into FLV and hands them to the response body.
async fn pump(
    mut reader: Reader,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    stall_timeout: Duration,
    has_audio: bool,
) {
    let send = |chunk: Bytes| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(stall_timeout, tx.send(Ok(chunk))).await,
                Ok(Ok(()))
            )
        }
    };
    if !send(Bytes::copy_from_slice(&mux::file_header(has_audio, true))).await {
        return;
    }
    // Players expect timestamps near zero at the start; sequence headers go out at 0.
    let mut base: Option<u32> = None;
    while let Some(frame) = reader.recv().await {
        let Frame {
            kind,
            timestamp,
            payload,
        } = &frame;
        // FLV players take AAC; a WHIP publisher's Opus stays with WebRTC viewers.
        if *kind == verge_media::rtmp::session::MediaKind::Audio
            && !verge_media::flv::make::is_aac(payload)
        {
            continue;
        }
        let ts =
            if frame.is_sequence_header() || *kind == verge_media::rtmp::session::MediaKind::Data {
                0
            } else {
                timestamp.wrapping_sub(*base.get_or_insert(*timestamp))
            };
        let mut out = BytesMut::with_capacity(payload.len() + 15);
        if mux::write_tag(&mut out, kind.type_id(), ts, payload).is_err() {
            continue;
        }
        if !send(out.freeze()).await {
            tracing::info!(stream = %reader.stream_id(), "HTTP-FLV viewer gone or stalled");
            return;
        }
    }
    tracing::debug!(stream = %reader.stream_id(), "HTTP-FLV stream ended");
}
