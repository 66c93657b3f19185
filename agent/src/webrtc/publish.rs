//! WHIP publishers (RFC 9725): a browser or encoder sends H.264 and Opus over WebRTC, and the
//! agent puts them into the hub as FLV tags (`verge_media::rtp::to_flv`), so WHEP viewers
//! (H.264 and Opus as sent, no transcoding), RTMP and HTTP-FLV players (the video) and the
//! recorder see the stream like an RTMP one.
//!
//! [`Whep::publish`] answers a publisher's offer and enters its session in the service's table
//! (PATCH and DELETE are the viewers' ones, under the publisher role); [`run`] is the session's
//! task. The hub slot is taken before the answer: a stream that has a publisher (RTMP or WHIP)
//! refuses a second one at once. The session ends on DELETE, when ICE fails, when no media
//! arrives for [`SILENCE`], or when the connection never comes up; the stream ends with it.
//! Lost video packets are asked for again by webrtc's NACK generator; a reorder buffer holds
//! what follows a gap for up to [`REORDER_WAIT_MS`], so a retransmission repairs the access
//! unit. A gap that outlives it, a damaged access unit, or a start without a keyframe sends a
//! PLI (at most every [`PLI_INTERVAL`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::shared::marshal::Marshal;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use verge_media::hub::Publisher;
use verge_media::rtp::h264::{AccessUnit, DEFAULT_MAX_ACCESS_UNIT, H264Depacketizer};
use verge_media::rtp::reorder::{ReorderBuffer, ReorderStats};
use verge_media::rtp::to_flv::{RtpToFlv, VideoOutcome};
use verge_protocol::whep::{self, OfferResult, SessionRole};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use super::engine::NotConnected;
use super::peer::{self, AnswerError};
use super::{IncomingOffer, Whep, WhepError};

/// No media for this long ends the session (and frees the stream name).
pub const SILENCE: Duration = Duration::from_secs(10);
/// Keyframe requests at most this often.
const PLI_INTERVAL: Duration = Duration::from_millis(500);
/// How long video packets after a gap wait for the missing one: a NACK goes out within about
/// 100 ms (webrtc's generator interval) and the retransmission takes a round trip more.
const REORDER_WAIT_MS: u64 = 200;
/// Most video packets held behind a gap (about 600 KB).
const REORDER_CAPACITY: usize = 512;
/// Media handed from the tracks' tasks to the session task; a full queue drops (the publisher
/// cannot be slowed, and the next keyframe repairs the picture).
const MEDIA_QUEUE: usize = 512;

impl Whep {
    /// Takes a WHIP publisher's offer for stream `stream` (`{app}/{name}`): the stream is
    /// taken at once (refused if it has a publisher), and its media goes into the hub.
    pub async fn publish(&self, offer: IncomingOffer<'_>) -> Result<OfferResult, WhepError> {
        let started = Instant::now();
        if !offers_h264(&offer.sdp) {
            return Err(AnswerError::NoH264ToPublish.into());
        }
        let (slot, servers) = self.admit(&offer)?;
        let IncomingOffer { stream, sdp, .. } = offer;
        let session = whep::session_id(&self.inner.agent, u64::from_be_bytes(self.random()));
        let publisher = self.take_stream(stream, &format!("WHIP {session}"))?;
        let (tracks_tx, tracks) = tokio::sync::mpsc::channel(4);
        let (answer, receiving) = peer::answer_publisher(
            sdp,
            &self.inner.settings.ice,
            &servers,
            self.inner.settings.gather_timeout,
            on_track(tracks_tx),
        )
        .await?;
        let close = self.open_session(
            &session,
            stream,
            SessionRole::Publisher,
            receiving.pc.clone(),
        );
        tracing::info!(agent = %self.inner.agent, %stream, %session,
            answer_ms = started.elapsed().as_millis() as u64, "WHIP publisher answered");
        let this = self.clone();
        let id = session.clone();
        let stream = stream.to_string();
        let connect_timeout = self.inner.settings.connect_timeout;
        tokio::spawn(async move {
            // Held until the publisher ends.
            let _slot = slot;
            let (end, got) = run(
                receiving.pc,
                receiving.state,
                tracks,
                publisher,
                connect_timeout,
                close,
            )
            .await;
            this.sessions().remove(&id);
            tracing::info!(agent = %this.inner.agent, %stream, session = %id, end = end.as_str(),
                frames = got.frames, audio_packets = got.audio_packets, keyframe_requests = got.keyframe_requests,
                video_reordered = got.video_packets.reordered, video_lost = got.video_packets.lost,
                video_late = got.video_packets.late,
                secs = started.elapsed().as_secs(), "WHIP publisher ended");
        });
        Ok(OfferResult {
            session,
            sdp: answer,
            ice_servers: self.inner.settings.ice_servers.clone(),
        })
    }
}

