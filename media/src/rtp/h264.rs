//! H.264 over RTP (RFC 6184), packetization mode 1 (non-interleaved): FLV video frames in, RTP
//! packets out, and back.
//!
//! [`H264Packetizer`] takes an access unit as RTMP carries it (length-prefixed NAL units, an FLV
//! decode timestamp and a composition offset) and writes complete RTP packets, ready for a
//! WebRTC track that sends packets as given. A NAL unit larger than the MTU is cut into FU-A
//! fragments; smaller ones go out alone or, as many as fit together, in one STAP-A. RTMP sends
//! SPS and PPS once, in the sequence header, but a viewer may join at any IDR, so the
//! packetizer repeats them before every IDR. Access unit delimiters and filler data are
//! dropped: they cost bandwidth and tell a WebRTC receiver nothing.
//!
//! [`H264Depacketizer`] does the reverse, for tests and for the WHEP client: RTP packets in,
//! Annex-B access units out. Its input comes from the network, so every length is checked
//! before it is used, what it buffers is bounded, and an access unit with a hole in it is
//! dropped whole rather than handed to a decoder as a broken picture. A packet that breaks the
//! format is an [`RtpError`]; packets that are each well-formed but do not fit together (a
//! sequence gap, a fragment without its start) only cost the access unit they belong to.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::avc::{self, AvcConfig, CodecError, NAL_PPS, NAL_SPS, nal_type, split_nalus};

/// The fixed RTP header (RFC 3550 §5.1); the packetizer writes no CSRC list and no extension.
pub const RTP_HEADER_LEN: usize = 12;
/// Smallest RTP payload size the packetizer accepts: an FU-A needs its two header bytes and at
/// least one byte of the NAL unit.
pub const MIN_MTU: usize = 3;
/// Largest RTP payload size the packetizer accepts: the packet must fit in one UDP datagram
/// over IPv4 (65,507 bytes), which also keeps every STAP-A size within its 16 bits.
pub const MAX_MTU: usize = 65_507 - RTP_HEADER_LEN;
/// A sensible [`H264Depacketizer`] limit: larger than any access unit a live encoder makes.
pub const DEFAULT_MAX_ACCESS_UNIT: usize = 8 * 1024 * 1024;

const RTP_VERSION: u8 = 2;
const MARKER: u8 = 0x80;
/// RTP clock ticks per millisecond: H.264 runs at 90 kHz (RFC 6184 §5.1).
const TICKS_PER_MS: u32 = 90;
const START_CODE: &[u8] = &[0, 0, 0, 1];

// The NAL unit header byte: forbidden_zero_bit, nal_ref_idc, nal_unit_type.
const F_BIT: u8 = 0x80;
const NRI_MASK: u8 = 0x60;
const TYPE_MASK: u8 = 0x1f;

const NAL_IDR: u8 = 5;
const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;

// Payload structures (RFC 6184 §5.2): NAL unit types H.264 leaves unspecified.
const STAP_A: u8 = 24;
const STAP_B: u8 = 25;
const MTAP16: u8 = 26;
const MTAP24: u8 = 27;
const FU_A: u8 = 28;
const FU_B: u8 = 29;

