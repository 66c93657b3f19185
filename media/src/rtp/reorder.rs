//! Puts a received RTP stream back in sequence-number order, waiting a bounded time for a
//! missing packet: long enough for a retransmission asked for with a NACK to fill the gap.
//!
//! Sans-IO: packets and the time in, packets in order out. Without it a depacketizer drops
//! the access unit at the first hole, so a NACKed packet that arrives 30 ms later repairs
//! nothing. What is held is bounded in packets and in time; a gap that outlives `max_wait`
//! (or a buffer that fills) is given up, and the packets after it flow on.

use std::collections::BTreeMap;

/// What the buffer did, for a session's end log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReorderStats {
    /// Packets that arrived after a later one and were put back in place (retransmissions
    /// that filled their gap among them).
    pub reordered: u64,
    /// Missing packets given up on (their gap outlived the wait or the buffer filled).
    pub lost: u64,
    /// Packets that came after their place was given up, or twice.
    pub late: u64,
}

/// A reorder buffer for one RTP stream (one SSRC).
#[derive(Debug)]
pub struct ReorderBuffer<P> {
    max_wait_ms: u64,
    capacity: usize,
    /// Unwrapped sequence number of the next packet to release.
    next: Option<u64>,
    /// Packets ahead of `next`, by unwrapped sequence number, with their arrival time.
    held: BTreeMap<u64, (P, u64)>,
    stats: ReorderStats,
}

impl<P> ReorderBuffer<P> {
    /// Waits at most `max_wait_ms` for a missing packet and holds at most `capacity` packets.
    pub fn new(max_wait_ms: u64, capacity: usize) -> Self {
        Self {
            max_wait_ms,
            capacity: capacity.max(1),
            next: None,
            held: BTreeMap::new(),
            stats: ReorderStats::default(),
        }
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Takes packet `sequence` arrived at `now_ms`; appends to `out` every packet now in order.
    pub fn push(&mut self, sequence: u16, packet: P, now_ms: u64, out: &mut Vec<P>) {
        let next = *self.next.get_or_insert(u64::from(sequence) + (1 << 16));
        let at = unwrap(next, sequence);
        if at < next || self.held.contains_key(&at) {
            self.stats.late += 1;
            return;
        }
        if at > next || !self.held.is_empty() {
            if at < self.held.keys().next_back().copied().unwrap_or(at) {
                self.stats.reordered += 1;
            }
            self.held.insert(at, (packet, now_ms));
        } else {
            self.next = Some(next + 1);
            out.push(packet);
        }
        if at == next {
            self.release(out);
        }
        while self.held.len() > self.capacity {
            self.skip_gap(out);
        }
        self.expire(now_ms, out);
    }

    /// Gives up on gaps older than the wait; appends what that releases to `out`.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<P>) {
        while self
            .held
            .values()
            .next()
            .is_some_and(|(_, arrived)| now_ms.saturating_sub(*arrived) >= self.max_wait_ms)
        {
            self.skip_gap(out);
        }
    }

    /// When [`expire`](Self::expire) next has something to do (ms), if anything is held.
    pub fn deadline(&self) -> Option<u64> {
        let (_, arrived) = self.held.values().next()?;
        Some(arrived + self.max_wait_ms)
    }

    /// Moves `next` past the first gap and releases what follows it.
    fn skip_gap(&mut self, out: &mut Vec<P>) {
        let (Some(next), Some(&first)) = (self.next, self.held.keys().next()) else {
            return;
        };
        self.stats.lost += first.saturating_sub(next);
        self.next = Some(first);
        self.release(out);
    }

    /// Releases held packets from `next` on while they are consecutive.
    fn release(&mut self, out: &mut Vec<P>) {
        while let Some(next) = self.next {
            let Some((packet, _)) = self.held.remove(&next) else {
                break;
            };
            out.push(packet);
            self.next = Some(next + 1);
        }
    }
}

/// The unwrapped sequence number nearest to `reference` whose low 16 bits are `sequence`.
fn unwrap(reference: u64, sequence: u16) -> u64 {
    let delta = i64::from(sequence.wrapping_sub(reference as u16) as i16);
    reference.saturating_add_signed(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(buffer: &mut ReorderBuffer<u16>, arrivals: &[(u16, u64)]) -> Vec<u16> {
        let mut out = Vec::new();
        for &(seq, now) in arrivals {
            buffer.push(seq, seq, now, &mut out);
        }
        out
    }

    #[test]
    fn in_order_packets_pass_at_once() {
        let mut b = ReorderBuffer::new(100, 64);
        assert_eq!(run(&mut b, &[(7, 0), (8, 1), (9, 2)]), [7, 8, 9]);
        assert_eq!(b.deadline(), None);
        assert_eq!(b.stats(), ReorderStats::default());
    }

    #[test]
    fn a_retransmission_within_the_wait_fills_its_gap() {
        let mut b = ReorderBuffer::new(100, 64);
        assert_eq!(run(&mut b, &[(1, 0), (3, 5), (4, 6)]), [1]);
        assert_eq!(b.deadline(), Some(105));
        // The NACKed packet 2 comes 40 ms later: everything flows, nothing lost.
        assert_eq!(run(&mut b, &[(2, 45)]), [2, 3, 4]);
        assert_eq!(b.stats().lost, 0);
        assert_eq!(b.stats().reordered, 1);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_gap_that_outlives_the_wait_is_given_up_and_its_packet_is_late_after() {
        let mut b = ReorderBuffer::new(100, 64);
        assert_eq!(run(&mut b, &[(1, 0), (3, 5), (5, 7)]), [1]);
        let mut out = Vec::new();
        b.expire(104, &mut out);
        assert!(out.is_empty());
        b.expire(105, &mut out);
        // 2 given up: 3 goes; 4 is still missing (held 5 arrived at 7).
        assert_eq!(out, [3]);
        b.expire(107, &mut out);
        assert_eq!(out, [3, 5]);
        assert_eq!(b.stats().lost, 2);
        assert_eq!(run(&mut b, &[(2, 120), (4, 121), (6, 122)]), [6]);
        assert_eq!(b.stats().late, 2);
    }

    #[test]
    fn a_full_buffer_gives_up_its_oldest_gap() {
        let mut b = ReorderBuffer::new(10_000, 3);
        assert_eq!(run(&mut b, &[(10, 0), (12, 1), (13, 2), (14, 3)]), [10]);
        assert_eq!(run(&mut b, &[(15, 4)]), [12, 13, 14, 15]);
        assert_eq!(b.stats().lost, 1);
    }

    #[test]
    fn sequence_numbers_wrap_and_reordering_is_counted() {
        let mut b = ReorderBuffer::new(100, 64);
        let got = run(&mut b, &[(65534, 0), (0, 1), (65535, 2), (1, 3)]);
        assert_eq!(got, [65534, 65535, 0, 1]);
        assert_eq!(b.stats().reordered, 1);
        assert_eq!(b.stats().lost, 0);
        // A duplicate, and a packet from long ago.
        assert!(run(&mut b, &[(1, 4), (40000, 5)]).is_empty());
        assert_eq!(b.stats().late, 2);
    }
}
