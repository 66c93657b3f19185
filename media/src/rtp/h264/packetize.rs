//! H.264 into RTP packets (RFC 6184, packetization mode 1).
//!
//! [`H264Packetizer`] takes an access unit as RTMP carries it (length-prefixed NAL units, an FLV
//! decode timestamp and a composition offset) and writes complete RTP packets, ready for a
//! WebRTC track that sends packets as given. A NAL unit larger than the MTU is cut into FU-A
//! fragments; smaller ones go out alone or, as many as fit together, in one STAP-A. RTMP sends
//! SPS and PPS once, in the sequence header, but a viewer may join at any IDR, so the
//! packetizer repeats them before every IDR. Access unit delimiters and filler data are
//! dropped: they cost bandwidth and tell a WebRTC receiver nothing.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    F_BIT, FU_A, FU_END, FU_START, MARKER, NAL_IDR, NRI_MASK, RTP_HEADER_LEN, RTP_VERSION, STAP_A,
    STAP_A_SIZE, TYPE_MASK,
};
use crate::codec::CodecError;
use crate::codec::avc::{self, AvcConfig, NAL_PPS, NAL_SPS, nal_type, split_nalus};

/// Smallest RTP payload size the packetizer accepts: an FU-A needs its two header bytes and at
/// least one byte of the NAL unit.
pub const MIN_MTU: usize = 3;
/// Largest RTP payload size the packetizer accepts: the packet must fit in one UDP datagram
/// over IPv4 (65,507 bytes), which also keeps every STAP-A size within its 16 bits.
pub const MAX_MTU: usize = 65_507 - RTP_HEADER_LEN;

/// RTP clock ticks per millisecond: H.264 runs at 90 kHz (RFC 6184 §5.1).
const TICKS_PER_MS: u32 = 90;

const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;

/// The STAP-A header byte.
const STAP_A_HEADER: usize = 1;
/// The FU indicator and FU header bytes.
const FU_A_HEADER: usize = 2;

/// Turns access units into the RTP packets of one H.264 stream (one SSRC).
///
/// Methods only change state and append packets; sending them is the caller's business.
#[derive(Debug)]
pub struct H264Packetizer {
    ssrc: u32,
    payload_type: u8,
    sequence: u16,
    timestamp_base: u32,
    mtu: usize,
    /// PTS (ms) of the first access unit sent: RTP time `timestamp_base` corresponds to it.
    first_pts: Option<u32>,
    sps: Vec<Bytes>,
    pps: Vec<Bytes>,
    /// Keep a receiver's decoder reordering as the SPS says ([`Self::keeping_decoder_reorder`]).
    keep_reorder: bool,
    /// The SPS sent after one that asks for reordering, when `keep_reorder`.
    decoy: Option<Bytes>,
}

impl H264Packetizer {
    /// A packetizer for stream `ssrc` sending with `payload_type` (the one negotiated in the
    /// SDP answer). `sequence` is the first sequence number and `timestamp_base` the RTP
    /// timestamp of the first access unit; RFC 3550 wants both random. `mtu` is the most bytes
    /// of RTP payload a packet carries (1200 is typical for WebRTC).
    ///
    /// # Panics
    ///
    /// If `payload_type` does not fit in 7 bits or `mtu` is outside
    /// [`MIN_MTU`]`..=`[`MAX_MTU`]: both come from the program, never from a peer.
    pub fn new(
        ssrc: u32,
        payload_type: u8,
        sequence: u16,
        timestamp_base: u32,
        mtu: usize,
    ) -> Self {
        assert!(
            payload_type <= 0x7f,
            "RTP payload type {payload_type} > 127"
        );
        assert!(
            (MIN_MTU..=MAX_MTU).contains(&mtu),
            "MTU {mtu} outside {MIN_MTU}..={MAX_MTU}"
        );
        Self {
            ssrc,
            payload_type,
            sequence,
            timestamp_base,
            mtu,
            first_pts: None,
            sps: Vec::new(),
            pps: Vec::new(),
            keep_reorder: false,
            decoy: None,
        }
    }

