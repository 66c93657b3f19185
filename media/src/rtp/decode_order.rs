//! RTP timestamps for H.264 with B-frames, sent in decode order to a decoder that returns one
//! picture per access unit.
//!
//! WebRTC receivers (libwebrtc's FFmpeg H.264 decoder in Chromium) feed one access unit to the
//! decoder and take exactly one picture back, stamped with the timestamp of the access unit
//! just fed in; "no picture yet" is a decode error, after which the receiver drops everything
//! up to the next keyframe and asks for one. A decoder that reorders B-frames holds back
//! `delay` pictures (the SPS's `max_num_reorder_frames`), so:
//!
//! - the access unit fed in k-th comes out as the picture that is k-th in display order minus
//!   `delay`: its RTP timestamp must be that picture's presentation time, so pictures are shown
//!   in order, evenly spaced and in step with the audio. [`DecodeOrderClock::stamp`] keeps the
//!   presentation times not yet shown and hands out the earliest, which is what the decoder
//!   outputs (it picks the lowest picture order count among those it holds);
//! - the first `delay` access units of a fresh decoder produce nothing, i.e. errors. Sending
//!   the first keyframe `delay` extra times ("priming") turns each error into a keyframe the
//!   receiver decodes at once; the viewer sees the first picture for `delay` more frames.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Frame length assumed until two frames tell (30 fps).
const DEFAULT_FRAME_MS: i64 = 33;
/// Longest frame length believed from the stream's timestamps; longer gaps are pauses.
const MAX_FRAME_MS: i64 = 1000;

/// Presentation times of access units sent in decode order → the RTP times (ms) of the
/// pictures a reordering decoder returns for them.
#[derive(Debug)]
pub struct DecodeOrderClock {
    delay: usize,
    /// Presentation times (ms, unwrapped) sent but not yet output by the decoder.
    pending: BinaryHeap<Reverse<i64>>,
    /// Last stamp handed out: stamps only grow (equal RTP timestamps would merge frames).
    last: Option<i64>,
    /// Presentation time of the first access unit, before the decoder outputs anything.
    first: Option<i64>,
    /// Unwrapping of the 32-bit FLV millisecond clock.
    last_raw: Option<u32>,
    unwrapped: i64,
    last_dts: Option<i64>,
    frame_ms: i64,
}

impl DecodeOrderClock {
    /// `delay`: pictures the receiver's decoder holds back ([`crate::codec::avc::SpsInfo::output_delay`]).
    pub fn new(delay: u32) -> Self {
        Self {
            delay: delay as usize,
            pending: BinaryHeap::new(),
            last: None,
            first: None,
            last_raw: None,
            unwrapped: 0,
            last_dts: None,
            frame_ms: DEFAULT_FRAME_MS,
        }
    }

    pub fn delay(&self) -> u32 {
        self.delay as u32
    }

    /// How many extra copies of a keyframe to send before it when the receiver's decoder is
    /// fresh (a new viewer, or a resync after its picture was lost).
    pub fn priming(&self) -> u32 {
        self.delay as u32
    }

    /// The time (ms, on the FLV clock) to stamp the next access unit with, given its decode
    /// and presentation times. Copies sent for priming pass the keyframe's times each time.
    pub fn stamp(&mut self, dts_ms: u32, pts_ms: u32) -> u32 {
        let dts = self.unwrap(dts_ms);
        let pts = dts + i64::from(pts_ms.wrapping_sub(dts_ms) as i32);
        if let Some(last_dts) = self.last_dts {
            let step = dts - last_dts;
            if (1..=MAX_FRAME_MS).contains(&step) {
                self.frame_ms = step;
            }
        }
        self.last_dts = Some(dts);
        // A copy of a keyframe already pending stands for a picture one frame earlier: the
        // decoder outputs the copies first.
        let mut pts = pts;
        while self.pending.iter().any(|Reverse(p)| *p == pts) {
            pts -= self.frame_ms;
        }
        self.pending.push(Reverse(pts));
        let first = *self.first.get_or_insert(pts);
        let stamp = if self.pending.len() > self.delay {
            self.pending.pop().map_or(pts, |Reverse(p)| p)
        } else {
            // Nothing comes out yet: times before the first picture's (a primed keyframe's
            // copies stand `delay` frames before it), still growing.
            let before = 2 * self.delay + 1 - self.pending.len();
            first - before as i64 * self.frame_ms
        };
        let stamp = match self.last {
            Some(last) if stamp <= last => last + 1,
            _ => stamp,
        };
        self.last = Some(stamp);
        // Back onto the 32-bit FLV clock; the packetizer's arithmetic wraps the same way.
        stamp as u32
    }

