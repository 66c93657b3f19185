//! Reconnect delays: exponential with full jitter, so a fleet that lost its broker at the same
//! moment does not come back at the same moment. Two ceilings: a broker that is not there
//! (connection refused) is tried again within `max`, so a fleet is back moments after it
//! returns; a broker that took the connection but did not bring the session up (busy
//! registering a fleet, or refusing us) within [`BUSY_MAX`], so a connection storm is not fed
//! by its own retries.

use std::time::Duration;

/// The ceiling of the delays after a broker took the connection but brought no session up.
pub const BUSY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in `[min, min(max, min·2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        self.delay_within(self.max)
    }

    /// The delay after the broker took the connection but brought no session up: as
    /// [`Backoff::next_delay`] with [`BUSY_MAX`] (or `max`, if larger) as the ceiling.
    pub fn next_delay_busy(&mut self) -> Duration {
        self.delay_within(self.max.max(BUSY_MAX))
    }

    fn delay_within(&mut self, max: Duration) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(max);
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(random_unit())
    }

    /// Call after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        // Without randomness the delay is still bounded; only the spread is lost.
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_and_grow_then_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(min, max);
        let mut ceilings = vec![];
        for attempt in 0..40u32 {
            let d = b.next_delay();
            let ceiling = min.saturating_mul(1 << attempt.min(16)).min(max);
            assert!(
                d >= min && d <= ceiling,
                "attempt {attempt}: {d:?} outside [{min:?}, {ceiling:?}]"
            );
            ceilings.push(ceiling);
        }
        assert_eq!(*ceilings.last().unwrap(), max);
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    fn a_busy_broker_is_given_a_higher_ceiling() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        let busy: Vec<Duration> = (0..20).map(|_| b.next_delay_busy()).collect();
        assert!(busy.iter().all(|d| *d >= min && *d <= BUSY_MAX));
        assert!(
            busy.iter().any(|d| *d > max),
            "some busy delays pass the refused ceiling: {busy:?}"
        );
        // A refusal after that (the broker went away) is back within `max`.
        assert!(b.next_delay() <= max);
    }

    #[test]
    fn delays_are_spread() {
        let mut delays: Vec<Duration> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
                for _ in 0..5 {
                    b.next_delay();
                }
                b.next_delay()
            })
            .collect();
        delays.dedup();
        assert!(
            delays.len() > 10,
            "twenty fresh backoffs gave nearly the same delay: {delays:?}"
        );
    }
}
