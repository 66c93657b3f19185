//! Accepting when accept fails.
//!
//! A failed `accept` (EMFILE or ENFILE: no descriptor left; ENOBUFS, ENOMEM) leaves the
//! connection in the kernel's queue, so an immediate retry fails again at once: a loop that
//! retries without pausing spins a core, and one that logs every failure fills the disk
//! (issue #27: 8.6 million lines in 20 s). So a failure pauses the loop, 5 ms at first and
//! twice as long after each further failure up to 1 s (Go's net/http pauses the same way), and
//! an episode of failures is logged twice: when it begins, and when accept works again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// The pause after the first failure of an episode.
pub const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause, however long the episode.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Failures since the last accept that worked. State only: no socket, no clock.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
    since: Option<Instant>,
}

/// What to do after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// How long to wait before accepting again.
    pub delay: Duration,
    /// This failure begins an episode: the one to log.
    pub first: bool,
}

/// An episode of failures, ended by an accept that worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub failures: u32,
    /// From the first failure to the accept that worked.
    pub lasted: Duration,
}

impl AcceptBackoff {
    /// After a failed accept at `now`.
    pub fn failed(&mut self, now: Instant) -> Pause {
        let first = self.failures == 0;
        if first {
            self.since = Some(now);
        }
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(16);
        Pause {
            delay: (FIRST_PAUSE * 2u32.pow(doublings)).min(MAX_PAUSE),
            first,
        }
    }

    /// After an accept that worked at `now`: the episode it ends, if one was open.
    pub fn succeeded(&mut self, now: Instant) -> Option<Episode> {
        if self.failures == 0 {
            return None;
        }
        let episode = Episode {
            failures: self.failures,
            lasted: self
                .since
                .map(|since| now.saturating_duration_since(since))
                .unwrap_or_default(),
        };
        *self = Self::default();
        Some(episode)
    }
}

/// The next connection on `listener` (named `what` in the log), however many accepts fail
/// first. Cancel-safe: dropping the future loses no connection.
pub async fn next(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    what: &'static str,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                if let Some(episode) = backoff.succeeded(Instant::now()) {
                    tracing::info!(
                        listener = what,
                        failures = episode.failures,
                        lasted = ?episode.lasted,
                        "accepting connections again"
                    );
                }
                return accepted;
            }
            Err(e) => {
                let pause = backoff.failed(Instant::now());
                if pause.first {
                    tracing::error!(
                        listener = what,
                        error = %e,
                        "accept failed; retrying with pauses up to {MAX_PAUSE:?}, logged again once it works"
                    );
                }
                tokio::time::sleep(pause.delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_pause_longer_each_time_and_log_once_per_episode() {
        let mut backoff = AcceptBackoff::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(backoff.succeeded(at(0)), None, "no episode yet");
        let pauses: Vec<Pause> = (0..12).map(|i| backoff.failed(at(i))).collect();
        assert!(pauses[0].first);
        assert!(
            pauses[1..].iter().all(|p| !p.first),
            "one log line per episode"
        );
        let delays: Vec<u64> = pauses.iter().map(|p| p.delay.as_millis() as u64).collect();
        assert_eq!(
            delays,
            [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]
        );
        // A whole night of EMFILE: the pause stays at the cap, the count does not overflow.
        for i in 0..100_000 {
            assert_eq!(backoff.failed(at(12 + i)).delay, MAX_PAUSE);
        }
        assert_eq!(
            backoff.succeeded(at(200_000)),
            Some(Episode {
                failures: 100_012,
                lasted: Duration::from_millis(200_000),
            })
        );
        assert_eq!(backoff.succeeded(at(200_001)), None, "the episode is over");
        let again = backoff.failed(at(300_000));
        assert_eq!(
            again,
            Pause {
                delay: FIRST_PAUSE,
                first: true
            },
            "a new episode starts from the first pause and is logged"
        );
    }
}
