//! Codec configuration carried in FLV sequence headers.

pub mod aac;
pub mod avc;
mod bits;
