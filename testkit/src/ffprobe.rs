//! ffprobe as a test's real decoder: it reads an input (a file, HTTP-FLV, HLS, DASH) to its
//! end, decoding every frame, and reports what it counted.

use std::path::Path;
use std::time::Duration;

use super::edge::tool;
use super::{Proc, wait_for};

/// Frames ffprobe decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frames {
    pub video: u32,
    pub audio: u32,
    /// Of the video stream; 0 without one.
    pub width: u32,
}

/// A running ffprobe; [`Probe::finish`] waits for its counts.
pub struct Probe(Proc);

impl Probe {
    /// Starts decoding `input`; the log is `{label}.log` in `dir`.
    pub fn start(dir: &Path, label: &str, input: &str) -> Self {
        let args = [
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,width,nb_read_frames",
            "-of",
            "csv=p=0",
            input,
        ];
        Self(Proc::spawn(label, tool("ffprobe"), &args, dir))
    }

    /// Waits (up to 90 s) for the end of the input. Panics unless ffprobe succeeded and said
    /// nothing but its counts: a malformed box or a timestamp problem is reported on stderr.
    pub fn finish(mut self) -> Frames {
        let p = &mut self.0;
        let status = wait_for(Duration::from_secs(90), || p.exit_status());
        assert!(
            status.is_some_and(|s| s.success()),
            "{} failed: {status:?}\n{}",
            p.name,
            p.log_text()
        );
        let mut frames = Frames {
            video: 0,
            audio: 0,
            width: 0,
        };
        for line in p.log_text().lines().filter(|l| !l.is_empty()) {
            match line.split(',').collect::<Vec<_>>().as_slice() {
                ["video", w, n] => {
                    (frames.width, frames.video) = (w.parse().unwrap_or(0), n.parse().unwrap_or(0))
                }
                ["audio", n] => frames.audio = n.parse().unwrap_or(0),
                _ => panic!("{}: unexpected output {line:?}\n{}", p.name, p.log_text()),
            }
        }
        frames
    }
}

/// [`Probe::start`] and [`Probe::finish`] in one.
pub fn count_frames(dir: &Path, label: &str, input: &str) -> Frames {
    Probe::start(dir, label, input).finish()
}
