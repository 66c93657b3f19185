//! Live HLS feeds: one per stream that someone is watching over HLS, started by the first
//! request and stopped once nobody has asked for `idle` (so a box segments only what is
//! watched). A feed is a hub reader run through the fMP4 segmenter into a sliding window of
//! segments held in memory; a publisher that comes back while the feed runs continues it
//! (the playlist gets a discontinuity, not a new media sequence).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use verge_media::fmp4::segmenter::{Output, Segmenter, SegmenterConfig};
use verge_media::hub::{Hub, HubError, ReaderKind};

use super::playlist::{Entry, Header, render};

#[derive(Debug, Clone)]
pub struct HlsSettings {
    /// A segment lasts at least this long (to the next keyframe).
    pub segment_ms: u32,
    /// Segments in the playlist.
    pub window: usize,
    /// A feed nobody has asked anything of for this long stops.
    pub idle: Duration,
}

impl Default for HlsSettings {
    fn default() -> Self {
        Self {
            segment_ms: 2000,
            window: 6,
            idle: Duration::from_secs(30),
        }
    }
}

/// Segments kept after they left the playlist, for players a little behind.
const KEPT_AFTER_WINDOW: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("stream {0} is not live")]
    NotLive(String),
    #[error("{0}")]
    Hub(String),
}

struct Held {
    entry: Entry,
    bytes: Bytes,
}

#[derive(Default)]
struct Window {
    inits: VecDeque<(u32, Bytes)>,
    segments: VecDeque<Held>,
    target_secs: u64,
    discontinuity_sequence: u64,
    ended: bool,
}

impl Window {
    fn playlist(&self, window: usize) -> Option<String> {
        if self.segments.is_empty() {
            return None;
        }
        let skip = self.segments.len().saturating_sub(window);
        // Tags before segments that have left the playlist but are still held count too.
        let hidden_tags = self
            .segments
            .iter()
            .take(skip + 1)
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[1].entry.discontinuity || w[1].entry.init != w[0].entry.init)
            .count() as u64;
        let entries: Vec<Entry> = self
            .segments
            .iter()
            .skip(skip)
            .map(|h| h.entry.clone())
            .collect();
        Some(render(
            &Header {
                target_secs: self.target_secs,
                discontinuity_sequence: self.discontinuity_sequence + hidden_tags,
                ended: self.ended,
            },
            &entries,
        ))
    }

    fn push(&mut self, held: Held, keep: usize) {
        self.target_secs = self.target_secs.max(held.entry.duration_ms.div_ceil(1000));
        self.segments.push_back(held);
        while self.segments.len() > keep {
            let Some(gone) = self.segments.pop_front() else {
                break;
            };
            if let Some(next) = self.segments.front()
                && (next.entry.discontinuity || next.entry.init != gone.entry.init)
            {
                self.discontinuity_sequence += 1;
            }
        }
        // Init segments no held segment needs any more go too.
        if let Some(oldest) = self.segments.front().map(|h| h.entry.init) {
            while self.inits.len() > 1 && self.inits.front().is_some_and(|(v, _)| *v < oldest) {
                self.inits.pop_front();
            }
        }
    }
}

/// One stream's feed.
struct Feed {
    window: Mutex<Window>,
    /// Segments produced so far (for waiters).
    produced: watch::Sender<u64>,
    /// Last request, as ms since `started`.
    touched: AtomicU64,
    started: Instant,
}

impl Feed {
    fn touch(&self) {
        self.touched
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let touched = Duration::from_millis(self.touched.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(touched)
    }
}

/// Every live HLS feed of this agent.
#[derive(Clone)]
pub struct LiveHls {
    hub: Arc<Hub>,
    settings: HlsSettings,
    feeds: Arc<Mutex<HashMap<String, Arc<Feed>>>>,
}

impl LiveHls {
    pub fn new(hub: Arc<Hub>, settings: HlsSettings) -> Self {
        Self {
            hub,
            settings,
            feeds: Arc::default(),
        }
    }

    /// The playlist of `stream`, starting its feed if needed and waiting (at most `patience`)
    /// for its first segment. `Ok(None)`: live, but no segment yet.
    pub async fn playlist(
        &self,
        stream: &str,
        patience: Duration,
    ) -> Result<Option<String>, FeedError> {
        let feed = self.feed(stream)?;
        let mut produced = feed.produced.subscribe();
        let _ = tokio::time::timeout(patience, produced.wait_for(|n| *n > 0)).await;
        feed.touch();
        let window = lock(&feed.window);
        Ok(window.playlist(self.settings.window))
    }

