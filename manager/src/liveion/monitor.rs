//! Following one liveion node: its streams every 3 s (`mode = "poll"`) or as they change
//! (`mode = "sse"`, with a poll at each connect), its limits (`/api/strategy/`) at the start
//! and every 30 s. A node that does not answer within 2 s, or answers with an error, is
//! `stopped` at once with the reason and its streams leave the lists; one that refuses the
//! token (401/403) is asked again only every 30 s (poll) or no more (SSE), since only a
//! configuration change helps.

use std::time::{Duration, Instant};

use super::{Liveion, Target, api};
use crate::config::NodeMode;
use crate::web_client::{self, Url};

pub const POLL_EVERY: Duration = Duration::from_secs(3);
const STRATEGY_EVERY: Duration = Duration::from_secs(30);
const REFUSED_RETRY: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(2);
/// liveion's event stream sends a keep-alive every 15 s: silence for longer is a dead link.
const SSE_SILENCE: Duration = Duration::from_secs(40);
const SSE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest list of streams read.
const MAX_STREAMS_BODY: usize = 4 * 1024 * 1024;

/// Why a call failed, and whether the node refused the token.
struct Failure {
    reason: String,
    refused: bool,
}

/// Follows `target` until the task is aborted; in poll mode, every `poll_every`.
pub async fn follow(liveion: Liveion, target: Target, mode: NodeMode, poll_every: Duration) {
    let mut strategy_at: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let strategy_due = strategy_at.is_none_or(|t| t.elapsed() >= STRATEGY_EVERY);
        let polled = poll(&target, strategy_due).await;
        let wait = match polled {
            Ok((streams, ms, strategy)) => {
                if strategy.is_some() {
                    strategy_at = Some(Instant::now());
                }
                liveion.answered(&target.alias, streams, Some(ms), strategy);
                if mode == NodeMode::Sse {
                    match events(&liveion, &target).await {
                        Ok(()) => backoff = Duration::from_secs(1),
                        Err(f) if f.refused => {
                            liveion.failed(
                                &target.alias,
                                format!("{} (its event stream is not followed any more: fix [[nodes]] token and restart)", f.reason),
                            );
                            return;
                        }
                        Err(f) => liveion.failed(&target.alias, f.reason),
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(SSE_BACKOFF_MAX);
                    wait
                } else {
                    poll_every
                }
            }
            Err(f) => {
                let refused = f.refused;
                liveion.failed(&target.alias, f.reason);
                if refused {
                    if mode == NodeMode::Sse {
                        return;
                    }
                    REFUSED_RETRY
                } else if mode == NodeMode::Sse {
                    let wait = backoff;
                    backoff = (backoff * 2).min(SSE_BACKOFF_MAX);
                    wait
                } else {
                    poll_every
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// `GET /api/streams/` (and `/api/strategy/` when due): the streams, the round trip in ms.
async fn poll(
    target: &Target,
    with_strategy: bool,
) -> Result<(Vec<api::Stream>, u64, Option<api::Strategy>), Failure> {
    let started = Instant::now();
    let streams: Vec<api::Stream> = get_json(target, "/api/streams/").await?;
    let ms = started.elapsed().as_millis() as u64;
    let strategy = if with_strategy {
        Some(get_json(target, "/api/strategy/").await?)
    } else {
        None
    };
    Ok((streams, ms, strategy))
}

/// The node's streams, now.
pub async fn streams_of(target: &Target) -> Result<Vec<api::Stream>, String> {
    get_json(target, "/api/streams/")
        .await
        .map_err(|f| f.reason)
}

async fn get_json<T: serde::de::DeserializeOwned>(
    target: &Target,
    path: &str,
) -> Result<T, Failure> {
    let url = target.url.with_path(path);
    let answer = web_client::send(target.get(&url), TIMEOUT, MAX_STREAMS_BODY)
        .await
        .map_err(|e| Failure {
            reason: format!("GET {path}: {e}"),
            refused: false,
        })?;
    check_status(path, answer.status, &answer.text())?;
    serde_json::from_slice(&answer.body).map_err(|e| Failure {
        reason: format!("GET {path} answered something else than liveion's JSON: {e}"),
        refused: false,
    })
}

fn check_status(path: &str, status: u16, body: &str) -> Result<(), Failure> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body: String = body.chars().take(200).collect();
    Err(Failure {
        reason: format!("GET {path} answered {status}: {body}"),
        refused: matches!(status, 401 | 403),
    })
}

/// Follows `/api/sse/streams` until it ends: each event is the node's whole list.
async fn events(liveion: &Liveion, target: &Target) -> Result<(), Failure> {
    const PATH: &str = "/api/sse/streams";
    let url: Url = target.url.with_path(PATH);
    let mut call = target.get(&url);
    call.headers.push((
        axum::http::header::ACCEPT,
        axum::http::HeaderValue::from_static("text/event-stream"),
    ));
    let mut stream = web_client::open(call, TIMEOUT).await.map_err(|e| Failure {
        reason: format!("GET {PATH}: {e}"),
        refused: false,
    })?;
    if !(200..300).contains(&stream.status) {
        let status = stream.status;
        let body = stream.text(200).await;
        return check_status(PATH, status, &body);
    }
    tracing::info!(node = %target.alias, "following the node's event stream");
    let mut data = String::new();
    loop {
        let line = match tokio::time::timeout(SSE_SILENCE, stream.next_line()).await {
            Err(_) => {
                return Err(Failure {
                    reason: format!("{PATH}: nothing for {SSE_SILENCE:?}"),
                    refused: false,
                });
            }
            Ok(Err(e)) => {
                return Err(Failure {
                    reason: format!("{PATH}: {e}"),
                    refused: false,
                });
            }
            Ok(Ok(None)) => {
                return Err(Failure {
                    reason: format!("{PATH}: the node closed it"),
                    refused: false,
                });
            }
            Ok(Ok(Some(line))) => line,
        };
        if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if line.is_empty() && !data.is_empty() {
            match serde_json::from_str::<Vec<api::Stream>>(&data) {
                Ok(streams) => liveion.answered(&target.alias, streams, None, None),
                Err(e) => {
                    tracing::warn!(node = %target.alias, "an event that is not a list of streams: {e}");
                }
            }
            data.clear();
        }
        // Comments (`:` keep-alives), `event:`, `id:` and `retry:` lines carry nothing here.
    }
}
