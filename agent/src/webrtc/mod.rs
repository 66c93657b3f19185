//! WebRTC viewers (WHEP) and publishers (WHIP): offers come from the manager over RPC or
//! straight to the agent's HTTP port; each becomes a peer connection fed from the hub (a
//! viewer) or feeding it (a publisher).
//!
//! - [`engine`]: how peer connections are built (H.264 formats, interceptors, no mDNS).
//! - [`peer`]: answering an offer.
//! - [`viewer`]: one viewer's sender task, hub → RTP.
//! - [`publish`]: WHIP publishers, RTP → hub: [`Whep::publish`] and the publisher's session
//!   task.
//! - [`relay`]: a cloud node's relays: a stream pulled once from its source node into the hub.
//! - [`keyframe`]: viewers' keyframe requests (PLI/FIR), delivered to the sender task.
//! - [`pace`]: a new viewer's cached GOP, sent at a multiple of real time rather than at once.
//! - [`payloads`]: RTP payloads made once per stream and shared by its viewers.
//! - [`audio`]: the stream's AAC as Opus, transcoded once per stream while someone listens.
//! - [`clients`]: per-client caps on sessions (one address, one token).
//!
//! [`Whep`] owns the live sessions, viewers' and publishers' alike: it answers viewers' offers
//! ([`Whep::offer`]) here and publishers' in [`publish`], and takes every session's PATCH and
//! DELETE. A session id is `{agent}~{random}`
//! ([`verge_protocol::whep::session_id`]), so any manager can route its PATCH and DELETE.

pub mod audio;
pub mod clients;
pub mod engine;
pub mod keyframe;
pub mod nack;
pub mod pace;
pub mod payloads;
pub mod peer;
pub mod publish;
pub mod relay;
pub mod viewer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;
use verge_media::hub::{Hub, HubError, ReaderKind};
use verge_protocol::rpc::ErrorCode;
use verge_protocol::whep::{self, Client, IceServer, OfferResult, PatchResult, SessionRole};

pub use clients::ClientCaps;
use clients::{CapReached, ClientSlot, ClientTable};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit};

use audio::AudioFeed;
pub use engine::IceSettings;
use payloads::SharedPayloads;
use peer::AnswerError;

