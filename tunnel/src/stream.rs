//! One tunnel stream as a state machine: a reliable, ordered, flow-controlled byte stream in
//! each direction. No I/O and no clock of its own: the caller feeds frames and the time, and
//! asks for the frames to send and for the next deadline.
//!
//! - **Offsets.** Each direction counts bytes from 0. A data frame says where its bytes go, so a
//!   duplicate (a retransmission, a resend after the link came back) is recognised and
//!   discarded, and a gap is filled when the missing bytes come.
//! - **Credit.** The receiver grants `received + window`: the sender never has more in flight
//!   than the receiver can buffer, and the receiver's buffer is `recv_window` bytes at most,
//!   whatever the peer does (data past the grant is a protocol error that resets the stream).
//!   The opener may send [`INITIAL_WINDOW`] bytes before its first ack, so a request does not
//!   wait a round trip.
//! - **Opening.** The acceptor sends nothing until its application [`Stream::accept`]s (having
//!   dialled the target) or refuses (a reset): its first ack is the acceptance, and the opener
//!   reports it as [`StreamEvent::Established`]. Until then the opener may only have sent its
//!   initial window, which the acceptor holds.
//! - **Fin** takes one virtual byte after the last, so acking `final + 1` acknowledges it.
//! - **Resends.** The sender keeps every unacknowledged byte (at most its send buffer). Without
//!   progress for `retransmit_after`, or when the link comes back ([`Stream::resume`]), it sends
//!   them again from the first unacknowledged offset.
//! - **Windows sized to the path.** A window of W bytes carries at most W per round trip: 512
//!   KiB over 100 ms is 5 MB/s. So the receive window starts at `recv_window` and doubles, up
//!   to `max_recv_window`, whenever the application read a whole window in less than two round
//!   trips (the sender was bound by the window, not by the path or the reader); it halves back
//!   towards `recv_window` when a window took more than [`SLOW_READER_RTTS`] round trips to
//!   read. The round trip is the link's ([`Stream::set_rtt`], from [`crate::path::Path`]).
//!   The send buffer follows the window the peer grants, within `send_buffer` and
//!   `max_send_buffer`. A reader that stops holds at most its current window, never more than
//!   `max_recv_window`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::{Frame, MAX_DATA, ResetCode};

/// Bytes an opener may send before the acceptor's first ack. Every receive window is at least
/// this.
pub const INITIAL_WINDOW: u32 = 64 * 1024;
/// Repeated acks that make the sender resend from the first unacknowledged byte.
pub const FAST_RETRANSMIT_ACKS: u32 = 3;
/// Unacknowledged bytes that make a receiver ack at once.
pub const ACK_EVERY: u64 = 16 * 1024;
/// An ack waits at most this long for more data to acknowledge together.
pub const ACK_DELAY: Duration = Duration::from_millis(5);
/// Unacknowledged bytes are sent again after this long without progress. MQTT runs over TCP:
/// bytes are lost only with the connection, and a lost connection resumes the streams at once.
/// This is the safety net, long enough for a full window on a slow uplink.
pub const RETRANSMIT_AFTER: Duration = Duration::from_secs(10);
/// A window that took longer than this many round trips to be read is halved.
pub const SLOW_READER_RTTS: u32 = 16;

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Bytes received and not yet read that this end holds at first: the credit it grants.
    pub recv_window: u32,
    /// What the receive window may grow to.
    pub max_recv_window: u32,
    /// Bytes the application may queue to send, unacknowledged ones included, at first.
    pub send_buffer: usize,
    /// What the send buffer may grow to, as the peer grants more.
    pub max_send_buffer: usize,
    /// Resend unacknowledged bytes after this long without an ack that moves forward.
    pub retransmit_after: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            recv_window: 1 << 20,
            max_recv_window: 1 << 20,
            send_buffer: 1 << 20,
            max_send_buffer: 1 << 20,
            retransmit_after: RETRANSMIT_AFTER,
        }
    }
}

/// What the application should look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// (Opener only.) The peer accepted the stream: its first frame arrived.
    Established,
    /// Bytes (or the end) can be read.
    Readable,
    /// Room in the send buffer again after a short write.
    Writable,
    /// The stream is gone in both directions.
    Reset { code: ResetCode, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream was reset ({code}): {reason}")]
    Reset { code: ResetCode, reason: String },
    #[error("stream already finished sending")]
    Finished,
}

/// The outcome of [`Stream::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Bytes(usize),
    /// The peer finished and every byte has been read.
    End,
    /// Nothing to read yet.
    Blocked,
}

/// Where a stream is in its opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// Opened here; the peer has not answered.
    Sent,
    /// Opened by the peer; this end's application has not accepted it: nothing is sent but a
    /// refusal (a reset).
    Received,
    /// Both ends are in.
    Done,
}

