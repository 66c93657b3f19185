//! Login attempts: a leaky bucket per source address in a table of bounded size, one for all
//! sources together, and how many passwords are checked at once.
//!
//! The per-source bucket slows one guesser; the global one bounds what a guesser with many
//! addresses gets (issue #27: 200 addresses × 5 guesses = 1,000 guesses in 9.7 s). An attempt
//! is counted when it starts and given back when it succeeds, so attempts in flight together
//! cannot all pass the same check. Time is a parameter (milliseconds): no clock in here.

use std::collections::HashMap;
use std::net::IpAddr;

/// Failed logins a source may make in a burst; one more is allowed each `REFILL_SECS`.
pub const BURST: u32 = 5;
pub const REFILL_SECS: u64 = 12;
/// Failed logins from all sources together in a burst; one more each `GLOBAL_REFILL_SECS`.
pub const GLOBAL_BURST: u32 = 30;
pub const GLOBAL_REFILL_SECS: u64 = 2;
/// Passwords checked at once (Argon2 takes a core for tens of milliseconds); a login that
/// finds them all busy is refused at once, not queued.
pub const CHECKS_AT_ONCE: usize = 1;
/// Sources remembered at once; past this the table forgets the quietest ones first.
const MAX_SOURCES: usize = 4096;

/// Why an attempt may not be made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// This source's budget; seconds until it has an attempt again.
    Source(u64),
    /// Everyone's; seconds until there is an attempt again, and whether this refusal begins
    /// an episode that lasts until the budget has refilled entirely (the one to log).
    Everyone { wait: u64, first: bool },
}

/// Failures still counted, and when they were last counted (ms).
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    failures: u32,
    at: u64,
}

impl Bucket {
    /// The failures left after the refills since `at`, counted from `now_ms`.
    fn drained(self, now_ms: u64, refill_secs: u64) -> Self {
        let refills = now_ms.saturating_sub(self.at) / (refill_secs * 1000);
        let failures = self
            .failures
            .saturating_sub(u32::try_from(refills).unwrap_or(u32::MAX));
        // The time of the last refill, so a partial refill interval is not lost.
        let at = if failures == 0 {
            now_ms
        } else {
            self.at + refills * refill_secs * 1000
        };
        Self { failures, at }
    }

    /// `Err(seconds to wait)` when the bucket is full.
    fn room(self, now_ms: u64, burst: u32, refill_secs: u64) -> Result<(), u64> {
        let left = self.drained(now_ms, refill_secs);
        if left.failures < burst {
            return Ok(());
        }
        let next = left.at + refill_secs * 1000 * u64::from(left.failures - burst + 1);
        Err(next.saturating_sub(now_ms).div_ceil(1000).max(1))
    }
}

#[derive(Default)]
pub struct LoginLimiter {
    sources: HashMap<IpAddr, Bucket>,
    everyone: Bucket,
    /// Everyone's budget ran out and has not refilled entirely since.
    refusing_everyone: bool,
}

impl LoginLimiter {
    /// Counts an attempt from `ip` at `now_ms`, as a failure until [`LoginLimiter::succeeded`]
    /// says otherwise; refused when `ip`, or all sources together, have used their attempts.
    pub fn attempt(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), Exhausted> {
        let source = self.sources.get(&ip).copied().unwrap_or_default();
        source
            .room(now_ms, BURST, REFILL_SECS)
            .map_err(Exhausted::Source)?;
        if self.everyone.drained(now_ms, GLOBAL_REFILL_SECS).failures == 0 {
            self.refusing_everyone = false;
        }
        if let Err(wait) = self.everyone.room(now_ms, GLOBAL_BURST, GLOBAL_REFILL_SECS) {
            let first = !std::mem::replace(&mut self.refusing_everyone, true);
            return Err(Exhausted::Everyone { wait, first });
        }
        self.make_room_for(ip, now_ms);
        let source = source.drained(now_ms, REFILL_SECS);
        self.sources.insert(
            ip,
            Bucket {
                failures: source.failures + 1,
                at: source.at,
            },
        );
        let everyone = self.everyone.drained(now_ms, GLOBAL_REFILL_SECS);
        self.everyone = Bucket {
            failures: everyone.failures + 1,
            at: everyone.at,
        };
        Ok(())
    }

