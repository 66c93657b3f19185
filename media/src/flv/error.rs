//! [`FlvError`]: why an FLV tag body ([`super::tag`]) or an FLV byte stream ([`super::mux`])
//! could not be read or written.

/// Why an FLV tag or stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    /// The body ended before the header it must start with.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field holds a value FLV does not define.
    #[error("invalid FLV: {0}")]
    Invalid(String),
    /// Well-formed, but a codec Verge does not relay; the name says which.
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
}
