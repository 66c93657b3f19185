//! FLV: tags as RTMP carries them, and the FLV byte stream HTTP-FLV serves.

pub mod make;
pub mod mux;
pub mod tag;
