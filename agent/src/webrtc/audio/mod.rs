//! Sound for WebRTC viewers: RTMP brings AAC, browsers play Opus.
//!
//! - [`transcode`]: AAC → Opus, sans-IO (frames and FLV times in, 48 kHz-stamped packets out).
//! - [`feed`]: one transcoder per watched stream, its packets broadcast to the viewers.

pub mod feed;
pub mod transcode;

pub use feed::AudioFeed;
pub use transcode::OpusPacket;

/// Whether the transcoder takes audio the hub describes as `audio` ("AAC-LC 44100 Hz 2ch").
pub fn transcodable(audio: &str) -> bool {
    let channels = audio
        .rsplit(' ')
        .next()
        .and_then(|c| c.strip_suffix("ch"))
        .and_then(|c| c.parse::<u8>().ok());
    audio.starts_with("AAC-LC ") && matches!(channels, Some(1 | 2))
}
