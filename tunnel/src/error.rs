//! [`TunnelError`]: why the application's side of a stream could not be opened, or ended early.
//! The endpoint ([`crate::endpoint`]) returns it from opens and accepts, the bridge
//! ([`crate::bridge`]) from waiting and copying.

use crate::frame::ResetCode;

/// Why a stream could not be opened or ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel stream reset ({code}): {reason}")]
    Reset { code: ResetCode, reason: String },
    #[error("cannot open a tunnel stream: {0}")]
    Open(String),
    #[error("the tunnel endpoint has stopped")]
    Stopped,
}
