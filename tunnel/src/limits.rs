//! [`Limits`]: every flow-control limit of one end of a tunnel link, each with where its value
//! comes from. The agent's end is sized by [`Limits::agent`], the manager's by
//! [`Limits::manager`]; nothing else picks a size. The endpoint hands the sans-IO core its
//! share ([`Limits::mux`]) and applies the rest itself.
//!
//! What bounds what, from a socket on one end to a socket on the other:
//! - a bridge reads its socket only while its stream has send buffer (`window`) free, so a fast
//!   socket behind a slow link stops being read;
//! - a stream sends only what the peer's credit allows (the peer's `received + window`);
//! - the link sends at most `max_in_flight` unacknowledged bytes, all streams together, in
//!   packets of at most `packet_size`: this is what the broker must hold for the link;
//! - the receiving stream hands its bridge `chunk` bytes at a time through a queue of
//!   `down_chunks`; while that is full the bytes stay in the stream, whose window then closes.
//!
//! A stalled reader therefore costs one send buffer and one window (`tunnel/tests/endpoint.rs`) and
//! never holds back the other streams.

use std::time::Duration;

use crate::frame::MAX_DATA;
use crate::mux::MuxConfig;
use crate::stream::{INITIAL_WINDOW, RETRANSMIT_AFTER, StreamConfig};

/// The sizes and times of one end of a tunnel link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A stream's credit window, in bytes: what each stream buffers in each direction (the
    /// credit it grants the peer, and its send buffer). `[tunnel] window_kib` × 1024 of this
    /// end's config (512 KiB by default on both), never below [`INITIAL_WINDOW`] (64 KiB, what
    /// an opener may send before the first ack).
    pub window: u32,
    /// Streams open at once on the link, both directions together: `[tunnel] max_streams` of
    /// this end's config (agent 64, manager 256 by default), at least 1.
    pub max_streams: usize,
    /// Bytes this end has sent on the link and not yet had acknowledged, all streams together:
    /// what the broker must hold in this end's direction. At least 64 KiB.
    /// - agent → manager: 2 MiB, a constant. These packets go through the manager's
    ///   fleet-wide filter, whose log (embedded broker: `[broker] segment_size ×
    ///   segment_count` of manager.toml, 4 × 4 MiB by default) holds this much and more; an
    ///   agent cannot read the manager's settings.
    /// - manager → agent: what [`Broker`] holds for one agent without dropping (192 KiB by
    ///   default with the embedded broker, 4 MiB with an external one).
    pub max_in_flight: u64,
    /// Largest packet of frames before sealing: 32 KiB, a constant (docs/protocol.md §16).
    pub packet_size: usize,
    /// Bytes a stream hands its bridge at once: 16 KiB, a constant, one data frame's worth
    /// ([`MAX_DATA`]).
    pub chunk: usize,
    /// Chunks queued towards one bridge before the stream's bytes wait in the stream: 8, a
    /// constant (128 KiB).
    pub down_chunks: usize,
    /// Sealed packets from the peer queued towards the endpoint; more are dropped (the peer
    /// resends them): 1024, a constant.
    pub packets_in: usize,
    /// Sealed packets queued for publishing while the MQTT client's own queue is full: 64, a
    /// constant (2 MiB of 32 KiB packets).
    pub packets_out: usize,
    /// Unacknowledged bytes are sent again after this long without progress:
    /// [`RETRANSMIT_AFTER`] (10 s), a constant.
    pub retransmit_after: Duration,
    /// Streams survive an MQTT outage this long; past it both ends reset them ("link lost"):
    /// `[tunnel] resume_secs` of this end's config (30 by default on both).
    pub resume: Duration,
}

/// Bytes in flight from an agent to a manager (see [`Limits::max_in_flight`]).
const UP_IN_FLIGHT: u64 = 2 << 20;
/// Bytes in flight from a manager to an agent through an external broker, which queues per
/// client (mosquitto: `max_queued_messages` in conf/mosquitto/).
const DOWN_IN_FLIGHT_EXTERNAL: u64 = 4 << 20;

