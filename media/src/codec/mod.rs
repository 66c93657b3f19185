//! Codec configuration carried in FLV sequence headers.
//!
//! - [`avc`]: H.264: the AVCDecoderConfigurationRecord, the SPS inside it, NAL unit lengths.
//! - [`aac`]: AAC's AudioSpecificConfig.
//! - `bits`: the bit reader (and, for tests and the decoy SPS, writer) both parse with.
//! - [`error`]: [`CodecError`], what every parser here returns.

pub mod aac;
pub mod avc;
mod bits;
pub mod error;

pub use error::CodecError;
