//! The stream hub: per stream one publisher and many readers.
//!
//! A new reader is handed the stream's metadata, its sequence headers and the GOP cache (every
//! frame since the last keyframe), so its first picture is the last keyframe, at once. Each
//! reader has a bounded queue (bytes and frames); a reader that falls behind has its queue
//! dropped and skips ahead to the next keyframe, so it never grows memory and never slows the
//! publisher or the other readers. When the publisher leaves, readers drain what they have and
//! then see the end of the stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::codec::{aac, avc};
use crate::flv::tag;
use crate::rtmp::session::MediaKind;

/// One FLV tag body as RTMP carries it, with its timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: MediaKind,
    pub timestamp: u32,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_keyframe(&self) -> bool {
        self.kind == MediaKind::Video
            && tag::is_keyframe(&self.payload)
            && !self.is_sequence_header()
    }

    pub fn is_sequence_header(&self) -> bool {
        tag::is_sequence_header(self.kind.type_id(), &self.payload)
    }
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most bytes queued for one reader before it is made to skip to the next keyframe.
    pub reader_queue_bytes: usize,
    /// Most frames queued for one reader.
    pub reader_queue_frames: usize,
    /// Largest GOP kept for new readers; a longer GOP is not cached (readers wait for the next
    /// keyframe instead).
    pub gop_max_bytes: usize,
    /// Most live streams (publishers) at once.
    pub max_streams: usize,
    /// Most readers at once across all streams; with the per-reader queue bound this bounds
    /// what viewers can make the hub hold.
    pub max_readers: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            reader_queue_bytes: 8 * 1024 * 1024,
            reader_queue_frames: 2048,
            gop_max_bytes: 8 * 1024 * 1024,
            max_streams: 64,
            max_readers: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("stream {0} already has a publisher")]
    AlreadyPublishing(String),
    #[error("stream {0} is not live")]
    NotLive(String),
    #[error("this agent already carries its maximum of {0} streams")]
    TooManyStreams(usize),
    #[error("this agent already serves its maximum of {0} viewers")]
    TooManyReaders(usize),
}

/// What the hub knows of a live stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStatus {
    /// `{app}/{name}`.
    pub id: String,
    /// Unix ms.
    pub started_at: u64,
    pub publisher: String,
    pub video: Option<String>,
    pub audio: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub bitrate_kbps: u32,
    pub readers: usize,
    /// Frames come out of display order (non-zero FLV composition times): B-frames.
    pub b_frames: bool,
}

/// Who reads a stream, for the agent's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    Rtmp,
    Flv,
    Webrtc,
    Hls,
    Recorder,
    /// A transcoder feeding other readers (the Opus audio of WebRTC viewers): not a viewer.
    Transcoder,
    Other,
}

