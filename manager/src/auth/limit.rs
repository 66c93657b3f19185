//! Login attempts per source address: a small leaky bucket each, in a table of bounded size.

use std::collections::HashMap;
use std::net::IpAddr;

/// Failed logins a source may make in a burst; one more is allowed each `refill_secs`.
pub const BURST: u32 = 5;
pub const REFILL_SECS: u64 = 12;
/// Sources remembered at once; past this the table forgets the quietest ones first.
const MAX_SOURCES: usize = 4096;

#[derive(Default)]
pub struct LoginLimiter {
    /// Failures still counted against each source, and when they were last counted (ms).
    sources: HashMap<IpAddr, (u32, u64)>,
}

impl LoginLimiter {
    /// `Err(seconds to wait)` when `ip` has used its attempts.
    pub fn check(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        let Some(&(failures, at)) = self.sources.get(&ip) else {
            return Ok(());
        };
        let left = Self::drained(failures, at, now_ms);
        if left >= BURST {
            let next = at + REFILL_SECS * 1000 * u64::from(left - BURST + 1);
            return Err(next.saturating_sub(now_ms).div_ceil(1000).max(1));
        }
        Ok(())
    }

    pub fn failed(&mut self, ip: IpAddr, now_ms: u64) {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            self.sources
                .retain(|_, &mut (f, at)| Self::drained(f, at, now_ms) > 0);
            if self.sources.len() >= MAX_SOURCES {
                // Still full of recent failures: forget the oldest.
                if let Some(oldest) = self.sources.iter().min_by_key(|(_, (_, at))| *at) {
                    let oldest = *oldest.0;
                    self.sources.remove(&oldest);
                }
            }
        }
        let entry = self.sources.entry(ip).or_insert((0, now_ms));
        *entry = (Self::drained(entry.0, entry.1, now_ms) + 1, now_ms);
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.sources.remove(&ip);
    }

    fn drained(failures: u32, at: u64, now_ms: u64) -> u32 {
        let refills = now_ms.saturating_sub(at) / (REFILL_SECS * 1000);
        failures.saturating_sub(u32::try_from(refills).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_burst_then_one_try_per_refill() {
        let mut limiter = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..BURST {
            assert!(limiter.check(ip, 0).is_ok());
            limiter.failed(ip, 0);
        }
        let wait = limiter.check(ip, 0).unwrap_err();
        assert_eq!(wait, REFILL_SECS);
        assert!(limiter.check(other, 0).is_ok());
        assert!(limiter.check(ip, REFILL_SECS * 1000 - 1).is_err());
        assert!(limiter.check(ip, REFILL_SECS * 1000).is_ok());
        limiter.failed(ip, REFILL_SECS * 1000);
        assert!(limiter.check(ip, REFILL_SECS * 1000).is_err());
        limiter.succeeded(ip);
        assert!(limiter.check(ip, REFILL_SECS * 1000).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut limiter = LoginLimiter::default();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), u64::from(i));
        }
        assert!(limiter.sources.len() <= MAX_SOURCES);
    }
}