    /// Makes a browser's decoder reorder B-frames as the stream's SPS asks.
    ///
    /// libwebrtc (Chromium's WebRTC; Firefox and Safari build on the same library) rewrites each
    /// SPS it receives to `max_num_reorder_frames = 0`, so that its FFmpeg decoder never holds a
    /// picture back; that decoder then drops every B-frame as out of order (about one frame in
    /// seven decoded, docs/benchmarks.md). In a STAP-A with two SPSs that both want rewriting,
    /// libwebrtc rewrites only the last and passes the first through as sent. So the stream's
    /// SPS goes first and a decoy second ([`avc::decoy_sps`]: another id, no VUI, the stream's
    /// picture size, which libwebrtc takes from the last SPS): the decoder gets the stream's
    /// SPS and reorders, and the RTP timestamps must then follow the pictures it outputs
    /// ([`crate::rtp::decode_order`]). Only for an SPS that asks for reordering; nothing else in
    /// the stream changes.
    pub fn keeping_decoder_reorder(mut self, keep: bool) -> Self {
        self.keep_reorder = keep;
        self
    }

    /// Takes the SPS and PPS of an AVC sequence header, to send before every IDR from now on.
    pub fn set_config(&mut self, config: &AvcConfig) {
        let non_empty = |sets: &[Bytes]| sets.iter().filter(|s| !s.is_empty()).cloned().collect();
        self.sps = non_empty(&config.sps);
        self.pps = non_empty(&config.pps);
        self.decoy = self
            .sps
            .first()
            .and_then(|sps| decoy_for(sps))
            .map(Bytes::from);
    }

    /// The sequence number the next packet will carry.
    pub fn sequence(&self) -> u16 {
        self.sequence
    }

    /// Packetizes one access unit, appending its RTP packets to `out`.
    ///
    /// `avcc` is the frame's NAL units, each prefixed by its length in `length_size` bytes
    /// ([`AvcConfig::nalu_length_size`]). `dts_ms` is the FLV timestamp and `cts_ms` the
    /// composition time; the RTP timestamp is the PTS (`dts_ms + cts_ms`) at 90 kHz, counted
    /// from the first access unit's PTS and offset by the timestamp base, wrapping in 32 bits.
    ///
    /// SPS and PPS from [`set_config`](Self::set_config) go before an access unit with an IDR
    /// slice, unless it carries its own. AUD and filler NAL units are dropped, and so are NAL
    /// unit types 0 and 24–31, which H.264 leaves unspecified and RTP uses for its own payload
    /// structures. The last packet has the marker bit. An access unit left with no NAL units
    /// produces no packets.
    ///
    /// Fails only if the length prefixes do not split `avcc` exactly; then nothing is appended
    /// and no state changes.
    pub fn packetize(
        &mut self,
        avcc: &[u8],
        length_size: u8,
        dts_ms: u32,
        cts_ms: i32,
        out: &mut Vec<Bytes>,
    ) -> Result<(), CodecError> {
        let units = self.units(avcc, length_size)?;
        if units.is_empty() {
            return Ok(());
        }
        let units = self.with_decoy_sps(units);
        let pts = dts_ms.wrapping_add_signed(cts_ms);
        let timestamp = self.timestamp_at(pts);
        let mut packets = AccessUnitPackets {
            out,
            open: None,
            header: Some(RtpHeader {
                ssrc: self.ssrc,
                payload_type: self.payload_type,
                timestamp,
                sequence: self.sequence,
            }),
        };
        write_units(&mut packets, &units, self.mtu);
        self.sequence = packets.finish().unwrap_or(self.sequence);
        self.first_pts.get_or_insert(pts);
        Ok(())
    }

    /// The RTP payloads [`packetize`](Self::packetize) would send for this access unit, without
    /// headers and without touching sequence numbers or timestamps: payloads depend only on
    /// the access unit and the parameter sets, so one stream's viewers can share them and each
    /// add its own headers ([`stamp`](Self::stamp), [`take_sequences`](Self::take_sequences)).
    /// The last payload is the one that gets the marker bit.
    pub fn payloads(
        &self,
        avcc: &[u8],
        length_size: u8,
        out: &mut Vec<Bytes>,
    ) -> Result<(), CodecError> {
        let units = self.with_decoy_sps(self.units(avcc, length_size)?);
        let mut packets = AccessUnitPackets {
            out,
            open: None,
            header: None,
        };
        write_units(&mut packets, &units, self.mtu);
        packets.finish();
        Ok(())
    }

