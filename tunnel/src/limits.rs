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
    /// A stream's first credit window, in bytes: what each stream buffers in each direction
    /// (the credit it grants the peer, and its send buffer) until the path says otherwise.
    /// `[tunnel] window_kib` × 1024 of this end's config (512 KiB by default on both), never
    /// below [`INITIAL_WINDOW`] (64 KiB, what an opener may send before the first ack).
    pub window: u32,
    /// What a stream's window and send buffer may grow to on a long fat path (see
    /// [`crate::stream`]): `[tunnel] max_window_kib` × 1024 (4 MiB by default on both), never
    /// below `window`. The most one stream holds in each direction, whatever the peer does.
    pub max_window: u32,
    /// Streams open at once on the link, both directions together: `[tunnel] max_streams` of
    /// this end's config (agent 64, manager 256 by default), at least 1.
    pub max_streams: usize,
    /// Bytes this end has sent on the link and not yet had acknowledged, all streams together:
    /// what the broker must hold in this end's direction. At least 64 KiB.
    /// - agent → manager: 2 MiB, a constant. These packets go through the manager's
    ///   fleet-wide filter, whose log (embedded broker: `[broker] segment_size ×
    ///   segment_count` of manager.toml, 4 × 4 MiB by default) holds this much and more; an
    ///   agent cannot read the manager's settings.
    /// - manager → agent: what [`Broker`] holds for one agent without dropping on the agent's
    ///   own filter (192 KiB by default with the embedded broker, 4 MiB with an external one),
    ///   until the agent listens on its tunnel filter (`wide_in_flight`).
    pub max_in_flight: u64,
    /// Bytes in flight once the peer listens on its own tunnel filter (docs/protocol.md §16,
    /// "the tunnel filter"); the agent's end never switches and has `max_in_flight` here.
    /// - manager → agent: what [`Broker`] holds in an agent's tunnel log (embedded broker,
    ///   1.5 MiB by default) or 4 MiB with an external one.
    pub wide_in_flight: u64,
    /// Where the link's in-flight cap starts before the path is measured: 256 KiB, a constant
    /// (never above `max_in_flight`). The cap then follows the path ([`crate::path`]).
    pub min_in_flight: u64,
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

/// Where every link's in-flight cap starts (see [`Limits::min_in_flight`]).
const START_IN_FLIGHT: u64 = 256 * 1024;
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
    /// `tunnel_segment_size` and `tunnel_segment_count` size the log of each agent's tunnel
    /// filter, which an agent subscribes to on its first tunnel packet.
    Embedded {
        agent_segment_size: usize,
        agent_segment_count: usize,
        tunnel_segment_size: usize,
        tunnel_segment_count: usize,
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
                ..
            } => safe_in_log(agent_segment_size, agent_segment_count),
            Broker::External => DOWN_IN_FLIGHT_EXTERNAL,
        }
    }

    /// The same for an agent's tunnel log: 1.5 MiB with 3 × 1 MiB.
    fn wide_in_flight(self) -> u64 {
        match self {
            Broker::Embedded {
                tunnel_segment_size,
                tunnel_segment_count,
                ..
            } => safe_in_log(tunnel_segment_size, tunnel_segment_count),
            Broker::External => DOWN_IN_FLIGHT_EXTERNAL,
        }
    }
}

/// What a reader may fall behind in a rumqttd commit log of `count` segments of `size` bytes
/// without losing a message: the segments that always remain after the oldest is dropped,
/// less a quarter for the seal, frame and MQTT overhead of each packet and for a segment that
/// rotates before it is full.
fn safe_in_log(size: usize, count: usize) -> u64 {
    let kept = count.max(2) - 1;
    (size.saturating_mul(kept) / 4 * 3) as u64
}

/// The `[tunnel]` keys of agent.toml and manager.toml that size a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub window_kib: u32,
    pub max_window_kib: u32,
    pub max_streams: usize,
    pub resume_secs: u64,
}

impl Limits {
    /// The agent's end, from agent.toml's `[tunnel]`.
    pub fn agent(sizes: Sizes) -> Self {
        Self::new(sizes, UP_IN_FLIGHT, UP_IN_FLIGHT)
    }

