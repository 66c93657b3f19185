//! Fuzzes FLV: tag bodies as an RTMP publisher sends them (audio, video and script data
//! messages carry exactly an FLV tag body) and FLV byte streams as `FlvReader` ingests them.
//!
//! Run from `media/`: `cargo +nightly fuzz run flv_tag` (needs `cargo install cargo-fuzz`).
//!
//! The input's first byte is a control byte: its low bit puts a valid FLV file header before
//! the rest (else the rest must bring its own), the other bits pick where the stream is split
//! in two pushes. The rest is read twice: as one tag body, through every parser a body of
//! unknown type can reach (video, audio, AVC configuration and NAL units, AAC configuration,
//! Opus, AMF0 script data), and as an FLV stream whose tags' bodies go through the same.
//! Besides not panicking:
//! - parsed payloads are the body minus its header, and split NAL units fit in the frame;
//! - an AVC configuration record re-written by `make::avc_config_record` parses back the
//!   same (with 4-byte NAL lengths, the only size it writes);
//! - the reader's tags fit in the limit and in the input, and the tags re-written with
//!   `write_tag` read back identical.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use verge_media::amf0;
use verge_media::codec::{aac, avc};
use verge_media::flv::mux::{self, FlvReader, FlvTag};
use verge_media::flv::tag::{self, AudioPacket, FrameType, VideoPacket};
use verge_media::flv::{self, make};

/// Small, so that the limit is reached as well as the data's end.
const MAX_TAG: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let [control, rest @ ..] = data else {
        return;
    };
    let body = Bytes::copy_from_slice(rest);
    tag_body(&body);

    let mut stream = Vec::with_capacity(13 + rest.len());
    if control & 1 == 1 {
        stream.extend_from_slice(&mux::file_header(true, true));
    }
    stream.extend_from_slice(rest);
    let split = usize::from(control >> 1) * stream.len() / 127;
    let tags = read_stream(&stream, split.min(stream.len()));
    let total: usize = tags.iter().map(|t| t.body.len()).sum();
    assert!(total <= rest.len());
    for t in &tags {
        assert!(t.body.len() <= MAX_TAG);
        tag_body(&t.body);
    }

    // What was read, written again, reads back the same.
    let mut again = BytesMut::from(&mux::file_header(true, true)[..]);
    for t in &tags {
        mux::write_tag(&mut again, t.tag_type, t.timestamp_ms, &t.body)
            .expect("a tag read fits in a tag");
    }
    assert_eq!(read_stream(&again, again.len()), tags);
});

/// The tags of an FLV stream pushed in two parts, up to its end or first error.
fn read_stream(stream: &[u8], split: usize) -> Vec<FlvTag> {
    let (first, second) = stream.split_at(split);
    let mut reader = FlvReader::with_max_tag(MAX_TAG);
    let mut tags = Vec::new();
    for part in [first, second] {
        reader.push(part);
        loop {
            match reader.next_tag() {
                Ok(Some(t)) => tags.push(t),
                Ok(None) => break,
                Err(_) => return tags,
            }
        }
    }
    tags
}

/// Every parser a tag body can reach.
fn tag_body(body: &Bytes) {
    let _ = tag::is_keyframe(body);
    for kind in [flv::TAG_AUDIO, flv::TAG_VIDEO, flv::TAG_SCRIPT] {
        let _ = tag::is_sequence_header(kind, body);
    }

    if let Ok(video) = tag::parse_video(body) {
        let header = if video.frame_type == FrameType::Command {
            1
        } else {
            5
        };
        assert_eq!(video.data.len() + header, body.len());
        assert!((-(1 << 23)..(1 << 23)).contains(&video.composition_time));
        match video.packet {
            VideoPacket::SequenceHeader => avc_config(&video.data),
            VideoPacket::Nalu => {
                for size in [1, 2, 4] {
                    if let Ok(nalus) = avc::split_nalus(&video.data, size) {
                        let total: usize = nalus.iter().map(|n| n.len()).sum();
                        assert!(total <= video.data.len());
                        assert!(nalus.iter().all(|n| !n.is_empty()));
                    }
                    let _ = avc::is_b_frame(&video.data, size);
                }
            }
            VideoPacket::EndOfSequence | VideoPacket::Command => {}
        }
    }

    if let Ok(audio) = tag::parse_audio(body) {
        assert_eq!(audio.data.len() + 2, body.len());
        if audio.packet == AudioPacket::SequenceHeader {
            let _ = aac::parse_aac_config(&audio.data);
        }
    }
    if let Some((_, opus)) = make::parse_opus(body) {
        assert_eq!(opus.len() + 5, body.len());
    }
    let _ = amf0::decode_all(body);
}

/// An AVCDecoderConfigurationRecord: its parameter sets, and its round trip through the writer.
fn avc_config(record: &[u8]) {
    let Ok(config) = avc::parse_avc_config(record) else {
        return;
    };
    assert!(config.sps.len() <= 31 && config.sps.iter().all(|s| !s.is_empty()));
    assert!(config.pps.iter().all(|p| !p.is_empty()));
    for sps in &config.sps {
        let _ = avc::parse_sps(sps);
    }
    let written = make::avc_config_record(&config);
    let back = avc::parse_avc_config(&written).expect("a written record parses");
    let expected = avc::AvcConfig {
        nalu_length_size: 4,
        ..config
    };
    assert_eq!(back, expected);
    // The sequence header tag around it reads back as one.
    let header = make::avc_sequence_header(&back);
    let video = tag::parse_video(&header).expect("a written sequence header parses");
    assert_eq!(video.packet, VideoPacket::SequenceHeader);
    assert_eq!(&video.data[..], &written[..]);
}