#[derive(Debug)]
pub struct Stream {
    id: u32,
    cfg: StreamConfig,
    opening: Opening,
    // Sending: `send` holds the bytes from `send_base` on, acknowledged ones dropped.
    send: VecDeque<u8>,
    send_base: u64,
    send_next: u64,
    sent_max: u64,
    peer_limit: u64,
    fin_queued: bool,
    /// The fin is to be sent (first time, or again after a resume).
    fin_unsent: bool,
    /// Where this end's fin is, once sent: acks are checked against it after a resume too.
    fin_offset: Option<u64>,
    fin_acked: bool,
    write_blocked: bool,
    last_progress: Option<Instant>,
    dup_acks: u32,
    fast_retransmits: u64,
    /// What the send buffer holds at most now (follows the peer's window).
    send_cap: usize,
    /// The first-sent range being timed for a round-trip sample: its end, and when it left.
    timed: Option<(u64, Instant)>,
    rtt_sample: Option<Duration>,
    /// Bytes acknowledged and not yet reported to the link ([`Stream::take_acked`]).
    newly_acked: u64,
    // Receiving: `recv` holds in-order bytes not yet read; `early` holds bytes past a gap.
    recv: VecDeque<u8>,
    recv_next: u64,
    early: BTreeMap<u64, Vec<u8>>,
    early_bytes: usize,
    peer_fin: Option<u64>,
    end_read: bool,
    granted: u64,
    acked_to_peer: u64,
    ack_now: bool,
    ack_at: Option<Instant>,
    /// The receive window now, between `recv_window` and `max_recv_window`.
    window: u32,
    /// Bytes the application has read.
    consumed: u64,
    /// Since when, and from which `consumed`, the current window is being read.
    epoch: Option<(Instant, u64)>,
    /// The link's round trip.
    rtt: Option<Duration>,
    // The end.
    reset: Option<(ResetCode, String)>,
    reset_unsent: bool,
    events: VecDeque<StreamEvent>,
}

impl Stream {
    /// A stream this end opened: it may send [`INITIAL_WINDOW`] bytes before the first ack.
    pub fn opener(id: u32, cfg: StreamConfig) -> Self {
        Self::new(id, cfg, INITIAL_WINDOW, Opening::Sent)
    }

    /// A stream the peer opened with `window` in its open frame, silent until
    /// [`Stream::accept`]ed or [`Stream::reset`] (refused).
    pub fn acceptor(id: u32, cfg: StreamConfig, window: u32) -> Self {
        Self::new(id, cfg, window, Opening::Received)
    }

    /// The application takes a stream the peer opened: an ack goes out at once, which tells
    /// the opener so and this end's window.
    pub fn accept(&mut self) {
        if self.opening == Opening::Received {
            self.opening = Opening::Done;
            self.ack_now = true;
        }
    }

