//! FLV tag bodies made from elementary streams, for media that does not arrive as FLV (WHIP):
//! AVC sequence headers and coded frames, and Opus in Enhanced RTMP's audio form.
//!
//! Enhanced RTMP (v2) carries Opus as sound format 9 ("ExHeader") with the FourCC `Opus`:
//! `[9 << 4 | packet type] ['O' 'p' 'u' 's'] [body]`, packet type 0 (sequence start: an
//! `OpusHead`, RFC 7845 §5.1) or 1 (coded frames: one Opus packet).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::avc::{AvcConfig, NAL_PPS, NAL_SPS, nal_type};

/// An AVC sequence header tag body: keyframe, AVC, packet type 0, the configuration record.
pub fn avc_sequence_header(config: &AvcConfig) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(&[0x17, 0, 0, 0, 0]);
    out.put_slice(&avc_config_record(config));
    out.freeze()
}

/// An AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) with 4-byte NAL lengths.
/// The record counts at most 31 SPSs and 255 PPSs of at most 65,535 bytes each; a parameter set
/// it cannot carry is left out whole (a truncated length before the whole bytes would corrupt
/// every set after it).
pub fn avc_config_record(config: &AvcConfig) -> Vec<u8> {
    let fits = |set: &&Bytes| set.len() <= usize::from(u16::MAX);
    let sps: Vec<&Bytes> = config.sps.iter().filter(fits).take(31).collect();
    let pps: Vec<&Bytes> = config.pps.iter().filter(fits).take(255).collect();
    let mut out = vec![
        1,
        config.profile,
        config.compatibility,
        config.level,
        0xfc | 3, // lengthSizeMinusOne = 3
        0xe0 | sps.len() as u8,
    ];
    for set in sps {
        out.extend_from_slice(&(set.len() as u16).to_be_bytes());
        out.extend_from_slice(set);
    }
    out.push(pps.len() as u8);
    for set in pps {
        out.extend_from_slice(&(set.len() as u16).to_be_bytes());
        out.extend_from_slice(set);
    }
    out
}

/// The configuration of an SPS and a PPS (profile, compatibility and level from the SPS).
/// `None` if the SPS is shorter than its header.
pub fn avc_config(sps: &[u8], pps: &[u8]) -> Option<AvcConfig> {
    let (&profile, &compatibility, &level) = (sps.get(1)?, sps.get(2)?, sps.get(3)?);
    Some(AvcConfig {
        profile,
        compatibility,
        level,
        nalu_length_size: 4,
        sps: vec![Bytes::copy_from_slice(sps)],
        pps: vec![Bytes::copy_from_slice(pps)],
    })
}

/// An AVC coded-frame tag body (composition time 0: WebRTC sends no B-frames) with the NAL
/// units 4-byte length-prefixed. Parameter sets are left out: the sequence header has them.
pub fn avc_frame(keyframe: bool, nalus: &[&[u8]]) -> Bytes {
    let size: usize = nalus.iter().map(|n| n.len() + 4).sum();
    let mut out = BytesMut::with_capacity(5 + size);
    out.put_slice(&[if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
    for nal in nalus {
        if matches!(nal_type(nal), Some(NAL_SPS | NAL_PPS)) {
            continue;
        }
        out.put_u32(nal.len() as u32);
        out.put_slice(nal);
    }
    out.freeze()
}

/// The NAL units of an Annex B access unit (start codes of three or four bytes).
pub fn annex_b_nalus(data: &[u8]) -> Vec<&[u8]> {
    let mut nalus = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                // A four-byte start code's leading zero belongs to it, not to the unit before.
                let end = if i > s && data[i - 1] == 0 { i - 1 } else { i };
                nalus.push(&data[s..end]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start.filter(|&s| s < data.len()) {
        nalus.push(&data[s..]);
    }
    nalus.retain(|n| !n.is_empty());
    nalus
}

/// Sound format 9: an Enhanced RTMP audio header with a FourCC follows.
const SOUND_EX_HEADER: u8 = 9;
const OPUS: &[u8; 4] = b"Opus";

/// What an Enhanced RTMP Opus tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusPacketType {
    /// An `OpusHead`.
    SequenceStart,
    /// One Opus packet.
    CodedFrames,
}

/// An Opus sequence start: `OpusHead` for 48 kHz with `channels`, no pre-skip, family 0.
pub fn opus_sequence_start(channels: u8) -> Bytes {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1);
    head.push(channels.clamp(1, 2));
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0);
    opus_tag(OpusPacketType::SequenceStart, &head)
}

/// An Opus coded-frames tag body holding one Opus packet.
pub fn opus_frame(packet: &[u8]) -> Bytes {
    opus_tag(OpusPacketType::CodedFrames, packet)
}

