//! Keyframe requests (PLI, FIR) from viewers, handed to the application.
//!
//! Inbound RTCP is consumed by webrtc's interceptors unless one marks it for delivery. This
//! one sits last in the chain (application-most), keeps only PLI and FIR, and marks them, so
//! they arrive as `TrackLocalEvent::OnRtcpPacket` on the viewer's track.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Where the interceptor sits: after every default interceptor has seen the RTCP.
pub const SLOT: usize = 14_000;

#[derive(Default)]
pub struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<_> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                // Reports and feedback were for the interceptors before us.
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// TEMPORARY debug probe.
#[derive(Default)]
pub struct TmpProbe {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    nacks_out: u64,
    rtcp_out: u64,
    rtp_in: u64,
    last: std::collections::HashMap<u32, u16>,
    gaps: u64,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for TmpProbe {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            self.rtp_in += 1;
            if p.header.payload_type != 111 {
                if let Some(&l) = self.last.get(&p.header.ssrc) {
                    let d = p.header.sequence_number.wrapping_sub(l);
                    if d != 1 {
                        self.gaps += 1;
                        tracing::warn!("TMPDEBUG probe gap ssrc={} last={} seq={} gaps={} nacks_out={} at={:?}", p.header.ssrc, l, p.header.sequence_number, self.gaps, self.nacks_out, msg.now);
                    }
                }
                if p.header.sequence_number.wrapping_sub(*self.last.get(&p.header.ssrc).unwrap_or(&0)) < 0x8000 { self.last.insert(p.header.ssrc, p.header.sequence_number); }
            }
            if self.rtp_in % 500 == 1 {
                tracing::warn!("TMPDEBUG probe rtp_in={} ssrc={} pt={} seq={} nacks_out={} rtcp_out={}", self.rtp_in, p.header.ssrc, p.header.payload_type, p.header.sequence_number, self.nacks_out, self.rtcp_out);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(ps) = &msg.message.packet {
            self.rtcp_out += 1;
            for p in ps {
                if p.as_any().is::<rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>() {
                    self.nacks_out += 1;
                    if self.nacks_out < 5 { tracing::warn!("TMPDEBUG probe NACK out {:?}", p); }
                }
            }
        }
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> { Ok(()) }
    fn poll_timeout(&mut self) -> Option<Instant> { None }
}

impl Interceptor for TmpProbe {
    fn bind_local_stream(&mut self, info: &StreamInfo) { tracing::warn!("TMPDEBUG bind_local {info:?}"); }
    fn unbind_local_stream(&mut self, info: &StreamInfo) { tracing::warn!("TMPDEBUG unbind_local {}", info.ssrc); }
    fn bind_remote_stream(&mut self, info: &StreamInfo) { tracing::warn!("TMPDEBUG bind_remote {info:?}"); }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) { tracing::warn!("TMPDEBUG unbind_remote {}", info.ssrc); }
}