/// The STAP-A header byte, and the size field before each NAL unit in it.
const STAP_A_HEADER: usize = 1;
const STAP_A_SIZE: usize = 2;
/// The FU indicator and FU header bytes.
const FU_A_HEADER: usize = 2;
const FU_START: u8 = 0x80;
const FU_END: u8 = 0x40;

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
    /// ([`super::decode_order`]). Only for an SPS that asks for reordering; nothing else in
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

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xec, 0x04];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    const AUD: &[u8] = &[0x09, 0xf0];
    const SSRC: u32 = 0x1234_5678;
    const PT: u8 = 102;

    fn config() -> AvcConfig {
        AvcConfig {
            profile: 0x42,
            compatibility: 0xc0,
            level: 0x1f,
            nalu_length_size: 4,
            sps: vec![Bytes::from_static(SPS)],
            pps: vec![Bytes::from_static(PPS)],
        }
    }

    /// A NAL unit of `len` bytes with header byte `header` and a recognisable body.
    fn nal(header: u8, len: usize) -> Vec<u8> {
        std::iter::once(header)
            .chain((1..len).map(|i| (i * 7 + i / 251) as u8))
            .collect()
    }

    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            out.extend_from_slice(nal);
        }
        out
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

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|nal| [START_CODE, nal].concat())
            .collect()
    }

    fn packetizer(mtu: usize) -> H264Packetizer {
        let mut p = H264Packetizer::new(SSRC, PT, 1000, 0, mtu);
        p.set_config(&config());
        p
    }

    fn packetize(p: &mut H264Packetizer, nals: &[&[u8]], dts: u32, cts: i32) -> Vec<Bytes> {
        let mut out = Vec::new();
        p.packetize(&avcc(nals), 4, dts, cts, &mut out)
            .expect("valid AVCC");
        out
    }

    fn depacketize(d: &mut H264Depacketizer, packets: &[Bytes]) -> Vec<AccessUnit> {
        packets
            .iter()
            .filter_map(|p| d.push(p).expect("valid RTP"))
            .collect()
    }

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

    /// A hand-made RTP packet: sequence, timestamp, marker, payload.
    fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, PT | if marker { MARKER } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&SSRC.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn access_units_survive_a_round_trip_at_mtu_1200_and_500() {
        for mtu in [1200, 500] {
            let mut p = packetizer(mtu);
            let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
            let sizes = [
                1,
                2,
                100,
                mtu - 3,
                mtu - 2,
                mtu - 1,
                mtu,
                mtu + 1,
                mtu + 2,
                2 * mtu - 2,
                2 * mtu + 7,
                200_000,
            ];
            let mut dts = 0;
            for size in sizes {
                for idr in [true, false] {
                    let sei = nal(0x06, 30);
                    let slice = nal(if idr { 0x65 } else { 0x41 }, size);
                    let second_slice = nal(if idr { 0x25 } else { 0x01 }, size / 3 + 1);
                    let nals: [&[u8]; 3] = [&sei, &slice, &second_slice];
                    let packets = packetize(&mut p, &nals, dts, 0);
                    let units = depacketize(&mut d, &packets);
                    let expected = if idr {
                        annex_b(&[SPS, PPS, &sei, &slice, &second_slice])
                    } else {
                        annex_b(&nals)
                    };
                    assert_eq!(units.len(), 1, "mtu {mtu} size {size} idr {idr}");
                    assert_eq!(units[0].data, expected, "mtu {mtu} size {size} idr {idr}");
                    assert_eq!(units[0].keyframe, idr);
                    assert_eq!(units[0].rtp_timestamp, dts * 90);
                    dts += 33;
                }
            }
            assert_eq!(d.dropped(), 0);
        }
    }

    #[test]
    fn every_packet_fits_the_mtu_down_to_the_smallest() {
        for mtu in [MIN_MTU, 4, 5, 17, 500, 1200] {
            let mut p = packetizer(mtu);
            let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
            for size in [1, 2, 3, 4, 10, 1199, 1200, 1201, 5000] {
                let slice = nal(0x65, size);
                let packets = packetize(&mut p, &[&slice], 0, 0);
                for packet in &packets {
                    assert!(
                        packet.len() <= RTP_HEADER_LEN + mtu,
                        "mtu {mtu} size {size}"
                    );
                }
                let units = depacketize(&mut d, &packets);
                assert_eq!(units.len(), 1);
                assert_eq!(units[0].data, annex_b(&[SPS, PPS, &slice]));
            }
        }
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
    fn parameter_sets_go_before_idr_but_not_other_frames() {
        let mut p = packetizer(1200);
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        let idr = nal(0x65, 5000);
        let inter = nal(0x41, 5000);
        let units = depacketize(&mut d, &packetize(&mut p, &[&idr], 0, 0));
        assert_eq!(units[0].data, annex_b(&[SPS, PPS, &idr]));
        let units = depacketize(&mut d, &packetize(&mut p, &[&inter], 40, 0));
        assert_eq!(units[0].data, annex_b(&[&inter]));
        assert!(!units[0].keyframe);
    }

    #[test]
    fn parameter_sets_in_the_access_unit_are_not_repeated() {
        let own_sps: &[u8] = &[0x67, 0x64, 0x00, 0x28, 0xac];
        let own_pps: &[u8] = &[0x68, 0xeb, 0xe3];
        let idr = nal(0x65, 700);
        let mut p = packetizer(1200);
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        let mut round_trip = |nals: &[&[u8]]| {
            let units = depacketize(&mut d, &packetize(&mut p, nals, 0, 0));
            units[0].data.clone()
        };
        assert_eq!(
            round_trip(&[own_sps, own_pps, &idr]),
            annex_b(&[own_sps, own_pps, &idr])
        );
        // Only the missing kind is added, and an SPS still precedes the PPS.
        assert_eq!(round_trip(&[own_sps, &idr]), annex_b(&[own_sps, PPS, &idr]));
        assert_eq!(round_trip(&[own_pps, &idr]), annex_b(&[SPS, own_pps, &idr]));
    }

    #[test]
    fn idr_without_a_sequence_header_goes_out_as_it_is() {
        let mut p = H264Packetizer::new(SSRC, PT, 0, 0, 1200);
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        let idr = nal(0x65, 100);
        let units = depacketize(&mut d, &packetize(&mut p, &[&idr], 0, 0));
        assert_eq!(units[0].data, annex_b(&[&idr]));
        assert!(units[0].keyframe);
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
    fn delimiters_filler_and_unspecified_nal_units_are_dropped_sei_kept() {
        let mut p = packetizer(1200);
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        let sei = nal(0x06, 40);
        let filler = nal(0x0c, 300);
        let slice = nal(0x41, 2000);
        let nals: [&[u8]; 7] = [
            AUD,
            &sei,
            &filler,
            &slice,
            &[0x00, 1],
            &[0x7c, 2, 3],
            &filler,
        ];
        let units = depacketize(&mut d, &packetize(&mut p, &nals, 0, 0));
        assert_eq!(units[0].data, annex_b(&[&sei, &slice]));
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

    #[test]
    fn lost_fu_a_fragment_drops_that_access_unit_and_the_next_is_whole() {
        let mut p = packetizer(1200);
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        let first = nal(0x41, 6000);
        let second = nal(0x41, 3000);
        let mut packets = packetize(&mut p, &[&first], 0, 0);
        assert!(packets.len() >= 4);
        packets.remove(2);
        packets.extend(packetize(&mut p, &[&second], 40, 0));
        let units = depacketize(&mut d, &packets);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].data, annex_b(&[&second]));
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn gap_before_a_new_timestamp_drops_both_access_units() {
        // The lost packets ended one access unit and may have begun the next.
        let mut p = packetizer(1200);
        let mut d = H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT);
        let mut packets = packetize(&mut p, &[&nal(0x41, 3000)], 0, 0);
        packets.pop();
        packets.extend(packetize(&mut p, &[&nal(0x41, 3000)], 40, 0));
        let third = nal(0x41, 100);
        packets.extend(packetize(&mut p, &[&third], 80, 0));
        let units = depacketize(&mut d, &packets);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].data, annex_b(&[&third]));
        assert_eq!(d.dropped(), 2);
    }

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
    fn oversized_access_unit_is_dropped() {
        let mut p = packetizer(500);
        let mut d = H264Depacketizer::new(1000);
        let mut packets = packetize(&mut p, &[&nal(0x41, 2000)], 0, 0);
        let small = nal(0x41, 900);
        packets.extend(packetize(&mut p, &[&small], 40, 0));
        let units = depacketize(&mut d, &packets);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].data, annex_b(&[&small]));
        assert_eq!(d.dropped(), 1);
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

    /// xorshift64: deterministic noise without a crate.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Up to `max` bytes of noise.
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = self.below(max + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut d = H264Depacketizer::new(4096);
        let mut p = packetizer(MIN_MTU + 5);
        let mut out = Vec::new();
        let valid = packetize(
            &mut packetizer(100),
            &[&nal(0x65, 700), &nal(0x06, 30)],
            0,
            0,
        );
        for _ in 0..200_000 {
            let mut packet = match noise.below(3) {
                0 => noise.bytes(64),
                // A valid header, so the payload parsers see the noise.
                1 => {
                    let (seq, ts, marker) =
                        (noise.next() as u16 % 4, noise.below(3), noise.below(2));
                    rtp(seq, ts as u32, marker == 1, &noise.bytes(40))
                }
                _ => valid[noise.below(valid.len())].to_vec(),
            };
            for _ in 0..noise.below(3) {
                if !packet.is_empty() {
                    let at = noise.below(packet.len());
                    packet[at] ^= noise.next() as u8;
                }
            }
            let _ = d.push(&packet);

            let length_size = [1, 2, 3, 4][noise.below(4)];
            out.clear();
            let _ = p.packetize(
                &packet,
                length_size,
                noise.next() as u32,
                noise.next() as i32,
                &mut out,
            );
            assert!(
                out.iter()
                    .all(|pk| pk.len() <= RTP_HEADER_LEN + MIN_MTU + 5)
            );
        }
    }
}
