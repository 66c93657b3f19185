//! Healing the agent's retained topics (`presence`, `state`), sans-IO: anyone the broker lets
//! publish can replace or clear them, and the agent puts back what it last published
//! (docs/protocol.md §10).
//!
//! The rule converges by design. A message *matches* when it is ours and its body means what
//! we last published (the JSON value; the envelope's `ts` and `mac` are ignored), so our own
//! echoes never look like damage, however late they come. A mismatch is not repaired at once:
//! the repair waits [`GRACE`] (longer than a broker round trip, so an echo of our newer
//! publish can overtake an older one) and happens only if the latest message seen on the topic
//! still does not match. Repairs are bounded in time: one per [`MIN_INTERVAL`], at most
//! [`MAX_REPAIRS`] per [`WINDOW`] — someone replaying old messages gets a few publishes a
//! minute, never a loop.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a mismatch stands before it is repaired.
pub const GRACE: Duration = Duration::from_secs(1);
/// Least time between two repairs of one topic.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Most repairs of one topic per [`WINDOW`].
pub const MAX_REPAIRS: usize = 3;
pub const WINDOW: Duration = Duration::from_secs(60);

/// What a message received on one of our retained topics is, as the session judged it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Opened with our key, from us: its body.
    Ours(Value),
    /// Empty (cleared), not opening, or someone else's.
    Other,
    /// Ours, from a newer process with our id (a presence of a higher session): not ours to
    /// overwrite.
    Newer,
}

/// One retained topic's healing.
#[derive(Debug, Default)]
pub struct Healer {
    /// The body we last published on this connection; nothing to compare with before it.
    last: Option<Value>,
    /// Whether the latest message seen matches `last`.
    latest_matches: bool,
    /// When a repair is due, if one is waiting.
    due: Option<Instant>,
    /// When the recent repairs were made (within [`WINDOW`]).
    repairs: VecDeque<Instant>,
    /// Repairs refused by the bounds since the last one made, for the log.
    held_back: u64,
}

impl Healer {
    /// A new connection: what was published on the last one is not compared with.
    pub fn connected(&mut self) {
        self.last = None;
        self.due = None;
    }

    /// We published `body` (an announcement, a changed state, or a repair).
    pub fn published(&mut self, body: Value) {
        self.last = Some(body);
        // Our own publish comes back as the latest message; until then nothing is damaged.
        self.latest_matches = true;
        self.due = None;
    }

    /// A message arrived on the topic at `now`.
    pub fn seen(&mut self, message: Seen, now: Instant) {
        let Some(last) = &self.last else {
            // Before our first publish on this connection (the previous run's retained
            // message, delivered on subscribe): the announcement replaces it anyway.
            return;
        };
        self.latest_matches = match message {
            Seen::Ours(body) => body == *last,
            Seen::Newer => true,
            Seen::Other => false,
        };
        if self.latest_matches {
            self.due = None;
        } else if self.due.is_none() {
            let allowed = self
                .repairs
                .back()
                .map_or(now, |at| (*at + MIN_INTERVAL).max(now));
            self.due = Some((now + GRACE).max(allowed));
        }
    }

    /// When [`poll`](Self::poll) next has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// `Some(body)` to publish again when a repair is due at `now` and the bounds allow it.
    pub fn poll(&mut self, now: Instant) -> Option<Value> {
        let due = self.due?;
        if now < due {
            return None;
        }
        self.due = None;
        if self.latest_matches {
            return None;
        }
        while self
            .repairs
            .front()
            .is_some_and(|at| now.duration_since(*at) >= WINDOW)
        {
            self.repairs.pop_front();
        }
        if self.repairs.len() >= MAX_REPAIRS {
            // Wait for the oldest repair to leave the window; meanwhile what is retained stays
            // damaged, and a new mismatch schedules the next try.
            self.held_back += 1;
            let free_at = self.repairs.front().map(|at| *at + WINDOW);
            self.due = free_at;
            return None;
        }
        self.repairs.push_back(now);
        self.held_back = 0;
        // The repair is our publish: its echo comes back as the latest message.
        self.latest_matches = true;
        self.last.clone()
    }

    /// Repairs held back by the bounds since the last one made.
    pub fn held_back(&self) -> u64 {
        self.held_back
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Drives a healer through events (ms since t0) and returns the times it republished.
    fn repairs(healer: &mut Healer, t0: Instant, until_ms: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut now = 0;
        while now <= until_ms {
            if healer.poll(at(t0, now)).is_some() {
                out.push(now);
                healer.published(json!({"seq": 2}));
            }
            now += 10;
        }
        out
    }

    #[test]
    fn our_own_echoes_never_start_a_repair_however_late() {
        let t0 = Instant::now();
        let mut h = Healer::default();
        h.published(json!({"seq": 1}));
        h.published(json!({"seq": 2}));
        // The echo of seq 1 arrives after seq 2 was published, then seq 2's echo: the same
        // content signed at other times matches, the late one is overtaken within the grace.
        h.seen(Seen::Ours(json!({"seq": 1})), at(t0, 5));
        h.seen(Seen::Ours(json!({"seq": 2})), at(t0, 30));
        assert!(repairs(&mut h, t0, 10_000).is_empty());
    }

    #[test]
    fn a_replaced_topic_is_repaired_after_the_grace_and_only_if_still_damaged() {
        let t0 = Instant::now();
        let mut h = Healer::default();
        h.published(json!({"seq": 2}));
        h.seen(Seen::Other, at(t0, 100));
        assert_eq!(h.deadline(), Some(at(t0, 100) + GRACE));
        assert_eq!(repairs(&mut h, t0, 1_050), Vec::<u64>::new());
        assert_eq!(repairs(&mut h, t0, 1_200), vec![1_100]);
    }

    #[test]
    fn nothing_is_compared_before_our_first_publish_on_a_connection() {
        let t0 = Instant::now();
        let mut h = Healer::default();
        h.seen(Seen::Ours(json!({"seq": 0, "from": "the last run"})), t0);
        assert_eq!(h.deadline(), None);
        h.published(json!({"seq": 1}));
        h.connected();
        h.seen(Seen::Other, t0);
        assert_eq!(
            h.deadline(),
            None,
            "a new connection forgets the old publish"
        );
    }

    #[test]
    fn a_newer_process_with_our_id_is_not_overwritten() {
        let t0 = Instant::now();
        let mut h = Healer::default();
        h.published(json!({"session": 1}));
        h.seen(Seen::Newer, t0);
        assert_eq!(h.deadline(), None);
    }

    #[test]
    fn someone_replaying_old_messages_gets_a_few_repairs_a_minute() {
        let t0 = Instant::now();
        let mut h = Healer::default();
        h.published(json!({"seq": 2}));
        let mut made = Vec::new();
        // An old message of ours every 100 ms for five minutes.
        for ms in (0..300_000).step_by(100) {
            h.seen(Seen::Ours(json!({"seq": 1})), at(t0, ms));
            if h.poll(at(t0, ms + 50)).is_some() {
                made.push(ms + 50);
                h.published(json!({"seq": 2}));
            }
        }
        // The first after the grace, then one per 5 s up to three a minute.
        assert_eq!(&made[..3], &[1_050, 6_050, 11_050]);
        for window in made.windows(MAX_REPAIRS + 1) {
            assert!(window[MAX_REPAIRS] - window[0] >= WINDOW.as_millis() as u64);
        }
        assert!(made.len() <= 5 * MAX_REPAIRS, "{} repairs", made.len());
        assert!(made.len() >= 4 * MAX_REPAIRS, "it keeps healing: {made:?}");
        assert!(h.held_back() > 0);
    }
}
