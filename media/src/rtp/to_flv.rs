//! WebRTC media into FLV tags (sans-IO): the H.264 access units and Opus packets of a WHIP
//! publisher in, hub frames out, so every reader sees the stream like an RTMP one.
//!
//! Each track's times come from its RTP timestamps (90 kHz video, 48 kHz Opus), anchored at
//! the arrival of its first packet on the session's clock: the two tracks start in step with
//! what the network delivered and keep the sender's spacing after. Video waits for parameter
//! sets and a keyframe ([`RtpToFlv::video`] says when one is wanted, for a PLI).

use bytes::Bytes;

use crate::codec::avc::{AvcConfig, NAL_PPS, NAL_SPS, nal_type};
use crate::flv::make;
use crate::hub::Frame;
use crate::rtmp::session::MediaKind;
use crate::rtp::h264::AccessUnit;

/// A track's RTP clock mapped to FLV milliseconds.
#[derive(Debug, Clone, Copy)]
struct Clock {
    rate: u32,
    /// Session time (ms) of the first packet.
    base_ms: u64,
    first: i64,
    last: u32,
    unwrapped: i64,
}

impl Clock {
    fn new(rate: u32, rtp: u32, now_ms: u64) -> Self {
        Self {
            rate,
            base_ms: now_ms,
            first: i64::from(rtp),
            last: rtp,
            unwrapped: i64::from(rtp),
        }
    }

    /// FLV time of `rtp` (RTP time wraps; consecutive packets are close).
    fn ms(&mut self, rtp: u32) -> u32 {
        self.unwrapped += i64::from(rtp.wrapping_sub(self.last) as i32);
        self.last = rtp;
        let elapsed = (self.unwrapped - self.first) * 1000 / i64::from(self.rate);
        (self.base_ms as i64 + elapsed).max(0) as u32
    }
}

/// What the converter did with an access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoOutcome {
    Sent,
    /// Dropped: no parameter sets yet, or waiting for a keyframe. Ask the sender for one.
    NeedKeyframe,
}

/// One WHIP session's converter.
#[derive(Debug, Default)]
pub struct RtpToFlv {
    video_clock: Option<Clock>,
    audio_clock: Option<Clock>,
    config: Option<AvcConfig>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    /// A keyframe has been sent since the last configuration.
    keyframe_sent: bool,
    audio_started: bool,
}

impl RtpToFlv {
    pub fn new() -> Self {
        Self::default()
    }

    /// Converts one access unit that arrived at session time `now_ms`.
    pub fn video(&mut self, au: &AccessUnit, now_ms: u64, out: &mut Vec<Frame>) -> VideoOutcome {
        let clock = self
            .video_clock
            .get_or_insert_with(|| Clock::new(90_000, au.rtp_timestamp, now_ms));
        let timestamp = clock.ms(au.rtp_timestamp);
        let nalus = make::annex_b_nalus(&au.data);
        for nal in &nalus {
            match nal_type(nal) {
                Some(NAL_SPS) => self.sps = Some(Bytes::copy_from_slice(nal)),
                Some(NAL_PPS) => self.pps = Some(Bytes::copy_from_slice(nal)),
                _ => {}
            }
        }
        if let (Some(sps), Some(pps)) = (&self.sps, &self.pps)
            && let Some(config) = make::avc_config(sps, pps)
            && self.config.as_ref() != Some(&config)
        {
            out.push(Frame {
                kind: MediaKind::Video,
                timestamp,
                payload: make::avc_sequence_header(&config),
            });
            self.config = Some(config);
            self.keyframe_sent = false;
        }
        if self.config.is_none() || (!self.keyframe_sent && !au.keyframe) {
            return VideoOutcome::NeedKeyframe;
        }
        self.keyframe_sent |= au.keyframe;
        out.push(Frame {
            kind: MediaKind::Video,
            timestamp,
            payload: make::avc_frame(au.keyframe, &nalus),
        });
        VideoOutcome::Sent
    }

