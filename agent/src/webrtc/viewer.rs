//! One viewer's sender: hub frames in, RTP packets out to its peer connection.
//!
//! The hub reader is the viewer's bounded queue: a viewer whose connection cannot keep up falls
//! behind in the hub, which drops its queue and resumes it at the next keyframe; the publisher
//! and the other viewers never wait for it. The reader starts at the hub's cached keyframe, so
//! the first picture is sent as soon as DTLS is up, not at the next IDR. A viewer that lost
//! its picture asks for a keyframe (PLI/FIR); it is answered at once from the same cache,
//! with RTP timestamps that keep running forward, rather than after up to a GOP of frozen
//! video.

use std::time::Duration;

use bytes::Bytes;
use rtc::rtp;
use verge_media::codec::avc;
use verge_media::flv::tag::{self, VideoPacket};
use verge_media::hub::{Frame, Hub, Reader};
use verge_media::rtmp::session::MediaKind;
use verge_media::rtp::h264::{H264Packetizer, RTP_HEADER_LEN};
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::RTCPeerConnectionState;

use super::engine::RTP_MTU;
use super::keyframe::is_keyframe_request;
use super::peer::Peer;

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

/// Keyframe requests closer together than this are answered once: a viewer repeats its PLI
/// until a keyframe arrives, and each answer resends a whole GOP.
const MIN_RESYNC_INTERVAL: Duration = Duration::from_millis(500);
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
    /// Times the viewer fell too far behind and skipped to the next keyframe.
    pub skips: u64,
}

/// Sends `reader`'s video to `peer` until the stream ends, the connection fails, or `closed`
/// completes; always closes the connection. `sequence` and `timestamp_base` seed the RTP
/// stream (RFC 3550 wants them random).
pub async fn run(
    peer: Peer,
    hub: &Hub,
    mut reader: Reader,
    connect_timeout: Duration,
    sequence: u16,
    timestamp_base: u32,
    closed: impl std::future::Future<Output = ()>,
) -> (End, Sent) {
    tokio::pin!(closed);
    let mut state = peer.state.clone();
    let mut sent = Sent::default();
    let up = tokio::select! {
        _ = &mut closed => Err(End::Closed),
        r = tokio::time::timeout(connect_timeout, state.wait_for(|s| matches!(s,
            RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed
            | RTCPeerConnectionState::Closed))) => match r {
            Err(_) => Err(End::ConnectTimeout),
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
            Ok(_) => Err(End::ConnectionLost),
        },
    };
    let end = match up {
        Err(end) => end,
        Ok(()) => {
            let mut out = Outbound::new(&peer, sequence, timestamp_base);
            let mut rtcp_open = true;
            let mut last_resync: Option<tokio::time::Instant> = None;
            // The cached GOP arrives as one burst; lag counts only once it is drained.
            let mut caught_up = false;
            loop {
                tokio::select! {
                    _ = &mut closed => break End::Closed,
                    event = peer.track.poll(), if rtcp_open => match event {
                        None => rtcp_open = false,
                        Some(TrackLocalEvent::OnRtcpPacket(packets))
                            if packets.iter().any(|p| is_keyframe_request(p.as_ref())) =>
                        {
                            if last_resync.is_some_and(|t| t.elapsed() < MIN_RESYNC_INTERVAL) {
                                continue;
                            }
                            last_resync = Some(tokio::time::Instant::now());
                            // Give the slot back first: the hub counts readers against a limit.
                            drop(reader);
                            reader = match hub.subscribe(reader_stream(&peer)) {
                                Ok(r) => r,
                                Err(_) => break End::PublisherGone,
                            };
                            out.resync(&peer);
                            sent.resyncs += 1;
                            caught_up = false;
                        }
                        Some(_) => {}
                    },
                    changed = state.changed() => {
                        let lost = changed.is_err() || matches!(*state.borrow(),
                            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed);
                        if lost { break End::ConnectionLost }
                    }
                    frame = reader.recv() => {
                        let Some(frame) = frame else { break End::PublisherGone };
                        if !out.send(&peer, &frame, &mut sent).await {
                            break End::ConnectionLost;
                        }
                        let pending = reader.pending();
                        if pending == 0 {
                            caught_up = true;
                        } else if caught_up && pending > MAX_BEHIND_FRAMES {
                            reader.skip_to_next_keyframe();
                            sent.skips += 1;
                            caught_up = false;
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

/// The packetizer state of one viewer.
struct Outbound {
    packetizer: H264Packetizer,
    length_size: Option<u8>,
    packets: Vec<Bytes>,
    /// RTP timestamp of the last access unit sent.
    last_timestamp: Option<u32>,
}

impl Outbound {
    fn new(peer: &Peer, sequence: u16, timestamp_base: u32) -> Self {
        Self {
            packetizer: H264Packetizer::new(
                peer.ssrc,
                peer.payload_type,
                sequence,
                timestamp_base,
                RTP_MTU,
            ),
            length_size: None,
            packets: Vec::new(),
            last_timestamp: None,
        }
    }

    /// Starts over from a fresh hub reader (which begins with the sequence header and the
    /// cached GOP): sequence numbers continue, and timestamps continue just past the last
    /// frame sent, so the receiver takes the resent frames as new ones.
    fn resync(&mut self, peer: &Peer) {
        let sequence = self.packetizer.sequence();
        let base = self
            .last_timestamp
            .map_or(0, |t| t.wrapping_add(RESYNC_STEP_TICKS));
        self.packetizer =
            H264Packetizer::new(peer.ssrc, peer.payload_type, sequence, base, RTP_MTU);
        self.length_size = None;
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
        self.packets.clear();
        if self
            .packetizer
            .packetize(
                &video.data,
                length_size,
                frame.timestamp,
                video.composition_time,
                &mut self.packets,
            )
            .is_err()
        {
            return true;
        }
        sent.frames += 1;
        for packet in self.packets.drain(..) {
            let Some(packet) = to_rtp(packet) else {
                continue;
            };
            sent.packets += 1;
            sent.bytes += packet.payload.len() as u64;
            self.last_timestamp = Some(packet.header.timestamp);
            // Errors carry a dump of the whole packet: never log them.
            if peer.track.write_rtp(packet).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Our packetizer writes whole RTP packets with a fixed 12-byte header; the track wants the
/// header as a struct. The payload is a slice of the same buffer, not a copy.
fn to_rtp(packet: Bytes) -> Option<rtp::Packet> {
    if packet.len() < RTP_HEADER_LEN {
        return None;
    }
    let b = &packet[..RTP_HEADER_LEN];
    let header = rtp::header::Header {
        version: 2,
        marker: b[1] & 0x80 != 0,
        payload_type: b[1] & 0x7f,
        sequence_number: u16::from_be_bytes([b[2], b[3]]),
        timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        ..Default::default()
    };
    Some(rtp::Packet {
        header,
        payload: packet.slice(RTP_HEADER_LEN..),
    })
}