/// The broker between a manager and its agents, as the manager's end of a link sees it: how
/// much of the manager → agent direction it holds without dropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// The embedded rumqttd, with manager.toml's `[broker] agent_segment_size` and
    /// `agent_segment_count`: each agent's filter keeps a commit log of that many segments,
    /// and rumqttd drops what a slow reader has not taken when the oldest segment goes.
    Embedded {
        agent_segment_size: usize,
        agent_segment_count: usize,
    },
    /// An external broker (mosquitto), which queues per client.
    External,
}

impl Broker {
    /// Three quarters of the segments that always remain with the embedded broker
    /// (`agent_segment_size × (agent_segment_count − 1) × 3 / 4`: 192 KiB with 2 × 256 KiB);
    /// 4 MiB with an external one.
    fn down_in_flight(self) -> u64 {
        match self {
            Broker::Embedded {
                agent_segment_size,
                agent_segment_count,
            } => {
                let kept = agent_segment_count.max(2) - 1;
                (agent_segment_size * kept * 3 / 4) as u64
            }
            Broker::External => DOWN_IN_FLIGHT_EXTERNAL,
        }
    }
}

impl Limits {
    /// The agent's end, from agent.toml's `[tunnel] window_kib`, `max_streams` and
    /// `resume_secs`.
    pub fn agent(window_kib: u32, max_streams: usize, resume_secs: u64) -> Self {
        Self::new(window_kib, max_streams, resume_secs, UP_IN_FLIGHT)
    }

    /// The manager's end, from manager.toml's `[tunnel] window_kib`, `max_streams` and
    /// `resume_secs`, and the broker that carries its packets to agents.
    pub fn manager(window_kib: u32, max_streams: usize, resume_secs: u64, broker: Broker) -> Self {
        Self::new(
            window_kib,
            max_streams,
            resume_secs,
            broker.down_in_flight(),
        )
    }

    fn new(window_kib: u32, max_streams: usize, resume_secs: u64, max_in_flight: u64) -> Self {
        Self {
            window: window_kib.saturating_mul(1024).max(INITIAL_WINDOW),
            max_streams: max_streams.max(1),
            max_in_flight: max_in_flight.max(64 * 1024),
            packet_size: 32 * 1024,
            chunk: MAX_DATA,
            down_chunks: 8,
            packets_in: 1024,
            packets_out: 64,
            retransmit_after: RETRANSMIT_AFTER,
            resume: Duration::from_secs(resume_secs),
        }
    }

    /// The sans-IO core's share: the multiplexer's and each stream's configuration.
    pub fn mux(&self) -> MuxConfig {
        MuxConfig {
            stream: StreamConfig {
                recv_window: self.window,
                send_buffer: self.window as usize,
                retransmit_after: self.retransmit_after,
            },
            max_streams: self.max_streams,
            packet_size: self.packet_size,
            max_in_flight: self.max_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_size_both_ends_as_the_docs_say() {
        let agent = Limits::agent(512, 64, 30);
        assert_eq!(agent.window, 512 * 1024);
        assert_eq!(agent.max_streams, 64);
        assert_eq!(agent.max_in_flight, 2 << 20);
        assert_eq!(agent.resume, Duration::from_secs(30));
        let embedded = Broker::Embedded {
            agent_segment_size: 256 * 1024,
            agent_segment_count: 2,
        };
        let manager = Limits::manager(512, 256, 30, embedded);
        assert_eq!(manager.max_in_flight, 192 * 1024);
        assert_eq!(manager.max_streams, 256);
        assert_eq!(
            Limits::manager(512, 256, 30, Broker::External).max_in_flight,
            4 << 20
        );
    }

    #[test]
    fn limits_never_fall_below_what_the_protocol_needs() {
        let tiny = Limits::manager(
            0,
            0,
            0,
            Broker::Embedded {
                agent_segment_size: 1024,
                agent_segment_count: 0,
            },
        );
        assert_eq!(tiny.window, INITIAL_WINDOW);
        assert_eq!(tiny.max_streams, 1);
        assert_eq!(tiny.max_in_flight, 64 * 1024);
    }
}