/// What a WebRTC viewer of a stream with these codecs (as the hub describes them) does not
/// get, and why; `None` when it gets everything.
/// `opus`: AAC-LC audio is transcoded for them (`[webrtc] audio = "opus"`).
pub fn omits(video: Option<&str>, audio: Option<&str>, opus: bool) -> Option<String> {
    let mut missing = Vec::new();
    // Browsers decode 8-bit 4:2:0 H.264 only; ffmpeg's default for RGB input is 4:4:4.
    let undecodable = |v: &&str| {
        ["High 10", "High 4:2:2", "High 4:4:4"]
            .iter()
            .any(|p| v.ends_with(p))
    };
    if let Some(v) = video.filter(undecodable) {
        missing.push(format!(
            "video: {v} does not decode in browsers (send 8-bit 4:2:0, e.g. ffmpeg -pix_fmt yuv420p)"
        ));
    }
    match audio {
        Some(a) if !opus => missing.push(format!(
            "audio: {a} is not sent to WebRTC viewers ([webrtc] audio = \"off\")"
        )),
        Some(a) if a.starts_with("Opus ") => {}
        Some(a) if !audio::transcodable(a) => missing.push(format!(
            "audio: {a} is not sent to WebRTC viewers (the Opus transcoder takes AAC-LC, mono \
             or stereo: set the encoder's AAC profile to LC)"
        )),
        _ => {}
    }
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// The `[webrtc]` settings the service runs with.
#[derive(Debug, Clone)]
pub struct WhepSettings {
    pub ice: IceSettings,
    /// Servers added to those each offer brings (the agent's own STUN/TURN).
    pub ice_servers: Vec<IceServer>,
    /// Longest wait for ICE candidates before answering with those gathered so far.
    pub gather_timeout: Duration,
    /// A viewer not connected this long after its answer is dropped.
    pub connect_timeout: Duration,
    /// Leave B-frames out of what viewers are sent (see `[webrtc] b_frames`).
    pub drop_b_frames: bool,
    /// A new viewer's cached GOP goes at this many times real time (`[webrtc]
    /// backlog_speedup`); 0: at once.
    pub backlog_speedup: u32,
    /// Opus bitrate (bit/s) of the audio sent to viewers; `None`: video only.
    pub opus_bitrate: Option<u32>,
    /// Sessions one client may hold (`[limits] sessions_per_address`, `sessions_per_token`).
    pub client_caps: ClientCaps,
    /// `[node] role`: only a cloud node takes relays.
    pub role: verge_protocol::relay::NodeRole,
}

impl Default for WhepSettings {
    fn default() -> Self {
        Self {
            ice: IceSettings::default(),
            ice_servers: Vec::new(),
            gather_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(15),
            drop_b_frames: true,
            backlog_speedup: 4,
            opus_bitrate: Some(64_000),
            client_caps: ClientCaps::default(),
            role: verge_protocol::relay::NodeRole::Edge,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("stream {0} is not live on this agent")]
    NotLive(String),
    #[error("{0}")]
    Busy(String),
    /// The client holds as many sessions as it may.
    #[error(transparent)]
    TooMany(#[from] CapReached),
    /// The stream has a publisher already.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error("no WHEP session {0}")]
    UnknownSession(String),
    #[error("ICE restart is not supported: POST a new offer")]
    RestartUnsupported,
    #[error("cannot add ICE candidate: {0}")]
    BadCandidate(String),
    #[error("this node is an edge box ([node] role = \"edge\"): relays run on cloud nodes")]
    NotCloud,
}

impl WhepError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WhepError::NotLive(_) | WhepError::UnknownSession(_) => ErrorCode::NotFound,
            WhepError::Busy(_) => ErrorCode::Busy,
            WhepError::TooMany(_) => ErrorCode::TooMany,
            WhepError::Conflict(_) => ErrorCode::Conflict,
            WhepError::Answer(AnswerError::Internal(_)) => ErrorCode::Internal,
            WhepError::Answer(_) | WhepError::BadCandidate(_) => ErrorCode::InvalidParams,
            WhepError::RestartUnsupported | WhepError::NotCloud => ErrorCode::Unsupported,
        }
    }
}

struct Session {
    stream: String,
    role: SessionRole,
    pc: Arc<dyn PeerConnection>,
    close: CancellationToken,
}

impl Session {
    /// Whether a PATCH or DELETE for `stream` (if named) in `role` may reach this session: a
    /// session in another role is as unknown as one that does not exist.
    fn is(&self, stream: Option<&str>, role: SessionRole) -> bool {
        self.role == role && stream.is_none_or(|id| id == self.stream)
    }
}

/// An offer to answer (a viewer's, or a WHIP publisher's), as the HTTP handlers and the RPC
/// server hand it over.
pub struct IncomingOffer<'a> {
    /// `{app}/{name}`, already checked.
    pub stream: &'a str,
    pub sdp: String,
    /// Servers the peer connection uses besides the agent's own (the manager's list).
    pub ice_servers: &'a [IceServer],
    /// Who asks, for the per-client caps.
    pub client: Option<&'a Client>,
}

impl<'a> IncomingOffer<'a> {
    /// An offer made on the agent's own port: no servers but its own, no client caps.
    pub fn direct(stream: &'a str, sdp: String) -> Self {
        Self {
            stream,
            sdp,
            ice_servers: &[],
            client: None,
        }
    }
}

/// The agent's WHEP service.
#[derive(Clone)]
pub struct Whep {
    inner: Arc<Inner>,
}

