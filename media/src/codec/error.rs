//! [`CodecError`]: why codec configuration could not be read. The H.264 ([`super::avc`]) and AAC
//! ([`super::aac`]) parsers return it, and so does the bit reader under both.

/// Why codec configuration could not be read; shared by the H.264 and AAC parsers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The structure ended before a field it declares.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field holds a value the specification forbids.
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
}
