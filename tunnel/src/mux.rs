//! Many tunnel streams over one link (one agent and one manager), as a state machine: packets
//! of frames in, packets of frames out, streams opened, accepted and refused by id.
//!
//! The side that opens a stream picks its id: the manager odd ids, the agent even ones, so the
//! two never collide. Streams take turns filling packets (round robin), so a bulk transfer does
//! not hold back a small request on another stream. An open beyond `max_streams` is refused
//! with a reset; data for a stream that does not exist gets a reset back, so the peer learns.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::{Frame, FrameError, ResetCode};
use crate::path::Path;
use crate::stream::{Stream, StreamConfig, StreamEvent};

/// Keepalive tokens with this bit are the link's own round-trip probes, answered by any peer
/// and never reported as [`MuxEvent::Pong`].
const PROBE: u64 = 1 << 63;
/// While streams are open, the link probes its round trip this often (a receiving end sends
/// no data to time, and its window is sized against the round trip).
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe unanswered this long is forgotten (lost with a connection).
const PROBE_LOST: Duration = Duration::from_secs(5);

/// Which end of the link this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Manager,
    Agent,
}

#[derive(Debug, Clone)]
pub struct MuxConfig {
    pub stream: StreamConfig,
    /// Streams open at once, both directions together.
    pub max_streams: usize,
    /// Largest packet of frames [`Mux::poll_packet`] makes (before sealing).
    pub packet_size: usize,
    /// Bytes of data sent and not yet acknowledged, all streams together, at most. Bounds what
    /// the broker must hold for this link (rumqttd drops what overflows a filter's log).
    pub max_in_flight: u64,
    /// Where the link's in-flight cap starts; it follows the path up to `max_in_flight`
    /// ([`Path`]).
    pub min_in_flight: u64,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            stream: StreamConfig::default(),
            max_streams: 256,
            packet_size: 64 * 1024,
            max_in_flight: 4 << 20,
            min_in_flight: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// The peer opened `stream` to `target`: [`Mux::accept`] it (the peer learns it then)
    /// and use it through [`Mux::stream`], or [`Mux::refuse`] it.
    Opened { stream: u32, target: String },
    /// Something happened on `stream`.
    Stream { stream: u32, event: StreamEvent },
    /// `stream` is done and forgotten.
    Closed { stream: u32 },
    /// The peer answered a keepalive.
    Pong { token: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("{0} tunnel streams are open already")]
    TooManyStreams(usize),
    #[error("tunnel target {0:?} is empty or longer than 255 bytes")]
    BadTarget(String),
}

#[derive(Debug)]
pub struct Mux {
    side: Side,
    cfg: MuxConfig,
    streams: BTreeMap<u32, Stream>,
    next_id: u32,
    /// The stream served first by the next packet.
    turn: u32,
    control: VecDeque<Frame>,
    events: VecDeque<MuxEvent>,
    path: Path,
    /// The round-trip probe in flight: its token and when it left.
    probe: Option<(u64, Instant)>,
    probes_sent: u64,
    next_probe: Option<Instant>,
}

impl Mux {
    pub fn new(side: Side, cfg: MuxConfig) -> Self {
        Self {
            side,
            streams: BTreeMap::new(),
            next_id: match side {
                Side::Manager => 1,
                Side::Agent => 2,
            },
            turn: 0,
            control: VecDeque::new(),
            events: VecDeque::new(),
            path: Path::new(cfg.min_in_flight, cfg.max_in_flight),
            probe: None,
            probes_sent: 0,
            next_probe: None,
            cfg,
        }
    }

    /// The link's path as this end measures it: round trip, delivery rate, in-flight cap.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The broker now holds `max_in_flight` for this link.
    pub fn set_max_in_flight(&mut self, max_in_flight: u64) {
        self.path.set_cap(max_in_flight, self.cfg.min_in_flight);
    }

    /// True while a stream opened here waits for the peer's answer (its open frame may still
    /// be on its way).
    pub fn opens_pending(&self) -> bool {
        self.streams.values().any(Stream::awaits_acceptance)
    }

    /// Opens a stream to `target` (`host:port` as the peer's allowlist names it).
    pub fn open(&mut self, target: &str) -> Result<u32, MuxError> {
        if target.is_empty() || target.len() > crate::frame::MAX_TARGET {
            return Err(MuxError::BadTarget(target.to_string()));
        }
        if self.streams.len() >= self.cfg.max_streams {
            return Err(MuxError::TooManyStreams(self.streams.len()));
        }
        let id = self.next_id;
        // Odd ids wrap to 1, even ones to 0, which stays unused (keepalives).
        self.next_id = match self.next_id.wrapping_add(2) {
            0 => 2,
            next => next,
        };
        let stream = Stream::opener(id, self.cfg.stream.clone());
        self.control.push_back(Frame::Open {
            stream: id,
            target: target.to_string(),
            window: stream.recv_window(),
        });
        self.streams.insert(id, stream);
        Ok(id)
    }