struct Inner {
    agent: String,
    hub: Arc<Hub>,
    settings: WhepSettings,
    sessions: Mutex<HashMap<String, Session>>,
    /// Sessions per client, for the per-client caps.
    clients: Arc<ClientTable>,
    /// Per stream, while it has viewers.
    payloads: Mutex<HashMap<String, Weak<SharedPayloads>>>,
    /// Per stream, while it has viewers that take audio.
    audio: Mutex<HashMap<String, Weak<AudioFeed>>>,
    /// The streams this node relays from others (a cloud node's).
    relays: relay::Relays,
    random: SystemRandom,
    /// Cancelled when the agent stops: every viewer closes its connection.
    shutdown: CancellationToken,
}

impl Whep {
    pub fn new(agent: &str, hub: Arc<Hub>, settings: WhepSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                agent: agent.to_string(),
                hub,
                settings,
                sessions: Mutex::new(HashMap::new()),
                clients: Arc::default(),
                payloads: Mutex::new(HashMap::new()),
                audio: Mutex::new(HashMap::new()),
                relays: relay::Relays::default(),
                random: SystemRandom::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn random<const N: usize>(&self) -> [u8; N] {
        let mut bytes = [0u8; N];
        // SystemRandom fails only if the OS has no entropy source; a zero seed still works.
        let _ = self.inner.random.fill(&mut bytes);
        bytes
    }

    /// The shared payloads of `stream`, made when its first viewer comes.
    fn payloads_for(&self, stream: &str) -> Arc<SharedPayloads> {
        let mut all = self
            .inner
            .payloads
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.retain(|_, weak| weak.strong_count() > 0);
        if let Some(shared) = all.get(stream).and_then(Weak::upgrade) {
            return shared;
        }
        let shared = Arc::new(SharedPayloads::default());
        all.insert(stream.to_string(), Arc::downgrade(&shared));
        shared
    }

    /// Enters a session (a viewer's or a publisher's) for PATCH and DELETE; cancelling the
    /// token (DELETE, or the agent stopping) ends it.
    fn open_session(
        &self,
        id: &str,
        stream: &str,
        role: SessionRole,
        pc: Arc<dyn PeerConnection>,
    ) -> CancellationToken {
        let close = self.inner.shutdown.child_token();
        self.sessions().insert(
            id.to_string(),
            Session {
                stream: stream.to_string(),
                role,
                pc,
                close: close.clone(),
            },
        );
        close
    }

    /// The Opus feed of `stream`, started for its first viewer that takes audio.
    fn audio_for(&self, stream: &str, bitrate: u32) -> Option<Arc<AudioFeed>> {
        let mut all = self.inner.audio.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, weak| weak.strong_count() > 0);
        if let Some(feed) = all.get(stream).and_then(Weak::upgrade) {
            return Some(feed);
        }
        let feed = AudioFeed::start(&self.inner.hub, stream, bitrate)?;
        all.insert(stream.to_string(), Arc::downgrade(&feed));
        Some(feed)
    }

    /// The agent's own ICE servers, handed to viewers of its own WHEP endpoint.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.inner.settings.ice_servers
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A session slot for `client`, or the refusal when it holds as many as it may.
    /// An offer's slot under its client's caps, and the ICE servers its peer connection uses:
    /// the offer's, then the agent's own.
    fn admit(&self, offer: &IncomingOffer<'_>) -> Result<(ClientSlot, Vec<IceServer>), WhepError> {
        let slot = self.reserve(offer.client)?;
        let mut servers = offer.ice_servers.to_vec();
        servers.extend(self.inner.settings.ice_servers.iter().cloned());
        Ok((slot, servers))
    }

