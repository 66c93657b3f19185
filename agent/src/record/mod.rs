//! Recording on the box: streams named by `[record] streams` are written, without re-encoding,
//! as fMP4 segments and one static DASH manifest per stream and UTC day, under `[record] dir`:
//! `{app}/{name}/{yyyy}/{mm}/{dd}/manifest.mpd`.
//!
//! - [`day`]: UTC days from Unix time;
//! - [`manifest`]: a day's periods and segments, and its MPD;
//! - [`writer`]: the files of one stream's recording;
//! - [`files`]: serving recorded files over HTTP, with ranges;
//! - [`outbox`]: index rows (a stream-day each) kept on disk until a manager acknowledges them;
//! - [`upload`]: finished files and manifests copied to the manager's `[storage]`.
//!
//! A recording starts the moment its stream is published (the hub says so), so the first GOP
//! is in it, and ends with the publisher; a publisher that comes back the same day adds a
//! period. A write that fails (full disk, unwritable directory) stops that recording with the
//! error in [`Recorder::states`]; what was written stays, and the manifest only ever names
//! segments that are complete. `keep_days` removes days older than that, once an hour.

pub mod day;
pub mod files;
pub mod manifest;
pub mod outbox;
pub mod upload;
pub mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use verge_media::fmp4::segmenter::{Output, Segmenter, SegmenterConfig};
use verge_media::hub::{Hub, ReaderKind};
use verge_protocol::index::RecordState;

use writer::{NewDay, StreamWriter};

#[derive(Debug, Clone)]
pub struct RecordSettings {
    pub dir: PathBuf,
    /// Stream patterns (`live/*`, `live/cam`); `*` matches any run of characters.
    pub streams: Vec<String>,
    pub segment_ms: u32,
    /// Days kept; 0 keeps everything.
    pub keep_days: u32,
}

/// One stream's recording, as the recorder tracks it.
#[derive(Debug)]
struct Recording {
    /// `recording` or `failed`.
    state: &'static str,
    error: Option<String>,
    segments: u64,
    bytes: u64,
    /// The publisher session (its start, Unix ms) this recording belongs to.
    session: u64,
    /// Ends the recording early (`record.stop`).
    stop: tokio::sync::watch::Sender<bool>,
}

/// Run-time choices (`record.start` / `record.stop`), over `[record] streams`.
#[derive(Debug, Default)]
struct Choices {
    started: std::collections::HashSet<String>,
    stopped: std::collections::HashSet<String>,
}

/// Whether `stream` matches `pattern`, where `*` matches any run of characters.
pub fn matches(pattern: &str, stream: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return stream.is_empty(),
    };
    let Some(mut left) = stream.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return left.is_empty();
    };
    for part in middle {
        match left.find(part) {
            Some(at) => left = &left[at + part.len()..],
            None => return false,
        }
    }
    left.len() >= last.len() && left.ends_with(last)
}

#[derive(Clone)]
pub struct Recorder {
    hub: Arc<Hub>,
    settings: Arc<RecordSettings>,
    states: Arc<Mutex<HashMap<String, Recording>>>,
    choices: Arc<Mutex<Choices>>,
    /// Days begun, for whoever delivers the index (the MQTT session).
    days: tokio::sync::mpsc::Sender<NewDay>,
    totals: Arc<Totals>,
}

/// What all recordings wrote since the agent started.
#[derive(Debug, Default)]
struct Totals {
    bytes: std::sync::atomic::AtomicU64,
    segments: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
}

/// [`Recorder::totals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderTotals {
    /// Streams being recorded now.
    pub recording: usize,
    pub bytes: u64,
    pub segments: u64,
    /// Recordings stopped by a failed write.
    pub failures: u64,
}

impl Recorder {
    /// A recorder; `days` receives each day a recording begins.
    pub fn new(
        hub: Arc<Hub>,
        settings: RecordSettings,
        days: tokio::sync::mpsc::Sender<NewDay>,
    ) -> Self {
        Self {
            hub,
            settings: Arc::new(settings),
            states: Arc::default(),
            choices: Arc::default(),
            days,
            totals: Arc::default(),
        }
    }

    pub fn totals(&self) -> RecorderTotals {
        use std::sync::atomic::Ordering::Relaxed;
        RecorderTotals {
            recording: lock(&self.states)
                .values()
                .filter(|r| r.state == "recording")
                .count(),
            bytes: self.totals.bytes.load(Relaxed),
            segments: self.totals.segments.load(Relaxed),
            failures: self.totals.failures.load(Relaxed),
        }
    }

