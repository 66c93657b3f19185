//! One viewer's sender: hub frames in, RTP packets out to its peer connection.
//!
//! The hub reader is the viewer's bounded queue: a viewer whose connection cannot keep up falls
//! behind in the hub, which drops its queue and resumes it at the next keyframe; the publisher
//! and the other viewers never wait for it. The reader starts at the hub's cached keyframe, so
//! the first picture is sent as soon as DTLS is up, not at the next IDR. A viewer that lost
//! its picture asks for a keyframe (PLI/FIR); it is answered at once from the same cache,
//! with RTP timestamps that keep running forward, rather than after up to a GOP of frozen
//! video; but at most once every [`RESYNC_EVERY`]: a request sooner stops the viewer's video
//! until the stream's next keyframe or, should none come first, until the cache may be sent
//! again, so that on a thin uplink loss cannot turn into ever more resent GOPs and a stream with
//! long GOPs still repairs within seconds.
//!
//! A stream with B-frames is sent so that the browser's decoder reorders them (the
//! packetizer keeps the stream's SPS for it) and stamped with the presentation times of the
//! pictures that decoder outputs (`verge_media::rtp::decode_order`); see docs/architecture.md.

use std::time::Duration;

use rtc::rtp;
use std::sync::Arc;
use verge_media::codec::avc;
use verge_media::flv::tag::{self, VideoPacket};
use verge_media::hub::{Frame, Hub, Reader, ReaderKind};
use verge_media::rtmp::session::MediaKind;
use verge_media::rtp::decode_order::DecodeOrderClock;
use verge_media::rtp::h264::H264Packetizer;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::RTCPeerConnectionState;

use super::audio::{AudioFeed, OpusPacket};
use super::engine::{NotConnected, RTP_MTU};
use super::keyframe::is_keyframe_request;
use super::pace::Backlog;
use super::payloads::SharedPayloads;
use super::peer::{AudioOut, Peer};
use tokio::sync::broadcast;

/// Why a viewer's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The publisher stopped and every queued frame was sent.
    PublisherGone,
    /// DELETE, or the agent shutting down.
    Closed,
    /// ICE/DTLS never came up within the connect timeout.
    ConnectTimeout,
    /// ICE failed (the viewer went away without a DELETE) or the connection closed.
    ConnectionLost,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::PublisherGone => "publisher gone",
            End::Closed => "closed",
            End::ConnectTimeout => "connect timeout",
            End::ConnectionLost => "connection lost",
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

/// Keyframe requests closer together than this are answered once: a viewer repeats its PLI
/// until a keyframe arrives, and each answer resends a whole GOP.
const MIN_RESYNC_INTERVAL: Duration = Duration::from_millis(500);
/// A viewer is sent the cached GOP again at most this often; a keyframe request sooner waits
/// for the stream's next keyframe, or this long after the last resend, whichever comes first.
const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// How far past the last frame sent a resent keyframe is stamped (one frame at 30 fps).
const RESYNC_STEP_TICKS: u32 = 3000;

/// A viewer with more frames than this waiting in its hub queue, once it has caught up with
/// the live edge, is too far behind for real time (3 s at 30 fps): it skips to the next
/// keyframe. The hub's own bounds (megabytes) are for players that buffer.
const MAX_BEHIND_FRAMES: usize = 90;

/// What one viewer was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub frames: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Keyframe requests answered from the cache.
    pub resyncs: u64,
    /// Keyframe requests that came too soon after a resync, so waited for the stream's next
    /// keyframe or the next allowed resync.
    pub keyframe_waits: u64,
    /// Times the viewer fell too far behind and skipped to the next keyframe.
    pub skips: u64,
    pub audio_packets: u64,
    /// Opus packets the viewer missed by falling behind the stream's audio feed.
    pub audio_lost: u64,
    /// How much later than its video the audio was sent, relative to their timestamps (ms,
    /// positive: the browser plays the sound late). Browsers line tracks up by the sender
    /// reports, which webrtc stamps at send time, so this is the lip-sync error.
    pub av_offset: OffsetStats,
}