/// True if an SDP offer sends H.264 with packetization mode 1.
pub fn offers_h264(sdp: &str) -> bool {
    let h264: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter(|l| l.to_ascii_uppercase().contains(" H264/90000"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=fmtp:"))
        .any(|l| {
            let (pt, params) = l.split_once(' ').unwrap_or((l, ""));
            h264.contains(&pt)
                && params
                    .split(';')
                    .any(|p| p.trim() == "packetization-mode=1")
        })
}

/// Media from the tracks.
enum Media {
    Video(AccessUnit),
    Audio {
        payload: bytes::Bytes,
        timestamp: u32,
    },
}

/// Called with each remote track: hands it to the session task.
pub fn on_track(tracks: mpsc::Sender<Arc<dyn TrackRemote>>) -> super::engine::OnTrack {
    Box::new(move |track| {
        // Two tracks per session at most; a third is not something a WHIP client sends.
        let _ = tracks.try_send(track);
    })
}

/// Why a publisher's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Closed,
    ConnectTimeout,
    ConnectionLost,
    Silent,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ConnectTimeout => "connect timeout",
            End::ConnectionLost => "connection lost",
            End::Silent => "no media",
        }
    }
}

impl From<NotConnected> for End {
    fn from(e: NotConnected) -> Self {
        match e {
            NotConnected::Timeout => End::ConnectTimeout,
            NotConnected::Lost => End::ConnectionLost,
        }
    }
}

/// What a publisher's session received.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    pub frames: u64,
    pub audio_packets: u64,
    pub keyframe_requests: u64,
    /// What the video's reorder buffer did: packets put back in place (retransmissions
    /// among them), and packets given up on.
    pub video_packets: ReorderStats,
}

/// Runs a publisher's session until it ends; always closes the connection (and drops
/// `publisher`, which ends the stream).
pub async fn run(
    pc: Arc<dyn PeerConnection>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    mut tracks: mpsc::Receiver<Arc<dyn TrackRemote>>,
    publisher: Publisher,
    connect_timeout: Duration,
    closed: CancellationToken,
) -> (End, Received) {
    let mut received = Received::default();
    let up = tokio::select! {
        _ = closed.cancelled() => Err(End::Closed),
        r = super::engine::connected(&mut state, connect_timeout) => r.map_err(End::from),
    };
    let end = match up {
        Err(end) => end,
        Ok(()) => {
            let (media_tx, mut media) = mpsc::channel(MEDIA_QUEUE);
            let stop = closed.child_token();
            let (keyframe_tx, keyframe_rx) = watch::channel(0u64);
            let reorder_stats = Arc::new(std::sync::Mutex::new(ReorderStats::default()));
            let started = tokio::time::Instant::now();
            let mut convert = RtpToFlv::new();
            let mut frames = Vec::new();
            let mut wanted_keyframes = 0u64;
            // Counted from the last media, whatever else happens meanwhile.
            let mut silent_at = tokio::time::Instant::now() + SILENCE;
            let end = loop {
                tokio::select! {
                    _ = closed.cancelled() => break End::Closed,
                    changed = state.changed() => {
                        let lost = changed.is_err() || matches!(*state.borrow(),
                            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed);
                        if lost { break End::ConnectionLost }
                    }
                    Some(track) = tracks.recv() => {
                        tokio::spawn(read_track(track, media_tx.clone(), keyframe_rx.clone(),
                            reorder_stats.clone(), stop.clone()));
                    }
                    _ = tokio::time::sleep_until(silent_at) => break End::Silent,
                    next = media.recv() => {
                        // The tracks' tasks hold senders until the session stops.
                        let Some(m) = next else { break End::Silent };
                        silent_at = tokio::time::Instant::now() + SILENCE;
                        let now_ms = started.elapsed().as_millis() as u64;
                        match m {
                            Media::Video(au) => {
                                if convert.video(&au, now_ms, &mut frames) == VideoOutcome::NeedKeyframe {
                                    wanted_keyframes += 1;
                                    keyframe_tx.send_replace(wanted_keyframes);
                                }
                            }
                            Media::Audio { payload, timestamp } => {
                                convert.audio(&payload, timestamp, now_ms, &mut frames);
                                received.audio_packets += 1;
                            }
                        }
                        for frame in frames.drain(..) {
                            received.frames += u64::from(frame.kind == verge_media::rtmp::session::MediaKind::Video
                                && !frame.is_sequence_header());
                            publisher.push(frame);
                        }
                    }
                }
            };
            stop.cancel();
            received.keyframe_requests = wanted_keyframes;
            received.video_packets = *reorder_stats.lock().unwrap_or_else(|p| p.into_inner());
            end
        }
    };
    drop(publisher);
    let _ = pc.close().await;
    (end, received)
}

