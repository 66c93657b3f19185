//! Retransmissions on request (RTCP NACK), bounded.
//!
//! webrtc's own responder resends every packet a receiver names, as often as it is named. A
//! receiver NACKs a missing packet on every tick until it arrives (webrtc-rs's generator: every
//! 100 ms, with no cap), so on a full uplink every loss becomes many resends, the resends cause
//! more loss, and the link never recovers: measured on a box behind an 8 Mbit/s uplink, three
//! 1.5 Mbit/s sessions held the uplink at 8.0 Mbit/s while only 2.5 Mbit/s of it was media.
//! It is also a lever for any viewer: one NACK naming 17 packets costs the box 17 packets.
//!
//! This responder resends what was asked, within three bounds per stream (as libwebrtc's
//! sender does, with its own numbers):
//! - a packet is resent at most [`MAX_RESENDS`] times, and not again within [`MIN_SPACING`]
//!   (a receiver asking again before its first resend could arrive);
//! - resent bytes per second stay under half of the media bytes sent the second before (at
//!   least [`FLOOR_BYTES`]), so repair can never take more than a third of the link;
//! - only the last [`HISTORY`] packets are kept.
//!
//! What is refused is counted; the receiver's keyframe request repairs the picture instead.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use rtc::shared::error::Error;

/// Packets kept per stream for resending (~6 s of a 1.5 Mbit/s stream).
pub const HISTORY: usize = 1024;
/// Resends of one packet at most.
pub const MAX_RESENDS: u8 = 3;
/// Least time between two resends of one packet.
pub const MIN_SPACING: Duration = Duration::from_millis(100);
/// Resent bytes a stream may always use per second, whatever its media rate (audio, a still
/// picture).
pub const FLOOR_BYTES: u64 = 16 * 1024;
/// The receivers' NACKs per missing packet, for Verge's own receivers (a relay, a WHIP
/// publisher): webrtc-rs's generator has no cap by default.
pub const MAX_NACKS_PER_PACKET: u16 = 10;

/// What one connection's responder did, for the session's end line.
#[derive(Debug, Default)]
pub struct Counters {
    pub resent: AtomicU64,
    /// Asked too often, or too soon after its last resend.
    pub refused_repeat: AtomicU64,
    /// Over the second's budget.
    pub refused_budget: AtomicU64,
    /// No longer (or never) in the history.
    pub unknown: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.resent.load(Ordering::Relaxed),
            self.refused_repeat.load(Ordering::Relaxed),
            self.refused_budget.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed),
        )
    }
}

/// Why a requested packet was not resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Repeat,
    Budget,
    Unknown,
}

struct Sent {
    packet: rtc::rtp::Packet,
    bytes: u64,
    resends: u8,
    last: Option<Instant>,
}

/// One stream's history and budget: the sans-IO core, driven by packets and clock readings.
pub struct History {
    ring: VecDeque<(u16, Sent)>,
    second_start: Option<Instant>,
    media_this_second: u64,
    media_last_second: u64,
    resent_this_second: u64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            ring: VecDeque::with_capacity(HISTORY),
            second_start: None,
            media_this_second: 0,
            media_last_second: 0,
            resent_this_second: 0,
        }
    }
}

impl History {
    fn tick(&mut self, now: Instant) {
        let start = *self.second_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            // A gap of more than a second means nothing was sent in the second before.
            self.media_last_second = if elapsed >= Duration::from_secs(2) {
                0
            } else {
                self.media_this_second
            };
            self.media_this_second = 0;
            self.resent_this_second = 0;
            self.second_start = Some(now);
        }
    }

    /// Bytes that may be resent this second.
    fn budget(&self) -> u64 {
        (self.media_last_second / 2).max(FLOOR_BYTES)
    }

    /// A packet as it leaves for the first time.
    pub fn sent(&mut self, packet: &rtc::rtp::Packet, now: Instant) {
        self.tick(now);
        let bytes = (packet.payload.len() + 12) as u64;
        self.media_this_second += bytes;
        if self.ring.len() == HISTORY {
            self.ring.pop_front();
        }
        self.ring.push_back((
            packet.header.sequence_number,
            Sent {
                packet: packet.clone(),
                bytes,
                resends: 0,
                last: None,
            },
        ));
    }

    /// The packet `seq` to send again, or why not.
    pub fn resend(&mut self, seq: u16, now: Instant) -> Result<rtc::rtp::Packet, Refused> {
        self.tick(now);
        let budget = self.budget();
        let spent = self.resent_this_second;
        // Sequence numbers ascend through the ring (wrapping), so the entry is found by its
        // distance from the newest one.
        let newest = self.ring.back().map(|(s, _)| *s).ok_or(Refused::Unknown)?;
        let back = newest.wrapping_sub(seq) as usize;
        let index = (self.ring.len().checked_sub(1 + back)).ok_or(Refused::Unknown)?;
        let (found, sent) = self.ring.get_mut(index).ok_or(Refused::Unknown)?;
        if *found != seq {
            return Err(Refused::Unknown);
        }
        if sent.resends >= MAX_RESENDS
            || sent
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < MIN_SPACING)
        {
            return Err(Refused::Repeat);
        }
        if spent + sent.bytes > budget {
            return Err(Refused::Budget);
        }
        sent.resends += 1;
        sent.last = Some(now);
        self.resent_this_second += sent.bytes;
        Ok(sent.packet.clone())
    }
}

/// The sequence numbers one NACK names.
pub fn requested(nack: &TransportLayerNack) -> impl Iterator<Item = u16> + '_ {
    nack.nacks.iter().flat_map(|pair| {
        std::iter::once(pair.packet_id).chain(
            (0..16u16)
                .filter(move |i| pair.lost_packets & (1 << i) != 0)
                .map(move |i| pair.packet_id.wrapping_add(i + 1)),
        )
    })
}