/// Running statistics of the audio-to-video send offset.
#[derive(Debug, Default, Clone, Copy)]
pub struct OffsetStats {
    pub count: u64,
    sum_ms: f64,
    pub max_abs_ms: f64,
}

impl OffsetStats {
    fn add(&mut self, ms: f64) {
        self.count += 1;
        self.sum_ms += ms;
        self.max_abs_ms = self.max_abs_ms.max(ms.abs());
    }

    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ms / self.count as f64
        }
    }
}

/// When the live video's latest frame was sent, and its presentation time (ms).
#[derive(Debug, Clone, Copy)]
struct VideoClock {
    at: tokio::time::Instant,
    pts_ms: u32,
}

/// Where a viewer's video comes from.
pub struct Source<'a> {
    /// To subscribe again when the viewer asks for a keyframe.
    pub hub: &'a Hub,
    pub reader: Reader,
    /// The stream's payloads, shared with its other viewers.
    pub payloads: Arc<SharedPayloads>,
    /// The stream's Opus audio, when the viewer takes audio.
    pub audio: Option<Arc<AudioFeed>>,
}

/// The first RTP sequence number and timestamp of a viewer's stream (RFC 3550 wants both
/// random).
#[derive(Debug, Clone, Copy)]
pub struct RtpStart {
    pub sequence: u16,
    pub timestamp: u32,
    pub audio_sequence: u16,
    pub audio_timestamp: u32,
}