    fn unwrap(&mut self, raw: u32) -> i64 {
        if let Some(last) = self.last_raw {
            self.unwrapped += i64::from(raw.wrapping_sub(last) as i32);
        } else {
            self.unwrapped = i64::from(raw);
        }
        self.last_raw = Some(raw);
        self.unwrapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x264 `-bf 3` with b-pyramid at 30 fps as ffmpeg's FLV muxer writes it: decode times
    /// every 33 ms, presentation times two frames later than the display slot.
    /// Display order I0 b1 B2 b3 P4 b5 B6 b7 P8; decode order I0 P4 B2 b1 b3 P8 B6 b5 b7.
    const DISPLAY_SLOTS: [i64; 9] = [0, 4, 2, 1, 3, 8, 6, 5, 7];

    fn x264_stream() -> Vec<(u32, u32)> {
        DISPLAY_SLOTS
            .iter()
            .enumerate()
            .map(|(k, &slot)| (k as u32 * 33, (slot as u32 + 2) * 33))
            .collect()
    }

    #[test]
    fn stamps_are_the_presentation_times_of_the_pictures_a_reordering_decoder_outputs() {
        let mut clock = DecodeOrderClock::new(2);
        assert_eq!(clock.priming(), 2);
        let stream = x264_stream();
        let (dts0, pts0) = stream[0];
        // Two primed copies of the keyframe, then the stream.
        let mut stamps: Vec<u32> = (0..2).map(|_| clock.stamp(dts0, pts0)).collect();
        stamps.extend(stream.iter().map(|&(dts, pts)| clock.stamp(dts, pts)));
        // The first two access units output nothing; then the copies (one and two frames
        // before the keyframe), then every picture in display order, one frame apart.
        let expected: Vec<u32> = [-4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6]
            .iter()
            .map(|slot: &i64| ((slot + 2) * 33) as u32)
            .collect();
        assert_eq!(stamps, expected);
        assert!(
            stamps
                .windows(2)
                .all(|w| w[1].wrapping_sub(w[0]) as i32 > 0)
        );
    }

    #[test]
    fn without_reordering_stamps_are_the_presentation_times() {
        let mut clock = DecodeOrderClock::new(0);
        assert_eq!(clock.priming(), 0);
        for k in 0..10u32 {
            assert_eq!(clock.stamp(k * 40, k * 40 + 80), k * 40 + 80);
        }
    }

    #[test]
    fn stamps_keep_growing_across_the_32_bit_clock_wrap_and_odd_input() {
        let mut clock = DecodeOrderClock::new(1);
        let start = u32::MAX - 50;
        let mut last: Option<u32> = None;
        // Around the wrap, then equal and backwards timestamps from a confused encoder.
        let times = [
            (0, 33),
            (33, 99),
            (66, 66),
            (99, 132),
            (99, 132),
            (80, 0),
            (200, 233),
        ];
        for (dts, pts) in times {
            let stamp = clock.stamp(start.wrapping_add(dts), start.wrapping_add(pts));
            if let Some(last) = last {
                assert!(stamp.wrapping_sub(last) as i32 > 0, "{stamp} after {last}");
            }
            last = Some(stamp);
        }
    }
}
