//! Pacing a new viewer's backlog. A viewer starts at the stream's cached keyframe, so it gets
//! the whole GOP so far (up to a GOP of frames, hundreds of kilobytes) the moment it connects.
//! Sent at once, fifty viewers joining together put tens of megabytes on the wire in one go and
//! socket buffers on the way overflow: frames are lost exactly when a crowd arrives. The
//! keyframe still goes at once (the first picture is as fast as before); the frames after it
//! follow at `speedup` times their own pace, so the viewer reaches the live edge after
//! `backlog / (speedup - 1)` and nothing is sent faster than `speedup` times the stream's rate.
//!
//! Sans-IO: the viewer's sender asks [`Backlog::due`] when a frame may go and sleeps until then.

use std::time::Duration;

use tokio::time::Instant;

/// The longest one frame is held. A frame due later than this is past a jump in the
/// timestamps (a publisher that restarted): pacing starts again from it.
const MAX_HOLD: Duration = Duration::from_millis(500);

/// How a viewer's backlog is paced.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// Times real time; 0 sends the backlog at once.
    speedup: u32,
    /// When the first frame of the backlog went, and its timestamp (ms).
    start: Option<(Instant, u32)>,
}

impl Backlog {
    pub fn new(speedup: u32) -> Self {
        Self {
            speedup,
            start: None,
        }
    }

    /// A new backlog begins (the viewer joined, or was sent the cache again): its first frame
    /// goes at once.
    pub fn restart(&mut self) {
        self.start = None;
    }

    /// When the frame with `timestamp` (ms) may go; `None`: now. Pacing starts at the first
    /// keyframe: what comes before it (metadata, sequence headers, stamped with the stream's
    /// start) goes at once.
    pub fn due(&mut self, timestamp: u32, keyframe: bool, now: Instant) -> Option<Instant> {
        if self.speedup == 0 {
            return None;
        }
        let Some((at, first)) = self.start else {
            if keyframe {
                self.start = Some((now, timestamp));
            }
            return None;
        };
        // Timestamps may step back (audio before video, a publisher's restart): never wait for
        // those.
        let ahead = timestamp.wrapping_sub(first) as i32;
        if ahead <= 0 {
            return None;
        }
        let due = at + Duration::from_millis(ahead as u64) / self.speedup;
        if due > now + MAX_HOLD {
            self.start = Some((now, timestamp));
            return None;
        }
        (due > now).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_goes_at_once_and_the_rest_at_the_speedup() {
        let t0 = Instant::now();
        let mut pace = Backlog::new(4);
        // Sequence headers stamped with the stream's start go at once and start nothing.
        assert_eq!(pace.due(0, false, t0), None);
        assert_eq!(pace.due(1000, true, t0), None, "the keyframe is not held");
        assert_eq!(
            pace.due(1040, false, t0),
            Some(t0 + Duration::from_millis(10))
        );
        assert_eq!(
            pace.due(2000, false, t0),
            Some(t0 + Duration::from_millis(250))
        );
        // Past its time already: now.
        assert_eq!(pace.due(1040, false, t0 + Duration::from_millis(20)), None);
        // A step back is not waited for.
        assert_eq!(pace.due(900, false, t0), None);
        pace.restart();
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(pace.due(9000, true, t1), None);
        assert_eq!(
            pace.due(9400, false, t1),
            Some(t1 + Duration::from_millis(100))
        );
        // A jump far ahead (a publisher's restart) starts pacing again rather than waiting.
        assert_eq!(pace.due(60_000, false, t1), None);
        assert_eq!(
            pace.due(60_400, false, t1),
            Some(t1 + Duration::from_millis(100))
        );
    }

    #[test]
    fn timestamps_that_wrap_still_pace_and_zero_sends_at_once() {
        let t0 = Instant::now();
        let mut pace = Backlog::new(2);
        assert_eq!(pace.due(u32::MAX - 10, true, t0), None);
        assert_eq!(
            pace.due(29, false, t0),
            Some(t0 + Duration::from_millis(20))
        );
        let mut off = Backlog::new(0);
        assert_eq!(off.due(0, true, t0), None);
        assert_eq!(off.due(5000, false, t0), None);
    }
}