fn opus_tag(kind: OpusPacketType, body: &[u8]) -> Bytes {
    let packet_type = match kind {
        OpusPacketType::SequenceStart => 0,
        OpusPacketType::CodedFrames => 1,
    };
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(SOUND_EX_HEADER << 4 | packet_type);
    out.put_slice(OPUS);
    out.put_slice(body);
    out.freeze()
}

/// The packet type and body of an Enhanced RTMP Opus tag; `None` for anything else.
pub fn parse_opus(body: &Bytes) -> Option<(OpusPacketType, Bytes)> {
    let &first = body.first()?;
    if first >> 4 != SOUND_EX_HEADER || body.get(1..5)? != OPUS {
        return None;
    }
    let kind = match first & 0x0f {
        0 => OpusPacketType::SequenceStart,
        1 => OpusPacketType::CodedFrames,
        _ => return None,
    };
    Some((kind, body.slice(5..)))
}

/// Whether an audio tag body is AAC (what FLV players, HLS and recordings take).
pub fn is_aac(body: &[u8]) -> bool {
    body.first().is_some_and(|b| b >> 4 == 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avc::parse_avc_config;
    use crate::flv::tag::{self, FrameType, VideoPacket};

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn a_parameter_set_too_long_for_the_record_is_left_out_whole() {
        // A WHIP publisher may send any SPS; the record's 16-bit length cannot say 64 KiB.
        let huge = Bytes::from(vec![0x67; 70_000]);
        let mut config = avc_config(SPS, PPS).unwrap();
        config.sps.insert(0, huge);
        let record = avc_config_record(&config);
        let back = parse_avc_config(&record).unwrap();
        assert_eq!(back.sps, vec![Bytes::from_static(SPS)]);
        assert_eq!(back.pps, vec![Bytes::from_static(PPS)]);
    }

    #[test]
    fn a_sequence_header_reads_back_as_the_same_configuration() {
        let config = avc_config(SPS, PPS).unwrap();
        let tag = avc_sequence_header(&config);
        let video = tag::parse_video(&tag).unwrap();
        assert_eq!(video.packet, VideoPacket::SequenceHeader);
        assert_eq!(video.frame_type, FrameType::Key);
        let back = parse_avc_config(&video.data).unwrap();
        assert_eq!(back, config);
        assert!(avc_config(&[0x67, 0x42], PPS).is_none());
    }

    #[test]
    fn frames_are_length_prefixed_without_parameter_sets() {
        let idr = [0x65, 1, 2, 3];
        let tag = avc_frame(true, &[SPS, PPS, &idr]);
        let video = tag::parse_video(&tag).unwrap();
        assert_eq!(video.frame_type, FrameType::Key);
        assert_eq!(video.composition_time, 0);
        assert_eq!(&video.data[..], &[0, 0, 0, 4, 0x65, 1, 2, 3]);
        let p = avc_frame(false, &[&[0x41, 9]]);
        assert_eq!(tag::parse_video(&p).unwrap().frame_type, FrameType::Inter);
    }

    #[test]
    fn annex_b_splits_on_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 3, 4,
        ];
        let nalus = annex_b_nalus(&data);
        assert_eq!(nalus, vec![&[0x67, 1][..], &[0x68, 2], &[0x65, 3, 4]]);
        assert!(annex_b_nalus(&[]).is_empty());
        assert!(annex_b_nalus(&[0, 0, 1]).is_empty());
        assert!(annex_b_nalus(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn opus_tags_round_trip_and_other_audio_is_not_opus() {
        let frame = opus_frame(&[0xfc, 1, 2]);
        assert_eq!(
            parse_opus(&frame),
            Some((
                OpusPacketType::CodedFrames,
                Bytes::from_static(&[0xfc, 1, 2])
            ))
        );
        let head = opus_sequence_start(2);
        let (kind, body) = parse_opus(&head).unwrap();
        assert_eq!(kind, OpusPacketType::SequenceStart);
        assert_eq!(&body[..8], b"OpusHead");
        assert_eq!((body.len(), body[9]), (19, 2));
        // The FLV parser names it instead of taking it for AAC.
        assert!(
            tag::parse_audio(&frame)
                .unwrap_err()
                .to_string()
                .contains("Opus")
        );
        assert!(!is_aac(&frame));
        assert!(is_aac(&[0xaf, 1]));
        assert!(parse_opus(&Bytes::from_static(&[0xaf, 1, 2, 3, 4, 5])).is_none());
        assert!(parse_opus(&Bytes::from_static(&[0x91, b'O', b'p'])).is_none());
        assert!(parse_opus(&Bytes::from_static(&[0x92, b'O', b'p', b'u', b's'])).is_none());
        assert!(parse_opus(&Bytes::new()).is_none());
    }
}
