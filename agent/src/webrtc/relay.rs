//! Relays (cascades) on a cloud node: the node pulls a stream once from the node that holds it,
//! as a WHEP viewer of that node, and publishes it into its own hub under the same name, so its
//! viewers are served from its own GOP cache exactly as a box serves its own.
//!
//! The manager drives the signaling ([`verge_protocol::relay`]): [`Whep::relay_offer`] takes the
//! stream's name in the hub and returns a receive-only offer; the manager hands it to the source
//! as a viewer's; [`Whep::relay_answer`] applies the source's answer. From there the relay is a
//! WHIP publisher's session turned around ([`super::publish::run`]: H.264 depacketized and
//! repaired with NACKs, Opus passed on, a PLI only when the relay has no keyframe), and ends
//! like one: when the source's connection goes, when no media comes for
//! [`super::publish::SILENCE`], on [`Whep::relay_stop`], or after `idle_ms` without a viewer.
//! Its stream ends with it, and so do its viewers' sessions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use verge_protocol::relay::{
    NodeRole, RelayAnswerParams, RelayOf, RelayOfferParams, RelayOfferResult,
};
use verge_protocol::whep;

use super::peer::{self, AnswerError};
use super::publish;
use super::{Whep, WhepError};

/// How often a relay counts its viewers for the idle close.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The relays of one node, by stream.
#[derive(Default)]
pub struct Relays {
    by_stream: std::sync::Mutex<HashMap<String, Relay>>,
}

struct Relay {
    id: String,
    of: RelayOf,
    close: CancellationToken,
    /// Until the source's answer arrives: where to hand it.
    answer: Option<oneshot::Sender<Answer>>,
}

/// The source's answer (SDP), and where to hear whether it applied.
type Answer = (String, oneshot::Sender<Result<(), AnswerError>>);

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Relay>> {
        self.by_stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `stream` comes from, if this node relays it.
    pub fn of(&self, stream: &str) -> Option<RelayOf> {
        self.lock().get(stream).map(|r| r.of.clone())
    }

    /// Relays running or being set up.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes relay `id` of `stream` (not a newer relay of the same stream).
    fn remove(&self, stream: &str, id: &str) {
        let mut all = self.lock();
        if all.get(stream).is_some_and(|r| r.id == id) {
            all.remove(stream);
        }
    }
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    NoAnswer,
    BadAnswer,
    Idle,
    Stopped,
    Session(publish::End),
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::NoAnswer => "no answer from the source",
            End::BadAnswer => "the source's answer did not apply",
            End::Idle => "idle",
            End::Stopped => "stopped",
            End::Session(end) => end.as_str(),
        }
    }
}

impl Whep {
    /// Where `stream` comes from, when this node relays it.
    pub fn relay_of(&self, stream: &str) -> Option<RelayOf> {
        self.inner.relays.of(stream)
    }

    /// The node's relays (running, or waiting for the source's answer).
    pub fn relays(&self) -> usize {
        self.inner.relays.len()
    }