    fn reserve(&self, client: Option<&Client>) -> Result<ClientSlot, WhepError> {
        let slot = self
            .inner
            .clients
            .reserve(client, self.inner.settings.client_caps);
        if let Err(refused) = &slot {
            // Not a warning per refusal: a client over its cap decides how many there are. The
            // manager counts them (`verge_whep_offers_total{status="429"}`).
            tracing::debug!(agent = %self.inner.agent, client = client.map(|c| c.address.as_str()),
                "{refused}");
        }
        Ok(slot?)
    }

    /// Takes `stream` in the hub for a publisher named `publisher` (a WHIP session, a relay):
    /// refused with `conflict` when it has one already.
    fn take_stream(
        &self,
        stream: &str,
        publisher: &str,
    ) -> Result<verge_media::hub::Publisher, WhepError> {
        self.inner
            .hub
            .publish(stream, publisher)
            .map_err(|e| match e {
                HubError::AlreadyPublishing(_) => WhepError::Conflict(e.to_string()),
                _ => WhepError::Busy(e.to_string()),
            })
    }

    /// Answers a viewer's offer.
    pub async fn offer(&self, offer: IncomingOffer<'_>) -> Result<OfferResult, WhepError> {
        let started = Instant::now();
        let (slot, servers) = self.admit(&offer)?;
        let IncomingOffer {
            stream,
            sdp,
            client,
            ..
        } = offer;
        // Subscribing first reserves the viewer's slot and fails fast for a stream not live.
        let reader = self
            .inner
            .hub
            .subscribe_as(stream, ReaderKind::Webrtc)
            .map_err(|e| match e {
                HubError::TooManyReaders(_) => WhepError::Busy(e.to_string()),
                _ => WhepError::NotLive(stream.to_string()),
            })?;
        let ssrc = u32::from_be_bytes(self.random()).max(1);
        let audio_ssrc = self
            .inner
            .settings
            .opus_bitrate
            .map(|_| u32::from_be_bytes(self.random()).max(1));
        let (answer, mut peer) = peer::answer(
            stream,
            sdp,
            &self.inner.settings.ice,
            &servers,
            self.inner.settings.gather_timeout,
            ssrc,
            audio_ssrc,
        )
        .await?;
        let audio = match (&peer.audio, self.inner.settings.opus_bitrate) {
            (Some(_), Some(bitrate)) => self.audio_for(stream, bitrate),
            _ => None,
        };
        peer.drop_b_frames = self.inner.settings.drop_b_frames;
        peer.backlog_speedup = self.inner.settings.backlog_speedup;
        let session = whep::session_id(&self.inner.agent, u64::from_be_bytes(self.random()));
        let close = self.open_session(&session, stream, SessionRole::Viewer, peer.pc.clone());
        // The client's address where the manager passed it on; the session names the rest.
        reader.set_label(match client {
            Some(c) => format!("webrtc://{}/{session}", c.address),
            None => format!("webrtc:{session}"),
        });
        tracing::info!(agent = %self.inner.agent, %stream, %session, payload_type = peer.payload_type,
            answer_ms = started.elapsed().as_millis() as u64, "WHEP viewer answered");
        let this = self.clone();
        let id = session.clone();
        let stream = stream.to_string();
        let [s0, s1, t0, t1, t2, t3, a0, a1, a2, a3, a4, a5] = self.random();
        let connect_timeout = self.inner.settings.connect_timeout;
        let shared = self.payloads_for(&stream);
        tokio::spawn(async move {
            // Held until the viewer ends.
            let _slot = slot;
            let source = viewer::Source {
                hub: &this.inner.hub,
                reader,
                payloads: shared,
                audio,
            };
            let rtp = viewer::RtpStart {
                sequence: u16::from_be_bytes([s0, s1]),
                timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
                audio_sequence: u16::from_be_bytes([a0, a1]),
                audio_timestamp: u32::from_be_bytes([a2, a3, a4, a5]),
            };
            let resends = peer.resends.clone();
            let (end, sent) =
                viewer::run(peer, source, rtp, connect_timeout, close.cancelled_owned()).await;
            this.sessions().remove(&id);
            let (resent, refused_repeat, refused_budget, _) = resends.snapshot();
            tracing::info!(agent = %this.inner.agent, %stream, session = %id, end = end.as_str(),
                frames = sent.frames, packets = sent.packets, audio_packets = sent.audio_packets, audio_lost = sent.audio_lost,
                av_offset_ms = format!("{:.1}", sent.av_offset.mean_ms()), av_offset_max_ms = format!("{:.1}", sent.av_offset.max_abs_ms),
                bytes = sent.bytes, resyncs = sent.resyncs, keyframe_waits = sent.keyframe_waits, skips = sent.skips,
                resent, refused_repeat, refused_budget,
                secs = started.elapsed().as_secs(), "WHEP viewer ended");
        });
        Ok(OfferResult {
            session,
            sdp: answer,
            ice_servers: self.inner.settings.ice_servers.clone(),
        })
    }