    fn new(id: u32, mut cfg: StreamConfig, peer_window: u32, opening: Opening) -> Self {
        cfg.recv_window = cfg.recv_window.max(INITIAL_WINDOW);
        cfg.max_recv_window = cfg.max_recv_window.max(cfg.recv_window);
        cfg.max_send_buffer = cfg.max_send_buffer.max(cfg.send_buffer);
        Self {
            id,
            opening,
            send: VecDeque::new(),
            send_base: 0,
            send_next: 0,
            sent_max: 0,
            peer_limit: u64::from(peer_window),
            fin_queued: false,
            fin_unsent: false,
            fin_offset: None,
            fin_acked: false,
            write_blocked: false,
            last_progress: None,
            dup_acks: 0,
            fast_retransmits: 0,
            send_cap: cfg.send_buffer,
            timed: None,
            rtt_sample: None,
            newly_acked: 0,
            recv: VecDeque::new(),
            recv_next: 0,
            early: BTreeMap::new(),
            early_bytes: 0,
            peer_fin: None,
            end_read: false,
            granted: u64::from(cfg.recv_window),
            acked_to_peer: 0,
            ack_now: false,
            ack_at: None,
            window: cfg.recv_window,
            consumed: 0,
            epoch: None,
            rtt: None,
            reset: None,
            reset_unsent: false,
            events: VecDeque::new(),
            cfg,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// True while this end opened the stream and the peer has not answered.
    pub fn awaits_acceptance(&self) -> bool {
        self.opening == Opening::Sent
    }

    /// This end's receive window now (the open frame announces the first).
    pub fn recv_window(&self) -> u32 {
        self.window
    }

    /// What the send buffer holds at most now.
    pub fn send_capacity(&self) -> usize {
        self.send_cap
    }

    /// The link's smoothed round trip, which the receive window is sized against.
    pub fn set_rtt(&mut self, rtt: Option<Duration>) {
        self.rtt = rtt;
    }

    /// The latest round-trip sample of this stream's data, once.
    pub fn take_rtt_sample(&mut self) -> Option<Duration> {
        self.rtt_sample.take()
    }

    /// Bytes acknowledged since the last call.
    pub fn take_acked(&mut self) -> u64 {
        std::mem::take(&mut self.newly_acked)
    }

    fn check_open(&self) -> Result<(), StreamError> {
        match &self.reset {
            Some((code, reason)) => Err(StreamError::Reset {
                code: *code,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Queues bytes to send; returns how many were taken (fewer when the send buffer is full:
    /// wait for [`StreamEvent::Writable`]).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, StreamError> {
        self.check_open()?;
        if self.fin_queued {
            return Err(StreamError::Finished);
        }
        let room = self.send_cap.saturating_sub(self.send.len());
        let n = room.min(data.len());
        self.send.extend(&data[..n]);
        if n < data.len() {
            self.write_blocked = true;
        }
        Ok(n)
    }

    /// Bytes [`Stream::write`] would take now.
    pub fn write_room(&self) -> usize {
        self.send_cap.saturating_sub(self.send.len())
    }

    /// Ends this end's direction after the bytes already written (a half-close).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.check_open()?;
        if !self.fin_queued {
            self.fin_queued = true;
            self.fin_unsent = true;
        }
        Ok(())
    }

    /// Resets the stream in both directions; the peer is told why.
    pub fn reset(&mut self, code: ResetCode, reason: &str) {
        if self.reset.is_none() {
            self.reset = Some((code, reason.to_string()));
            self.reset_unsent = true;
            self.clear_buffers();
        }
    }

    fn clear_buffers(&mut self) {
        self.send.clear();
        self.recv.clear();
        self.early.clear();
        self.early_bytes = 0;
    }

    /// Reads in-order bytes into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Read, StreamError> {
        self.check_open()?;
        if self.recv.is_empty() {
            if self.peer_fin.is_some_and(|f| f == self.recv_next) {
                self.end_read = true;
                return Ok(Read::End);
            }
            return Ok(Read::Blocked);
        }
        let n = buf.len().min(self.recv.len());
        copy_range(&self.recv, 0, &mut buf[..n]);
        self.recv.drain(..n);
        self.consumed += n as u64;
        // Grant the freed room once it is worth a frame: a quarter of the window.
        let freed = self.recv_limit().saturating_sub(self.granted);
        if freed >= u64::from(self.window / 4) {
            self.ack_now = true;
        }
        Ok(Read::Bytes(n))
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.send_next - self.send_base
    }

    /// Times a gap reported by repeated acks was resent.
    pub fn fast_retransmits(&self) -> u64 {
        self.fast_retransmits
    }

    /// Bytes waiting to be read.
    pub fn readable(&self) -> usize {
        self.recv.len()
    }

    /// Bytes this stream holds: queued to send or unacknowledged, and received but not read
    /// (in order or past a gap). At most `max_send_buffer + 2 × max_recv_window`.
    pub fn buffered(&self) -> usize {
        self.send.len() + self.recv.len() + self.early_bytes
    }

    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// True once nothing more will happen: reset (and the reset sent), or both directions
    /// finished, acknowledged and read.
    pub fn is_closed(&self) -> bool {
        if self.reset.is_some() {
            return !self.reset_unsent;
        }
        self.fin_acked && self.end_read && !self.ack_now && self.ack_at.is_none()
    }

    /// The end reason, once reset.
    pub fn reset_reason(&self) -> Option<(ResetCode, &str)> {
        self.reset.as_ref().map(|(c, r)| (*c, r.as_str()))
    }

    /// The highest offset this end lets the peer send to.
    fn recv_limit(&self) -> u64 {
        self.recv_next + u64::from(self.window) - self.recv.len() as u64
    }

    /// What an ack acknowledges: every byte before `recv_next`, and the fin's virtual byte.
    fn ack_point(&self) -> u64 {
        match self.peer_fin {
            Some(f) if f == self.recv_next => f + 1,
            _ => self.recv_next,
        }
    }

    fn protocol_error(&mut self, reason: &str) {
        self.reset(ResetCode::Protocol, reason);
        self.events.push_back(StreamEvent::Reset {
            code: ResetCode::Protocol,
            reason: reason.to_string(),
        });
    }

    /// Takes a frame of this stream from the peer (open frames are the multiplexer's).
    pub fn handle(&mut self, frame: Frame, now: Instant) {
        if self.reset.is_some() {
            return;
        }
        if self.opening == Opening::Sent
            && matches!(
                frame,
                Frame::Data { .. } | Frame::Ack { .. } | Frame::Fin { .. }
            )
        {
            self.opening = Opening::Done;
            self.events.push_back(StreamEvent::Established);
        }
        match frame {
            Frame::Data { offset, bytes, .. } => self.on_data(offset, bytes, now),
            Frame::Ack {
                received, window, ..
            } => self.on_ack(received, window, now),
            Frame::Fin { offset, .. } => self.on_fin(offset),
            Frame::Reset { code, reason, .. } => {
                self.reset = Some((code, reason.clone()));
                self.clear_buffers();
                self.events.push_back(StreamEvent::Reset { code, reason });
            }
            Frame::Open { .. } | Frame::Keepalive { .. } => {}
        }
    }

    fn on_data(&mut self, offset: u64, bytes: Vec<u8>, now: Instant) {
        let end = offset + bytes.len() as u64;
        if end > self.granted {
            return self.protocol_error("data past the granted window");
        }
        if self.peer_fin.is_some_and(|f| end > f) {
            return self.protocol_error("data past the fin");
        }
        if end <= self.recv_next {
            // A duplicate: the peer may have missed our ack.
            self.ack_now = true;
            return;
        }
        let was_empty = self.recv.is_empty();
        if offset <= self.recv_next {
            let skip = (self.recv_next - offset) as usize;
            self.recv.extend(&bytes[skip..]);
            self.recv_next = end;
            self.drain_early();
        } else {
            // Past a gap: keep the bytes not held yet (so no byte is held twice and the grant
            // bounds them), and ack at once: the repeated ack tells the sender of the gap.
            self.keep_early(offset, &bytes);
            self.ack_now = true;
        }
        if was_empty && !self.recv.is_empty() {
            self.events.push_back(StreamEvent::Readable);
        }
        self.schedule_ack(now);
        if self.peer_fin.is_some_and(|f| f == self.recv_next) {
            self.ack_now = true;
            if was_empty && self.recv.is_empty() {
                self.events.push_back(StreamEvent::Readable);
            }
        }
    }

    /// Stores the parts of `bytes` (at `offset`) that no early segment holds yet.
    fn keep_early(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        let mut pieces = Vec::new();
        let mut from = offset;
        let before = self.early.range(..offset).next_back();
        if let Some((&start, held)) = before {
            from = from.max(start + held.len() as u64);
        }
        for (&start, held) in self.early.range(offset..end) {
            if start > from {
                pieces.push((from, start));
            }
            from = from.max(start + held.len() as u64);
        }
        if from < end {
            pieces.push((from, end));
        }
        for (start, stop) in pieces {
            let slice = &bytes[(start - offset) as usize..(stop - offset) as usize];
            self.early_bytes += slice.len();
            self.early.insert(start, slice.to_vec());
        }
    }

    fn drain_early(&mut self) {
        while let Some(entry) = self.early.first_entry() {
            let start = *entry.key();
            if start > self.recv_next {
                break;
            }
            let bytes = entry.remove();
            self.early_bytes -= bytes.len();
            let end = start + bytes.len() as u64;
            if end > self.recv_next {
                let skip = (self.recv_next - start) as usize;
                self.recv.extend(&bytes[skip..]);
                self.recv_next = end;
            }
        }
    }

    fn schedule_ack(&mut self, now: Instant) {
        // Ack at once when ACK_EVERY bytes (or a quarter of the window) are unacknowledged,
        // else shortly, so that one ack covers a small burst. The sender's link may allow
        // each stream far less in flight than its window (many streams share a cap), so
        // waiting for a quarter window would hold every stream to one ack per ACK_DELAY.
        let every = u64::from(self.window / 4).min(ACK_EVERY);
        if self.recv_next - self.acked_to_peer >= every {
            self.ack_now = true;
        } else if self.ack_at.is_none() {
            self.ack_at = Some(now + ACK_DELAY);
        }
    }

    /// At each ack: when a whole window was read since the last change, grow it if that took
    /// under two round trips (the window bound the sender), shrink it if it took far longer.
    fn tune_window(&mut self, now: Instant) {
        let Some((since, from)) = self.epoch else {
            self.epoch = Some((now, self.consumed));
            return;
        };
        if self.consumed - from < u64::from(self.window) {
            return;
        }
        if let Some(rtt) = self.rtt.filter(|rtt| !rtt.is_zero()) {
            let took = now.duration_since(since);
            if took < rtt * 2 {
                self.window = self.window.saturating_mul(2).min(self.cfg.max_recv_window);
            } else if took > rtt * SLOW_READER_RTTS {
                self.window = (self.window / 2).max(self.cfg.recv_window);
            }
        }
        self.epoch = Some((now, self.consumed));
    }

    fn on_ack(&mut self, received: u64, window: u32, now: Instant) {
        let fin_point = self.fin_offset.map(|f| f + 1);
        if received > self.sent_max.max(fin_point.unwrap_or(0)) {
            return self.protocol_error("ack of bytes never sent");
        }
        let data_end = self.send_base + self.send.len() as u64;
        let limit = received.saturating_add(u64::from(window));
        if received == self.send_base && limit <= self.peer_limit && self.send_next > received {
            // The same ack again while bytes are in flight: the receiver holds bytes past a
            // gap. The third one resends from the gap (once, until an ack moves forward).
            self.dup_acks += 1;
            if self.dup_acks == FAST_RETRANSMIT_ACKS {
                self.fast_retransmits += 1;
                self.timed = None;
                self.send_next = self.send_base;
                self.last_progress = Some(now);
            }
        }
        if received > self.send_base {
            self.dup_acks = 0;
            let acked_data = received.min(data_end) - self.send_base;
            self.send.drain(..acked_data as usize);
            self.send_base += acked_data;
            self.newly_acked += acked_data;
            if let Some((end, sent)) = self.timed
                && received >= end
            {
                self.rtt_sample = Some(now.saturating_duration_since(sent));
                self.timed = None;
            }
            self.send_next = self.send_next.max(self.send_base);
            self.last_progress = Some(now);
            if fin_point.is_some_and(|p| received >= p) {
                self.fin_acked = true;
            }
        }
        self.peer_limit = self.peer_limit.max(limit);
        // Room for what the peer lets us have in flight and as much again queued behind it,
        // so that the socket behind this stream is read while acks are on their way.
        // It only grows: bytes the application was told it may write are never refused.
        let wanted = (window as usize).saturating_mul(2);
        let cap = wanted.clamp(self.cfg.send_buffer, self.cfg.max_send_buffer);
        self.send_cap = self.send_cap.max(cap);
        if self.write_blocked && self.write_room() > 0 {
            self.write_blocked = false;
            self.events.push_back(StreamEvent::Writable);
        }
    }

    fn on_fin(&mut self, offset: u64) {
        if let Some(known) = self.peer_fin {
            if known != offset {
                self.protocol_error("fin moved");
            }
            self.ack_now = true;
            return;
        }
        let highest = self
            .early
            .iter()
            .next_back()
            .map_or(self.recv_next, |(o, b)| o + b.len() as u64)
            .max(self.recv_next);
        if offset < highest {
            return self.protocol_error("fin before bytes already sent");
        }
        self.peer_fin = Some(offset);
        self.ack_now = true;
        if offset == self.recv_next && self.recv.is_empty() {
            self.events.push_back(StreamEvent::Readable);
        }
    }

    /// The next frame to send, of at most `budget` encoded bytes; call until `None`.
    pub fn poll_transmit(&mut self, now: Instant, budget: usize) -> Option<Frame> {
        self.poll_transmit_within(now, budget, usize::MAX)
    }

    /// [`Stream::poll_transmit`] with at most `data` bytes of payload (what the link may
    /// still have in flight); acks, fins and resets are not limited.
    pub fn poll_transmit_within(
        &mut self,
        now: Instant,
        budget: usize,
        data: usize,
    ) -> Option<Frame> {
        if self.reset_unsent {
            self.reset_unsent = false;
            let (code, reason) = self.reset.clone()?;
            return Some(Frame::Reset {
                stream: self.id,
                code,
                reason,
            });
        }
        if self.reset.is_some() || self.opening == Opening::Received {
            return None;
        }
        if self.ack_now || self.ack_at.is_some_and(|t| now >= t) {
            self.ack_now = false;
            self.ack_at = None;
            self.tune_window(now);
            self.granted = self.granted.max(self.recv_limit());
            self.acked_to_peer = self.recv_next;
            return Some(Frame::Ack {
                stream: self.id,
                received: self.ack_point(),
                window: (self.granted - self.recv_next) as u32,
            });
        }
        let data_end = self.send_base + self.send.len() as u64;
        let can_send = data_end.min(self.peer_limit).saturating_sub(self.send_next);
        // Type, stream, offset, length: 15 bytes before the payload.
        let room = budget.saturating_sub(15).min(MAX_DATA).min(data);
        if can_send > 0 && room > 0 {
            let n = (can_send as usize).min(room);
            let start = (self.send_next - self.send_base) as usize;
            let mut bytes = vec![0u8; n];
            copy_range(&self.send, start, &mut bytes);
            let frame = Frame::Data {
                stream: self.id,
                offset: self.send_next,
                bytes,
            };
            if self.send_next == self.send_base {
                self.last_progress = Some(now);
            }
            // Time one first-sent range per round trip (a resent one would time the wrong
            // copy).
            let first_send = self.send_next >= self.sent_max;
            if first_send && self.timed.is_none() {
                self.timed = Some((self.send_next + n as u64, now));
            }
            self.send_next += n as u64;
            self.sent_max = self.sent_max.max(self.send_next);
            return Some(frame);
        }
        if self.fin_unsent && self.send_next == data_end {
            self.fin_unsent = false;
            self.fin_offset = Some(data_end);
            self.last_progress.get_or_insert(now);
            return Some(Frame::Fin {
                stream: self.id,
                offset: data_end,
            });
        }
        None
    }

    fn unacknowledged(&self) -> bool {
        self.send_next > self.send_base || (self.fin_offset.is_some() && !self.fin_acked)
    }

    /// When [`Stream::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.reset.is_some() || self.opening == Opening::Received {
            return None;
        }
        let resend = self
            .unacknowledged()
            .then(|| self.last_progress.map(|t| t + self.cfg.retransmit_after))
            .flatten();
        match (self.ack_at, resend) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.reset.is_some() {
            return;
        }
        if self.ack_at.is_some_and(|t| now >= t) {
            self.ack_now = true;
        }
        let stalled = self
            .last_progress
            .is_some_and(|t| now >= t + self.cfg.retransmit_after);
        if self.unacknowledged() && stalled {
            self.resume(now);
        }
    }

    /// The link came back (or stalled): send every unacknowledged byte again, and the grant.
    pub fn resume(&mut self, now: Instant) {
        if self.reset.is_some() {
            return;
        }
        self.send_next = self.send_base;
        self.timed = None;
        if self.fin_offset.is_some() && !self.fin_acked {
            self.fin_unsent = true;
        }
        self.last_progress = Some(now);
        self.ack_now = true;
    }
}

/// Copies `out.len()` bytes of `deque` from `start` into `out`, as at most two memcpys (a
/// byte-wise iterator over a deque was 6 % of the agent's CPU at 150 MB/s).
fn copy_range(deque: &VecDeque<u8>, start: usize, out: &mut [u8]) {
    let (front, back) = deque.as_slices();
    let end = start + out.len();
    let in_front = front.len().min(end).saturating_sub(start);
    if in_front > 0 {
        out[..in_front].copy_from_slice(&front[start..start + in_front]);
    }
    let back_start = start.saturating_sub(front.len());
    let rest = out.len() - in_front;
    out[in_front..].copy_from_slice(&back[back_start..back_start + rest]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_range_reads_across_the_deques_wrap() {
        let mut deque: VecDeque<u8> = VecDeque::with_capacity(8);
        deque.extend([0, 0, 0, 0, 0, 0]);
        deque.drain(..5);
        deque.extend(1..=6);
        let (front, back) = deque.as_slices();
        assert!(
            !front.is_empty() && !back.is_empty(),
            "the test needs a wrapped deque"
        );
        let all: Vec<u8> = deque.iter().copied().collect();
        for start in 0..all.len() {
            for len in 0..=all.len() - start {
                let mut out = vec![9u8; len];
                copy_range(&deque, start, &mut out);
                assert_eq!(out, all[start..start + len], "start {start} len {len}");
            }
        }
    }

    fn cfg(window: u32, buffer: usize) -> StreamConfig {
        StreamConfig {
            recv_window: window,
            max_recv_window: window,
            send_buffer: buffer,
            max_send_buffer: buffer,
            retransmit_after: Duration::from_secs(2),
        }
    }

    /// Moves every frame `from` wants to send into `to`, through `filter` (which may drop,
    /// duplicate or reorder); returns how many were delivered.
    fn pump(
        from: &mut Stream,
        to: &mut Stream,
        now: Instant,
        filter: &mut dyn FnMut(Frame) -> Vec<Frame>,
    ) -> usize {
        let mut out = Vec::new();
        while let Some(f) = from.poll_transmit(now, 1200) {
            out.extend(filter(f));
            assert!(out.len() < 100_000, "runaway transmit");
        }
        let n = out.len();
        for f in out {
            to.handle(f, now);
        }
        n
    }

    fn read_all(s: &mut Stream) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).unwrap() {
                Read::Bytes(n) => got.extend_from_slice(&buf[..n]),
                Read::End => return (got, true),
                Read::Blocked => return (got, false),
            }
        }
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Sends `data` from a to b through `filter`, reading as it goes, until b has the end.
    fn transfer(
        a: &mut Stream,
        b: &mut Stream,
        data: &[u8],
        filter: &mut dyn FnMut(Frame) -> Vec<Frame>,
    ) -> Vec<u8> {
        let mut now = Instant::now();
        let mut written = 0;
        let mut got = Vec::new();
        for _ in 0..100_000 {
            if written < data.len() {
                written += a.write(&data[written..]).unwrap();
                if written == data.len() {
                    a.finish().unwrap();
                }
            }
            pump(a, b, now, filter);
            let (bytes, end) = read_all(b);
            got.extend(bytes);
            pump(b, a, now, &mut |f| vec![f]);
            if end {
                return got;
            }
            now += Duration::from_millis(10);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        panic!(
            "transfer did not finish: {} of {} bytes",
            got.len(),
            data.len()
        );
    }

    #[test]
    fn bytes_arrive_in_order_with_flow_control_and_fin() {
        let mut a = Stream::opener(1, cfg(64 * 1024, 100_000));
        let mut b = Stream::acceptor(1, cfg(64 * 1024, 100_000), a.recv_window());
        b.accept();
        let data = payload(1_000_000);
        let got = transfer(&mut a, &mut b, &data, &mut |f| vec![f]);
        assert_eq!(got, data);
        pump(&mut b, &mut a, Instant::now(), &mut |f| vec![f]);
        b.finish().unwrap();
        pump(&mut b, &mut a, Instant::now(), &mut |f| vec![f]);
        assert_eq!(read_all(&mut a), (vec![], true));
        pump(&mut a, &mut b, Instant::now(), &mut |f| vec![f]);
        assert!(a.is_closed() && b.is_closed(), "{a:?}\n{b:?}");
    }

    #[test]
    fn the_sender_never_exceeds_the_granted_window() {
        let mut a = Stream::opener(1, cfg(64 * 1024, 1 << 20));
        let mut b = Stream::acceptor(1, cfg(64 * 1024, 1 << 20), a.recv_window());
        b.accept();
        pump(&mut b, &mut a, Instant::now(), &mut |f| vec![f]);
        assert_eq!(a.poll_event(), Some(StreamEvent::Established));
        assert_eq!(a.write(&payload(1 << 20)).unwrap(), 1 << 20);
        // Nobody reads at b: what crosses stops at its window, and b holds no more than that.
        for _ in 0..10 {
            pump(&mut a, &mut b, Instant::now(), &mut |f| vec![f]);
            pump(&mut b, &mut a, Instant::now(), &mut |f| vec![f]);
        }
        assert_eq!(b.readable(), 64 * 1024);
        // What b acknowledged left a's send buffer; the rest waits there. Once it is full
        // again, a write is short, and Writable comes when b reads and grants more.
        assert_eq!(a.write_room(), 64 * 1024);
        assert_eq!(a.write(&payload(100_000)).unwrap(), 64 * 1024);
        assert_eq!(a.write(b"more").unwrap(), 0);
        read_all(&mut b);
        // b grants more, a sends it, b acknowledges it: a's buffer has room again.
        pump(&mut b, &mut a, Instant::now(), &mut |f| vec![f]);
        pump(&mut a, &mut b, Instant::now(), &mut |f| vec![f]);
        pump(&mut b, &mut a, Instant::now(), &mut |f| vec![f]);
        assert_eq!(a.poll_event(), Some(StreamEvent::Writable));
    }

    #[test]
    fn duplicated_and_reordered_frames_deliver_each_byte_once() {
        let mut a = Stream::opener(3, cfg(64 * 1024, 200_000));
        let mut b = Stream::acceptor(3, cfg(64 * 1024, 200_000), a.recv_window());
        b.accept();
        let data = payload(300_000);
        let mut held: Option<Frame> = None;
        let mut n = 0;
        // Every frame twice; every third one held back and delivered after the next.
        let got = transfer(&mut a, &mut b, &data, &mut |f| {
            n += 1;
            let mut out = vec![f.clone(), f];
            if n % 3 == 0 {
                let late = held.replace(out.pop().unwrap());
                out.extend(late);
            } else if let Some(late) = held.take() {
                out.push(late);
            }
            out
        });
        assert_eq!(got, data);
    }

    #[test]
    fn lost_frames_are_resent_after_the_retransmit_time() {
        let mut a = Stream::opener(5, cfg(64 * 1024, 200_000));
        let mut b = Stream::acceptor(5, cfg(64 * 1024, 200_000), a.recv_window());
        b.accept();
        let data = payload(200_000);
        let mut n = 0;
        // Every fifth data frame (and the first fin) is lost.
        let got = transfer(&mut a, &mut b, &data, &mut |f| {
            n += 1;
            if n % 5 == 0 { vec![] } else { vec![f] }
        });
        assert_eq!(got, data);
    }

    #[test]
    fn resume_resends_what_the_link_lost() {
        let now = Instant::now();
        let mut a = Stream::opener(5, cfg(64 * 1024, 200_000));
        let mut b = Stream::acceptor(5, cfg(64 * 1024, 200_000), a.recv_window());
        b.accept();
        pump(&mut b, &mut a, now, &mut |f| vec![f]);
        a.write(&payload(50_000)).unwrap();
        // The link drops everything in flight.
        pump(&mut a, &mut b, now, &mut |_| vec![]);
        assert_eq!(b.readable(), 0);
        a.resume(now);
        pump(&mut a, &mut b, now, &mut |f| vec![f]);
        assert_eq!(read_all(&mut b).0, payload(50_000));
    }

    #[test]
    fn an_ack_of_a_fin_sent_before_a_resume_is_taken() {
        let now = Instant::now();
        let mut a = Stream::opener(1, cfg(64 * 1024, 1000));
        a.write(b"abc").unwrap();
        a.finish().unwrap();
        let mut b = Stream::acceptor(1, cfg(64 * 1024, 1000), a.recv_window());
        b.accept();
        pump(&mut a, &mut b, now, &mut |f| vec![f]);
        a.resume(now);
        // b's ack of the bytes and the fin arrives after the resume; the resent copies are
        // duplicates to b.
        pump(&mut b, &mut a, now, &mut |f| vec![f]);
        assert_eq!(a.reset_reason(), None);
        pump(&mut a, &mut b, now, &mut |f| vec![f]);
        assert_eq!(read_all(&mut b), (b"abc".to_vec(), true));
        assert_eq!(a.poll_timeout(), None, "nothing left to resend");
    }

    #[test]
    fn overlapping_bytes_past_a_gap_are_held_once() {
        let now = Instant::now();
        let mut b = Stream::acceptor(1, cfg(64 * 1024, 1000), 1000);
        b.accept();
        // Resends cut at other places overlap what is held: each byte is kept once.
        for i in 0..64u64 {
            b.handle(
                Frame::Data {
                    stream: 1,
                    offset: 1 + i * 100,
                    bytes: vec![(i % 251) as u8; 4000],
                },
                now,
            );
        }
        assert_eq!(b.reset_reason(), None);
        assert_eq!(b.buffered(), 6300 + 4000, "the union of the segments");
        // The gap filled, the bytes come out in order, each once.
        b.handle(
            Frame::Data {
                stream: 1,
                offset: 0,
                bytes: vec![9],
            },
            now,
        );
        let (got, _) = read_all(&mut b);
        assert_eq!(got.len(), 1 + 6300 + 4000);
        assert_eq!(got[1], 0);
        assert_eq!(
            (got[101], got[4001], got[4101]),
            (0, 1, 2),
            "first copy held wins"
        );
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn repeated_acks_resend_the_gap_without_waiting_for_the_timer() {
        let now = Instant::now();
        let mut a = Stream::opener(1, cfg(64 * 1024, 100_000));
        let mut b = Stream::acceptor(1, cfg(64 * 1024, 100_000), a.recv_window());
        b.accept();
        a.write(&payload(20_000)).unwrap();
        let mut n = 0;
        // The first data frame is lost; the rest arrive and b acks each at once.
        pump(&mut a, &mut b, now, &mut |f| {
            n += 1;
            if n == 1 { vec![] } else { vec![f] }
        });
        for _ in 0..4 {
            pump(&mut b, &mut a, now, &mut |f| vec![f]);
            b.ack_now = true;
        }
        assert_eq!(a.fast_retransmits(), 1);
        pump(&mut a, &mut b, now, &mut |f| vec![f]);
        assert_eq!(read_all(&mut b).0, payload(20_000));
    }

    #[test]
    fn data_past_the_window_or_the_fin_resets_with_a_protocol_error() {
        let now = Instant::now();
        let mut b = Stream::acceptor(1, cfg(64 * 1024, 1000), 1000);
        b.accept();
        b.handle(
            Frame::Data {
                stream: 1,
                offset: 64 * 1024,
                bytes: vec![1],
            },
            now,
        );
        assert!(matches!(
            b.poll_event(),
            Some(StreamEvent::Reset {
                code: ResetCode::Protocol,
                ..
            })
        ));
        assert!(matches!(
            b.poll_transmit(now, 1200),
            Some(Frame::Reset {
                code: ResetCode::Protocol,
                ..
            })
        ));
        assert!(b.is_closed());
        assert!(matches!(b.write(b"x"), Err(StreamError::Reset { .. })));

        let mut c = Stream::acceptor(2, cfg(64 * 1024, 1000), 1000);

        c.accept();
        c.handle(
            Frame::Fin {
                stream: 2,
                offset: 3,
            },
            now,
        );
        c.handle(
            Frame::Data {
                stream: 2,
                offset: 0,
                bytes: vec![1, 2, 3, 4],
            },
            now,
        );
        assert!(
            c.reset_reason()
                .is_some_and(|(_, r)| r.contains("past the fin"))
        );

        let mut d = Stream::opener(4, cfg(64 * 1024, 1000));
        d.handle(
            Frame::Ack {
                stream: 4,
                received: 10,
                window: 0,
            },
            now,
        );
        assert!(
            d.reset_reason()
                .is_some_and(|(_, r)| r.contains("never sent"))
        );
    }

    #[test]
    fn a_peer_reset_ends_both_directions_with_its_reason() {
        let now = Instant::now();
        let mut a = Stream::opener(1, StreamConfig::default());
        a.write(b"hello").unwrap();
        a.handle(
            Frame::Reset {
                stream: 1,
                code: ResetCode::Refused,
                reason: "not in [tunnel] allow".into(),
            },
            now,
        );
        assert_eq!(
            a.poll_event(),
            Some(StreamEvent::Reset {
                code: ResetCode::Refused,
                reason: "not in [tunnel] allow".into()
            })
        );
        assert_eq!(a.poll_transmit(now, 1200), None, "no answer to a reset");
        assert!(a.is_closed());
        let mut buf = [0u8; 4];
        assert!(matches!(a.read(&mut buf), Err(StreamError::Reset { .. })));
    }

    #[test]
    fn the_opener_sends_its_initial_window_before_any_ack() {
        let now = Instant::now();
        let mut a = Stream::opener(1, StreamConfig::default());
        a.write(&payload(200_000)).unwrap();
        let mut sent = 0;
        while let Some(f) = a.poll_transmit(now, 1200) {
            if let Frame::Data { bytes, .. } = f {
                sent += bytes.len();
            }
        }
        assert_eq!(sent, INITIAL_WINDOW as usize);
    }

    #[test]
    fn an_acceptor_is_silent_until_accepted_and_its_first_ack_establishes_the_opener() {
        let now = Instant::now();
        let mut a = Stream::opener(1, cfg(64 * 1024, 100_000));
        a.write(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut b = Stream::acceptor(1, cfg(64 * 1024, 100_000), a.recv_window());
        pump(&mut a, &mut b, now, &mut |f| vec![f]);
        // Not accepted yet (the agent is still dialling): no ack, no deadline, whatever came.
        assert_eq!(b.poll_transmit(now, 1200), None);
        assert_eq!(b.poll_timeout(), None);
        b.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(b.poll_transmit(now, 1200), None);
        assert_eq!(a.poll_event(), None, "nothing established yet");
        b.accept();
        pump(&mut b, &mut a, now, &mut |f| vec![f]);
        assert_eq!(a.poll_event(), Some(StreamEvent::Established));
        assert_eq!(a.in_flight(), 0, "the first ack took the request");
        assert_eq!(read_all(&mut b).0, b"GET / HTTP/1.1\r\n\r\n");

        // Refused instead: the reset is all the opener hears, never an establishment.
        let mut a = Stream::opener(3, StreamConfig::default());
        let mut b = Stream::acceptor(3, StreamConfig::default(), a.recv_window());
        b.reset(ResetCode::Refused, "not in [tunnel] allow");
        pump(&mut b, &mut a, now, &mut |f| vec![f]);
        assert!(matches!(
            a.poll_event(),
            Some(StreamEvent::Reset {
                code: ResetCode::Refused,
                ..
            })
        ));
        assert_eq!(a.poll_event(), None);
    }

    /// `a` writes all it may, the frames cross, `b` reads all (or nothing when `stalled`),
    /// acks cross back: one round trip of `rtt`. Returns the bytes `b` took.
    fn round(a: &mut Stream, b: &mut Stream, now: Instant, stalled: bool) -> usize {
        let room = a.write_room();
        a.write(&payload(room)).unwrap();
        while pump(a, b, now, &mut |f| vec![f]) > 0 {}
        let (got, _) = if stalled {
            (Vec::new(), false)
        } else {
            read_all(b)
        };
        while pump(b, a, now, &mut |f| vec![f]) > 0 {}
        got.len()
    }

    fn autotuned(window: u32, max: u32) -> StreamConfig {
        StreamConfig {
            recv_window: window,
            max_recv_window: max,
            send_buffer: window as usize,
            max_send_buffer: max as usize,
            retransmit_after: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_window_doubles_while_it_binds_the_sender_up_to_its_maximum() {
        let rtt = Duration::from_millis(100);
        let (window, max) = (64 * 1024, 1 << 20);
        let mut a = Stream::opener(1, autotuned(window, max));
        let mut b = Stream::acceptor(1, autotuned(window, max), a.recv_window());
        b.accept();
        b.set_rtt(Some(rtt));
        let mut now = Instant::now();
        let mut per_round = Vec::new();
        for _ in 0..12 {
            per_round.push(round(&mut a, &mut b, now, false));
            now += rtt;
        }
        assert_eq!(b.recv_window(), max, "rounds moved {per_round:?}");
        assert!(a.send_capacity() >= max as usize, "{}", a.send_capacity());
        // Each round carries a window: the last ones a full megabyte, 16× the first.
        assert!(per_round[11] >= max as usize, "{per_round:?}");
        assert!(per_round[0] <= 2 * window as usize, "{per_round:?}");
    }

    #[test]
    fn without_a_round_trip_or_when_the_reader_is_the_limit_the_window_stays() {
        let (window, max) = (64 * 1024, 1 << 20);
        // No round trip measured yet: nothing to size against.
        let mut a = Stream::opener(1, autotuned(window, max));
        let mut b = Stream::acceptor(1, autotuned(window, max), a.recv_window());
        b.accept();
        let mut now = Instant::now();
        for _ in 0..8 {
            round(&mut a, &mut b, now, false);
            now += Duration::from_millis(100);
        }
        assert_eq!(b.recv_window(), window);
        // A reader that takes each window in 3 round trips is not helped by a larger one.
        let mut a = Stream::opener(3, autotuned(window, max));
        let mut b = Stream::acceptor(3, autotuned(window, max), a.recv_window());
        b.accept();
        let rtt = Duration::from_millis(100);
        b.set_rtt(Some(rtt));
        for _ in 0..8 {
            round(&mut a, &mut b, now, false);
            now += rtt * 3;
        }
        assert_eq!(b.recv_window(), window);
    }

    #[test]
    fn a_reader_that_stops_holds_at_most_its_maximum_window_and_a_slow_one_shrinks_it() {
        let rtt = Duration::from_millis(100);
        let (window, max) = (64 * 1024, 512 * 1024);
        let mut a = Stream::opener(1, autotuned(window, max));
        let mut b = Stream::acceptor(1, autotuned(window, max), a.recv_window());
        b.accept();
        b.set_rtt(Some(rtt));
        let mut now = Instant::now();
        for _ in 0..10 {
            round(&mut a, &mut b, now, false);
            now += rtt;
        }
        assert_eq!(b.recv_window(), max);
        // The reader stops: the sender fills the window and no more, however long it tries.
        for _ in 0..20 {
            round(&mut a, &mut b, now, true);
            now += rtt;
        }
        assert_eq!(b.readable(), max as usize);
        assert!(b.buffered() <= max as usize);
        assert!(a.in_flight() <= u64::from(max));
        // It reads again, a window per 20 round trips: the window halves back down.
        for _ in 0..12 {
            read_all(&mut b);
            round(&mut a, &mut b, now, true);
            now += rtt * 20;
        }
        assert_eq!(b.recv_window(), window);
    }
}