    /// The attempt from `ip` was right: its source's failures are forgotten, and the attempt
    /// given back to everyone's budget.
    pub fn succeeded(&mut self, ip: IpAddr, now_ms: u64) {
        self.sources.remove(&ip);
        let everyone = self.everyone.drained(now_ms, GLOBAL_REFILL_SECS);
        self.everyone = Bucket {
            failures: everyone.failures.saturating_sub(1),
            at: everyone.at,
        };
    }

    fn make_room_for(&mut self, ip: IpAddr, now_ms: u64) {
        if self.sources.len() < MAX_SOURCES || self.sources.contains_key(&ip) {
            return;
        }
        self.sources
            .retain(|_, b| b.drained(now_ms, REFILL_SECS).failures > 0);
        if self.sources.len() >= MAX_SOURCES {
            // Still full of recent failures: forget the oldest.
            if let Some(oldest) = self.sources.iter().min_by_key(|(_, b)| b.at) {
                let oldest = *oldest.0;
                self.sources.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from((0xC000_0200 + n).to_be_bytes())
    }

    #[test]
    fn a_source_gets_a_burst_then_one_try_per_refill() {
        let mut limiter = LoginLimiter::default();
        let (one, other) = (ip(1), ip(2));
        for _ in 0..BURST {
            assert!(limiter.attempt(one, 0).is_ok());
        }
        assert_eq!(limiter.attempt(one, 0), Err(Exhausted::Source(REFILL_SECS)));
        assert!(limiter.attempt(other, 0).is_ok());
        assert!(limiter.attempt(one, REFILL_SECS * 1000 - 1).is_err());
        assert!(limiter.attempt(one, REFILL_SECS * 1000).is_ok());
        assert!(limiter.attempt(one, REFILL_SECS * 1000).is_err());
        limiter.succeeded(one, REFILL_SECS * 1000);
        assert!(limiter.attempt(one, REFILL_SECS * 1000).is_ok());
    }

    /// The probe of issue #27: 200 addresses × 5 guesses within 10 s.
    #[test]
    fn many_sources_together_get_the_global_budget_then_one_try_per_refill() {
        let mut limiter = LoginLimiter::default();
        let mut allowed = 0;
        let mut refused_for_everyone = 0;
        let mut episodes = 0;
        for guess in 0..5u64 {
            for source in 0..200u32 {
                let now_ms = guess * 2000 + u64::from(source) * 9;
                match limiter.attempt(ip(source), now_ms) {
                    Ok(()) => allowed += 1,
                    Err(Exhausted::Everyone { wait, first }) => {
                        assert!((1..=GLOBAL_REFILL_SECS).contains(&wait), "{wait}");
                        refused_for_everyone += 1;
                        episodes += u32::from(first);
                    }
                    Err(Exhausted::Source(_)) => panic!("no source made more than {BURST}"),
                }
            }
        }
        // The burst, and one per refill over the ~10 s the guesses took.
        let refills = (4 * 2000 + 199 * 9) / (GLOBAL_REFILL_SECS * 1000);
        assert_eq!(allowed, u64::from(GLOBAL_BURST) + refills);
        assert_eq!(allowed + refused_for_everyone, 1000);
        assert_eq!(episodes, 1, "the refills between do not end the episode");
        // A minute of quiet later, the budget is whole again.
        let later = 70_000;
        for source in 0..GLOBAL_BURST {
            assert!(limiter.attempt(ip(1000 + source), later).is_ok());
        }
        assert_eq!(
            limiter.attempt(ip(2000), later),
            Err(Exhausted::Everyone {
                wait: GLOBAL_REFILL_SECS,
                first: true
            }),
            "a new episode"
        );
    }

    #[test]
    fn a_success_gives_its_attempt_back_to_everyone() {
        let mut limiter = LoginLimiter::default();
        for source in 0..GLOBAL_BURST {
            limiter.attempt(ip(source), 0).unwrap();
        }
        assert!(matches!(
            limiter.attempt(ip(100), 0),
            Err(Exhausted::Everyone { .. })
        ));
        limiter.succeeded(ip(0), 0);
        assert!(limiter.attempt(ip(100), 0).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut limiter = LoginLimiter::default();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            // Spread over time so the global budget is not what stops them.
            let now_ms = u64::from(i) * GLOBAL_REFILL_SECS * 1000;
            limiter
                .attempt(IpAddr::from(i.to_be_bytes()), now_ms)
                .unwrap();
        }
        assert!(limiter.sources.len() <= MAX_SOURCES);
    }
}
