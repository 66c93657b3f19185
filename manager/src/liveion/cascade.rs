//! A liveion node pulling a stream from the manager (liveion's own cascade API): `POST
//! {node}/api/cascade/{stream}` with `sourceUrl` = the manager's public `/whep/{stream}` and a
//! read token minted for that stream alone, so the node reaches a box behind NAT (or another
//! node) as any viewer does, through the manager's placement. The manager then checks that the
//! node's copy connected, and deletes it at the node once it has had no subscriber for
//! `[cascade] maximum_idle_time`.

use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;

use super::proxy::{self, ProxyError};
use super::{Liveion, Target, api};
use crate::web_client;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The node's copy must be connected within this long (ICE and DTLS to the source).
const CONNECT_WITHIN: Duration = Duration::from_secs(15);
const CHECK_EVERY: Duration = Duration::from_millis(300);
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Asks the node to pull `name` from `source_url`; returns once its copy is connected.
pub async fn pull(
    target: &Target,
    name: &str,
    source_url: &str,
    token: Option<String>,
) -> Result<(), ProxyError> {
    let url = target.url.with_path(&format!("/api/cascade/{name}"));
    // liveion (0.9, commit 42205144) sends a pull's `token` as the whole `Authorization`
    // value of its WHEP requests (`get_authorization_header_map`), so the scheme goes with it.
    let token = token.map(|t| format!("Bearer {t}"));
    let body = serde_json::json!({ "sourceUrl": source_url, "token": token });
    let call = target.get(&url).with_body(
        Method::POST,
        "application/json",
        Bytes::from(body.to_string()),
    );
    proxy::send(target, call, CALL_TIMEOUT, 64 * 1024).await?;
    let started = Instant::now();
    let mut last = String::from("not listed yet");
    while started.elapsed() < CONNECT_WITHIN {
        match stream_at(target, name).await {
            Ok(Some(s))
                if s.publish
                    .sessions
                    .iter()
                    .any(|p| p.active() && p.state == "connected") =>
            {
                return Ok(());
            }
            Ok(Some(s)) => {
                last = s.publish.sessions.last().map_or_else(
                    || "no publisher".into(),
                    |p| format!("publisher {}", p.state),
                );
            }
            Ok(None) => last = "not listed".into(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
    Err(ProxyError::Refused {
        alias: target.alias.clone(),
        status: 504,
        reason: format!("its copy of {name} did not connect within {CONNECT_WITHIN:?} ({last})"),
    })
}

/// `GET {node}/api/streams/{name}`: `None` when the node does not have it.
async fn stream_at(target: &Target, name: &str) -> Result<Option<api::Stream>, ProxyError> {
    let url = target.url.with_path(&format!("/api/streams/{name}"));
    let answer = web_client::send(target.get(&url), CALL_TIMEOUT, 1024 * 1024)
        .await
        .map_err(|source| ProxyError::Unreachable {
            alias: target.alias.clone(),
            source,
        })?;
    if answer.status == 404 {
        return Ok(None);
    }
    Ok(serde_json::from_slice(&answer.body).ok())
}

/// Deletes the node's copy of `name` once it has had no connected subscriber for `idle`;
/// ends when the copy is gone or pulls from elsewhere.
pub async fn close_when_idle(
    liveion: Liveion,
    target: Target,
    name: String,
    source_url: String,
    idle: Duration,
) {
    let mut idle_since = Instant::now();
    let mut missing = 0;
    loop {
        tokio::time::sleep(IDLE_CHECK_EVERY).await;
        let Some(stream) = liveion.stream(&target.alias, &name) else {
            // Gone (or the node stopped): a few looks, as a poll may fall between.
            missing += 1;
            if missing >= 5 {
                tracing::info!(node = %target.alias, stream = %name, "cascade ended at the node");
                return;
            }
            continue;
        };
        missing = 0;
        if stream.pulled_from().is_some_and(|from| from != source_url) {
            return;
        }
        if stream.watching() > 0 {
            idle_since = Instant::now();
            continue;
        }
        if idle_since.elapsed() >= idle {
            let url = target.url.with_path(&format!("/api/streams/{name}"));
            let mut call = target.get(&url);
            call.method = Method::DELETE;
            match web_client::send(call, CALL_TIMEOUT, 64 * 1024).await {
                Ok(a) if (200..300).contains(&a.status) || a.status == 404 => {
                    tracing::info!(node = %target.alias, stream = %name, idle_ms = idle.as_millis() as u64,
                        "idle cascade closed");
                    return;
                }
                Ok(a) => tracing::warn!(node = %target.alias, stream = %name,
                    "closing an idle cascade: the node answered {}: {}", a.status, a.text()),
                Err(e) => {
                    tracing::warn!(node = %target.alias, stream = %name, "closing an idle cascade: {e}")
                }
            }
        }
    }
}
