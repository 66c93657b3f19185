//! FLV: tags as RTMP carries them, and the FLV byte stream HTTP-FLV serves.
//!
//! - [`tag`]: reading tag bodies (video, audio): frame types, codecs, sequence headers.
//! - [`make`]: making tag bodies from elementary streams (WHIP's H.264 and Opus).
//! - [`mux`]: the FLV byte stream: the file header, tags with their headers and sizes, and its
//!   sans-IO reader.
//! - [`error`]: [`FlvError`], what reading (or writing) either returns.
//!
//! The tag types below are FLV's and RTMP's alike: an RTMP message of type 8, 9 or 18 carries
//! exactly the body of an FLV tag of that type.

pub mod error;
pub mod make;
pub mod mux;
pub mod tag;

pub use error::FlvError;

/// Tag (and RTMP message) type of audio.
pub const TAG_AUDIO: u8 = 8;
/// Tag (and RTMP message) type of video.
pub const TAG_VIDEO: u8 = 9;
/// Tag (and RTMP message) type of script data (`onMetaData`).
pub const TAG_SCRIPT: u8 = 18;
