//! FLV tag bodies as RTMP delivers them: message type 8 (audio), 9 (video) and 18 (script
//! data) carry exactly the body of an FLV tag.
//!
//! Verge relays H.264 and AAC only, so these parsers accept those and name anything else in
//! [`FlvError::UnsupportedCodec`]; the session can then tell the publisher (and the operator
//! reading logs) which codec to change instead of failing with a generic error. Payloads are
//! slices of the message buffer ([`Bytes::slice`]), so parsing copies nothing.

use bytes::Bytes;

use super::{FlvError, TAG_AUDIO, TAG_VIDEO};

/// Video frame type, the high nibble of a video tag's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Key,
    Inter,
    DisposableInter,
    /// Generated on the server side for seeking; not an encoder's keyframe.
    GeneratedKey,
    /// Video info/command frame: carries a command byte, not a picture.
    Command,
}

impl FrameType {
    fn from_bits(bits: u8) -> Result<Self, FlvError> {
        Ok(match bits {
            1 => FrameType::Key,
            2 => FrameType::Inter,
            3 => FrameType::DisposableInter,
            4 => FrameType::GeneratedKey,
            5 => FrameType::Command,
            other => return Err(FlvError::Invalid(format!("video frame type {other}"))),
        })
    }
}

/// What an AVC video tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoPacket {
    /// An AVCDecoderConfigurationRecord (see [`crate::codec::avc::parse_avc_config`]).
    SequenceHeader,
    /// Length-prefixed NAL units of one frame (see [`crate::codec::avc::split_nalus`]).
    Nalu,
    EndOfSequence,
    /// A video info/command frame ([`FrameType::Command`]): the data is the command byte
    /// (0 start of client-side seeking, 1 end), there is no AVC packet header.
    Command,
}

/// A parsed AVC video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTag {
    pub frame_type: FrameType,
    pub packet: VideoPacket,
    /// Presentation minus decode time in milliseconds (signed 24-bit on the wire).
    pub composition_time: i32,
    /// The payload after the 5-byte header (after the 1-byte header for command frames).
    pub data: Bytes,
}

const CODEC_AVC: u8 = 7;
/// Set in the first byte of Enhanced RTMP video and marks a FourCC instead of a codec id.
const IS_EX_HEADER: u8 = 0x80;

/// Parses a video tag body. Only AVC (codec id 7) is accepted.
pub fn parse_video(body: &Bytes) -> Result<VideoTag, FlvError> {
    let &first = body
        .first()
        .ok_or(FlvError::Truncated("video tag header"))?;
    if first & IS_EX_HEADER != 0 {
        return Err(enhanced_video(body));
    }
    let frame_type = FrameType::from_bits(first >> 4)?;
    let codec_id = first & 0x0f;
    if codec_id != CODEC_AVC {
        return Err(FlvError::UnsupportedCodec(video_codec_name(codec_id)));
    }
    if frame_type == FrameType::Command {
        return Ok(VideoTag {
            frame_type,
            packet: VideoPacket::Command,
            composition_time: 0,
            data: body.slice(1..),
        });
    }
    let Some(&[_, packet_type, c0, c1, c2]) = body.get(..5) else {
        return Err(FlvError::Truncated("AVC video tag header"));
    };
    let packet = match packet_type {
        0 => VideoPacket::SequenceHeader,
        1 => VideoPacket::Nalu,
        2 => VideoPacket::EndOfSequence,
        other => return Err(FlvError::Invalid(format!("AVC packet type {other}"))),
    };
    // Sign-extend the 24-bit value by placing it in the top bytes and shifting back.
    let composition_time = i32::from_be_bytes([c0, c1, c2, 0]) >> 8;
    Ok(VideoTag {
        frame_type,
        packet,
        composition_time,
        data: body.slice(5..),
    })
}