impl ReaderKind {
    pub const ALL: [ReaderKind; 7] = [
        ReaderKind::Rtmp,
        ReaderKind::Flv,
        ReaderKind::Webrtc,
        ReaderKind::Hls,
        ReaderKind::Recorder,
        ReaderKind::Transcoder,
        ReaderKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReaderKind::Rtmp => "rtmp",
            ReaderKind::Flv => "flv",
            ReaderKind::Webrtc => "webrtc",
            ReaderKind::Hls => "hls",
            ReaderKind::Recorder => "recorder",
            ReaderKind::Transcoder => "transcoder",
            ReaderKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Running totals since the hub started (atomics: readers count without the stream's lock).
#[derive(Default)]
struct Totals {
    publishes: AtomicU64,
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    readers: [AtomicUsize; 7],
    bytes_out: [AtomicU64; 7],
    dropped: [AtomicU64; 7],
}

/// [`Hub::totals`]: what went through the hub since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HubTotals {
    /// Publishers accepted.
    pub publishes: u64,
    pub frames_in: u64,
    /// FLV tag bodies from publishers.
    pub bytes_in: u64,
    /// Per kind of reader: (kind, readers now, bytes handed to them, frames they lost by
    /// falling behind).
    pub readers: Vec<(ReaderKind, usize, u64, u64)>,
}

#[derive(Default)]
pub struct Hub {
    config: HubConfig,
    streams: Mutex<HashMap<String, Arc<Channel>>>,
    readers: Arc<AtomicUsize>,
    totals: Arc<Totals>,
    /// Bumped whenever a stream starts or ends, for owners that act on it (the recorder).
    changes: tokio::sync::watch::Sender<u64>,
}

struct Channel {
    id: String,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    publisher: String,
    started_at: u64,
    ended: bool,
    metadata: Option<Frame>,
    video_header: Option<Frame>,
    audio_header: Option<Frame>,
    gop: VecDeque<Frame>,
    gop_bytes: usize,
    /// False while the GOP outgrew the cache; true again from the next keyframe.
    gop_valid: bool,
    readers: HashMap<u64, Slot>,
    next_reader: u64,
    video: Option<String>,
    audio: Option<String>,
    size: Option<(u32, u32)>,
    rate: RateMeter,
    /// The publisher's audio and video bytes.
    media_in: MediaMeter,
    b_frames: bool,
}

struct Slot {
    kind: ReaderKind,
    /// Who reads, as its owner names it (a URL, a session), for [`Hub::peers`].
    label: String,
    /// Audio and video bytes this reader took.
    media_out: MediaMeter,
    queue: VecDeque<Frame>,
    bytes: usize,
    skipping: bool,
    dropped: u64,
    notify: Arc<Notify>,
}

/// Audio and video bytes through one end of a stream, with their rates over the last
/// [`MediaMeter::PERIOD`] (LiveGo's `/stat/livestat` numbers, which it also takes over 5 s).
#[derive(Debug, Clone, Default)]
struct MediaMeter {
    video: u64,
    audio: u64,
    /// When the current period began, and the totals then.
    mark: Option<(Instant, u64, u64)>,
    video_kbps: u64,
    audio_kbps: u64,
}

impl MediaMeter {
    const PERIOD: Duration = Duration::from_secs(5);

    fn add(&mut self, frame: &Frame, now: Instant) {
        match frame.kind {
            MediaKind::Video => self.video += frame.payload.len() as u64,
            MediaKind::Audio => self.audio += frame.payload.len() as u64,
            MediaKind::Data => return,
        }
        // The first frame opens the period; what came with it is before it.
        let Some((at, v0, a0)) = self.mark else {
            self.mark = Some((now, self.video, self.audio));
            return;
        };
        let ms = now.saturating_duration_since(at).as_millis() as u64;
        if ms >= Self::PERIOD.as_millis() as u64 {
            self.video_kbps = (self.video - v0) * 8 / ms;
            self.audio_kbps = (self.audio - a0) * 8 / ms;
            self.mark = Some((now, self.video, self.audio));
        }
    }

    fn snapshot(&self) -> MediaBytes {
        MediaBytes {
            video_bytes: self.video,
            video_kbps: self.video_kbps,
            audio_bytes: self.audio,
            audio_kbps: self.audio_kbps,
        }
    }
}

/// Audio and video bytes through one publisher or reader since it began, and their rates
/// (kbit/s) over the last 5 s. FLV tag bodies: the media as the hub holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaBytes {
    pub video_bytes: u64,
    pub video_kbps: u64,
    pub audio_bytes: u64,
    pub audio_kbps: u64,
}

/// One end of a stream: its publisher, or one of its readers ([`Hub::peers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// The reader's number within its stream (0 for the publisher).
    pub id: u64,
    /// `None` for the publisher.
    pub kind: Option<ReaderKind>,
    /// The publisher's name (`RTMP {address}`), or the label its owner gave a reader.
    pub label: String,
    pub media: MediaBytes,
}

/// A live stream's publisher and readers.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPeers {
    pub stream: String,
    pub publisher: Peer,
    pub readers: Vec<Peer>,
}

/// Frames and bytes per second over the last full second.
struct RateMeter {
    window_start: Instant,
    video_frames: u32,
    bytes: u64,
    fps: Option<f64>,
    kbps: u32,
}

impl RateMeter {
    fn new() -> Self {
        Self {
            window_start: Instant::now(),
            video_frames: 0,
            bytes: 0,
            fps: None,
            kbps: 0,
        }
    }

