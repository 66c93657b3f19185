//! Keyframe requests (PLI, FIR) from viewers, handed to the application.
//!
//! Inbound RTCP is consumed by webrtc's interceptors unless one marks it for delivery.
//! [`DeliverRtcp`] sits last in the chain (application-most), keeps only the packets it picks
//! and marks them, so they arrive as `TrackLocalEvent::OnRtcpPacket` on the track. The agent
//! picks PLI and FIR ([`keyframe_requests`]); its tests pick NACKs.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Where the interceptor sits: after every default interceptor has seen the RTCP.
pub const SLOT: usize = 14_000;

/// Hands the RTCP packets `pick` chooses to the application and drops the rest (the
/// interceptors before it have seen them).
pub struct DeliverRtcp {
    pick: fn(&dyn rtc::rtcp::Packet) -> bool,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl DeliverRtcp {
    pub fn new(pick: fn(&dyn rtc::rtcp::Packet) -> bool) -> Self {
        Self {
            pick,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

/// The viewers' keyframe requests, for a sending peer connection.
pub fn keyframe_requests() -> DeliverRtcp {
    DeliverRtcp::new(is_keyframe_request)
}

pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<_> = packets
                .iter()
                .filter(|p| (self.pick)(p.as_ref()))
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

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