    /// The RTP timestamp of an access unit sent with [`payloads`](Self::payloads); advances the
    /// same clock `packetize` does.
    pub fn stamp(&mut self, dts_ms: u32, cts_ms: i32) -> u32 {
        let pts = dts_ms.wrapping_add_signed(cts_ms);
        let timestamp = self.timestamp_at(pts);
        self.first_pts.get_or_insert(pts);
        timestamp
    }

    /// Takes `count` consecutive sequence numbers; returns the first.
    pub fn take_sequences(&mut self, count: usize) -> u16 {
        let first = self.sequence;
        self.sequence = self.sequence.wrapping_add(count as u16);
        first
    }

    /// The NAL units of an access unit that are sent, with the parameter sets an IDR needs.
    fn units<'a>(&'a self, avcc: &'a [u8], length_size: u8) -> Result<Vec<&'a [u8]>, CodecError> {
        let mut nalus = split_nalus(avcc, length_size)?;
        nalus.retain(|nal| is_sent(nal));
        if nalus.is_empty() {
            return Ok(nalus);
        }
        Ok(self.with_parameter_sets(nalus))
    }

    /// The RTP timestamp of an access unit presented at `pts` (ms): counted from the first
    /// access unit's PTS (this one, if none was sent yet). Plain wrapping arithmetic stays
    /// exact even when the FLV millisecond clock itself wraps, since 90 × 2³² ≡ 0 (mod 2³²).
    fn timestamp_at(&self, pts: u32) -> u32 {
        let origin = self.first_pts.unwrap_or(pts);
        self.timestamp_base
            .wrapping_add(pts.wrapping_sub(origin).wrapping_mul(TICKS_PER_MS))
    }

    /// With [`Self::keeping_decoder_reorder`], the decoy SPS right after an SPS that asks for
    /// reordering; `write_units` keeps the pair in one STAP-A.
    fn with_decoy_sps<'a>(&'a self, mut units: Vec<&'a [u8]>) -> Vec<&'a [u8]> {
        let Some(decoy) = self.decoy.as_deref().filter(|_| self.keep_reorder) else {
            return units;
        };
        // The configured SPS (added before an IDR) or the access unit's own.
        if let Some(at) = units.iter().position(|nal| nal_type(nal) == Some(NAL_SPS)) {
            units.insert(at + 1, decoy);
        }
        units
    }

    /// The access unit's NAL units with the configured parameter sets it lacks, if it has an
    /// IDR slice: a missing SPS goes first, a missing PPS after the unit's leading parameter
    /// sets, so an added set never lands on the wrong side of one the unit carries (SPS before
    /// PPS).
    fn with_parameter_sets<'a>(&'a self, nalus: Vec<&'a [u8]>) -> Vec<&'a [u8]> {
        let has = |kind: u8| nalus.iter().any(|nal| nal_type(nal) == Some(kind));
        if !has(NAL_IDR) {
            return nalus;
        }
        let (has_sps, has_pps) = (has(NAL_SPS), has(NAL_PPS));
        let leading = nalus
            .iter()
            .take_while(|nal| matches!(nal_type(nal), Some(NAL_SPS | NAL_PPS)))
            .count();
        let (parameter_sets, rest) = nalus.split_at(leading);
        let sps = self.sps.iter().filter(|_| !has_sps).map(|s| &s[..]);
        let pps = self.pps.iter().filter(|_| !has_pps).map(|s| &s[..]);
        sps.chain(parameter_sets.iter().copied())
            .chain(pps)
            .chain(rest.iter().copied())
            .collect()
    }
}

/// Whether a NAL unit from the publisher goes to viewers.
fn is_sent(nal: &[u8]) -> bool {
    match nal_type(nal) {
        Some(NAL_AUD | NAL_FILLER) | None => false,
        Some(kind) => (1..=23).contains(&kind),
    }
}