    /// Adds the candidates of a trickle-ICE sdpfrag to a session (of `stream`, if given) in
    /// `role`.
    pub async fn patch(
        &self,
        session: &str,
        stream: Option<&str>,
        role: SessionRole,
        frag: &str,
    ) -> Result<PatchResult, WhepError> {
        let pc = self
            .sessions()
            .get(session)
            .filter(|s| s.is(stream, role))
            .map(|s| s.pc.clone())
            .ok_or_else(|| WhepError::UnknownSession(session.to_string()))?;
        let candidates = whep::frag_candidates(frag);
        if candidates.is_empty() && frag.contains("a=ice-ufrag:") {
            return Err(WhepError::RestartUnsupported);
        }
        let mut added = 0;
        for (mid, candidate) in candidates {
            pc.add_ice_candidate(RTCIceCandidateInit {
                candidate,
                sdp_mid: mid,
                ..Default::default()
            })
            .await
            .map_err(|e| WhepError::BadCandidate(peer::one_line(&e)))?;
            added += 1;
        }
        Ok(PatchResult { added })
    }

    /// Ends a session (of `stream`, if given) in `role`; its connection is closed by its
    /// sender task.
    pub fn delete(
        &self,
        session: &str,
        stream: Option<&str>,
        role: SessionRole,
    ) -> Result<(), WhepError> {
        let removed = {
            let mut sessions = self.sessions();
            let ours = sessions.get(session).is_some_and(|s| s.is(stream, role));
            ours.then(|| sessions.remove(session)).flatten()
        };
        let s = removed.ok_or_else(|| WhepError::UnknownSession(session.to_string()))?;
        tracing::info!(agent = %self.inner.agent, stream = %s.stream, %session, "WHEP session deleted");
        s.close.cancel();
        Ok(())
    }

    /// Closes every viewer (the agent is stopping) and waits up to `grace` for them to go.
    pub async fn close_all(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        let deadline = Instant::now() + grace;
        while !self.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omits_names_what_browsers_do_not_get() {
        assert_eq!(omits(Some("H.264 High"), None, true), None);
        assert_eq!(omits(Some("H.264 Main"), None, true), None);
        assert_eq!(
            omits(Some("H.264 High"), Some("AAC-LC 44100 Hz 2ch"), true),
            None
        );
        assert_eq!(omits(None, Some("AAC-LC 48000 Hz 1ch"), true), None);
        let both = omits(Some("H.264 High 4:4:4"), Some("AAC-LC 44100 Hz 2ch"), false).unwrap();
        assert!(
            both.contains("yuv420p") && both.contains("AAC-LC") && both.contains("off"),
            "{both}"
        );
        assert!(omits(Some("H.264 High 10"), None, true).is_some());
        let he = omits(None, Some("HE-AAC 44100 Hz 2ch"), true).unwrap();
        assert!(he.contains("HE-AAC") && he.contains("LC"), "{he}");
        assert!(omits(None, Some("AAC-LC 48000 Hz 6ch"), true).is_some());
    }
}
