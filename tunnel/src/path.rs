//! What one link's path looks like from its sending end, and how much it may have in flight.
//!
//! A tunnel link runs over MQTT, over TCP, through a broker: its path has a round trip (two
//! TCP hops and the broker) and a rate (the slower of the box's uplink and the broker's
//! delivery). A fixed cap on bytes in flight is either too small for a long fat path (192 KiB
//! over 100 ms is 1.9 MB/s, whatever the link) or, on a thin one, a queue in the broker that
//! every other stream of the link waits behind. So the cap follows the path, as BBR sizes its
//! congestion window:
//!
//! - **round trip**: samples from data and its ack ([`crate::stream::Stream`] times one range
//!   per round trip, never a resent one) and from the link's keepalives; kept as the smallest
//!   of the last [`FILTER_WINDOW`] (the path without queues) and as a smoothed mean (the path as
//!   the receiver's window sees it).
//! - **delivery rate**: bytes acknowledged per interval of at least one round trip; the
//!   largest of the last [`FILTER_WINDOW`].
//! - **in flight**: twice rate × smallest round trip, within `[floor, cap]`. While the link is
//!   bound by this cap the rate it measures is cap / round trip, so the cap doubles each round
//!   trip until the path's rate stops growing; then it holds about one path's worth in queues.
//!
//! Sans-IO: samples and the time in, numbers out.

use std::time::{Duration, Instant};

/// How long a smallest round trip or a largest rate counts before a newer sample replaces it.
pub const FILTER_WINDOW: Duration = Duration::from_secs(10);
/// The shortest interval a rate is measured over: on loopback a round trip is tens of
/// microseconds, and a rate over one would be noise.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The in-flight cap is this many times the path's bytes (rate × round trip).
const GAIN: u64 = 2;

/// A path as an operator reads it: smoothed and smallest round trip in microseconds (0 before
/// the first sample), largest delivery rate in bytes per second, and the bytes it may have in
/// flight now and at most (the window sized to the path, docs/protocol.md §16). Serialized
/// as it stands into the manager's `GET /api/agents/{id}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PathStats {
    pub rtt_us: u64,
    pub min_rtt_us: u64,
    pub delivery_rate: u64,
    pub in_flight_cap: u64,
    pub max_in_flight: u64,
}

#[derive(Debug, Clone)]
pub struct Path {
    srtt: Option<Duration>,
    min_rtt: Option<(Duration, Instant)>,
    /// Bytes acknowledged since the link started.
    delivered: u64,
    /// The interval being measured: its start and `delivered` then.
    interval: Option<(Instant, u64)>,
    max_rate: Option<(u64, Instant)>,
    floor: u64,
    cap: u64,
    in_flight_cap: u64,
}

impl Path {
    /// A path whose in-flight cap starts at `floor` and grows up to `cap` (both at least
    /// 1 byte; a floor above the cap is the cap).
    pub fn new(floor: u64, cap: u64) -> Self {
        let cap = cap.max(1);
        let floor = floor.clamp(1, cap);
        Self {
            srtt: None,
            min_rtt: None,
            delivered: 0,
            interval: None,
            max_rate: None,
            floor,
            cap,
            in_flight_cap: floor,
        }
    }

    /// A round-trip sample.
    pub fn on_rtt(&mut self, sample: Duration, now: Instant) {
        self.srtt = Some(match self.srtt {
            // RFC 6298's smoothing: an eighth of each new sample.
            Some(srtt) => (srtt * 7 + sample) / 8,
            None => sample,
        });
        let stale = self
            .min_rtt
            .is_none_or(|(min, at)| sample <= min || now.duration_since(at) > FILTER_WINDOW);
        if stale {
            self.min_rtt = Some((sample, now));
        }
        self.resize();
    }

    /// `bytes` more were acknowledged.
    pub fn on_delivered(&mut self, bytes: u64, now: Instant) {
        if bytes == 0 {
            return;
        }
        self.delivered += bytes;
        let Some((start, from)) = self.interval else {
            // The first ack opens the first interval; its bytes were sent before it.
            self.interval = Some((now, self.delivered));
            return;
        };
        let elapsed = now.duration_since(start);
        let long_enough = self.min_rtt().unwrap_or(MIN_INTERVAL).max(MIN_INTERVAL);
        if elapsed < long_enough {
            return;
        }
        let rate = ((self.delivered - from) as f64 / elapsed.as_secs_f64()) as u64;
        let replace = self
            .max_rate
            .is_none_or(|(max, at)| rate >= max || now.duration_since(at) > FILTER_WINDOW);
        if replace {
            self.max_rate = Some((rate, now));
        }
        self.interval = Some((now, self.delivered));
        self.resize();
    }

    fn resize(&mut self) {
        if let (Some(rate), Some(rtt)) = (self.delivery_rate(), self.min_rtt()) {
            let bdp = (rate as f64 * rtt.as_secs_f64()) as u64;
            self.in_flight_cap = bdp.saturating_mul(GAIN).clamp(self.floor, self.cap);
        }
    }