    /// Takes `p.stream`'s name in the hub and returns a receive-only offer for its source.
    pub async fn relay_offer(&self, p: RelayOfferParams) -> Result<RelayOfferResult, WhepError> {
        let node = &self.inner.agent;
        if self.inner.settings.role != NodeRole::Cloud {
            return Err(WhepError::NotCloud);
        }
        if let Some(why) = p.refusal_for(node) {
            return Err(WhepError::Conflict(why));
        }
        let started = Instant::now();
        let id = whep::session_id(node, u64::from_be_bytes(self.random()));
        let publisher = self.take_stream(&p.stream, &format!("RELAY {}", p.source))?;
        let (tracks_tx, tracks) = tokio::sync::mpsc::channel(4);
        let (offer, receiving) = peer::offer_receiver(
            &self.inner.settings.ice,
            &p.ice_servers,
            self.inner.settings.gather_timeout,
            publish::on_track(tracks_tx),
        )
        .await?;
        let close = self.inner.shutdown.child_token();
        let (answer_tx, answer_rx) = oneshot::channel();
        let of = RelayOf {
            source: p.source.clone(),
            via: p.via.clone(),
            session: None,
        };
        self.inner.relays.lock().insert(
            p.stream.clone(),
            Relay {
                id: id.clone(),
                of,
                close: close.clone(),
                answer: Some(answer_tx),
            },
        );
        tracing::info!(agent = %node, stream = %p.stream, relay = %id, source = %p.source,
            offer_ms = started.elapsed().as_millis() as u64, "relay offered");
        let this = self.clone();
        let relay = id.clone();
        let idle = Duration::from_millis(p.idle_ms.max(1000));
        tokio::spawn(async move {
            let stream = p.stream;
            let wait = this.inner.settings.connect_timeout;
            let answered = tokio::select! {
                _ = close.cancelled() => Err(End::Stopped),
                _ = tokio::time::sleep(wait) => Err(End::NoAnswer),
                a = answer_rx => a.map_err(|_| End::NoAnswer),
            };
            let end = match answered {
                Err(end) => end,
                Ok((sdp, applied)) => {
                    let result = peer::accept_answer(&receiving.pc, sdp).await;
                    let ok = result.is_ok();
                    let _ = applied.send(result);
                    if ok {
                        let idle_close = close.child_token();
                        let watch = tokio::spawn(close_when_idle(
                            this.clone(),
                            stream.clone(),
                            idle,
                            idle_close.clone(),
                        ));
                        let (end, got) = publish::run(
                            receiving.pc.clone(),
                            receiving.state,
                            tracks,
                            publisher,
                            wait,
                            idle_close.clone(),
                        )
                        .await;
                        watch.abort();
                        tracing::info!(agent = %this.inner.agent, %stream, %relay, frames = got.frames,
                            audio_packets = got.audio_packets, keyframe_requests = got.keyframe_requests,
                            video_lost = got.video_packets.lost, "relay received");
                        if idle_close.is_cancelled() && !close.is_cancelled() {
                            End::Idle
                        } else if close.is_cancelled() {
                            End::Stopped
                        } else {
                            End::Session(end)
                        }
                    } else {
                        End::BadAnswer
                    }
                }
            };
            // `run` closed the connection and ended the stream; what never ran is closed here.
            let _ = receiving.pc.close().await;
            this.inner.relays.remove(&stream, &relay);
            tracing::info!(agent = %this.inner.agent, %stream, %relay, end = end.as_str(),
                secs = started.elapsed().as_secs(), "relay ended");
        });
        Ok(RelayOfferResult {
            relay: id,
            sdp: offer,
        })
    }

    /// Applies the source's answer to relay `p.relay`'s offer.
    pub async fn relay_answer(&self, p: RelayAnswerParams) -> Result<(), WhepError> {
        let sender = self
            .inner
            .relays
            .lock()
            .values_mut()
            .find(|r| r.id == p.relay)
            .and_then(|r| {
                r.of.session = Some(p.session.clone());
                r.answer.take()
            })
            .ok_or_else(|| WhepError::UnknownSession(p.relay.clone()))?;
        let (applied_tx, applied) = oneshot::channel();
        sender
            .send((p.sdp, applied_tx))
            .map_err(|_| WhepError::UnknownSession(p.relay.clone()))?;
        tracing::info!(agent = %self.inner.agent, relay = %p.relay, source_session = %p.session,
            "relay answered");
        match applied.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(WhepError::UnknownSession(p.relay)),
        }
    }

    /// Ends the relay of `stream` (and with it the stream on this node).
    pub fn relay_stop(&self, stream: &str, reason: &str) -> Result<(), WhepError> {
        let relay = self
            .inner
            .relays
            .lock()
            .remove(stream)
            .ok_or_else(|| WhepError::NotLive(stream.to_string()))?;
        tracing::info!(agent = %self.inner.agent, %stream, relay = %relay.id, %reason, "relay stopped");
        relay.close.cancel();
        Ok(())
    }
}

/// Cancels `close` once `stream` has had no reader for `idle`.
async fn close_when_idle(whep: Whep, stream: String, idle: Duration, close: CancellationToken) {
    let mut empty_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(IDLE_CHECK).await;
        let readers = whep
            .inner
            .hub
            .status()
            .iter()
            .find(|s| s.id == stream)
            .map_or(0, |s| s.readers);
        if readers > 0 {
            empty_since = None;
            continue;
        }
        let since = *empty_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= idle {
            tracing::info!(agent = %whep.inner.agent, %stream, idle_ms = idle.as_millis() as u64,
                "relay idle: closing");
            close.cancel();
            return;
        }
    }
}
