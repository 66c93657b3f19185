//! Fragmented MP4 (CMAF-style) from the hub's FLV-framed media, sans-IO: one segmenter serves
//! live HLS and the recorder.
//!
//! - [`init`]: the initialization segment (`ftyp` + `moov`) for an H.264 and/or AAC stream;
//! - [`fragment`]: one media segment (`moof` + `mdat`) from samples;
//! - [`segmenter`]: hub frames in, init segments and GOP-aligned media segments out, with
//!   decode times that stay continuous across publisher restarts and composition offsets for
//!   B-frames.
//!
//! Boxes are built with `mp4-atom` (structures and encoding); this module decides what goes in
//! them: timescales, sample flags, durations, offsets.

pub mod fragment;
pub mod init;
pub mod segmenter;

/// Video timescale: 90 kHz, so FLV milliseconds convert exactly (× 90).
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Track ids: video 1, audio 2 (a track that is absent is simply not in the init segment).
pub const VIDEO_TRACK: u32 = 1;
pub const AUDIO_TRACK: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    #[error("MP4 encoding: {0}")]
    Encode(String),
}

impl From<mp4_atom::Error> for Fmp4Error {
    fn from(e: mp4_atom::Error) -> Self {
        Fmp4Error::Encode(e.to_string())
    }
}