/// Names the codec of an Enhanced RTMP video body for the error, from its FourCC.
fn enhanced_video(body: &[u8]) -> FlvError {
    const MULTITRACK: u8 = 6;
    const MOD_EX: u8 = 7;
    match body.first().map(|b| b & 0x0f) {
        Some(MULTITRACK) => {
            return FlvError::UnsupportedCodec("multitrack video (Enhanced RTMP)".into());
        }
        // ModEx inserts modifier data before the FourCC.
        Some(MOD_EX) => return FlvError::UnsupportedCodec("video (Enhanced RTMP ModEx)".into()),
        _ => {}
    }
    let Some(fourcc) = body.get(1..5) else {
        return FlvError::Truncated("Enhanced RTMP video header");
    };
    let name = match fourcc {
        b"avc1" => "H.264",
        b"hvc1" => "H.265",
        b"av01" => "AV1",
        b"vp09" => "VP9",
        b"vp08" => "VP8",
        other => {
            return FlvError::UnsupportedCodec(format!(
                "video FourCC '{}' (Enhanced RTMP)",
                other.escape_ascii()
            ));
        }
    };
    FlvError::UnsupportedCodec(format!("{name} (Enhanced RTMP)"))
}

fn video_codec_name(codec_id: u8) -> String {
    match codec_id {
        1 => "JPEG".into(),
        2 => "Sorenson H.263".into(),
        3 => "Screen video".into(),
        4 => "On2 VP6".into(),
        5 => "On2 VP6 with alpha".into(),
        6 => "Screen video v2".into(),
        // Non-standard ids some Chinese CDNs and forks of FFmpeg use.
        12 => "H.265 (legacy codec id 12)".into(),
        13 => "AV1 (legacy codec id 13)".into(),
        other => format!("video codec id {other}"),
    }
}

/// What an AAC audio tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioPacket {
    /// An AudioSpecificConfig (see [`crate::codec::aac::parse_aac_config`]).
    SequenceHeader,
    /// One raw AAC frame.
    Raw,
}

/// A parsed AAC audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTag {
    pub packet: AudioPacket,
    /// The payload after the 2-byte header.
    pub data: Bytes,
}

const SOUND_AAC: u8 = 10;
/// Sound format 9 marks Enhanced RTMP audio with a FourCC.
const SOUND_EX_HEADER: u8 = 9;

/// Parses an audio tag body. Only AAC (sound format 10) is accepted. The rate, size and
/// channel bits of the first byte are ignored: for AAC the sequence header is authoritative.
pub fn parse_audio(body: &Bytes) -> Result<AudioTag, FlvError> {
    let &first = body
        .first()
        .ok_or(FlvError::Truncated("audio tag header"))?;
    let format = first >> 4;
    if format == SOUND_EX_HEADER {
        return Err(enhanced_audio(body));
    }
    if format != SOUND_AAC {
        return Err(FlvError::UnsupportedCodec(audio_codec_name(format)));
    }
    let &packet_type = body
        .get(1)
        .ok_or(FlvError::Truncated("AAC audio tag header"))?;
    let packet = match packet_type {
        0 => AudioPacket::SequenceHeader,
        1 => AudioPacket::Raw,
        other => return Err(FlvError::Invalid(format!("AAC packet type {other}"))),
    };
    Ok(AudioTag {
        packet,
        data: body.slice(2..),
    })
}

/// Names the codec of an Enhanced RTMP audio body for the error, from its FourCC.
fn enhanced_audio(body: &[u8]) -> FlvError {
    const MULTITRACK: u8 = 5;
    const MOD_EX: u8 = 7;
    match body.first().map(|b| b & 0x0f) {
        Some(MULTITRACK) => {
            return FlvError::UnsupportedCodec("multitrack audio (Enhanced RTMP)".into());
        }
        Some(MOD_EX) => return FlvError::UnsupportedCodec("audio (Enhanced RTMP ModEx)".into()),
        _ => {}
    }
    let Some(fourcc) = body.get(1..5) else {
        return FlvError::Truncated("Enhanced RTMP audio header");
    };
    let name = match fourcc {
        b"Opus" => "Opus",
        b"fLaC" => "FLAC",
        b"ac-3" => "AC-3",
        b"ec-3" => "E-AC-3",
        b".mp3" => "MP3",
        b"mp4a" => "AAC",
        other => {
            return FlvError::UnsupportedCodec(format!(
                "audio FourCC '{}' (Enhanced RTMP)",
                other.escape_ascii()
            ));
        }
    };
    FlvError::UnsupportedCodec(format!("{name} (Enhanced RTMP)"))
}

