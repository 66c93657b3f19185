//! RTP payload formats (RFC 3550): how a codec's frames become the payloads of RTP packets and
//! back. WebRTC viewers are fed packets built here, written as they are to the viewer's track;
//! the session (ICE, DTLS, SRTP, RTCP) stays with the WebRTC stack around it.
//!
//! - [`h264`]: H.264 (RFC 6184, packetization mode 1), a file per direction:
//!   [`h264::H264Packetizer`] turns FLV video frames into RTP packets,
//!   [`h264::H264Depacketizer`] turns RTP packets into Annex-B access units.
//! - [`reorder`]: a received stream back in sequence order, waiting a bounded time for a
//!   retransmission to fill a gap.
//! - [`decode_order`]: RTP timestamps for H.264 with B-frames sent to a decoder that returns
//!   one picture per access unit (WebRTC in Chromium).
//! - [`to_flv`]: a WHIP publisher's H.264 access units and Opus packets into FLV tags for the
//!   hub.

pub mod decode_order;
pub mod h264;
pub mod reorder;
pub mod to_flv;