    /// Converts one Opus packet (an RTP payload) with its RTP time, arrived at `now_ms`.
    pub fn audio(&mut self, packet: &[u8], rtp_timestamp: u32, now_ms: u64, out: &mut Vec<Frame>) {
        if packet.is_empty() {
            return;
        }
        let clock = self
            .audio_clock
            .get_or_insert_with(|| Clock::new(48_000, rtp_timestamp, now_ms));
        let timestamp = clock.ms(rtp_timestamp);
        if !self.audio_started {
            // WebRTC signals Opus as two channels whatever is sent (RFC 7587 §7).
            out.push(Frame {
                kind: MediaKind::Audio,
                timestamp,
                payload: make::opus_sequence_start(2),
            });
            self.audio_started = true;
        }
        out.push(Frame {
            kind: MediaKind::Audio,
            timestamp,
            payload: make::opus_frame(packet),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flv::tag::{self, FrameType, VideoPacket};

    fn au(ts: u32, keyframe: bool, nals: &[&[u8]]) -> AccessUnit {
        let mut data = Vec::new();
        for n in nals {
            data.extend_from_slice(&[0, 0, 0, 1]);
            data.extend_from_slice(n);
        }
        AccessUnit {
            rtp_timestamp: ts,
            data: Bytes::from(data),
            keyframe,
        }
    }

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn video_waits_for_parameter_sets_and_a_keyframe() {
        let mut c = RtpToFlv::new();
        let mut out = Vec::new();
        // A P-frame first: nothing to decode it with.
        assert_eq!(
            c.video(&au(1000, false, &[&[0x41, 1]]), 500, &mut out),
            VideoOutcome::NeedKeyframe
        );
        assert!(out.is_empty());
        let outcome = c.video(
            &au(1000 + 3000, true, &[SPS, PPS, &[0x65, 2]]),
            533,
            &mut out,
        );
        assert_eq!(outcome, VideoOutcome::Sent);
        assert_eq!(out.len(), 2);
        let header = tag::parse_video(&out[0].payload).unwrap();
        assert_eq!(header.packet, VideoPacket::SequenceHeader);
        let key = tag::parse_video(&out[1].payload).unwrap();
        assert_eq!(key.frame_type, FrameType::Key);
        // The track's clock starts at the first packet's arrival: 500 ms, then RTP spacing.
        assert_eq!(out[1].timestamp, 500 + 33);
        out.clear();
        c.video(&au(1000 + 6000, false, &[&[0x41, 3]]), 9999, &mut out);
        assert_eq!(out[0].timestamp, 500 + 66);
        // The same parameter sets again: no new sequence header.
        out.clear();
        c.video(
            &au(1000 + 9000, true, &[SPS, PPS, &[0x65, 4]]),
            600,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn new_parameter_sets_send_a_new_header_and_wait_for_a_keyframe() {
        let mut c = RtpToFlv::new();
        let mut out = Vec::new();
        c.video(&au(0, true, &[SPS, PPS, &[0x65]]), 0, &mut out);
        out.clear();
        let other_pps: &[u8] = &[0x68, 0xee];
        assert_eq!(
            c.video(&au(3000, false, &[other_pps, &[0x41]]), 33, &mut out),
            VideoOutcome::NeedKeyframe
        );
        assert_eq!(out.len(), 1, "the new sequence header");
    }

    #[test]
    fn rtp_time_wraps_and_audio_starts_with_opus_head() {
        let mut c = RtpToFlv::new();
        let mut out = Vec::new();
        c.audio(&[0xfc, 1], u32::MAX - 959, 100, &mut out);
        c.audio(
            &[0xfc, 2],
            (u32::MAX - 959).wrapping_add(960 * 2),
            140,
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert!(make::parse_opus(&out[0].payload).is_some());
        assert_eq!(out[1].timestamp, 100);
        assert_eq!(out[2].timestamp, 140);
        c.audio(&[], 0, 0, &mut out);
        assert_eq!(out.len(), 3);
    }
}
