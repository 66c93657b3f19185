//! RTP packets back into H.264 access units (RFC 6184, packetization mode 1).
//!
//! [`H264Depacketizer`] takes RTP packets (from WHIP publishers, the WHEP client and tests) and
//! gives Annex-B access units. Its input comes from the network, so every length is checked
//! before it is used, what it buffers is bounded, and an access unit with a hole in it is
//! dropped whole rather than handed to a decoder as a broken picture. A packet that breaks the
//! format is an [`RtpError`]; packets that are each well-formed but do not fit together (a
//! sequence gap, a fragment without its start) only cost the access unit they belong to.

use bytes::Bytes;

use super::{
    F_BIT, FU_A, FU_B, FU_END, FU_START, MARKER, MTAP16, MTAP24, NAL_IDR, NRI_MASK, RTP_HEADER_LEN,
    RTP_VERSION, STAP_A, STAP_A_SIZE, STAP_B, TYPE_MASK,
};

/// A sensible [`H264Depacketizer`] limit: larger than any access unit a live encoder makes.
pub const DEFAULT_MAX_ACCESS_UNIT: usize = 8 * 1024 * 1024;

/// Annex B's start code, before each NAL unit of an access unit put back together.
pub(super) const START_CODE: &[u8] = &[0, 0, 0, 1];