fn audio_codec_name(format: u8) -> String {
    match format {
        0 => "Linear PCM, platform endian".into(),
        1 => "ADPCM".into(),
        2 => "MP3".into(),
        3 => "Linear PCM, little endian".into(),
        4 => "Nellymoser 16 kHz mono".into(),
        5 => "Nellymoser 8 kHz mono".into(),
        6 => "Nellymoser".into(),
        7 => "G.711 A-law".into(),
        8 => "G.711 mu-law".into(),
        11 => "Speex".into(),
        14 => "MP3 8 kHz".into(),
        15 => "device-specific sound".into(),
        other => format!("sound format {other}"),
    }
}

/// Whether a video body is a keyframe (frame type 1), from its first byte alone, for legacy
/// and Enhanced RTMP headers alike. Server-generated keyframes (type 4) do not count: a GOP
/// cache must start at an encoder's keyframe.
/// AVC sequence headers are sent as keyframes too; check [`is_sequence_header`] first where
/// the difference matters.
pub fn is_keyframe(body: &[u8]) -> bool {
    match body.first() {
        Some(&b) if b & IS_EX_HEADER != 0 => (b >> 4) & 0x07 == 1,
        Some(&b) => b >> 4 == 1,
        None => false,
    }
}

/// Whether a tag body is an AVC or AAC sequence header: the configuration a player needs
/// before any frame, which a relay keeps and replays to late joiners.
pub fn is_sequence_header(tag_type: u8, body: &[u8]) -> bool {
    match (tag_type, body) {
        (TAG_VIDEO, [first, 0, ..]) => {
            first & IS_EX_HEADER == 0 && first & 0x0f == CODEC_AVC && first >> 4 != 5
        }
        (TAG_AUDIO, [first, 0, ..]) => first >> 4 == SOUND_AAC,
        // Enhanced RTMP Opus, sequence start (see `super::make`).
        (TAG_AUDIO, [0x90, b'O', b'p', b'u', b's', ..]) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flv::TAG_SCRIPT;

    fn video(bytes: &[u8]) -> Result<VideoTag, FlvError> {
        parse_video(&Bytes::copy_from_slice(bytes))
    }

    fn audio(bytes: &[u8]) -> Result<AudioTag, FlvError> {
        parse_audio(&Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn avc_sequence_header_tag() {
        let tag = video(&[0x17, 0x00, 0x00, 0x00, 0x00, 0x01, 0x64]).unwrap();
        assert_eq!(tag.frame_type, FrameType::Key);
        assert_eq!(tag.packet, VideoPacket::SequenceHeader);
        assert_eq!(tag.composition_time, 0);
        assert_eq!(&tag.data[..], &[0x01, 0x64]);
    }

    #[test]
    fn avc_inter_frame_with_composition_time() {
        let tag = video(&[0x27, 0x01, 0x00, 0x00, 0x50, 0, 0, 0, 1, 0x41]).unwrap();
        assert_eq!(tag.frame_type, FrameType::Inter);
        assert_eq!(tag.packet, VideoPacket::Nalu);
        assert_eq!(tag.composition_time, 80);
        assert_eq!(&tag.data[..], &[0, 0, 0, 1, 0x41]);
    }

    #[test]
    fn negative_composition_time_is_sign_extended() {
        let tag = video(&[0x27, 0x01, 0xff, 0xff, 0xd8]).unwrap();
        assert_eq!(tag.composition_time, -40);
        let tag = video(&[0x27, 0x01, 0x80, 0x00, 0x00]).unwrap();
        assert_eq!(tag.composition_time, -(1 << 23));
        let tag = video(&[0x27, 0x01, 0x7f, 0xff, 0xff]).unwrap();
        assert_eq!(tag.composition_time, (1 << 23) - 1);
    }

    #[test]
    fn end_of_sequence_and_frame_types() {
        assert_eq!(
            video(&[0x17, 0x02, 0, 0, 0]).unwrap().packet,
            VideoPacket::EndOfSequence
        );
        assert_eq!(
            video(&[0x37, 0x01, 0, 0, 0]).unwrap().frame_type,
            FrameType::DisposableInter
        );
        assert_eq!(
            video(&[0x47, 0x01, 0, 0, 0]).unwrap().frame_type,
            FrameType::GeneratedKey
        );
    }

    #[test]
    fn command_frame_carries_its_command_byte() {
        let tag = video(&[0x57, 0x01]).unwrap();
        assert_eq!(tag.frame_type, FrameType::Command);
        assert_eq!(tag.packet, VideoPacket::Command);
        assert_eq!(&tag.data[..], &[0x01]);
    }

    #[test]
    fn video_data_shares_the_message_buffer() {
        let body = Bytes::from(vec![0x17, 0x01, 0, 0, 0, 0, 0, 0, 1, 0x65]);
        let tag = parse_video(&body).unwrap();
        assert_eq!(tag.data.as_ptr(), body[5..].as_ptr());
        let body = Bytes::from(vec![0xaf, 0x01, 0x21, 0x00]);
        let tag = parse_audio(&body).unwrap();
        assert_eq!(tag.data.as_ptr(), body[2..].as_ptr());
    }

    #[test]
    fn bad_frame_and_packet_types_are_invalid() {
        assert!(matches!(
            video(&[0x07, 0x01, 0, 0, 0]),
            Err(FlvError::Invalid(_))
        ));
        assert!(matches!(
            video(&[0x67, 0x01, 0, 0, 0]),
            Err(FlvError::Invalid(_))
        ));
        assert!(matches!(
            video(&[0x17, 0x03, 0, 0, 0]),
            Err(FlvError::Invalid(_))
        ));
        assert!(matches!(audio(&[0xaf, 0x02]), Err(FlvError::Invalid(_))));
    }

    #[test]
    fn legacy_video_codecs_are_named() {
        for (byte, name) in [
            (0x12, "Sorenson H.263"),
            (0x13, "Screen video"),
            (0x14, "On2 VP6"),
            (0x15, "On2 VP6 with alpha"),
            (0x16, "Screen video v2"),
            (0x1c, "H.265 (legacy codec id 12)"),
            (0x1f, "video codec id 15"),
        ] {
            assert_eq!(
                video(&[byte, 0, 0, 0, 0]),
                Err(FlvError::UnsupportedCodec(name.into()))
            );
        }
    }

    #[test]
    fn enhanced_rtmp_video_is_named_by_fourcc() {
        for (fourcc, name) in [
            (b"hvc1", "H.265 (Enhanced RTMP)"),
            (b"av01", "AV1 (Enhanced RTMP)"),
            (b"vp09", "VP9 (Enhanced RTMP)"),
            (b"avc1", "H.264 (Enhanced RTMP)"),
        ] {
            // Keyframe, SequenceStart.
            let mut body = vec![0x90];
            body.extend(fourcc);
            assert_eq!(video(&body), Err(FlvError::UnsupportedCodec(name.into())));
        }
        assert_eq!(
            video(&[0x91, b'x', 0xff, b'z', b'!']),
            Err(FlvError::UnsupportedCodec(
                "video FourCC 'x\\xffz!' (Enhanced RTMP)".into()
            ))
        );
        assert!(matches!(
            video(&[0x96, 0x00]),
            Err(FlvError::UnsupportedCodec(_))
        ));
    }

    #[test]
    fn aac_tags() {
        let tag = audio(&[0xaf, 0x00, 0x12, 0x10]).unwrap();
        assert_eq!(tag.packet, AudioPacket::SequenceHeader);
        assert_eq!(&tag.data[..], &[0x12, 0x10]);
        let tag = audio(&[0xaf, 0x01]).unwrap();
        assert_eq!(tag.packet, AudioPacket::Raw);
        assert!(tag.data.is_empty());
    }

    #[test]
    fn other_audio_codecs_are_named() {
        for (byte, name) in [
            (0x2f, "MP3"),
            (0x6f, "Nellymoser"),
            (0x7f, "G.711 A-law"),
            (0x8f, "G.711 mu-law"),
            (0xbf, "Speex"),
            (0xcf, "sound format 12"),
        ] {
            assert_eq!(
                audio(&[byte, 0]),
                Err(FlvError::UnsupportedCodec(name.into()))
            );
        }
        assert_eq!(
            audio(b"\x90Opus"),
            Err(FlvError::UnsupportedCodec("Opus (Enhanced RTMP)".into()))
        );
        assert_eq!(
            audio(b"\x90fLaC"),
            Err(FlvError::UnsupportedCodec("FLAC (Enhanced RTMP)".into()))
        );
        assert!(matches!(audio(&[0x95]), Err(FlvError::UnsupportedCodec(_))));
    }

    #[test]
    fn truncated_tags_at_every_offset_are_truncated() {
        let full_video = [0x17, 0x01, 0x00, 0x00, 0x00];
        for len in 0..full_video.len() {
            assert!(
                matches!(video(&full_video[..len]), Err(FlvError::Truncated(_))),
                "video cut at {len}"
            );
        }
        assert!(video(&full_video).is_ok());
        let enhanced = *b"\x90hvc1";
        for len in 0..enhanced.len() {
            assert!(
                matches!(video(&enhanced[..len]), Err(FlvError::Truncated(_))),
                "enhanced video cut at {len}"
            );
        }
        let full_audio = [0xaf, 0x01];
        for len in 0..full_audio.len() {
            assert!(
                matches!(audio(&full_audio[..len]), Err(FlvError::Truncated(_))),
                "audio cut at {len}"
            );
        }
        let enhanced = *b"\x90Opus";
        for len in 0..enhanced.len() {
            assert!(
                matches!(audio(&enhanced[..len]), Err(FlvError::Truncated(_))),
                "enhanced audio cut at {len}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        for first in 0..=255u8 {
            for len in 0..8 {
                let body: Vec<u8> = std::iter::once(first)
                    .chain((0..len).map(|i: u8| i.wrapping_mul(37)))
                    .collect();
                let _ = video(&body);
                let _ = audio(&body);
                let _ = is_keyframe(&body);
                let _ = is_sequence_header(TAG_VIDEO, &body);
                let _ = is_sequence_header(TAG_AUDIO, &body);
            }
        }
    }

    #[test]
    fn keyframe_check_reads_the_frame_type() {
        assert!(is_keyframe(&[0x17, 0x01]));
        assert!(is_keyframe(&[0x90, b'h']));
        assert!(!is_keyframe(&[0x27, 0x01]));
        assert!(!is_keyframe(&[0xa1]));
        assert!(!is_keyframe(&[]));
    }

    #[test]
    fn sequence_header_check() {
        assert!(is_sequence_header(TAG_VIDEO, &[0x17, 0x00, 0, 0, 0]));
        assert!(!is_sequence_header(TAG_VIDEO, &[0x17, 0x01, 0, 0, 0]));
        assert!(!is_sequence_header(TAG_VIDEO, &[0x57, 0x00]));
        assert!(!is_sequence_header(TAG_VIDEO, &[0x12, 0x00]));
        assert!(!is_sequence_header(TAG_VIDEO, b"\x90hvc1"));
        assert!(is_sequence_header(TAG_AUDIO, &[0xaf, 0x00, 0x12, 0x10]));
        assert!(!is_sequence_header(TAG_AUDIO, &[0xaf, 0x01]));
        assert!(!is_sequence_header(TAG_AUDIO, &[0x2f, 0x00]));
        assert!(!is_sequence_header(TAG_SCRIPT, &[0xaf, 0x00]));
        assert!(!is_sequence_header(TAG_VIDEO, &[0x17]));
    }
}
