//! A WHEP client (the viewer's side of `POST /whep/{stream}`), in library form so the
//! end-to-end tests and the benchmarks watch streams exactly as `examples/whep_client.rs`
//! does: a real WebRTC peer (webrtc 0.21), H.264 access units reassembled from RTP.
//!
//! - [`client`]: the viewer: offer, answer, access units and their numbers.
//! - [`http`]: the HTTP requests it needs.
//!
//! Limits: `http://` only; candidates go in the offer (no trickle PATCH); the server's `Link`
//! ICE servers are reported, not used (they arrive with the answer, after our gathering).

pub mod client;
pub mod http;

pub use client::{Stats, Viewer, ViewerOptions};

#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("bad WHEP URL {0}")]
    Url(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the server answered {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error("the server's answer is not usable: {0}")]
    BadAnswer(String),
    #[error("WebRTC: {0}")]
    WebRtc(String),
    #[error("no video for {0:?}")]
    Stalled(std::time::Duration),
}