    /// Whether and how `stream` is recorded.
    pub fn state(&self, stream: &str) -> RecordState {
        let wanted = self.wanted(stream);
        let states = lock(&self.states);
        let current = states.get(stream);
        RecordState {
            stream: stream.to_string(),
            wanted,
            state: match current {
                Some(r) => r.state.to_string(),
                None if wanted => "waiting".to_string(),
                None => "stopped".to_string(),
            },
            error: current.and_then(|r| r.error.clone()),
            segments: current.map_or(0, |r| r.segments),
            bytes: current.map_or(0, |r| r.bytes),
        }
    }

    /// Records `stream` from now on (at once if it is live).
    pub fn start(&self, stream: &str) -> RecordState {
        {
            let mut choices = lock(&self.choices);
            choices.stopped.remove(stream);
            choices.started.insert(stream.to_string());
        }
        // A failed recording of this session is tried again when asked.
        let failed = lock(&self.states)
            .get(stream)
            .is_some_and(|r| r.state == "failed");
        if failed {
            lock(&self.states).remove(stream);
        }
        tracing::info!(%stream, "recording requested");
        // A live stream starts recording now, so the answer says so.
        self.begin_wanted();
        self.state(stream)
    }

    /// Stops recording `stream` (what is written stays), and does not record it again until
    /// asked.
    pub fn stop(&self, stream: &str) -> RecordState {
        {
            let mut choices = lock(&self.choices);
            choices.started.remove(stream);
            choices.stopped.insert(stream.to_string());
        }
        let mut states = lock(&self.states);
        match states.get(stream) {
            Some(r) if r.state == "recording" => {
                r.stop.send_replace(true);
            }
            Some(_) => {
                states.remove(stream);
            }
            None => {}
        }
        drop(states);
        tracing::info!(%stream, "recording stop requested");
        self.state(stream)
    }

    fn wanted(&self, stream: &str) -> bool {
        let choices = lock(&self.choices);
        choices.started.contains(stream)
            || (!choices.stopped.contains(stream)
                && self.settings.streams.iter().any(|p| matches(p, stream)))
    }

    /// Starts recordings as streams are published, until the task is aborted.
    pub async fn run(self) {
        tracing::info!(dir = %self.settings.dir.display(), streams = ?self.settings.streams, "recorder on");
        let mut changes = self.hub.changes();
        let retention = tokio::spawn(retention(self.settings.clone()));
        loop {
            self.begin_wanted();
            if changes.changed().await.is_err() {
                break;
            }
        }
        retention.abort();
    }

    /// Starts recording every live stream that is wanted and not being recorded (nor failed
    /// on this very publisher session). Never waits: recordings run on tasks of their own.
    fn begin_wanted(&self) {
        for status in self.hub.status() {
            let stream = status.id;
            if !self.wanted(&stream) {
                continue;
            }
            let mut states = lock(&self.states);
            let busy = states
                .get(&stream)
                .is_some_and(|s| s.state == "recording" || s.session == status.started_at);
            if busy {
                continue;
            }
            let Ok(reader) = self.hub.subscribe_as(&stream, ReaderKind::Recorder) else {
                continue;
            };
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            states.insert(
                stream.clone(),
                Recording {
                    state: "recording",
                    error: None,
                    segments: 0,
                    bytes: 0,
                    session: status.started_at,
                    stop,
                },
            );
            drop(states);
            tokio::spawn(self.clone().record(stream, reader, stop_rx));
        }
    }