    /// The smoothed round trip: what a receiver's window must cover.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The smallest recent round trip: the path without its queues.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|(rtt, _)| rtt)
    }

    /// The largest recent delivery rate, in bytes per second.
    pub fn delivery_rate(&self) -> Option<u64> {
        self.max_rate.map(|(rate, _)| rate)
    }

    /// Bytes the link may have in flight now.
    pub fn in_flight_cap(&self) -> u64 {
        self.in_flight_cap
    }

    /// The most it may ever have (what the broker holds).
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The broker now holds `cap` for this link (it moved to a larger log, or back).
    /// What the operator sees of this path ([`PathStats`]).
    pub fn stats(&self) -> PathStats {
        let micros = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
        PathStats {
            rtt_us: micros(self.rtt()),
            min_rtt_us: micros(self.min_rtt()),
            delivery_rate: self.delivery_rate().unwrap_or(0),
            in_flight_cap: self.in_flight_cap(),
            max_in_flight: self.cap(),
        }
    }

    pub fn set_cap(&mut self, cap: u64, floor: u64) {
        self.cap = cap.max(1);
        self.floor = floor.clamp(1, self.cap);
        self.in_flight_cap = self.in_flight_cap.clamp(self.floor, self.cap);
        self.resize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// A sender bound by its own cap on a path of `rtt` and `rate` bytes/s: each round trip
    /// it delivers min(cap, rate × rtt) bytes, acknowledged in four acks.
    fn run(path: &mut Path, start: Instant, rtt: Duration, rate: u64, rounds: u32) -> Instant {
        let mut now = start;
        for _ in 0..rounds {
            let bytes = path
                .in_flight_cap()
                .min((rate as f64 * rtt.as_secs_f64()) as u64);
            for _ in 0..4 {
                now += rtt / 4;
                path.on_delivered(bytes / 4, now);
            }
            path.on_rtt(rtt, now);
        }
        now
    }

    #[test]
    fn the_cap_grows_to_twice_the_path_and_no_further() {
        // 100 ms and 12.5 MB/s (100 Mbit/s): 1.25 MB of path.
        let mut path = Path::new(256 * KIB, 16 << 20);
        let rtt = Duration::from_millis(100);
        let rate = 12_500_000;
        let start = Instant::now();
        path.on_rtt(rtt, start);
        assert_eq!(path.in_flight_cap(), 256 * KIB);
        run(&mut path, start, rtt, rate, 12);
        let cap = path.in_flight_cap();
        assert!(
            (2_300_000..=2_600_000).contains(&cap),
            "cap {cap} should be about 2 × 1.25 MB"
        );
        let rate_seen = path.delivery_rate().unwrap();
        assert!(
            (12_000_000..=13_000_000).contains(&rate_seen),
            "{rate_seen}"
        );
    }

    #[test]
    fn the_cap_stays_within_floor_and_ceiling() {
        let rtt = Duration::from_millis(200);
        let start = Instant::now();
        // A path far larger than what the broker holds: the ceiling.
        let mut fat = Path::new(64 * KIB, 192 * KIB);
        fat.on_rtt(rtt, start);
        run(&mut fat, start, rtt, 100_000_000, 10);
        assert_eq!(fat.in_flight_cap(), 192 * KIB);
        // A path of a few KiB (loopback): the floor.
        let mut short = Path::new(256 * KIB, 4 << 20);
        let rtt = Duration::from_micros(200);
        short.on_rtt(rtt, start);
        run(&mut short, start, rtt, 100_000_000, 200);
        assert_eq!(short.in_flight_cap(), 256 * KIB);
        assert_eq!(Path::new(1 << 20, 64 * KIB).in_flight_cap(), 64 * KIB);
    }

    #[test]
    fn round_trips_keep_their_minimum_for_a_while_then_follow_the_path() {
        let start = Instant::now();
        let mut path = Path::new(KIB, KIB);
        path.on_rtt(Duration::from_millis(50), start);
        path.on_rtt(Duration::from_millis(400), start + Duration::from_secs(1));
        assert_eq!(path.min_rtt(), Some(Duration::from_millis(50)));
        let srtt = path.rtt().unwrap();
        assert!(srtt > Duration::from_millis(50) && srtt < Duration::from_millis(400));
        // The path got longer for good (a new route): after the window the new value counts.
        let later = start + FILTER_WINDOW + Duration::from_secs(2);
        path.on_rtt(Duration::from_millis(300), later);
        assert_eq!(path.min_rtt(), Some(Duration::from_millis(300)));
    }

    #[test]
    fn a_slower_path_brings_the_cap_down_after_the_filter_window() {
        let rtt = Duration::from_millis(100);
        let start = Instant::now();
        let mut path = Path::new(64 * KIB, 16 << 20);
        path.on_rtt(rtt, start);
        let now = run(&mut path, start, rtt, 12_500_000, 12);
        let fast = path.in_flight_cap();
        // The link drops to a tenth (a 4G cell gets busy); the old maximum ages out.
        run(&mut path, now, rtt, 1_250_000, 130);
        let slow = path.in_flight_cap();
        assert!(slow < fast / 5, "fast {fast}, slow {slow}");
        assert!(slow >= 2 * 125_000, "{slow}");
    }
}