    /// The stream `id`, while it is open.
    pub fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.get_mut(&id)
    }

    /// Accepts stream `id`, which the peer opened; `false` if it is gone (the peer gave up).
    pub fn accept(&mut self, id: u32) -> bool {
        match self.streams.get_mut(&id) {
            Some(stream) => {
                stream.accept();
                true
            }
            None => false,
        }
    }

    /// Refuses (or aborts) stream `id` with a reason the peer sees.
    pub fn refuse(&mut self, id: u32, code: ResetCode, reason: &str) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.reset(code, reason);
        }
    }

    /// Bytes all streams hold (see [`Stream::buffered`]).
    pub fn buffered(&self) -> usize {
        self.streams.values().map(Stream::buffered).sum()
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// Asks the peer for a keepalive answer carrying `token`.
    pub fn ping(&mut self, token: u64) {
        self.control.push_back(Frame::Keepalive {
            token,
            reply: false,
        });
    }

    fn opened_by_peer(&self, id: u32) -> bool {
        let peer_parity = match self.side {
            Side::Manager => 0,
            Side::Agent => 1,
        };
        id % 2 == peer_parity
    }

    /// Takes the frames of one opened packet. A malformed packet is refused whole, before any
    /// of its frames is applied.
    pub fn handle_packet(&mut self, frames: &[u8], now: Instant) -> Result<(), FrameError> {
        for frame in Frame::decode_all(frames)? {
            self.handle_frame(frame, now);
        }
        self.measure(now);
        self.collect_events();
        Ok(())
    }

    /// Feeds the path what the acks just taught: round trips and bytes delivered.
    fn measure(&mut self, now: Instant) {
        let mut delivered = 0;
        for stream in self.streams.values_mut() {
            delivered += stream.take_acked();
            if let Some(rtt) = stream.take_rtt_sample() {
                self.path.on_rtt(rtt, now);
            }
        }
        self.path.on_delivered(delivered, now);
    }

    /// Queues a round-trip probe when one is due.
    fn probe(&mut self, now: Instant) {
        if self
            .probe
            .is_some_and(|(_, sent)| now.saturating_duration_since(sent) > PROBE_LOST)
        {
            self.probe = None;
        }
        if self.streams.is_empty()
            || self.probe.is_some()
            || self.next_probe.is_some_and(|t| now < t)
        {
            return;
        }
        self.probes_sent += 1;
        let token = PROBE | self.probes_sent;
        self.control.push_back(Frame::Keepalive {
            token,
            reply: false,
        });
        self.probe = Some((token, now));
        self.next_probe = Some(now + PROBE_EVERY);
    }

    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        let id = frame.stream();
        match frame {
            Frame::Keepalive { token, reply: true } => {
                if token & PROBE == 0 {
                    self.events.push_back(MuxEvent::Pong { token });
                } else if let Some((sent_token, sent)) = self.probe
                    && sent_token == token
                {
                    self.probe = None;
                    self.path.on_rtt(now.saturating_duration_since(sent), now);
                }
            }
            Frame::Keepalive {
                token,
                reply: false,
            } => self
                .control
                .push_back(Frame::Keepalive { token, reply: true }),
            Frame::Open { target, window, .. } => {
                if self.streams.contains_key(&id) {
                    // A resent open of a stream already known: nothing new.
                    return;
                }
                if !self.opened_by_peer(id) {
                    self.control.push_back(reset(
                        id,
                        ResetCode::Protocol,
                        "open with this end's stream id",
                    ));
                    return;
                }
                if self.streams.len() >= self.cfg.max_streams {
                    let why = format!("{} streams are open already", self.streams.len());
                    self.control
                        .push_back(reset(id, ResetCode::TooManyStreams, &why));
                    return;
                }
                self.streams
                    .insert(id, Stream::acceptor(id, self.cfg.stream.clone(), window));
                self.events
                    .push_back(MuxEvent::Opened { stream: id, target });
            }
            other => match self.streams.get_mut(&id) {
                Some(stream) => stream.handle(other, now),
                None => {
                    // Data for a stream this end no longer (or never) had: tell the peer. Acks
                    // and resets of unknown streams are late echoes; answering them could loop.
                    if matches!(other, Frame::Data { .. } | Frame::Fin { .. }) {
                        self.control
                            .push_back(reset(id, ResetCode::Protocol, "unknown stream"));
                    }
                }
            },
        }
    }

    fn collect_events(&mut self) {
        for (id, stream) in &mut self.streams {
            while let Some(event) = stream.poll_event() {
                self.events
                    .push_back(MuxEvent::Stream { stream: *id, event });
            }
        }
    }

    /// The next packet of encoded frames to seal and send, at most `packet_size` bytes.
    pub fn poll_packet(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.probe(now);
        let limit = self.cfg.packet_size;
        let mut packet = Vec::new();
        while let Some(frame) = self.control.front() {
            if !packet.is_empty() && packet.len() + frame.encoded_len() > limit {
                break;
            }
            if let Some(frame) = self.control.pop_front() {
                frame.encode(&mut packet);
            }
        }
        // Round robin: each stream in turn adds a frame until the packet is full or nobody
        // has anything; the next packet starts after the last stream served.
        let ids: Vec<u32> = self
            .streams
            .range(self.turn..)
            .chain(self.streams.range(..self.turn))
            .map(|(id, _)| *id)
            .collect();
        let rtt = self.path.rtt();
        let mut in_flight = 0;
        for stream in self.streams.values_mut() {
            stream.set_rtt(rtt);
            in_flight += stream.in_flight();
        }
        let mut allowance = self.path.in_flight_cap().saturating_sub(in_flight) as usize;
        let mut active = ids;
        while !active.is_empty() && packet.len() < limit {
            active.retain(|id| {
                let budget = limit.saturating_sub(packet.len());
                let frame = self
                    .streams
                    .get_mut(id)
                    .and_then(|s| s.poll_transmit_within(now, budget, allowance));
                match frame {
                    Some(frame) if frame.encoded_len() <= budget || packet.is_empty() => {
                        if let Frame::Data { bytes, .. } = &frame {
                            allowance = allowance.saturating_sub(bytes.len());
                        }
                        frame.encode(&mut packet);
                        self.turn = id.wrapping_add(1);
                        true
                    }
                    Some(frame) => {
                        // Cannot happen (streams respect the budget); keep the frame anyway.
                        self.control.push_front(frame);
                        false
                    }
                    None => false,
                }
            });
        }
        self.forget_closed();
        (!packet.is_empty()).then_some(packet)
    }

    fn forget_closed(&mut self) {
        let closed: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.streams.remove(&id);
            self.events.push_back(MuxEvent::Closed { stream: id });
        }
    }

    /// The earliest deadline of any stream.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.streams.values().filter_map(Stream::poll_timeout).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for stream in self.streams.values_mut() {
            stream.handle_timeout(now);
        }
    }

    /// The link is back: every stream resends what it had not seen acknowledged.
    pub fn resume(&mut self, now: Instant) {
        for stream in self.streams.values_mut() {
            stream.resume(now);
        }
    }

    /// Ends every stream (the link stayed down past the resume time, or the peer restarted).
    /// The events say why; nothing is sent, since the peer has lost them too.
    pub fn reset_all(&mut self, code: ResetCode, reason: &str) {
        for (id, stream) in std::mem::take(&mut self.streams) {
            if stream.reset_reason().is_none() {
                self.events.push_back(MuxEvent::Stream {
                    stream: id,
                    event: StreamEvent::Reset {
                        code,
                        reason: reason.to_string(),
                    },
                });
            }
            self.events.push_back(MuxEvent::Closed { stream: id });
        }
        self.control.clear();
    }
}