    fn add(&mut self, frame: &Frame, now: Instant) {
        if frame.kind == MediaKind::Video && !frame.is_sequence_header() {
            self.video_frames += 1;
        }
        self.bytes += frame.payload.len() as u64;
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= Duration::from_secs(1) {
            let secs = elapsed.as_secs_f64();
            self.fps = Some((f64::from(self.video_frames) / secs * 100.0).round() / 100.0);
            self.kbps = (self.bytes as f64 * 8.0 / 1000.0 / secs) as u32;
            self.window_start = now;
            self.video_frames = 0;
            self.bytes = 0;
        }
    }
}

fn lock(state: &Mutex<ChannelState>) -> MutexGuard<'_, ChannelState> {
    // The state is plain data; a panic elsewhere must not take every stream down with it.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Self {
            config,
            streams: Mutex::new(HashMap::new()),
            readers: Arc::new(AtomicUsize::new(0)),
            totals: Arc::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes whenever a stream starts or ends.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims stream `id` (`{app}/{name}`) for a publisher at `publisher` (its address).
    pub fn publish(self: &Arc<Self>, id: &str, publisher: &str) -> Result<Publisher, HubError> {
        let mut streams = self.streams();
        if streams.contains_key(id) {
            return Err(HubError::AlreadyPublishing(id.to_string()));
        }
        if streams.len() >= self.config.max_streams {
            return Err(HubError::TooManyStreams(self.config.max_streams));
        }
        let channel = Arc::new(Channel {
            id: id.to_string(),
            state: Mutex::new(ChannelState {
                publisher: publisher.to_string(),
                started_at: unix_ms(),
                ended: false,
                metadata: None,
                video_header: None,
                audio_header: None,
                gop: VecDeque::new(),
                gop_bytes: 0,
                gop_valid: false,
                readers: HashMap::new(),
                next_reader: 1,
                video: None,
                audio: None,
                size: None,
                rate: RateMeter::new(),
                media_in: MediaMeter::default(),
                b_frames: false,
            }),
        });
        streams.insert(id.to_string(), channel.clone());
        drop(streams);
        self.totals.publishes.fetch_add(1, Ordering::Relaxed);
        self.changes.send_modify(|n| *n += 1);
        Ok(Publisher {
            hub: self.clone(),
            channel,
        })
    }

    /// A reader of live stream `id`.
    pub fn subscribe(&self, id: &str) -> Result<Reader, HubError> {
        self.subscribe_as(id, ReaderKind::Other)
    }

    /// What went through the hub since it started, and who reads now.
    pub fn totals(&self) -> HubTotals {
        let t = &self.totals;
        HubTotals {
            publishes: t.publishes.load(Ordering::Relaxed),
            frames_in: t.frames_in.load(Ordering::Relaxed),
            bytes_in: t.bytes_in.load(Ordering::Relaxed),
            readers: ReaderKind::ALL
                .iter()
                .map(|&k| {
                    let i = k.index();
                    (
                        k,
                        t.readers[i].load(Ordering::Relaxed),
                        t.bytes_out[i].load(Ordering::Relaxed),
                        t.dropped[i].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }

    /// A reader of live stream `id`, counted as `kind`.
    pub fn subscribe_as(&self, id: &str, kind: ReaderKind) -> Result<Reader, HubError> {
        let not_live = || HubError::NotLive(id.to_string());
        let channel = self.streams().get(id).cloned().ok_or_else(not_live)?;
        let limit = self.config.max_readers;
        if self
            .readers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            return Err(HubError::TooManyReaders(limit));
        }
        // From here the count is held by the Reader (or given back below).
        self.totals.readers[kind.index()].fetch_add(1, Ordering::Relaxed);
        let count = ReaderCount {
            all: self.readers.clone(),
            totals: self.totals.clone(),
            kind,
        };
        let notify = Arc::new(Notify::new());
        let reader_id = {
            let mut st = lock(&channel.state);
            if st.ended {
                return Err(not_live());
            }
            let mut queue = VecDeque::new();
            queue.extend(st.metadata.clone());
            queue.extend(st.video_header.clone());
            queue.extend(st.audio_header.clone());
            if st.gop_valid {
                queue.extend(st.gop.iter().cloned());
            }
            let bytes = queue.iter().map(|f| f.payload.len()).sum();
            let reader_id = st.next_reader;
            st.next_reader += 1;
            // Without a cached GOP the reader must wait for the next keyframe.
            let skipping = !st.gop_valid;
            st.readers.insert(
                reader_id,
                Slot {
                    kind,
                    label: String::new(),
                    media_out: MediaMeter::default(),
                    queue,
                    bytes,
                    skipping,
                    dropped: 0,
                    notify: notify.clone(),
                },
            );
            reader_id
        };
        Ok(Reader {
            channel,
            id: reader_id,
            notify,
            count,
        })
    }

    /// The publisher and readers of live stream `only`, or of every live stream (sorted by
    /// id), with their bytes.
    pub fn peers(&self, only: Option<&str>) -> Vec<StreamPeers> {
        let mut channels: Vec<Arc<Channel>> = match only {
            Some(id) => self.streams().get(id).cloned().into_iter().collect(),
            None => self.streams().values().cloned().collect(),
        };
        channels.sort_by(|a, b| a.id.cmp(&b.id));
        channels
            .iter()
            .map(|channel| {
                let st = lock(&channel.state);
                let mut readers: Vec<Peer> = st
                    .readers
                    .iter()
                    .map(|(id, slot)| Peer {
                        id: *id,
                        kind: Some(slot.kind),
                        label: slot.label.clone(),
                        media: slot.media_out.snapshot(),
                    })
                    .collect();
                readers.sort_by_key(|r| r.id);
                StreamPeers {
                    stream: channel.id.clone(),
                    publisher: Peer {
                        id: 0,
                        kind: None,
                        label: st.publisher.clone(),
                        media: st.media_in.snapshot(),
                    },
                    readers,
                }
            })
            .collect()
    }

    /// Every live stream, sorted by id.
    pub fn status(&self) -> Vec<StreamStatus> {
        let channels: Vec<Arc<Channel>> = self.streams().values().cloned().collect();
        let mut all: Vec<StreamStatus> = channels
            .iter()
            .map(|c| {
                let st = lock(&c.state);
                StreamStatus {
                    id: c.id.clone(),
                    started_at: st.started_at,
                    publisher: st.publisher.clone(),
                    video: st.video.clone(),
                    audio: st.audio.clone(),
                    width: st.size.map(|s| s.0),
                    height: st.size.map(|s| s.1),
                    fps: st.rate.fps,
                    bitrate_kbps: st.rate.kbps,
                    readers: st
                        .readers
                        .values()
                        .filter(|r| r.kind != ReaderKind::Transcoder)
                        .count(),
                    b_frames: st.b_frames,
                }
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.streams().contains_key(id)
    }
}

/// The publishing side of a stream; dropping it ends the stream.
pub struct Publisher {
    hub: Arc<Hub>,
    channel: Arc<Channel>,
}

impl Publisher {
    pub fn id(&self) -> &str {
        &self.channel.id
    }

    /// Hands a frame to every reader and to the GOP cache. Never waits.
    pub fn push(&self, frame: Frame) {
        let config = &self.hub.config;
        let totals = &self.hub.totals;
        totals.frames_in.fetch_add(1, Ordering::Relaxed);
        totals
            .bytes_in
            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
        let mut guard = lock(&self.channel.state);
        let st = &mut *guard;
        let now = Instant::now();
        st.rate.add(&frame, now);
        st.media_in.add(&frame, now);
        match frame.kind {
            MediaKind::Data => st.metadata = Some(frame.clone()),
            MediaKind::Video if frame.is_sequence_header() => {
                describe_video(st, &frame);
                st.video_header = Some(frame.clone());
            }
            MediaKind::Audio if frame.is_sequence_header() => {
                describe_audio(st, &frame);
                st.audio_header = Some(frame.clone());
            }
            _ => {
                if frame.kind == MediaKind::Video && !st.b_frames && has_composition_offset(&frame)
                {
                    st.b_frames = true;
                }
                cache_in_gop(st, &frame, config.gop_max_bytes)
            }
        }
        let keyframe = frame.is_keyframe();
        let always = frame.kind == MediaKind::Data || frame.is_sequence_header();
        for slot in st.readers.values_mut() {
            if slot.skipping && !keyframe && !always {
                slot.dropped += 1;
                totals.dropped[slot.kind.index()].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if keyframe {
                slot.skipping = false;
            }
            let len = frame.payload.len();
            if !always
                && (slot.bytes + len > config.reader_queue_bytes
                    || slot.queue.len() >= config.reader_queue_frames)
            {
                // Too far behind: drop what is queued and start again at the next keyframe.
                slot.dropped += slot.queue.len() as u64 + 1;
                totals.dropped[slot.kind.index()]
                    .fetch_add(slot.queue.len() as u64 + 1, Ordering::Relaxed);
                slot.queue.clear();
                slot.bytes = 0;
                slot.skipping = true;
                continue;
            }
            slot.bytes += len;
            slot.queue.push_back(frame.clone());
            slot.notify.notify_one();
        }
    }
}

/// An AVC frame (codec 7, packet type 1) with a non-zero composition time: displayed at another
/// time than decoded, which only reordering (B-frames) needs.
fn has_composition_offset(frame: &Frame) -> bool {
    matches!(frame.payload.get(..5), Some([first, 1, c0, c1, c2]) if first & 0x0f == 7 && [*c0, *c1, *c2] != [0, 0, 0])
}

fn cache_in_gop(st: &mut ChannelState, frame: &Frame, max_bytes: usize) {
    if frame.is_keyframe() {
        st.gop.clear();
        st.gop_bytes = 0;
        st.gop_valid = true;
    }
    if !st.gop_valid {
        return;
    }
    st.gop_bytes += frame.payload.len();
    st.gop.push_back(frame.clone());
    if st.gop_bytes > max_bytes {
        st.gop.clear();
        st.gop_bytes = 0;
        st.gop_valid = false;
    }
}

fn describe_video(st: &mut ChannelState, frame: &Frame) {
    let Ok(parsed) = tag::parse_video(&frame.payload) else {
        return;
    };
    let Ok(config) = avc::parse_avc_config(&parsed.data) else {
        return;
    };
    let profile = match config.profile {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4",
        _ => "",
    };
    st.video = Some(format!("H.264 {profile}").trim_end().to_string());
    if let Some(sps) = config.sps.first()
        && let Ok(info) = avc::parse_sps(sps)
    {
        st.size = Some((info.width, info.height));
    }
}

fn describe_audio(st: &mut ChannelState, frame: &Frame) {
    if let Some((crate::flv::make::OpusPacketType::SequenceStart, head)) =
        crate::flv::make::parse_opus(&frame.payload)
    {
        let channels = head.get(9).copied().unwrap_or(2);
        st.audio = Some(format!("Opus 48000 Hz {channels}ch"));
        return;
    }
    let Ok(parsed) = tag::parse_audio(&frame.payload) else {
        return;
    };
    if let Ok(config) = aac::parse_aac_config(&parsed.data) {
        let profile = match config.object_type {
            2 => "AAC-LC",
            5 => "HE-AAC",
            29 => "HE-AACv2",
            _ => "AAC",
        };
        st.audio = Some(format!(
            "{profile} {} Hz {}ch",
            config.sample_rate, config.channels
        ));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.channel.state);
            st.ended = true;
            for slot in st.readers.values() {
                slot.notify.notify_one();
            }
        }
        let mut streams = self.hub.streams();
        if streams
            .get(&self.channel.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.channel))
        {
            streams.remove(&self.channel.id);
        }
        drop(streams);
        self.hub.changes.send_modify(|n| *n += 1);
    }
}

/// One reader of a stream; dropping it leaves the stream.
pub struct Reader {
    channel: Arc<Channel>,
    id: u64,
    notify: Arc<Notify>,
    count: ReaderCount,
}

/// One unit of the hub's reader counts, given back when dropped.
struct ReaderCount {
    all: Arc<AtomicUsize>,
    totals: Arc<Totals>,
    kind: ReaderKind,
}

impl Drop for ReaderCount {
    fn drop(&mut self) {
        self.all.fetch_sub(1, Ordering::AcqRel);
        self.totals.readers[self.kind.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Reader {
    pub fn stream_id(&self) -> &str {
        &self.channel.id
    }

    /// The next frame, or `None` once the publisher has gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            {
                let mut st = lock(&self.channel.state);
                let ended = st.ended;
                let slot = st.readers.get_mut(&self.id)?;
                if let Some(frame) = slot.queue.pop_front() {
                    slot.bytes -= frame.payload.len();
                    slot.media_out.add(&frame, Instant::now());
                    self.count.totals.bytes_out[self.count.kind.index()]
                        .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                    return Some(frame);
                }
                if ended {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Names this reader in [`Hub::peers`] (a player's URL, a WebRTC session).
    pub fn set_label(&self, label: impl Into<String>) {
        if let Some(slot) = lock(&self.channel.state).readers.get_mut(&self.id) {
            slot.label = label.into();
        }
    }

    /// The name [`Reader::set_label`] gave.
    pub fn label(&self) -> String {
        lock(&self.channel.state)
            .readers
            .get(&self.id)
            .map(|s| s.label.clone())
            .unwrap_or_default()
    }

    /// Frames queued for this reader, not yet taken.
    pub fn pending(&self) -> usize {
        lock(&self.channel.state)
            .readers
            .get(&self.id)
            .map_or(0, |s| s.queue.len())
    }

    /// Drops what is queued and resumes at the next keyframe: for a reader whose own measure
    /// of "too far behind" (e.g. a real-time viewer's) is tighter than the hub's bounds.
    /// Sequence headers and metadata still come through.
    pub fn skip_to_next_keyframe(&self) {
        let mut st = lock(&self.channel.state);
        if let Some(slot) = st.readers.get_mut(&self.id) {
            self.count.totals.dropped[slot.kind.index()]
                .fetch_add(slot.queue.len() as u64, Ordering::Relaxed);
            slot.dropped += slot.queue.len() as u64;
            slot.queue.clear();
            slot.bytes = 0;
            slot.skipping = true;
        }
    }

    /// Frames this reader lost by falling behind.
    pub fn dropped(&self) -> u64 {
        lock(&self.channel.state)
            .readers
            .get(&self.id)
            .map_or(0, |s| s.dropped)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        lock(&self.channel.state).readers.remove(&self.id);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(ts: u32, key: bool, len: usize) -> Frame {
        let mut p = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        p.resize(5 + len, 0xab);
        Frame {
            kind: MediaKind::Video,
            timestamp: ts,
            payload: Bytes::from(p),
        }
    }

    fn video_header() -> Frame {
        Frame {
            kind: MediaKind::Video,
            timestamp: 0,
            payload: Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe0, 0xe0]),
        }
    }

    fn hub(config: HubConfig) -> Arc<Hub> {
        Arc::new(Hub::new(config))
    }

    async fn next(reader: &mut Reader) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(10), reader.recv())
            .await
            .expect("a frame or the end in time")
    }

    #[tokio::test]
    async fn peers_count_each_ends_audio_and_video_bytes() {
        let hub = hub(HubConfig::default());
        let publisher = hub.publish("live/cam", "RTMP 127.0.0.1:5000").unwrap();
        let mut player = hub.subscribe_as("live/cam", ReaderKind::Rtmp).unwrap();
        player.set_label("rtmp://box/live/cam");
        let _idle = hub.subscribe_as("live/cam", ReaderKind::Flv).unwrap();
        publisher.push(video(0, true, 100));
        publisher.push(Frame {
            kind: MediaKind::Audio,
            timestamp: 0,
            payload: Bytes::from_static(&[0xaf, 1, 9, 9]),
        });
        publisher.push(Frame {
            kind: MediaKind::Data,
            timestamp: 0,
            payload: Bytes::from_static(b"metadata"),
        });
        for _ in 0..3 {
            next(&mut player).await.unwrap();
        }
        let peers = hub.peers(None);
        assert_eq!(peers.len(), 1);
        let cam = &peers[0];
        assert_eq!(cam.stream, "live/cam");
        assert_eq!(cam.publisher.label, "RTMP 127.0.0.1:5000");
        assert_eq!(cam.publisher.media.video_bytes, 105);
        assert_eq!(cam.publisher.media.audio_bytes, 4);
        assert_eq!(cam.readers.len(), 2);
        let first = &cam.readers[0];
        assert_eq!(first.kind, Some(ReaderKind::Rtmp));
        assert_eq!(player.label(), "rtmp://box/live/cam");
        assert_eq!(first.label, "rtmp://box/live/cam");
        assert_eq!((first.media.video_bytes, first.media.audio_bytes), (105, 4));
        // The second reader took nothing yet.
        assert_eq!(cam.readers[1].media, MediaBytes::default());
        assert_ne!(cam.readers[1].id, 0);
        assert!(hub.peers(Some("live/other")).is_empty());
        assert_eq!(hub.peers(Some("live/cam")).len(), 1);
    }

    #[test]
    fn a_media_meter_rates_over_five_seconds() {
        let mut meter = MediaMeter::default();
        let t0 = Instant::now();
        for i in 0..=50u32 {
            // 25 kB of video per second: 200 kbit/s.
            meter.add(
                &video(0, false, 2495),
                t0 + Duration::from_millis(100 * u64::from(i)),
            );
        }
        let s = meter.snapshot();
        assert_eq!(s.video_bytes, 51 * 2500);
        assert_eq!(s.video_kbps, 200);
        assert_eq!((s.audio_bytes, s.audio_kbps), (0, 0));
    }

    #[tokio::test]
    async fn new_reader_starts_at_the_cached_keyframe() {
        let hub = hub(HubConfig::default());
        let publisher = hub.publish("live/cam", "127.0.0.1:5000").unwrap();
        publisher.push(video_header());
        for ts in 0..5 {
            publisher.push(video(ts * 40, ts == 0 || ts == 3, 100));
        }
        let mut reader = hub.subscribe("live/cam").unwrap();
        assert!(next(&mut reader).await.unwrap().is_sequence_header());
        let first = next(&mut reader).await.unwrap();
        assert!(first.is_keyframe());
        assert_eq!(
            first.timestamp, 120,
            "starts at the last keyframe, not the first"
        );
        assert_eq!(next(&mut reader).await.unwrap().timestamp, 160);
        publisher.push(video(200, false, 10));
        assert_eq!(next(&mut reader).await.unwrap().timestamp, 200);
    }

    #[tokio::test]
    async fn slow_reader_does_not_stall_others_and_stays_bounded() {
        let config = HubConfig {
            reader_queue_bytes: 10_000,
            reader_queue_frames: 1000,
            gop_max_bytes: 1 << 20,
            ..HubConfig::default()
        };
        let hub = hub(config.clone());
        let publisher = hub.publish("live/cam", "p").unwrap();
        let slow = hub.subscribe_as("live/cam", ReaderKind::Webrtc).unwrap();
        let mut fast = hub.subscribe_as("live/cam", ReaderKind::Flv).unwrap();
        for i in 0..500u32 {
            publisher.push(video(i * 40, i % 50 == 0, 1000));
            let got = next(&mut fast).await.unwrap();
            assert_eq!(
                got.timestamp,
                i * 40,
                "the fast reader gets every frame in order"
            );
            let st = lock(&slow.channel.state);
            let slot = &st.readers[&slow.id];
            assert!(
                slot.bytes <= config.reader_queue_bytes,
                "slow reader queue grew to {}",
                slot.bytes
            );
        }
        assert!(
            slow.dropped() > 400,
            "the slow reader skipped ahead, dropped {}",
            slow.dropped()
        );
        // The totals say the same, by kind of reader.
        let totals = hub.totals();
        assert_eq!((totals.publishes, totals.frames_in), (1, 500));
        let each = video(0, false, 1000).payload.len() as u64;
        assert_eq!(totals.bytes_in, 500 * each);
        let of = |kind| {
            totals
                .readers
                .iter()
                .find(|r| r.0 == kind)
                .map(|r| (r.1, r.2, r.3))
                .unwrap()
        };
        assert_eq!(of(ReaderKind::Flv), (1, 500 * each, 0));
        assert_eq!(of(ReaderKind::Webrtc), (1, 0, slow.dropped()));
        drop(slow);
        drop(fast);
        assert_eq!(of_now(&hub, ReaderKind::Webrtc), 0);
        assert_eq!(of_now(&hub, ReaderKind::Flv), 0);
    }

    fn of_now(hub: &Hub, kind: ReaderKind) -> usize {
        hub.totals()
            .readers
            .iter()
            .find(|r| r.0 == kind)
            .map_or(usize::MAX, |r| r.1)
    }

    #[tokio::test]
    async fn a_reader_can_skip_to_the_next_keyframe_on_its_own_measure() {
        let hub = hub(HubConfig::default());
        let publisher = hub.publish("live/cam", "p").unwrap();
        publisher.push(video_header());
        let mut reader = hub.subscribe("live/cam").unwrap();
        for i in 0..10u32 {
            publisher.push(video(i * 40, i == 0, 100));
        }
        assert_eq!(reader.pending(), 11);
        reader.skip_to_next_keyframe();
        assert_eq!(reader.pending(), 0);
        assert_eq!(reader.dropped(), 11);
        publisher.push(video(400, false, 100));
        publisher.push(video_header());
        publisher.push(video(440, true, 100));
        assert!(next(&mut reader).await.unwrap().is_sequence_header());
        let resumed = next(&mut reader).await.unwrap();
        assert!(
            resumed.is_keyframe() && resumed.timestamp == 440,
            "{resumed:?}"
        );
    }

    #[tokio::test]
    async fn a_reader_that_fell_behind_resumes_at_a_keyframe() {
        let hub = hub(HubConfig {
            reader_queue_bytes: 5_000,
            reader_queue_frames: 100,
            gop_max_bytes: 1 << 20,
            ..HubConfig::default()
        });
        let publisher = hub.publish("live/cam", "p").unwrap();
        let mut reader = hub.subscribe("live/cam").unwrap();
        for i in 0..20u32 {
            publisher.push(video(i, i == 0, 1000));
        }
        // Overflowed at the 5th frame: queue dropped, waiting for a keyframe.
        publisher.push(video(100, false, 10));
        publisher.push(video(101, true, 10));
        publisher.push(video(102, false, 10));
        let first = next(&mut reader).await.unwrap();
        assert!(first.is_keyframe() && first.timestamp == 101, "{first:?}");
        assert_eq!(next(&mut reader).await.unwrap().timestamp, 102);
    }

    #[tokio::test]
    async fn second_publisher_is_refused_until_the_first_leaves() {
        let hub = hub(HubConfig::default());
        let first = hub.publish("live/cam", "a").unwrap();
        assert_eq!(
            hub.publish("live/cam", "b").err(),
            Some(HubError::AlreadyPublishing("live/cam".into()))
        );
        drop(first);
        assert!(!hub.is_live("live/cam"));
        assert!(hub.publish("live/cam", "b").is_ok());
    }

    #[tokio::test]
    async fn streams_and_readers_are_limited_and_counts_come_back() {
        let hub = hub(HubConfig {
            max_streams: 1,
            max_readers: 2,
            ..HubConfig::default()
        });
        let publisher = hub.publish("live/a", "p").unwrap();
        assert_eq!(
            hub.publish("live/b", "p").err(),
            Some(HubError::TooManyStreams(1))
        );
        let first = hub.subscribe("live/a").unwrap();
        let _second = hub.subscribe("live/a").unwrap();
        assert!(matches!(
            hub.subscribe("live/a"),
            Err(HubError::TooManyReaders(2))
        ));
        drop(first);
        assert!(
            hub.subscribe("live/a").is_ok(),
            "a dropped reader gives its place back"
        );
        drop(publisher);
        assert!(hub.publish("live/b", "p").is_ok());
    }

    #[tokio::test]
    async fn readers_drain_then_see_the_end() {
        let hub = hub(HubConfig::default());
        let publisher = hub.publish("live/cam", "a").unwrap();
        let mut reader = hub.subscribe("live/cam").unwrap();
        publisher.push(video(0, true, 10));
        drop(publisher);
        assert!(next(&mut reader).await.is_some());
        assert_eq!(next(&mut reader).await, None);
        assert!(matches!(
            hub.subscribe("live/cam"),
            Err(HubError::NotLive(_))
        ));
        assert!(matches!(
            hub.subscribe("live/other"),
            Err(HubError::NotLive(_))
        ));
    }

    #[tokio::test]
    async fn status_reports_codec_and_readers() {
        let hub = hub(HubConfig::default());
        let publisher = hub.publish("live/cam", "10.0.0.2:5000").unwrap();
        publisher.push(Frame {
            kind: MediaKind::Audio,
            timestamp: 0,
            payload: Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
        });
        let _reader = hub.subscribe("live/cam").unwrap();
        let status = hub.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].id, "live/cam");
        assert_eq!(status[0].readers, 1);
        assert_eq!(status[0].publisher, "10.0.0.2:5000");
        assert_eq!(status[0].audio.as_deref(), Some("AAC-LC 44100 Hz 2ch"));
    }
}
