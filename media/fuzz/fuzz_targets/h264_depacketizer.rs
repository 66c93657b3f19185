//! Fuzzes the H.264 RTP depacketizer, which reassembles a WHIP publisher's video (and the WHEP
//! client's), and the conversion of its access units into FLV frames behind it.
//!
//! Run from `media/`: `cargo +nightly fuzz run h264_depacketizer` (needs `cargo install
//! cargo-fuzz`).
//!
//! Input: a control byte, then chunks, each a two-byte big-endian length and that many bytes
//! (cut at the input's end). The control byte's low bits set the access unit limit (small, so
//! that it is reached); its high bit says whether each chunk is a whole RTP packet as sent, or,
//! to spend the time in the payload formats rather than on headers, a flags byte and an RTP
//! payload that the target puts behind a valid header (sequence numbers counting up unless a
//! flag skips one, the timestamp advancing when a flag says so, the marker from a flag).
//! Access units go on into `RtpToFlv`. Besides not panicking:
//! - an access unit is Annex B within the limit, and all of them together are no larger than
//!   twice the packets they came from;
//! - the frames `RtpToFlv` makes parse as FLV video, a sequence header's record included;
//! - the same chunks, taken as NAL units and packetized with an MTU from the control byte,
//!   depacketize back to exactly the NAL units the packetizer sends, and `payloads` gives the
//!   packets `packetize` does without their headers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_media::codec::avc;
use verge_media::flv::tag::{self, VideoPacket};
use verge_media::rtp::h264::{H264Depacketizer, H264Packetizer, RTP_HEADER_LEN};
use verge_media::rtp::to_flv::RtpToFlv;

const START_CODE: &[u8] = &[0, 0, 0, 1];

fuzz_target!(|data: &[u8]| {
    let [control, rest @ ..] = data else {
        return;
    };
    let chunks = chunks(rest);
    let raw = control & 0x80 != 0;
    let max_access_unit = (usize::from(control & 0x3f) + 1) * 64;

    let mut depacketizer = H264Depacketizer::new(max_access_unit);
    let mut to_flv = RtpToFlv::new();
    let (mut fed, mut emitted) = (0usize, 0usize);
    let (mut sequence, mut timestamp) = (0xfff0u16, 0xffff_ff00u32);
    for (i, chunk) in chunks.iter().enumerate() {
        let packet = if raw {
            chunk.to_vec()
        } else {
            let Some((&flags, payload)) = chunk.split_first() else {
                continue;
            };
            if flags & 1 != 0 {
                sequence = sequence.wrapping_add(1); // a lost packet
            }
            if flags & 2 != 0 {
                timestamp = timestamp.wrapping_add(3000);
            }
            sequence = sequence.wrapping_add(1);
            rtp_packet(flags & 4 != 0, sequence, timestamp, payload)
        };
        fed += packet.len();
        let Ok(Some(au)) = depacketizer.push(&packet) else {
            continue;
        };
        assert!(au.data.len() <= max_access_unit);
        assert!(au.data.starts_with(START_CODE));
        emitted += au.data.len();
        assert!(
            emitted <= 2 * fed,
            "{emitted} bytes of access units from {fed}"
        );

        let mut frames = Vec::new();
        to_flv.video(&au, i as u64 * 33, &mut frames);
        for frame in &frames {
            let video = tag::parse_video(&frame.payload).expect("RtpToFlv makes FLV video");
            if video.packet == VideoPacket::SequenceHeader {
                avc::parse_avc_config(&video.data).expect("RtpToFlv writes a valid record");
            }
        }
    }

    round_trip(&chunks, usize::from(control & 0x7f) + 3);
});

/// Two-byte length-prefixed chunks, the last one cut at the end of the input.
fn chunks(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, after)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(after.len());
        let (chunk, after) = after.split_at(len);
        out.push(chunk);
        rest = after;
    }
    out
}

fn rtp_packet(marker: bool, sequence: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(RTP_HEADER_LEN + payload.len());
    packet.push(0x80);
    packet.push(if marker { 0x80 | 102 } else { 102 });
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// Packetizes `nalus` as one access unit and depacketizes the packets.
fn round_trip(nalus: &[&[u8]], mtu: usize) {
    let mut avcc = Vec::new();
    for nal in nalus {
        avcc.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        avcc.extend_from_slice(nal);
    }
    // What the packetizer sends (no configuration set, so nothing is added): NAL unit types
    // 1 to 23 except access unit delimiters (9) and filler (12).
    let sent: Vec<&[u8]> = nalus
        .iter()
        .copied()
        .filter(|nal| matches!(avc::nal_type(nal), Some(t @ 1..=23) if t != 9 && t != 12))
        .collect();
    let mut expected = Vec::new();
    for nal in &sent {
        expected.extend_from_slice(START_CODE);
        expected.extend_from_slice(nal);
    }

    let mut packetizer = H264Packetizer::new(0x1234_5678, 102, 0xfffe, 90_000, mtu);
    let mut packets = Vec::new();
    packetizer
        .packetize(&avcc, 4, 1_000, 0, &mut packets)
        .expect("exact length prefixes split");
    let mut payloads = Vec::new();
    packetizer
        .payloads(&avcc, 4, &mut payloads)
        .expect("exact length prefixes split");
    assert_eq!(packets.len(), payloads.len());
    for (packet, payload) in packets.iter().zip(&payloads) {
        assert!(packet.len() - RTP_HEADER_LEN <= mtu);
        assert_eq!(&packet[RTP_HEADER_LEN..], &payload[..]);
    }

    let mut depacketizer = H264Depacketizer::new(expected.len().max(1));
    let mut units = Vec::new();
    for packet in &packets {
        if let Some(au) = depacketizer
            .push(packet)
            .expect("packetizer output is valid RTP")
        {
            units.push(au);
        }
    }
    if sent.is_empty() {
        assert!(packets.is_empty() && units.is_empty());
        return;
    }
    assert_eq!(
        units.len(),
        1,
        "one access unit from {} packets",
        packets.len()
    );
    assert_eq!(&units[0].data[..], &expected[..]);
    assert_eq!(
        units[0].keyframe,
        sent.iter().any(|nal| avc::nal_type(nal) == Some(5))
    );
    assert_eq!(depacketizer.dropped(), 0);
}