/// The decoy to send after `sps` if it asks for reordering (see
/// [`H264Packetizer::keeping_decoder_reorder`]): an id it does not use, its picture size.
fn decoy_for(sps: &[u8]) -> Option<Vec<u8>> {
    let info = avc::parse_sps(sps).ok()?;
    if info.max_num_reorder_frames.is_none_or(|n| n == 0) {
        return None;
    }
    let id = if info.sps_id == 1 { 2 } else { 1 };
    Some(avc::decoy_sps(id, info.width, info.height))
}

/// Writes NAL units as single-NAL packets, STAP-As and FU-As.
fn write_units(packets: &mut AccessUnitPackets<'_>, units: &[&[u8]], mtu: usize) {
    let mut rest = units;
    while let Some((&first, tail)) = rest.split_first() {
        // An SPS and the decoy after it travel together, whatever comes before them.
        if let Some((&decoy, after)) = tail.split_first()
            && nal_type(first) == Some(NAL_SPS)
            && nal_type(decoy) == Some(NAL_SPS)
            && STAP_A_HEADER + 2 * STAP_A_SIZE + first.len() + decoy.len() <= mtu
        {
            write_stap_a(packets, &[first, decoy]);
            rest = after;
            continue;
        }
        // ...and are not split by an aggregate that starts before them.
        let pair_at = rest
            .windows(2)
            .position(|w| w.iter().all(|nal| nal_type(nal) == Some(NAL_SPS)))
            .map_or(rest.len(), |sps| sps.max(1));
        let together = stap_a_count(&rest[..pair_at], mtu);
        if together >= 2 {
            let (aggregated, tail) = rest.split_at(together);
            write_stap_a(packets, aggregated);
            rest = tail;
            continue;
        }
        if first.len() <= mtu {
            packets.start(first.len()).put_slice(first);
        } else {
            write_fu_a(packets, first, mtu);
        }
        rest = tail;
    }
}

/// How many NAL units from the start of `units` fit in one STAP-A of at most `mtu` bytes.
fn stap_a_count(units: &[&[u8]], mtu: usize) -> usize {
    let mut size = STAP_A_HEADER;
    units
        .iter()
        .take_while(|nal| {
            size += STAP_A_SIZE + nal.len();
            size <= mtu
        })
        .count()
}

/// One STAP-A (RFC 6184 §5.7.1): its header has the highest NRI of the units it carries and
/// the F bit if any of them has it.
fn write_stap_a(packets: &mut AccessUnitPackets<'_>, units: &[&[u8]]) {
    let headers = units.iter().map(|nal| nal.first().copied().unwrap_or(0));
    let f = headers.clone().fold(0, |f, h| f | (h & F_BIT));
    let nri = headers.map(|h| h & NRI_MASK).max().unwrap_or(0);
    let size = STAP_A_HEADER + units.iter().map(|n| STAP_A_SIZE + n.len()).sum::<usize>();
    let packet = packets.start(size);
    packet.put_u8(f | nri | STAP_A);
    for nal in units {
        // Fits: the whole STAP-A is at most MAX_MTU bytes.
        packet.put_u16(nal.len() as u16);
        packet.put_slice(nal);
    }
}

/// A NAL unit larger than the MTU as FU-A fragments (RFC 6184 §5.8) of near-equal size. The
/// NAL header travels split: F and NRI in the FU indicator, the type in the FU header.
fn write_fu_a(packets: &mut AccessUnitPackets<'_>, nal: &[u8], mtu: usize) {
    let Some((&header, body)) = nal.split_first() else {
        return;
    };
    let indicator = (header & (F_BIT | NRI_MASK)) | FU_A;
    // The caller fragments only NAL units longer than the MTU, so there are at least two
    // fragments and no FU-A carries both the start and the end bit.
    let count = body.len().div_ceil(mtu - FU_A_HEADER);
    let fragment_len = body.len().div_ceil(count);
    for (i, fragment) in body.chunks(fragment_len).enumerate() {
        let mut fu_header = header & TYPE_MASK;
        if i == 0 {
            fu_header |= FU_START;
        }
        if i + 1 == count {
            fu_header |= FU_END;
        }
        let packet = packets.start(FU_A_HEADER + fragment.len());
        packet.put_u8(indicator);
        packet.put_u8(fu_header);
        packet.put_slice(fragment);
    }
}