/// Sends the source's video to `peer` until the stream ends, the connection fails, or `closed`
/// completes; always closes the connection.
pub async fn run(
    peer: Peer,
    source: Source<'_>,
    rtp: RtpStart,
    connect_timeout: Duration,
    closed: impl std::future::Future<Output = ()>,
) -> (End, Sent) {
    let Source {
        hub,
        mut reader,
        payloads: shared,
        audio: feed,
    } = source;
    let (sequence, timestamp_base) = (rtp.sequence, rtp.timestamp);
    tokio::pin!(closed);
    let mut state = peer.state.clone();
    let mut sent = Sent::default();
    let up = tokio::select! {
        _ = &mut closed => Err(End::Closed),
        r = super::engine::connected(&mut state, connect_timeout) => r.map_err(End::from),
    };
    let end = match up {
        Err(end) => end,
        Ok(()) => {
            let mut out = Outbound::new(&peer, shared, sequence, timestamp_base);
            // Audio is live only: subscribed once connected, it starts with the next packet.
            let mut audio = peer.audio.as_ref().zip(feed.as_ref()).map(|(out, feed)| {
                (
                    feed.subscribe(),
                    AudioSender {
                        out,
                        sequence: rtp.audio_sequence,
                        timestamp_base: rtp.audio_timestamp,
                    },
                )
            });
            let mut audio_rtcp_open = audio.is_some();
            let mut video_clock: Option<VideoClock> = None;
            let mut rtcp_open = true;
            let mut last_resync: Option<tokio::time::Instant> = None;
            // When the cache is sent again after a keyframe request: at once, or for one that
            // came too soon when it may be, unless a live keyframe repaired the picture first.
            let mut resync_due: Option<tokio::time::Instant> = None;
            // The cached GOP comes first, paced (see `pace`); lag counts only once it is
            // drained.
            let mut caught_up = false;
            let mut backlog = Backlog::new(peer.backlog_speedup);
            loop {
                tokio::select! {
                    _ = &mut closed => break End::Closed,
                    event = peer.track.poll(), if rtcp_open => match event {
                        None => rtcp_open = false,
                        Some(TrackLocalEvent::OnRtcpPacket(packets))
                            if packets.iter().any(|p| is_keyframe_request(p.as_ref())) =>
                        {
                            if resync_due.is_some()
                                || last_resync.is_some_and(|t| t.elapsed() < MIN_RESYNC_INTERVAL)
                            {
                                continue;
                            }
                            if let Some(t) = last_resync.filter(|t| t.elapsed() < RESYNC_EVERY) {
                                // Another GOP from the cache this soon would add a GOP's bytes
                                // to a link that is likely losing packets already (a thin
                                // uplink thrashes: loss, PLI, resend, more loss). Frames the
                                // viewer cannot decode are not sent; the next keyframe repairs
                                // the picture at no cost, or the cache once it may be sent.
                                reader.skip_to_next_keyframe();
                                resync_due = Some(t + RESYNC_EVERY);
                                sent.keyframe_waits += 1;
                                continue;
                            }
                            // Due now: the arm below sends the cache at its next turn.
                            resync_due = Some(tokio::time::Instant::now());
                        }
                        Some(_) => {}
                    },
                    packet = next_audio(audio.as_mut().map(|(rx, _)| rx)) => match packet {
                        Ok(packet) => {
                            if let Some((_, tx)) = &mut audio {
                                if let Some(v) = video_clock.filter(|v| v.at.elapsed() < Duration::from_secs(1)) {
                                    // Audio ms past the video frame, against how much later it is sent.
                                    let media_ms = f64::from(packet.timestamp.wrapping_sub(v.pts_ms.wrapping_mul(48)) as i32) / 48.0;
                                    sent.av_offset.add(v.at.elapsed().as_secs_f64() * 1000.0 - media_ms);
                                }
                                if !tx.send(&packet, &mut sent).await {
                                    break End::ConnectionLost;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => sent.audio_lost += n,
                        // The stream's audio ended (its video ends too).
                        Err(broadcast::error::RecvError::Closed) => audio = None,
                    },
                    // Receiver reports on the audio track: read, so that they do not pile up.
                    event = audio_rtcp(peer.audio.as_ref()), if audio_rtcp_open => {
                        audio_rtcp_open = event.is_some();
                    }
                    changed = state.changed() => {
                        let lost = changed.is_err() || matches!(*state.borrow(),
                            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed);
                        if lost { break End::ConnectionLost }
                    }
                    _ = sleep_until_some(resync_due) => {
                        resync_due = None;
                        last_resync = Some(tokio::time::Instant::now());
                        match resync(hub, &peer, reader, &mut out, &mut sent) {
                            Some(r) => reader = r,
                            None => break End::PublisherGone,
                        }
                        caught_up = false;
                        backlog.restart();
                    }
                    frame = reader.recv() => {
                        let Some(frame) = frame else { break End::PublisherGone };
                        if frame.is_keyframe() {
                            // A live keyframe repairs the picture: no resend due.
                            resync_due = None;
                        }
                        if !caught_up
                            && let Some(due) = backlog.due(frame.timestamp, frame.is_keyframe(), tokio::time::Instant::now())
                        {
                            tokio::time::sleep_until(due).await;
                        }
                        if !out.send(&peer, &frame, &mut sent).await {
                            break End::ConnectionLost;
                        }
                        let pending = reader.pending();
                        if pending == 0 {
                            caught_up = true;
                            if let Some(pts_ms) = out.last_pts_ms.take() {
                                video_clock = Some(VideoClock { at: tokio::time::Instant::now(), pts_ms });
                            }
                        } else if caught_up && pending > MAX_BEHIND_FRAMES {
                            reader.skip_to_next_keyframe();
                            sent.skips += 1;
                            caught_up = false;
                            backlog.restart();
                            tracing::debug!(stream = %peer.stream, pending, "WHEP viewer behind, skipping to the next keyframe");
                        }
                    }
                }
            }
        }
    };
    let _ = peer.pc.close().await;
    (end, sent)
}

fn reader_stream(peer: &Peer) -> &str {
    &peer.stream
}

/// Starts the viewer again at the hub's cached keyframe; `None` once the stream is gone.
fn resync(
    hub: &Hub,
    peer: &Peer,
    reader: Reader,
    out: &mut Outbound,
    sent: &mut Sent,
) -> Option<Reader> {
    // Give the slot back first: the hub counts readers against a limit.
    let label = reader.label();
    drop(reader);
    let reader = hub
        .subscribe_as(reader_stream(peer), ReaderKind::Webrtc)
        .ok()?;
    reader.set_label(label);
    out.resync(peer);
    sent.resyncs += 1;
    Some(reader)
}

/// Completes at `at`; pending forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One viewer's audio: the stream's Opus packets re-stamped with its own RTP numbers.
struct AudioSender<'a> {
    out: &'a AudioOut,
    sequence: u16,
    timestamp_base: u32,
}

impl AudioSender<'_> {
    /// Sends one packet; false once the connection no longer takes packets.
    async fn send(&mut self, packet: &OpusPacket, sent: &mut Sent) -> bool {
        let header = rtp::header::Header {
            version: 2,
            payload_type: self.out.payload_type,
            sequence_number: self.sequence,
            timestamp: self.timestamp_base.wrapping_add(packet.timestamp),
            ssrc: self.out.ssrc,
            ..Default::default()
        };
        self.sequence = self.sequence.wrapping_add(1);
        sent.audio_packets += 1;
        sent.bytes += packet.data.len() as u64;
        let packet = rtp::Packet {
            header,
            payload: packet.data.clone(),
        };
        self.out.track.write_rtp(packet).await.is_ok()
    }
}

/// The next Opus packet for the viewer; pending forever when it has no audio.
async fn next_audio(
    packets: Option<&mut broadcast::Receiver<Arc<OpusPacket>>>,
) -> Result<Arc<OpusPacket>, broadcast::error::RecvError> {
    match packets {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next RTCP event on the audio track; pending forever when there is none.
async fn audio_rtcp(out: Option<&AudioOut>) -> Option<TrackLocalEvent> {
    match out {
        Some(a) => a.track.poll().await,
        None => std::future::pending().await,
    }
}

/// The packetizer state of one viewer.
struct Outbound {
    /// This viewer's RTP clock and sequence numbers, and the parameter sets for payloads not
    /// made yet.
    packetizer: H264Packetizer,
    shared: Arc<SharedPayloads>,
    length_size: Option<u8>,
    /// RTP timestamp of the last access unit sent.
    last_timestamp: Option<u32>,
    /// Presentation time (ms) of the access unit just sent.
    last_pts_ms: Option<u32>,
    /// Leave B-frames out (`[webrtc] b_frames = "drop"`).
    drop_b_frames: bool,
    /// Stamps for a stream whose decoder reorders (B-frames sent): set from the SPS.
    reorder: Option<DecodeOrderClock>,
    /// Whether the viewer's decoder was primed with copies of its first keyframe.
    primed: bool,
}

impl Outbound {
    fn new(peer: &Peer, shared: Arc<SharedPayloads>, sequence: u16, timestamp_base: u32) -> Self {
        Self {
            packetizer: H264Packetizer::new(
                peer.ssrc,
                peer.payload_type,
                sequence,
                timestamp_base,
                RTP_MTU,
            )
            .keeping_decoder_reorder(!peer.drop_b_frames),
            shared,
            length_size: None,
            last_timestamp: None,
            last_pts_ms: None,
            drop_b_frames: peer.drop_b_frames,
            reorder: None,
            primed: false,
        }
    }

    /// Starts over from a fresh hub reader (which begins with the sequence header and the
    /// cached GOP): sequence numbers continue, and timestamps continue just past the last
    /// frame sent, so the receiver takes the resent frames as new ones. A decoder that
    /// reorders is primed again: what it held is not what comes next.
    fn resync(&mut self, peer: &Peer) {
        let sequence = self.packetizer.sequence();
        let base = self
            .last_timestamp
            .map_or(0, |t| t.wrapping_add(RESYNC_STEP_TICKS));
        self.packetizer =
            H264Packetizer::new(peer.ssrc, peer.payload_type, sequence, base, RTP_MTU)
                .keeping_decoder_reorder(!self.drop_b_frames);
        self.length_size = None;
        self.reorder = None;
        self.primed = false;
    }

    /// Learns from a sequence header how many pictures the viewer's decoder holds back: the
    /// SPS's `max_num_reorder_frames`, which the packetizer makes sure reaches the decoder
    /// unless B-frames are left out.
    fn set_reorder(&mut self, config: &avc::AvcConfig) {
        if self.drop_b_frames {
            return;
        }
        let sps = config.sps.first().and_then(|s| avc::parse_sps(s).ok());
        let delay = sps.and_then(|s| s.max_num_reorder_frames).unwrap_or(0);
        let current = self.reorder.as_ref().map_or(0, DecodeOrderClock::delay);
        // A repeated sequence header keeps the clock (and what it knows is pending).
        if delay > current {
            self.reorder = Some(DecodeOrderClock::new(delay));
            self.primed = false;
        }
    }

    /// Whether B-frames are left out: by configuration, or because the stream's SPS does not
    /// say how many frames to reorder, so the browser's decoder would drop them as out of
    /// order (and each drop costs a keyframe request).
    fn drops_b_frames(&self) -> bool {
        self.drop_b_frames || self.reorder.is_none()
    }

    /// Sends one access unit's payloads with the next sequence numbers; false once the
    /// connection no longer takes packets.
    async fn write(
        &mut self,
        peer: &Peer,
        payloads: &[bytes::Bytes],
        timestamp: u32,
        sent: &mut Sent,
    ) -> bool {
        let first = self.packetizer.take_sequences(payloads.len());
        tracing::trace!(stream = %peer.stream, sequence = first, timestamp, packets = payloads.len(),
            bytes = payloads.iter().map(|p| p.len()).sum::<usize>(), "WHEP access unit");
        self.last_timestamp = Some(timestamp);
        sent.frames += 1;
        for (i, payload) in payloads.iter().enumerate() {
            let header = rtp::header::Header {
                version: 2,
                marker: i + 1 == payloads.len(),
                payload_type: peer.payload_type,
                sequence_number: first.wrapping_add(i as u16),
                timestamp,
                ssrc: peer.ssrc,
                ..Default::default()
            };
            sent.packets += 1;
            sent.bytes += payload.len() as u64;
            let packet = rtp::Packet {
                header,
                payload: payload.clone(),
            };
            // Errors carry a dump of the whole packet: never log them.
            if peer.track.write_rtp(packet).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends one hub frame; false once the connection no longer takes packets.
    async fn send(&mut self, peer: &Peer, frame: &Frame, sent: &mut Sent) -> bool {
        // Audio is AAC, which WebRTC cannot carry; the stream's state says so.
        if frame.kind != MediaKind::Video {
            return true;
        }
        let Ok(video) = tag::parse_video(&frame.payload) else {
            return true;
        };
        match video.packet {
            VideoPacket::SequenceHeader => {
                if let Ok(config) = avc::parse_avc_config(&video.data) {
                    self.packetizer.set_config(&config);
                    self.length_size = Some(config.nalu_length_size);
                    self.set_reorder(&config);
                }
                return true;
            }
            VideoPacket::Nalu => {}
            VideoPacket::EndOfSequence | VideoPacket::Command => return true,
        }
        // Frames before the first sequence header cannot be split into NAL units.
        let Some(length_size) = self.length_size else {
            return true;
        };
        // With x264's default b-pyramid only B-frames reference B-frames, so without them the I
        // and P frames still decode (at a fraction of the rate).
        if self.drops_b_frames() && avc::is_b_frame(&video.data, length_size) {
            return true;
        }
        let packetizer = &self.packetizer;
        let payloads = self.shared.get_or_make(&frame.payload, || {
            let mut out = Vec::new();
            packetizer
                .payloads(&video.data, length_size, &mut out)
                .ok()
                .map(|()| out)
        });
        let Some(payloads) = payloads.filter(|p| !p.is_empty()) else {
            return true;
        };
        let pts_ms = frame.timestamp.wrapping_add_signed(video.composition_time);
        // A fresh decoder that reorders outputs nothing for its first access units, which
        // the browser takes as errors: its first keyframe goes out as many extra times.
        let copies = match &self.reorder {
            Some(clock) if !self.primed && frame.is_keyframe() => {
                self.primed = true;
                clock.priming()
            }
            _ => 0,
        };
        for _ in 0..=copies {
            let timestamp = match &mut self.reorder {
                Some(clock) => {
                    let shown_ms = clock.stamp(frame.timestamp, pts_ms);
                    self.last_pts_ms = Some(shown_ms);
                    self.packetizer.stamp(shown_ms, 0)
                }
                None => {
                    self.last_pts_ms = Some(pts_ms);
                    self.packetizer
                        .stamp(frame.timestamp, video.composition_time)
                }
            };
            if !self.write(peer, &payloads, timestamp, sent).await {
                return false;
            }
        }
        true
    }
}