    /// Init segment `version` of `stream`, if the feed runs and holds it.
    pub fn init(&self, stream: &str, version: u32) -> Option<Bytes> {
        let feed = self.running(stream)?;
        feed.touch();
        let window = lock(&feed.window);
        window
            .inits
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, b)| b.clone())
    }

    /// Media segment `sequence` of `stream`, if still held.
    pub fn segment(&self, stream: &str, sequence: u64) -> Option<Bytes> {
        let feed = self.running(stream)?;
        feed.touch();
        let window = lock(&feed.window);
        window
            .segments
            .iter()
            .find(|h| h.entry.sequence == sequence)
            .map(|h| h.bytes.clone())
    }

    /// Feeds running now (streams being watched over HLS).
    pub fn running_feeds(&self) -> usize {
        lock(&self.feeds).len()
    }

    fn running(&self, stream: &str) -> Option<Arc<Feed>> {
        lock(&self.feeds).get(stream).cloned()
    }

    fn feed(&self, stream: &str) -> Result<Arc<Feed>, FeedError> {
        let mut feeds = lock(&self.feeds);
        if let Some(feed) = feeds.get(stream) {
            return Ok(feed.clone());
        }
        let reader = self
            .hub
            .subscribe_as(stream, ReaderKind::Hls)
            .map_err(|e| match e {
                HubError::NotLive(_) => FeedError::NotLive(stream.to_string()),
                other => FeedError::Hub(other.to_string()),
            })?;
        let feed = Arc::new(Feed {
            window: Mutex::new(Window::default()),
            produced: watch::channel(0).0,
            touched: AtomicU64::new(0),
            started: Instant::now(),
        });
        feeds.insert(stream.to_string(), feed.clone());
        tracing::info!(%stream, "live HLS feed started");
        tokio::spawn(run_feed(
            self.clone(),
            stream.to_string(),
            feed.clone(),
            reader,
        ));
        Ok(feed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run_feed(
    live: LiveHls,
    stream: String,
    feed: Arc<Feed>,
    mut reader: verge_media::hub::Reader,
) {
    let settings = &live.settings;
    let mut segmenter = Segmenter::new(SegmenterConfig {
        target_ms: settings.segment_ms,
        ..SegmenterConfig::default()
    });
    let keep = settings.window + KEPT_AFTER_WINDOW;
    let (mut init_version, mut produced, mut errors) = (0u32, 0u64, 0u64);
    let mut drain = |segmenter: &mut Segmenter| {
        while let Some(out) = segmenter.poll() {
            let mut window = lock(&feed.window);
            match out {
                Output::Init(init) => {
                    init_version += 1;
                    window.inits.push_back((init_version, init.bytes));
                }
                Output::Segment(segment) => {
                    window.ended = false;
                    let held = Held {
                        entry: Entry {
                            sequence: u64::from(segment.sequence),
                            duration_ms: segment.duration_ms,
                            init: init_version,
                            discontinuity: segment.discontinuity,
                        },
                        bytes: segment.bytes,
                    };
                    window.push(held, keep);
                    produced += 1;
                    feed.produced.send_replace(produced);
                }
            }
        }
    };
    let tick = Duration::from_secs(1);
    'feed: loop {
        // The publisher's frames until it goes (or nobody watches any more).
        loop {
            let frame = tokio::select! {
                frame = reader.recv() => frame,
                () = tokio::time::sleep(tick) => {
                    if feed.idle_for() > settings.idle {
                        break 'feed;
                    }
                    continue;
                }
            };
            let Some(frame) = frame else { break };
            if let Err(e) = segmenter.push(&frame) {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!(%stream, error = %e, errors, "live HLS: frame skipped");
                }
            }
            drain(&mut segmenter);
        }
        if let Err(e) = segmenter.finish() {
            tracing::warn!(%stream, error = %e, "live HLS: last segment lost");
        }
        drain(&mut segmenter);
        lock(&feed.window).ended = true;
        feed.produced.send_modify(|_| {});
        // The publisher may come back while players still ask: then the feed goes on.
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if feed.idle_for() > settings.idle {
                break 'feed;
            }
            if let Ok(next) = live.hub.subscribe_as(&stream, ReaderKind::Hls) {
                reader = next;
                if let Err(e) = segmenter.restart() {
                    tracing::warn!(%stream, error = %e, "live HLS: restart");
                }
                tracing::info!(%stream, "live HLS feed: the publisher is back");
                continue 'feed;
            }
        }
    }
    lock(&live.feeds).remove(&stream);
    tracing::info!(%stream, segments = produced, "live HLS feed stopped: nobody watches");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(sequence: u64, init: u32, discontinuity: bool) -> Held {
        Held {
            entry: Entry {
                sequence,
                duration_ms: 2000,
                init,
                discontinuity,
            },
            bytes: Bytes::new(),
        }
    }

    #[test]
    fn the_discontinuity_sequence_counts_tags_that_left_the_playlist() {
        let mut w = Window::default();
        w.inits.push_back((1, Bytes::new()));
        for (seq, init, disc) in [(1, 1, false), (2, 1, true), (3, 1, false), (4, 1, false)] {
            w.push(held(seq, init, disc), 3);
        }
        // 2 (with its tag) is first now: the tag left with 1.
        let text = w.playlist(3).unwrap();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
        // A playlist shorter than what is held: the hidden tag counts the same way.
        let text = w.playlist(2).unwrap();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
    }

    #[test]
    fn init_segments_go_once_no_held_segment_needs_them() {
        let mut w = Window::default();
        w.inits.push_back((1, Bytes::new()));
        w.push(held(1, 1, false), 2);
        w.inits.push_back((2, Bytes::new()));
        w.push(held(2, 2, false), 2);
        assert_eq!(w.inits.len(), 2);
        w.push(held(3, 2, false), 2);
        assert_eq!(w.inits.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [2]);
        assert_eq!(w.discontinuity_sequence, 1);
    }
}