/// The fixed RTP header fields of an access unit's packets; the sequence number counts up.
struct RtpHeader {
    ssrc: u32,
    payload_type: u8,
    timestamp: u32,
    sequence: u16,
}

/// The packets of one access unit as they are written: each packet's header (if any) is
/// written when the packet starts, the marker bit once it is known to be the last.
struct AccessUnitPackets<'a> {
    out: &'a mut Vec<Bytes>,
    open: Option<BytesMut>,
    /// `None`: payloads only.
    header: Option<RtpHeader>,
}

impl AccessUnitPackets<'_> {
    /// Ends the previous packet and starts the next, with room for `payload_len` bytes.
    fn start(&mut self, payload_len: usize) -> &mut BytesMut {
        if let Some(done) = self.open.take() {
            self.out.push(done.freeze());
        }
        let mut packet = BytesMut::with_capacity(RTP_HEADER_LEN + payload_len);
        if let Some(h) = &mut self.header {
            packet.put_u8(RTP_VERSION << 6);
            packet.put_u8(h.payload_type);
            packet.put_u16(h.sequence);
            packet.put_u32(h.timestamp);
            packet.put_u32(h.ssrc);
            h.sequence = h.sequence.wrapping_add(1);
        }
        self.open.insert(packet)
    }

    /// Ends the last packet (with the marker bit set, if it has a header); returns the next
    /// sequence number, if headers were written.
    fn finish(mut self) -> Option<u16> {
        if let Some(mut last) = self.open.take() {
            if self.header.is_some()
                && let Some(second) = last.get_mut(1)
            {
                *second |= MARKER;
            }
            self.out.push(last.freeze());
        }
        self.header.map(|h| h.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::h264::tests::{
        AUD, PPS, PT, SPS, SSRC, avcc, config, nal, packetize, packetizer,
    };

    fn marker(packet: &[u8]) -> bool {
        packet[1] & MARKER != 0
    }

    fn sequence(packet: &[u8]) -> u16 {
        u16::from_be_bytes([packet[2], packet[3]])
    }

    fn timestamp(packet: &[u8]) -> u32 {
        u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
    }

    fn payload(packet: &[u8]) -> &[u8] {
        &packet[RTP_HEADER_LEN..]
    }

    #[test]
    fn a_reordering_sps_travels_first_in_a_stap_a_with_the_decoy_after_it() {
        // x264 -bf 3 (b-pyramid): max_num_reorder_frames 2.
        const SPS_BF3: &[u8] = &[
            0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00,
            0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2d, 0x96,
        ];
        let decoy = decoy_for(SPS_BF3).expect("x264's SPS with B-frames asks for reordering");
        let info = avc::parse_sps(&decoy).expect("the decoy parses");
        assert_eq!((info.width, info.height, info.fps), (640, 360, None));
        assert_eq!(
            (avc::parse_sps(SPS_BF3).map(|s| s.sps_id), info.sps_id),
            (Ok(0), 1)
        );
        let config = AvcConfig {
            sps: vec![Bytes::from_static(SPS_BF3)],
            ..config()
        };
        let sei = nal(0x06, 700);
        let idr = nal(0x65, 3000);
        let payloads = |keep: bool, config: &AvcConfig, nals: &[&[u8]]| {
            let mut p = H264Packetizer::new(SSRC, PT, 0, 0, 1200).keeping_decoder_reorder(keep);
            p.set_config(config);
            let mut out = Vec::new();
            p.payloads(&avcc(nals), 4, &mut out).expect("packetizes");
            out
        };
        let stap_a = |units: &[&[u8]]| {
            let mut packet = vec![STAP_A | 0x60];
            for unit in units {
                packet.extend_from_slice(&(unit.len() as u16).to_be_bytes());
                packet.extend_from_slice(unit);
            }
            packet
        };
        // The parameter sets added before an IDR: the SPS and the decoy together first.
        let out = payloads(true, &config, &[&idr]);
        assert_eq!(out[0][..], stap_a(&[SPS_BF3, &decoy])[..]);
        assert_eq!(out[1][..], PPS[..]);
        assert_eq!(out[2][1] & TYPE_MASK, NAL_IDR);
        // An access unit with its own sets after an SEI that would have aggregated with the
        // SPS: the pair still travels alone.
        let out = payloads(true, &config, &[&sei, SPS_BF3, PPS, &idr]);
        assert_eq!(out[0][..], sei[..]);
        assert_eq!(out[1][..], stap_a(&[SPS_BF3, &decoy])[..]);
        assert_eq!(out[2][..], PPS[..]);
        assert_eq!(out[3][1] & TYPE_MASK, NAL_IDR);
        // Not asked for, an SPS that does not reorder, or a frame without an SPS: no decoy.
        for out in [
            payloads(false, &config, &[&idr]),
            payloads(true, &self::config(), &[&idr]),
            payloads(true, &config, &[&nal(0x41, 300)]),
        ] {
            assert!(
                !out.iter()
                    .any(|p| p.windows(decoy.len()).any(|w| w == decoy))
            );
        }
    }

    #[test]
    fn shared_payloads_with_own_headers_are_exactly_what_packetize_sends() {
        let mut whole = H264Packetizer::new(SSRC, PT, 65_530, 1_000, 1200);
        let mut shared = H264Packetizer::new(SSRC, PT, 65_530, 1_000, 1200);
        whole.set_config(&config());
        shared.set_config(&config());
        let idr = nal(0x65, 5000);
        let small = nal(0x41, 300);
        let frames: [(Vec<u8>, u32, i32); 3] = [
            (avcc(&[AUD, &idr]), 0, 0),
            (avcc(&[&small]), 40, 80),
            (avcc(&[&small, &small]), 80, 40),
        ];
        for (au, dts, cts) in &frames {
            let mut expected = Vec::new();
            whole.packetize(au, 4, *dts, *cts, &mut expected).unwrap();
            let mut payloads = Vec::new();
            shared.payloads(au, 4, &mut payloads).unwrap();
            let timestamp = shared.stamp(*dts, *cts);
            let first = shared.take_sequences(payloads.len());
            assert_eq!(payloads.len(), expected.len());
            for (i, (payload, packet)) in payloads.iter().zip(&expected).enumerate() {
                let mut built = vec![0x80, PT | if i + 1 == payloads.len() { 0x80 } else { 0 }];
                built.extend_from_slice(&first.wrapping_add(i as u16).to_be_bytes());
                built.extend_from_slice(&timestamp.to_be_bytes());
                built.extend_from_slice(&SSRC.to_be_bytes());
                built.extend_from_slice(payload);
                assert_eq!(&built[..], &packet[..], "packet {i} of the AU at {dts}");
            }
        }
        assert_eq!(shared.sequence(), whole.sequence());
        // Payloads leave the clock and the sequence alone; a bad AU changes nothing.
        let mut out = Vec::new();
        assert!(shared.payloads(&[0, 0, 0, 9, 1], 4, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn rtp_header_is_version_2_without_csrc_or_extension() {
        let mut p = packetizer(1200);
        let packets = packetize(&mut p, &[&nal(0x41, 3000)], 0, 0);
        for packet in &packets {
            assert_eq!(packet[0], 0x80, "V=2, no padding, no extension, no CSRC");
            assert_eq!(packet[1] & 0x7f, PT);
            assert_eq!(&packet[8..12], &SSRC.to_be_bytes());
        }
    }

    #[test]
    fn sps_and_pps_share_one_stap_a() {
        let mut p = packetizer(1200);
        let idr = nal(0x65, 3000);
        let packets = packetize(&mut p, &[&idr], 0, 0);
        let mut expected = vec![0x78]; // NRI 3 (the highest of SPS and PPS), type 24.
        for set in [SPS, PPS] {
            expected.extend_from_slice(&(set.len() as u16).to_be_bytes());
            expected.extend_from_slice(set);
        }
        assert_eq!(payload(&packets[0]), &expected[..]);
        // The IDR slice follows in FU-A fragments, its type in the FU header.
        assert_eq!(payload(&packets[1])[..2], [0x60 | FU_A, FU_START | 5]);
        assert_eq!(
            payload(packets.last().unwrap())[..2],
            [0x60 | FU_A, FU_END | 5]
        );

        // A small access unit is one STAP-A, and that packet ends it.
        let packets = packetize(&mut p, &[&nal(0x65, 50)], 40, 0);
        assert_eq!(packets.len(), 1);
        assert_eq!(payload(&packets[0])[0] & TYPE_MASK, STAP_A);
        assert!(marker(&packets[0]));
    }

    #[test]
    fn parameter_sets_too_large_to_share_a_packet_go_alone() {
        let mtu = SPS.len() + 2;
        let mut p = packetizer(mtu);
        let packets = packetize(&mut p, &[&nal(0x65, 100)], 0, 0);
        assert_eq!(payload(&packets[0]), SPS);
        assert_eq!(payload(&packets[1]), PPS);
    }

    #[test]
    fn marker_is_set_only_on_the_last_packet_of_an_access_unit() {
        let mut p = packetizer(500);
        for size in [10, 499, 501, 5000] {
            let packets = packetize(&mut p, &[&nal(0x06, 20), &nal(0x41, size)], 0, 0);
            let (last, rest) = packets.split_last().unwrap();
            assert!(marker(last));
            assert!(rest.iter().all(|packet| !marker(packet)), "size {size}");
        }
    }

    #[test]
    fn sequence_numbers_are_consecutive_and_wrap() {
        let mut p = H264Packetizer::new(SSRC, PT, 65_530, 0, 1200);
        let mut expected = 65_530u16;
        for _ in 0..3 {
            let packets = packetize(&mut p, &[&nal(0x41, 6000)], 0, 0);
            for packet in &packets {
                assert_eq!(sequence(packet), expected);
                expected = expected.wrapping_add(1);
            }
        }
        assert!(expected < 65_530, "wrapped past 65535");
        assert_eq!(p.sequence(), expected);
    }

    #[test]
    fn rtp_timestamp_is_pts_at_90_khz_from_the_base() {
        let base = 1_000_000;
        let mut p = H264Packetizer::new(SSRC, PT, 0, base, 1200);
        // (DTS, CTS) of I P B B as an encoder with B-frames writes them.
        let frames = [(1000, 80), (1040, 120), (1080, 0), (1120, -1)];
        let mut stamps = Vec::new();
        for (dts, cts) in frames {
            let packets = packetize(&mut p, &[&nal(0x41, 3000)], dts, cts);
            assert!(
                packets
                    .iter()
                    .all(|pk| timestamp(pk) == timestamp(&packets[0]))
            );
            stamps.push(timestamp(&packets[0]));
        }
        // PTS 1080, 1160, 1080, 1119 ms, counted from the first.
        assert_eq!(stamps, [base, base + 7200, base, base + 39 * 90]);
    }

    #[test]
    fn rtp_timestamp_wraps_like_the_flv_clock() {
        let base = u32::MAX - 89;
        let mut p = H264Packetizer::new(SSRC, PT, 0, base, 1200);
        let mut stamp =
            |dts: u32, cts| timestamp(&packetize(&mut p, &[&nal(0x41, 10)], dts, cts)[0]);
        assert_eq!(stamp(u32::MAX - 9, 0), base);
        assert_eq!(
            stamp(u32::MAX - 8, 0),
            0,
            "one ms later wraps the RTP clock"
        );
        // The FLV clock wraps too: 20 ms after u32::MAX - 9 is DTS 10.
        assert_eq!(stamp(10, 0), base.wrapping_add(20 * 90));
        assert_eq!(stamp(0, 10), base.wrapping_add(20 * 90));
    }

    #[test]
    fn access_unit_with_nothing_to_send_makes_no_packets() {
        let mut p = packetizer(1200);
        assert!(packetize(&mut p, &[AUD, &nal(0x0c, 10)], 0, 0).is_empty());
        assert_eq!(p.sequence(), 1000);
    }

    #[test]
    fn bad_nal_lengths_are_codec_errors_and_send_nothing() {
        let mut p = packetizer(1200);
        let mut out = Vec::new();
        let mut cut = avcc(&[&nal(0x41, 100)]);
        cut.pop();
        assert!(matches!(
            p.packetize(&cut, 4, 0, 0, &mut out),
            Err(CodecError::Invalid { .. })
        ));
        assert!(p.packetize(&[0, 0, 1, 0x41], 3, 0, 0, &mut out).is_err());
        assert!(out.is_empty());
        assert_eq!(p.sequence(), 1000);
    }
}