    /// The manager's end, from manager.toml's `[tunnel]` and the broker that carries its
    /// packets to agents.
    pub fn manager(sizes: Sizes, broker: Broker) -> Self {
        Self::new(sizes, broker.down_in_flight(), broker.wide_in_flight())
    }

    fn new(sizes: Sizes, max_in_flight: u64, wide_in_flight: u64) -> Self {
        let window = sizes.window_kib.saturating_mul(1024).max(INITIAL_WINDOW);
        let max_in_flight = max_in_flight.max(64 * 1024);
        Self {
            window,
            max_window: sizes.max_window_kib.saturating_mul(1024).max(window),
            max_streams: sizes.max_streams.max(1),
            max_in_flight,
            wide_in_flight: wide_in_flight.max(max_in_flight),
            min_in_flight: START_IN_FLIGHT.min(max_in_flight),
            packet_size: 32 * 1024,
            chunk: MAX_DATA,
            down_chunks: 8,
            packets_in: 1024,
            packets_out: 64,
            retransmit_after: RETRANSMIT_AFTER,
            resume: Duration::from_secs(sizes.resume_secs),
        }
    }

    /// The sans-IO core's share: the multiplexer's and each stream's configuration.
    pub fn mux(&self) -> MuxConfig {
        MuxConfig {
            stream: StreamConfig {
                recv_window: self.window,
                max_recv_window: self.max_window,
                send_buffer: self.window as usize,
                max_send_buffer: self.max_window as usize,
                retransmit_after: self.retransmit_after,
            },
            max_streams: self.max_streams,
            packet_size: self.packet_size,
            max_in_flight: self.max_in_flight,
            min_in_flight: self.min_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Sizes = Sizes {
        window_kib: 512,
        max_window_kib: 4096,
        max_streams: 64,
        resume_secs: 30,
    };

    const EMBEDDED: Broker = Broker::Embedded {
        agent_segment_size: 256 * 1024,
        agent_segment_count: 2,
        tunnel_segment_size: 1 << 20,
        tunnel_segment_count: 3,
    };

    #[test]
    fn defaults_size_both_ends_as_the_docs_say() {
        let agent = Limits::agent(DEFAULTS);
        assert_eq!(agent.window, 512 * 1024);
        assert_eq!(agent.max_window, 4 << 20);
        assert_eq!(agent.max_streams, 64);
        assert_eq!(agent.max_in_flight, 2 << 20);
        assert_eq!(agent.wide_in_flight, 2 << 20);
        assert_eq!(agent.min_in_flight, 256 * 1024);
        assert_eq!(agent.resume, Duration::from_secs(30));
        let manager = Limits::manager(
            Sizes {
                max_streams: 256,
                ..DEFAULTS
            },
            EMBEDDED,
        );
        assert_eq!(manager.max_in_flight, 192 * 1024);
        assert_eq!(manager.wide_in_flight, 1536 * 1024);
        assert_eq!(manager.min_in_flight, 192 * 1024);
        assert_eq!(manager.max_streams, 256);
        let external = Limits::manager(DEFAULTS, Broker::External);
        assert_eq!(external.max_in_flight, 4 << 20);
        assert_eq!(external.wide_in_flight, 4 << 20);
    }

    #[test]
    fn limits_never_fall_below_what_the_protocol_needs() {
        let tiny = Limits::manager(
            Sizes {
                window_kib: 0,
                max_window_kib: 0,
                max_streams: 0,
                resume_secs: 0,
            },
            Broker::Embedded {
                agent_segment_size: 1024,
                agent_segment_count: 0,
                tunnel_segment_size: 1024,
                tunnel_segment_count: 0,
            },
        );
        assert_eq!(tiny.window, INITIAL_WINDOW);
        assert_eq!(tiny.max_window, INITIAL_WINDOW);
        assert_eq!(tiny.max_streams, 1);
        assert_eq!(tiny.max_in_flight, 64 * 1024);
        assert_eq!(tiny.wide_in_flight, 64 * 1024);
    }
}