    async fn record(
        self,
        stream: String,
        mut reader: verge_media::hub::Reader,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        tracing::info!(%stream, "recording");
        let mut segmenter = Segmenter::new(SegmenterConfig {
            target_ms: self.settings.segment_ms,
            per_track: true,
            ..SegmenterConfig::default()
        });
        let mut writer = Some(StreamWriter::new(&self.settings.dir, &stream));
        let mut failure = None;
        let mut ended = false;
        while failure.is_none() {
            let frame = tokio::select! {
                frame = reader.recv() => frame,
                _ = stop.wait_for(|stop| *stop) => None,
            };
            match frame {
                Some(frame) => {
                    if let Err(e) = segmenter.push(&frame) {
                        tracing::debug!(%stream, error = %e, "recorder: frame skipped");
                    }
                }
                None => {
                    let _ = segmenter.finish();
                    ended = true;
                }
            }
            while let Some(out) = segmenter.poll() {
                let Some(mut w) = writer.take() else { break };
                let written = tokio::task::spawn_blocking(move || {
                    let result = match out {
                        Output::Init(init) => {
                            w.on_init(init);
                            Ok(None)
                        }
                        Output::Segment(segment) => {
                            // It began its duration ago (it is cut when the next one starts).
                            let wall = verge_protocol::now_ms().saturating_sub(segment.duration_ms);
                            w.on_segment(&segment, wall)
                        }
                    };
                    (w, result)
                })
                .await;
                match written {
                    Ok((w, Ok(began))) => {
                        if let Some(state) = lock(&self.states).get_mut(&stream) {
                            use std::sync::atomic::Ordering::Relaxed;
                            let t = &self.totals;
                            t.bytes
                                .fetch_add(w.bytes.saturating_sub(state.bytes), Relaxed);
                            t.segments
                                .fetch_add(w.segments.saturating_sub(state.segments), Relaxed);
                            state.segments = w.segments;
                            state.bytes = w.bytes;
                        }
                        writer = Some(w);
                        if let Some(day) = began {
                            tracing::info!(%stream, path = %day.mpd_path, "recording a new day");
                            if self.days.try_send(day).is_err() {
                                tracing::warn!(%stream, "recorder: index queue full; the day is indexed on the next resend");
                            }
                        }
                    }
                    Ok((_, Err(e))) => failure = Some(e.to_string()),
                    Err(e) => failure = Some(format!("writer task: {e}")),
                }
                if failure.is_some() {
                    break;
                }
            }
            if ended {
                break;
            }
        }
        let mut states = lock(&self.states);
        match failure {
            Some(error) => {
                tracing::error!(%stream, %error, "recording stopped: what was written stays");
                self.totals
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(state) = states.get_mut(&stream) {
                    state.state = "failed";
                    state.error = Some(error);
                }
            }
            None if *stop.borrow() => {
                tracing::info!(%stream, "recording stopped on request");
                states.remove(&stream);
            }
            None => {
                tracing::info!(%stream, "recording ended with the publisher");
                states.remove(&stream);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes days older than `keep_days`, now and then once an hour.
async fn retention(settings: Arc<RecordSettings>) {
    if settings.keep_days == 0 {
        return;
    }
    loop {
        let settings = settings.clone();
        let removed = tokio::task::spawn_blocking(move || remove_old_days(&settings)).await;
        if let Ok(removed) = removed
            && removed > 0
        {
            tracing::info!(days = removed, "recorder: removed days past keep_days");
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// `{dir}/{app}/{name}/{yyyy}/{mm}/{dd}` folders older than `keep_days` days, removed.
fn remove_old_days(settings: &RecordSettings) -> usize {
    let today = day::Day::of_unix_ms(verge_protocol::now_ms()).to_days();
    let oldest_kept = today - i64::from(settings.keep_days) + 1;
    let mut removed = 0;
    let dirs = |path: &std::path::Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect()
    };
    for (_, app) in dirs(&settings.dir) {
        for (_, name) in dirs(&app) {
            for (y, year) in dirs(&name) {
                for (m, month) in dirs(&year) {
                    for (d, path) in dirs(&month) {
                        let Some(day) = day::Day::parse(&y, &m, &d) else {
                            continue;
                        };
                        if day.to_days() < oldest_kept && std::fs::remove_dir_all(&path).is_ok() {
                            removed += 1;
                        }
                    }
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("live/*", "live/cam"));
        assert!(!matches("live/*", "other/cam"));
        assert!(matches("live/cam", "live/cam"));
        assert!(!matches("live/cam", "live/cam2"));
        assert!(matches("*", "anything/at-all"));
        assert!(matches("*/cam*", "live/cam-1"));
        assert!(!matches("*/cam*", "live/door"));
        assert!(matches("a*b*c", "a-b-b-c"));
        assert!(!matches("a*b*c", "a-c-b"));
        assert!(!matches("ab*ba", "aba"), "the ends may not overlap");
    }

    #[test]
    fn retention_removes_only_old_day_folders() {
        let dir = std::env::temp_dir().join(format!("verge-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let today = day::Day::of_unix_ms(verge_protocol::now_ms());
        let old = day::Day::from_days(today.to_days() - 10);
        for d in [today, old] {
            std::fs::create_dir_all(dir.join("live/cam").join(d.path())).unwrap();
        }
        std::fs::create_dir_all(dir.join("live/cam/notes/x/y")).unwrap();
        let settings = RecordSettings {
            dir: dir.clone(),
            streams: vec![],
            segment_ms: 2000,
            keep_days: 7,
        };
        assert_eq!(remove_old_days(&settings), 1);
        assert!(dir.join("live/cam").join(today.path()).exists());
        assert!(!dir.join("live/cam").join(old.path()).exists());
        assert!(
            dir.join("live/cam/notes/x/y").exists(),
            "not a day: left alone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