/// The interceptor, in webrtc's NACK responder slot.
pub struct Responder {
    streams: HashMap<u32, History>,
    counters: Arc<Counters>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Responder {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            streams: HashMap::new(),
            counters,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    fn on_nack(&mut self, now: Instant, nack: &TransportLayerNack) {
        let Some(history) = self.streams.get_mut(&nack.media_ssrc) else {
            return;
        };
        for seq in requested(nack) {
            let counter = match history.resend(seq, now) {
                Ok(packet) => {
                    self.write.push_back(TaggedPacket {
                        now,
                        transport: TransportContext::default(),
                        message: AttributedPacket::new(Packet::Rtp(packet))
                            .with(Attribute::Retransmission),
                    });
                    &self.counters.resent
                }
                Err(Refused::Repeat) => &self.counters.refused_repeat,
                Err(Refused::Budget) => &self.counters.refused_budget,
                Err(Refused::Unknown) => &self.counters.unknown,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Responder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for packet in packets {
                if let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>() {
                    self.on_nack(msg.now, nack);
                }
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(packet) = &msg.message.packet
            && let Some(history) = self.streams.get_mut(&packet.header.ssrc)
        {
            history.sent(packet, msg.now);
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for Responder {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        let nack = info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty());
        if nack {
            self.streams.insert(info.ssrc, History::default());
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    fn packet(seq: u16, len: usize) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                sequence_number: seq,
                ssrc: 7,
                ..Default::default()
            },
            payload: vec![0u8; len].into(),
        }
    }

    /// A stream of `rate` bytes per second sent for `secs` seconds in 1200-byte packets from
    /// `first`; returns the clock after it.
    fn feed(h: &mut History, first: u16, rate: u64, secs: u64, t0: Instant) -> (u16, Instant) {
        let per_second = (rate / 1212).max(1);
        let mut seq = first;
        let mut now = t0;
        for _ in 0..secs * per_second {
            h.sent(&packet(seq, 1200), now);
            seq = seq.wrapping_add(1);
            now += Duration::from_secs(1) / per_second as u32;
        }
        (seq, now)
    }

    #[test]
    fn a_packet_is_resent_once_per_spacing_and_at_most_three_times() {
        let mut h = History::default();
        let t0 = Instant::now();
        let (_, now) = feed(&mut h, 100, 200_000, 2, t0);
        assert_eq!(
            h.resend(150, now).map(|p| p.header.sequence_number),
            Ok(150)
        );
        assert_eq!(
            h.resend(150, now + Duration::from_millis(50)).err(),
            Some(Refused::Repeat)
        );
        let mut t = now;
        for _ in 0..2 {
            t += MIN_SPACING;
            assert!(h.resend(150, t).is_ok());
        }
        t += MIN_SPACING;
        assert_eq!(h.resend(150, t).err(), Some(Refused::Repeat));
    }

    #[test]
    fn resends_stay_within_half_the_media_rate() {
        let mut h = History::default();
        let t0 = Instant::now();
        // 187.5 kB/s (1.5 Mbit/s) for two seconds, then a NACK naming everything.
        let (next, now) = feed(&mut h, 65_000, 187_500, 2, t0);
        let mut resent = 0u64;
        let mut refused = 0;
        for back in 1..=HISTORY as u16 {
            match h.resend(next.wrapping_sub(back), now) {
                Ok(p) => resent += p.payload.len() as u64 + 12,
                Err(Refused::Budget) => refused += 1,
                // Older than the two seconds sent.
                Err(Refused::Unknown) => assert!(back > 300, "{back}"),
                Err(e) => panic!("{e:?} for {back}"),
            }
        }
        assert!(resent <= 187_500 / 2, "{resent}");
        assert!(resent >= 187_500 / 2 - 1212, "{resent}");
        assert!(refused > 0);
        // The next second has a budget again.
        let (_, later) = feed(&mut h, next, 187_500, 1, now);
        assert!(h.resend(next.wrapping_add(10), later).is_ok());
    }

    #[test]
    fn a_quiet_stream_still_has_the_floor() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.sent(&packet(1, 1200), t0);
        h.sent(&packet(2, 1200), t0 + Duration::from_secs(5));
        assert!(h.resend(1, t0 + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn unknown_and_evicted_packets_are_refused_without_panicking() {
        let mut h = History::default();
        let now = Instant::now();
        assert_eq!(h.resend(5, now).err(), Some(Refused::Unknown));
        for seq in 0..(HISTORY as u16 + 10) {
            h.sent(&packet(seq, 100), now);
        }
        assert_eq!(h.resend(3, now).err(), Some(Refused::Unknown));
        assert_eq!(
            h.resend(HISTORY as u16 + 50, now).err(),
            Some(Refused::Unknown)
        );
        assert!(h.resend(HISTORY as u16 + 9, now).is_ok());
        // Across the wrap of the sequence number.
        let mut h = History::default();
        for seq in [65_534u16, 65_535, 0, 1] {
            h.sent(&packet(seq, 100), now);
        }
        for seq in [65_534u16, 65_535, 0, 1] {
            assert!(h.resend(seq, now).is_ok(), "{seq}");
        }
    }

    #[test]
    fn a_nack_names_its_pair_and_bitmask() {
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 7,
            nacks: vec![NackPair {
                packet_id: 65_535,
                lost_packets: 0b101,
            }],
        };
        assert_eq!(requested(&nack).collect::<Vec<_>>(), vec![65_535, 0, 2]);
    }
}