/// Why an RTP packet could not be read. The packet is discarded and the access unit it was
/// part of dropped (after a header error, through the sequence gap the packet leaves); the
/// depacketizer carries on with the next packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// The RTP header (RFC 3550 §5.1) contradicts itself or the packet's length.
    #[error("invalid RTP header: {0}")]
    Header(&'static str),
    /// The H.264 payload breaks RFC 6184's structure.
    #[error("invalid H.264 RTP payload: {0}")]
    Payload(&'static str),
    /// A payload structure packetization mode 1 does not allow (RFC 6184 §6.3): the
    /// interleaved mode's STAP-B, MTAP16, MTAP24 and FU-B.
    #[error("H.264 RTP payload {0} is not allowed in packetization mode 1")]
    Unsupported(&'static str),
}

/// One H.264 access unit put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub rtp_timestamp: u32,
    /// The NAL units, each after a four-byte start code `00 00 00 01` (Annex B).
    pub data: Bytes,
    /// Whether it has an IDR slice.
    pub keyframe: bool,
}

/// Reassembles access units from the RTP packets of one H.264 stream, fed in sequence order.
///
/// An access unit ends with the packet that has the marker bit. It is dropped (and counted in
/// [`dropped`](Self::dropped)) if a sequence gap falls inside it or just before it (the lost
/// packets may have been its start), if a packet of it is malformed or does not fit the one
/// before (an FU-A fragment without its start, a NAL unit inside an unfinished FU-A), if it
/// would grow past the size limit, or if the timestamp changes before its marker. The first
/// packet pushed is taken to begin an access unit.
#[derive(Debug)]
pub struct H264Depacketizer {
    max_access_unit: usize,
    last_sequence: Option<u16>,
    /// RTP timestamp of the access unit being assembled; `None` between access units.
    timestamp: Option<u32>,
    /// The access unit so far, in Annex B.
    data: Vec<u8>,
    keyframe: bool,
    /// An FU-A's start was seen and its end not yet.
    in_fragment: bool,
    /// The access unit cannot be used; packets are skipped until its end.
    damaged: bool,
    dropped: u64,
}

impl H264Depacketizer {
    /// A depacketizer that buffers at most `max_access_unit` bytes of Annex B: a larger access
    /// unit is dropped. [`DEFAULT_MAX_ACCESS_UNIT`] suits any live stream.
    pub fn new(max_access_unit: usize) -> Self {
        Self {
            max_access_unit,
            last_sequence: None,
            timestamp: None,
            data: Vec::new(),
            keyframe: false,
            in_fragment: false,
            damaged: false,
            dropped: 0,
        }
    }

    /// How many access units were dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes the next RTP packet; returns the access unit its marker bit completes, if any.
    ///
    /// A packet whose RTP header cannot be read changes nothing (its loss shows as a sequence
    /// gap at the next packet). Any other error also drops the access unit the packet belongs
    /// to.
    pub fn push(&mut self, packet: &[u8]) -> Result<Option<AccessUnit>, RtpError> {
        let rtp = RtpPacket::parse(packet)?;
        let gap = self
            .last_sequence
            .is_some_and(|last| rtp.sequence != last.wrapping_add(1));
        self.last_sequence = Some(rtp.sequence);

        if self.timestamp.is_some_and(|t| t != rtp.timestamp) {
            // The open access unit never got its marker: it was lost or never sent.
            self.close(false);
        }
        self.timestamp.get_or_insert(rtp.timestamp);
        if gap {
            self.damaged = true;
        }
        let read = if self.damaged {
            Ok(())
        } else {
            self.read_payload(rtp.payload)
        };
        if read.is_err() {
            self.damaged = true;
        }
        let unit = if rtp.marker { self.close(true) } else { None };
        read.map(|()| unit)
    }

    fn read_payload(&mut self, payload: &[u8]) -> Result<(), RtpError> {
        let Some((&header, body)) = payload.split_first() else {
            return Err(RtpError::Payload("empty payload"));
        };
        match header & TYPE_MASK {
            1..=23 => {
                self.start_nal(header, body);
                Ok(())
            }
            STAP_A => self.read_stap_a(body),
            FU_A => self.read_fu_a(header, body),
            STAP_B => Err(RtpError::Unsupported("STAP-B")),
            MTAP16 => Err(RtpError::Unsupported("MTAP16")),
            MTAP24 => Err(RtpError::Unsupported("MTAP24")),
            FU_B => Err(RtpError::Unsupported("FU-B")),
            // 0, 30 and 31 are reserved, and receivers ignore them (RFC 6184 §5.4).
            _ => Ok(()),
        }
    }

    fn read_stap_a(&mut self, mut body: &[u8]) -> Result<(), RtpError> {
        if body.is_empty() {
            return Err(RtpError::Payload("STAP-A without NAL units"));
        }
        while !body.is_empty() {
            let Some((size, rest)) = body.split_first_chunk::<STAP_A_SIZE>() else {
                return Err(RtpError::Payload("STAP-A size field cut short"));
            };
            let size = usize::from(u16::from_be_bytes(*size));
            if size == 0 {
                return Err(RtpError::Payload("STAP-A NAL unit of size 0"));
            }
            let (nal, rest) = rest
                .split_at_checked(size)
                .ok_or(RtpError::Payload("STAP-A NAL unit runs past the packet"))?;
            if let Some((&header, nal_body)) = nal.split_first() {
                self.start_nal(header, nal_body);
            }
            body = rest;
        }
        Ok(())
    }

    fn read_fu_a(&mut self, indicator: u8, body: &[u8]) -> Result<(), RtpError> {
        let Some((&fu_header, fragment)) = body.split_first() else {
            return Err(RtpError::Payload("FU-A without its FU header"));
        };
        let (start, end) = (fu_header & FU_START != 0, fu_header & FU_END != 0);
        if start && end {
            return Err(RtpError::Payload("FU-A with both the start and end bits"));
        }
        if start {
            let header = (indicator & (F_BIT | NRI_MASK)) | (fu_header & TYPE_MASK);
            self.start_nal(header, fragment);
            self.in_fragment = true;
        } else if self.in_fragment {
            self.append(&[fragment]);
        } else {
            // The fragments before this one, its start among them, were never seen.
            self.damaged = true;
        }
        if end {
            self.in_fragment = false;
        }
        Ok(())
    }

    /// Starts a NAL unit: start code, header byte and what follows of it in this packet. A NAL
    /// unit may not start inside an unfinished FU-A.
    fn start_nal(&mut self, header: u8, body: &[u8]) {
        if self.in_fragment {
            self.damaged = true;
            return;
        }
        self.keyframe |= header & TYPE_MASK == NAL_IDR;
        self.append(&[START_CODE, &[header], body]);
    }

    /// Appends to the access unit, unless that would take it past the limit.
    fn append(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.damaged || len > self.max_access_unit.saturating_sub(self.data.len()) {
            self.damaged = true;
            return;
        }
        for part in parts {
            self.data.extend_from_slice(part);
        }
    }

    /// Ends the open access unit, returning it if it is whole. `by_marker`: its last packet
    /// had the marker bit (else a new timestamp showed it had ended).
    fn close(&mut self, by_marker: bool) -> Option<AccessUnit> {
        let rtp_timestamp = self.timestamp.take()?;
        let data = std::mem::take(&mut self.data);
        let keyframe = std::mem::take(&mut self.keyframe);
        let broken = std::mem::take(&mut self.damaged) | std::mem::take(&mut self.in_fragment);
        if data.is_empty() && !broken {
            // Only ignored packets: nothing was lost and there is nothing to hand over.
            return None;
        }
        if broken || !by_marker {
            self.dropped += 1;
            return None;
        }
        Some(AccessUnit {
            rtp_timestamp,
            data: Bytes::from(data),
            keyframe,
        })
    }
}

/// The fields of an RTP packet the depacketizer uses.
struct RtpPacket<'a> {
    marker: bool,
    sequence: u16,
    timestamp: u32,
    /// Without CSRC list, header extension and padding.
    payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    fn parse(packet: &'a [u8]) -> Result<Self, RtpError> {
        let Some((fixed, rest)) = packet.split_first_chunk::<RTP_HEADER_LEN>() else {
            return Err(RtpError::Header("shorter than the 12-byte fixed header"));
        };
        let [first, second, s0, s1, t0, t1, t2, t3, ..] = *fixed;
        if first >> 6 != RTP_VERSION {
            return Err(RtpError::Header("version is not 2"));
        }
        let has_padding = first & 0x20 != 0;
        let has_extension = first & 0x10 != 0;
        let csrc_len = usize::from(first & 0x0f) * 4;
        let mut rest = rest
            .get(csrc_len..)
            .ok_or(RtpError::Header("CSRC list runs past the packet"))?;
        if has_extension {
            // 16 bits defined by profile, 16 bits of length in 32-bit words, the words.
            let Some(([_, _, w0, w1], after)) = rest.split_first_chunk::<4>() else {
                return Err(RtpError::Header("extension header runs past the packet"));
            };
            let len = usize::from(u16::from_be_bytes([*w0, *w1])) * 4;
            rest = after
                .get(len..)
                .ok_or(RtpError::Header("header extension runs past the packet"))?;
        }
        if has_padding {
            // The last byte counts the padding bytes, itself included.
            let padding = rest.last().map_or(0, |&n| usize::from(n));
            if padding == 0 {
                return Err(RtpError::Header("padding bit set but padding count is 0"));
            }
            rest = rest
                .len()
                .checked_sub(padding)
                .and_then(|end| rest.get(..end))
                .ok_or(RtpError::Header("padding longer than the payload"))?;
        }
        Ok(Self {
            marker: second & MARKER != 0,
            sequence: u16::from_be_bytes([s0, s1]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
            payload: rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::h264::tests::{PT, SSRC, annex_b, rtp};

    #[test]
    fn access_unit_left_open_by_the_sender_is_dropped() {
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        assert_eq!(d.push(&rtp(1, 0, false, &[0x41, 1])), Ok(None));
        let unit = d.push(&rtp(2, 3000, true, &[0x41, 2])).unwrap().unwrap();
        assert_eq!(unit.data, annex_b(&[&[0x41, 2]]));
        assert_eq!(unit.rtp_timestamp, 3000);
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn fragments_that_do_not_fit_together_drop_the_access_unit() {
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        // A middle fragment without a start (as when joining mid-unit).
        assert_eq!(d.push(&rtp(1, 0, true, &[0x7c, 0x05, 1, 2])), Ok(None));
        // A single NAL unit inside an unfinished FU-A.
        d.push(&rtp(2, 10, false, &[0x7c, FU_START | 5, 1]))
            .unwrap();
        assert_eq!(d.push(&rtp(3, 10, true, &[0x41, 1])), Ok(None));
        // An FU-A whose end never came.
        assert_eq!(
            d.push(&rtp(4, 20, true, &[0x7c, FU_START | 5, 1])),
            Ok(None)
        );
        assert_eq!(d.dropped(), 3);
        let unit = d.push(&rtp(5, 30, true, &[0x65, 9])).unwrap().unwrap();
        assert!(unit.keyframe);
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        let mut packet = vec![0x80 | 0x20 | 0x10 | 2, MARKER | PT, 0, 7, 0, 0, 0, 9];
        packet.extend_from_slice(&SSRC.to_be_bytes());
        packet.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // one-word extension
        packet.extend_from_slice(&[0x65, 0x88, 0x80]);
        packet.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        let unit = d.push(&packet).unwrap().unwrap();
        assert_eq!(unit.data, annex_b(&[&[0x65, 0x88, 0x80]]));
        assert_eq!(unit.rtp_timestamp, 9);
        assert!(unit.keyframe);
    }

    #[test]
    fn malformed_rtp_headers_are_errors() {
        let valid = rtp(1, 0, true, &[0x41, 1, 2]);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("short header", valid[..11].to_vec()),
            ("empty", Vec::new()),
        ];
        for version in [0, 1, 3] {
            let mut p = valid.clone();
            p[0] = version << 6;
            cases.push(("version not 2", p));
        }
        let mut p = valid.clone();
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 4; // three payload bytes, four bytes of padding
        cases.push(("padding larger than the payload", p));
        let mut p = valid.clone();
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 0;
        cases.push(("padding count 0", p));
        let mut p = valid.clone();
        p[0] |= 1;
        p.truncate(RTP_HEADER_LEN + 3);
        cases.push(("CSRC count past the end", p));
        let mut p = valid[..RTP_HEADER_LEN].to_vec();
        p[0] |= 0x10;
        p.extend_from_slice(&[0xbe, 0xde, 0, 2, 0, 0, 0, 0]);
        cases.push(("extension length past the end", p));
        let mut p = valid[..RTP_HEADER_LEN].to_vec();
        p[0] |= 0x10;
        p.extend_from_slice(&[0xbe, 0xde]);
        cases.push(("extension header cut short", p));

        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        for (what, packet) in cases {
            assert!(
                matches!(d.push(&packet), Err(RtpError::Header(_))),
                "{what}"
            );
        }
        // Nothing was taken from them: the next packet reads as if they never came.
        assert!(d.push(&valid).unwrap().is_some());
    }

    #[test]
    fn malformed_payloads_are_errors_and_drop_the_access_unit() {
        let cases: [(&str, &[u8]); 7] = [
            ("empty payload", &[]),
            ("STAP-A without units", &[0x78]),
            ("STAP-A size cut short", &[0x78, 0, 2, 0x67, 1, 0]),
            ("STAP-A unit past the end", &[0x78, 0, 5, 0x67, 1]),
            ("STAP-A unit of size 0", &[0x78, 0, 0, 0, 1, 0x67]),
            ("FU-A without FU header", &[0x7c]),
            ("FU-A with start and end", &[0x7c, FU_START | FU_END | 5, 1]),
        ];
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        for (i, (what, payload)) in cases.into_iter().enumerate() {
            let ts = i as u32 * 10;
            let seq = i as u16 * 2;
            d.push(&rtp(seq, ts, false, &[0x06, 1])).unwrap();
            assert!(
                matches!(
                    d.push(&rtp(seq + 1, ts, true, payload)),
                    Err(RtpError::Payload(_))
                ),
                "{what}"
            );
        }
        assert_eq!(d.dropped(), 7);
    }

    #[test]
    fn interleaved_mode_payloads_are_unsupported() {
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        for (seq, kind) in [STAP_B, MTAP16, MTAP24, FU_B].into_iter().enumerate() {
            let packet = rtp(seq as u16, 0, true, &[0x60 | kind, 0, 0, 0, 0]);
            assert!(matches!(d.push(&packet), Err(RtpError::Unsupported(_))));
        }
    }

    #[test]
    fn reserved_payload_types_are_ignored() {
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        for (seq, kind) in [0u8, 30, 31].into_iter().enumerate() {
            assert_eq!(d.push(&rtp(seq as u16, 0, false, &[kind, 1, 2])), Ok(None));
        }
        let unit = d.push(&rtp(3, 0, true, &[0x41, 5])).unwrap().unwrap();
        assert_eq!(unit.data, annex_b(&[&[0x41, 5]]));
        assert_eq!(d.dropped(), 0);
    }
}