/// Reads one remote track until the session stops: video is depacketized into access units,
/// audio passed on as Opus packets.
async fn read_track(
    track: Arc<dyn TrackRemote>,
    media: mpsc::Sender<Media>,
    mut keyframes: watch::Receiver<u64>,
    stats: Arc<std::sync::Mutex<ReorderStats>>,
    stop: CancellationToken,
) {
    let video = track.kind().await == RtpCodecKind::Video;
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mut depacketizer = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
    let mut reorder = ReorderBuffer::new(REORDER_WAIT_MS, REORDER_CAPACITY);
    let mut in_order = Vec::new();
    let started = tokio::time::Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut last_pli: Option<tokio::time::Instant> = None;
    // The first picture needs a keyframe: ask at once rather than wait for the encoder's GOP.
    let mut want_keyframe = video;
    loop {
        if want_keyframe && last_pli.is_none_or(|t| t.elapsed() >= PLI_INTERVAL) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            };
            if track.write_rtcp(vec![Box::new(pli)]).await.is_err() {
                return;
            }
            last_pli = Some(tokio::time::Instant::now());
            want_keyframe = false;
        }
        let gap_deadline = reorder
            .deadline()
            .map(|ms| started + Duration::from_millis(ms));
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            changed = keyframes.changed(), if video => {
                if changed.is_err() { return }
                want_keyframe = true;
                continue;
            }
            // Wake up to send a PLI that was held back by the interval.
            _ = tokio::time::sleep(PLI_INTERVAL), if want_keyframe => continue,
            // A gap waited long enough: what is behind it goes on without it.
            _ = sleep_until(gap_deadline), if gap_deadline.is_some() => {
                reorder.expire(now_ms(), &mut in_order);
                None
            }
            event = track.poll() => match event {
                None => return,
                Some(TrackRemoteEvent::OnRtpPacket(packet)) if video => {
                    reorder.push(packet.header.sequence_number, packet, now_ms(), &mut in_order);
                    None
                }
                Some(TrackRemoteEvent::OnRtpPacket(packet)) => Some(Media::Audio {
                    timestamp: packet.header.timestamp,
                    payload: packet.payload,
                }),
                Some(_) => continue,
            },
        };
        let mut items: Vec<Media> = event.into_iter().collect();
        if video {
            *stats.lock().unwrap_or_else(|p| p.into_inner()) = reorder.stats();
            for packet in in_order.drain(..) {
                let Ok(raw) = packet.marshal() else { continue };
                let before = depacketizer.dropped();
                let unit = depacketizer.push(&raw);
                if depacketizer.dropped() > before {
                    want_keyframe = true;
                }
                if let Ok(Some(au)) = unit {
                    items.push(Media::Video(au));
                }
            }
        }
        for item in items {
            // Full: the session task is behind; dropping is what a live stream can do.
            if media.try_send(item).is_err() && media.is_closed() {
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_must_send_h264_in_packetization_mode_1() {
        let chrome = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102\r\na=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
        assert!(offers_h264(chrome));
        let vp8_only = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(!offers_h264(vp8_only));
        let mode0 =
            "a=rtpmap:98 H264/90000\r\na=fmtp:98 packetization-mode=0;profile-level-id=42e01f\r\n";
        assert!(!offers_h264(mode0));
        // The fmtp of another payload type does not count.
        let mixed = "a=rtpmap:98 H264/90000\r\na=fmtp:98 packetization-mode=0\r\na=fmtp:99 packetization-mode=1\r\n";
        assert!(!offers_h264(mixed));
    }
}