fn reset(stream: u32, code: ResetCode, reason: &str) -> Frame {
    Frame::Reset {
        stream,
        code,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Read;

    fn exchange(a: &mut Mux, b: &mut Mux, now: Instant) -> usize {
        let mut moved = 0;
        for _ in 0..10_000 {
            let mut any = false;
            while let Some(p) = a.poll_packet(now) {
                b.handle_packet(&p, now).unwrap();
                any = true;
                moved += 1;
            }
            while let Some(p) = b.poll_packet(now) {
                a.handle_packet(&p, now).unwrap();
                any = true;
                moved += 1;
            }
            if !any {
                return moved;
            }
        }
        panic!("the two ends never went quiet");
    }

    fn drain_reads(m: &mut Mux, id: u32, into: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 8192];
        let Some(s) = m.stream(id) else { return false };
        loop {
            match s.read(&mut buf) {
                Ok(Read::Bytes(n)) => into.extend_from_slice(&buf[..n]),
                Ok(Read::End) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn many_streams_each_arrive_intact_and_take_turns() {
        let now = Instant::now();
        let mut manager = Mux::new(Side::Manager, MuxConfig::default());
        let mut agent = Mux::new(Side::Agent, MuxConfig::default());
        let ids: Vec<u32> = (0..20)
            .map(|i| manager.open(&format!("127.0.0.1:{}", 7000 + i)).unwrap())
            .collect();
        assert!(ids.iter().all(|id| id % 2 == 1));
        let payloads: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                (0..50_000 + i * 1000)
                    .map(|b| (b * (i + 1)) as u8)
                    .collect()
            })
            .collect();
        for (id, data) in ids.iter().zip(&payloads) {
            let s = manager.stream(*id).unwrap();
            assert_eq!(s.write(data).unwrap(), data.len());
            s.finish().unwrap();
        }
        // The first packet carries a little of many streams, not one stream's bulk.
        let first = manager.poll_packet(now).unwrap();
        agent.handle_packet(&first, now).unwrap();
        let mut opened = Vec::new();
        while let Some(e) = agent.poll_event() {
            if let MuxEvent::Opened { stream, target } = e {
                opened.push((stream, target));
            }
        }
        assert_eq!(opened.len(), 20);
        assert_eq!(opened[3], (ids[3], "127.0.0.1:7003".to_string()));
        for (id, _) in &opened {
            assert!(agent.accept(*id));
        }

        let mut got = vec![Vec::new(); 20];
        for _ in 0..1000 {
            exchange(&mut manager, &mut agent, now);
            let mut done = 0;
            for (i, id) in ids.iter().enumerate() {
                if drain_reads(&mut agent, *id, &mut got[i]) {
                    done += 1;
                }
            }
            if done == 20 {
                break;
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn opens_past_the_limit_and_data_for_unknown_streams_are_reset() {
        let now = Instant::now();
        let cfg = MuxConfig {
            max_streams: 2,
            ..MuxConfig::default()
        };
        let mut manager = Mux::new(Side::Manager, MuxConfig::default());
        let mut agent = Mux::new(Side::Agent, cfg);
        let ids: Vec<u32> = (0..3)
            .map(|_| manager.open("127.0.0.1:1935").unwrap())
            .collect();
        exchange(&mut manager, &mut agent, now);
        let mut reset = None;
        while let Some(e) = manager.poll_event() {
            if let MuxEvent::Stream {
                stream,
                event: StreamEvent::Reset { code, .. },
            } = e
            {
                reset = Some((stream, code));
            }
        }
        assert_eq!(reset, Some((ids[2], ResetCode::TooManyStreams)));
        assert_eq!(agent.len(), 2);

        // Data of a stream the agent never had: a reset goes back.
        let mut packet = Vec::new();
        Frame::Data {
            stream: 99,
            offset: 0,
            bytes: vec![1],
        }
        .encode(&mut packet);
        agent.handle_packet(&packet, now).unwrap();
        let back = agent.poll_packet(now).unwrap();
        assert!(matches!(
            Frame::decode_all(&back).unwrap()[..],
            [Frame::Reset {
                stream: 99,
                code: ResetCode::Protocol,
                ..
            }]
        ));
        // An open with the agent's own parity is refused.
        let mut packet = Vec::new();
        Frame::Open {
            stream: 4,
            target: "x:1".into(),
            window: 65536,
        }
        .encode(&mut packet);
        agent.handle_packet(&packet, now).unwrap();
        assert_eq!(agent.len(), 2);
    }

    #[test]
    fn a_refused_open_reaches_the_opener_with_its_reason_and_both_forget_it() {
        let now = Instant::now();
        let mut manager = Mux::new(Side::Manager, MuxConfig::default());
        let mut agent = Mux::new(Side::Agent, MuxConfig::default());
        let id = manager.open("10.0.0.1:22").unwrap();
        manager.stream(id).unwrap().write(b"SSH-2.0").unwrap();
        let p = manager.poll_packet(now).unwrap();
        agent.handle_packet(&p, now).unwrap();
        assert!(matches!(agent.poll_event(), Some(MuxEvent::Opened { .. })));
        agent.refuse(
            id,
            ResetCode::Refused,
            "10.0.0.1:22 is not in [tunnel] allow",
        );
        exchange(&mut manager, &mut agent, now);
        let events: Vec<MuxEvent> = std::iter::from_fn(|| manager.poll_event()).collect();
        assert!(events.contains(&MuxEvent::Stream {
            stream: id,
            event: StreamEvent::Reset {
                code: ResetCode::Refused,
                reason: "10.0.0.1:22 is not in [tunnel] allow".into()
            }
        }));
        assert!(events.contains(&MuxEvent::Closed { stream: id }));
        assert!(manager.is_empty() && agent.is_empty());
    }

    #[test]
    fn garbage_packets_are_refused_whole_and_keepalives_are_answered() {
        let now = Instant::now();
        let mut agent = Mux::new(Side::Agent, MuxConfig::default());
        let mut packet = Vec::new();
        Frame::Open {
            stream: 1,
            target: "127.0.0.1:1935".into(),
            window: 65536,
        }
        .encode(&mut packet);
        packet.extend_from_slice(&[0x02, 0, 0]);
        assert!(agent.handle_packet(&packet, now).is_err());
        assert!(agent.is_empty(), "a refused packet applied its open");

        let mut manager = Mux::new(Side::Manager, MuxConfig::default());
        manager.ping(77);
        exchange(&mut manager, &mut agent, now);
        assert_eq!(manager.poll_event(), Some(MuxEvent::Pong { token: 77 }));
    }

    #[test]
    fn both_ends_measure_the_round_trip_with_probes_they_keep_to_themselves() {
        let t0 = Instant::now();
        let hop = Duration::from_millis(20);
        let mut manager = Mux::new(Side::Manager, MuxConfig::default());
        let mut agent = Mux::new(Side::Agent, MuxConfig::default());
        // No stream, no probe.
        assert_eq!(manager.poll_packet(t0), None);
        let id = manager.open("127.0.0.1:1935").unwrap();
        let open = manager.poll_packet(t0).unwrap();
        agent.handle_packet(&open, t0 + hop).unwrap();
        assert!(matches!(agent.poll_event(), Some(MuxEvent::Opened { .. })));
        assert!(agent.accept(id));
        let answer = agent.poll_packet(t0 + hop).unwrap();
        manager.handle_packet(&answer, t0 + hop * 2).unwrap();
        assert_eq!(manager.path().rtt(), Some(hop * 2));
        // The agent sends no data: its own probe, answered, gives it the round trip too.
        let back = manager.poll_packet(t0 + hop * 2).unwrap();
        agent.handle_packet(&back, t0 + hop * 3).unwrap();
        assert_eq!(agent.path().rtt(), Some(hop * 2));
        let events: Vec<MuxEvent> = std::iter::from_fn(|| manager.poll_event())
            .chain(std::iter::from_fn(|| agent.poll_event()))
            .collect();
        assert!(
            !events.iter().any(|e| matches!(e, MuxEvent::Pong { .. })),
            "{events:?}"
        );
        // The next probe waits a second.
        let later = t0 + hop * 3;
        assert_eq!(agent.poll_packet(later), None);
        assert!(agent.poll_packet(t0 + PROBE_EVERY + hop * 3).is_some());
    }

    #[test]
    fn the_link_never_has_more_than_max_in_flight_unacknowledged() {
        let now = Instant::now();
        let cfg = MuxConfig {
            max_in_flight: 100_000,
            ..MuxConfig::default()
        };
        let mut manager = Mux::new(Side::Manager, cfg);
        let mut agent = Mux::new(Side::Agent, MuxConfig::default());
        let ids: Vec<u32> = (0..4)
            .map(|_| manager.open("127.0.0.1:1").unwrap())
            .collect();
        let p = manager.poll_packet(now).unwrap();
        agent.handle_packet(&p, now).unwrap();
        for id in &ids {
            agent.accept(*id);
        }
        while let Some(p) = agent.poll_packet(now) {
            manager.handle_packet(&p, now).unwrap();
        }
        for id in &ids {
            manager.stream(*id).unwrap().write(&[7u8; 500_000]).unwrap();
        }
        let mut sent = 0;
        while let Some(p) = manager.poll_packet(now) {
            for f in Frame::decode_all(&p).unwrap() {
                if let Frame::Data { bytes, .. } = f {
                    sent += bytes.len();
                }
            }
        }
        assert_eq!(sent, 100_000);
    }

    #[test]
    fn reset_all_tells_every_stream_why() {
        let mut manager = Mux::new(Side::Manager, MuxConfig::default());
        let a = manager.open("127.0.0.1:1").unwrap();
        let b = manager.open("127.0.0.1:2").unwrap();
        manager.reset_all(ResetCode::LinkLost, "agent offline");
        let events: Vec<MuxEvent> = std::iter::from_fn(|| manager.poll_event()).collect();
        for id in [a, b] {
            assert!(events.contains(&MuxEvent::Stream {
                stream: id,
                event: StreamEvent::Reset {
                    code: ResetCode::LinkLost,
                    reason: "agent offline".into()
                }
            }));
        }
        assert!(manager.is_empty());
        assert_eq!(manager.poll_packet(Instant::now()), None);
    }
}
