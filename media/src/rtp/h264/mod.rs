//! H.264 over RTP (RFC 6184), packetization mode 1 (non-interleaved), a file per direction:
//!
//! - `packetize`: [`H264Packetizer`], FLV video frames (length-prefixed NAL units) in, RTP
//!   packets out, for WebRTC viewers.
//! - `depacketize`: [`H264Depacketizer`], RTP packets in, Annex-B [`AccessUnit`]s out, for WHIP
//!   publishers and the WHEP client; [`RtpError`] says what broke the format.
//!
//! Here is what both directions share: the RTP fixed header, the NAL unit header's fields and
//! the payload structures (RFC 6184 §5.2), and the tests that send access units through one
//! and back out of the other.

mod depacketize;
mod packetize;

pub use depacketize::{AccessUnit, DEFAULT_MAX_ACCESS_UNIT, H264Depacketizer, RtpError};
pub use packetize::{H264Packetizer, MAX_MTU, MIN_MTU};

/// The fixed RTP header (RFC 3550 §5.1); the packetizer writes no CSRC list and no extension.
pub const RTP_HEADER_LEN: usize = 12;
const RTP_VERSION: u8 = 2;
const MARKER: u8 = 0x80;

// The NAL unit header byte: forbidden_zero_bit, nal_ref_idc, nal_unit_type.
const F_BIT: u8 = 0x80;
const NRI_MASK: u8 = 0x60;
const TYPE_MASK: u8 = 0x1f;

const NAL_IDR: u8 = 5;

// Payload structures (RFC 6184 §5.2): NAL unit types H.264 leaves unspecified.
const STAP_A: u8 = 24;
const STAP_B: u8 = 25;
const MTAP16: u8 = 26;
const MTAP24: u8 = 27;
const FU_A: u8 = 28;
const FU_B: u8 = 29;

/// The size field before each NAL unit in a STAP-A.
const STAP_A_SIZE: usize = 2;
/// The FU header's start and end bits.
const FU_START: u8 = 0x80;
const FU_END: u8 = 0x40;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::depacketize::START_CODE;
    use super::*;
    use crate::codec::avc::AvcConfig;

    pub(super) const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xec, 0x04];
    pub(super) const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    pub(super) const AUD: &[u8] = &[0x09, 0xf0];
    pub(super) const SSRC: u32 = 0x1234_5678;
    pub(super) const PT: u8 = 102;

    pub(super) fn config() -> AvcConfig {
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
    pub(super) fn nal(header: u8, len: usize) -> Vec<u8> {
        std::iter::once(header)
            .chain((1..len).map(|i| (i * 7 + i / 251) as u8))
            .collect()
    }

    pub(super) fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            out.extend_from_slice(nal);
        }
        out
    }

    pub(super) fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|nal| [START_CODE, nal].concat())
            .collect()
    }

    pub(super) fn packetizer(mtu: usize) -> H264Packetizer {
        let mut p = H264Packetizer::new(SSRC, PT, 1000, 0, mtu);
        p.set_config(&config());
        p
    }

    pub(super) fn packetize(
        p: &mut H264Packetizer,
        nals: &[&[u8]],
        dts: u32,
        cts: i32,
    ) -> Vec<Bytes> {
        let mut out = Vec::new();
        p.packetize(&avcc(nals), 4, dts, cts, &mut out)
            .expect("valid AVCC");
        out
    }

    pub(super) fn depacketize(d: &mut H264Depacketizer, packets: &[Bytes]) -> Vec<AccessUnit> {
        packets
            .iter()
            .filter_map(|p| d.push(p).expect("valid RTP"))
            .collect()
    }

    /// A hand-made RTP packet: sequence, timestamp, marker, payload.
    pub(super) fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
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
