//! Verge's media cores, sans-IO: bytes in, bytes and events out; the agent's tokio tasks own
//! the sockets.
//!
//! - [`amf0`]: AMF0 values, the encoding of RTMP commands and metadata.
//! - [`rtmp`]: the RTMP server side: [`rtmp::handshake`] (plain and digest),
//!   [`rtmp::chunk`] (chunk stream decoder/encoder), [`rtmp::message`] (protocol control and
//!   user control messages), [`rtmp::session`] (the state machine a publisher or player talks to),
//!   [`rtmp::query`] (what follows `?` in an app or stream name: tokens, kept out of names),
//!   [`rtmp::handover`] (a connection passed on to another RTMP server: the manager's router).
//! - [`flv`]: FLV tags (reading video and audio bodies, making them from elementary streams),
//!   the tag types, and the FLV byte stream for HTTP-FLV.
//! - [`codec`]: H.264 (AVC decoder configuration, SPS) and AAC (AudioSpecificConfig) parsing.
//! - [`hub`]: per stream one publisher and many readers, a GOP cache and bounded queues.
//! - [`fmp4`]: fragmented MP4 from hub frames: init and media segments, and the segmenter live
//!   HLS and the recorder share.
//! - [`rtp`]: RTP payload formats: H.264 frames from the hub into RTP packets for WebRTC
//!   viewers and back ([`rtp::h264`], a file per direction), a reorder buffer, timestamps in
//!   decode order, and a WHIP publisher's media into FLV tags.
//!
//! A publish's path: the agent feeds a connection's bytes to an [`rtmp::session::Session`],
//! whose audio and video (FLV tag bodies) it pushes into the [`hub`]; readers take them from
//! there as they are (RTMP, HTTP-FLV through [`flv::mux`]), as fMP4 segments ([`fmp4`]) or as
//! RTP packets ([`rtp::h264::H264Packetizer`]).
//!
//! Every parser says "incomplete" (wait for more bytes) apart from "invalid" (close the
//! connection), and none allocates more than its configured limits on a peer's say-so.

pub mod amf0;
pub mod codec;
pub mod flv;
pub mod fmp4;
pub mod hub;
pub mod rtmp;
pub mod rtp;

/// Noise for the parsers' garbage tests: a tiny xorshift generator, not a dependency.
#[cfg(test)]
pub(crate) struct XorShift(pub(crate) u64);

#[cfg(test)]
impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
