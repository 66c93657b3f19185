//! Hub frames in, fMP4 out: an init segment whenever the tracks change, and media segments
//! that start at a keyframe and last at least `target_ms` (a whole number of GOPs), sans-IO.
//!
//! Times: FLV's 32-bit millisecond timestamps are unwrapped, then mapped onto one timeline
//! that starts at 0 and never goes back, also across publisher restarts ([`Segmenter::restart`]
//! continues it where the last segment ended; the next segment is marked as a discontinuity).
//! Video decode times are the FLV timestamps (× 90 for the 90 kHz timescale) and composition
//! offsets the FLV composition times, so B-frames keep their order. Audio decode times count AAC
//! frames (1024 samples each) in the sample rate's timescale, and follow the FLV timestamps again
//! only after a real gap, so rounding to milliseconds never makes audio jitter.

use std::collections::VecDeque;

use bytes::Bytes;

use super::fragment::{Run, Sample, media_segment};
use super::init::{AudioTrack, VideoTrack, init_segment};
use super::{Fmp4Error, VIDEO_TIMESCALE};
use crate::codec::aac::parse_aac_config;
use crate::codec::avc::{parse_avc_config, parse_sps};
use crate::flv::tag::{self, AudioPacket, VideoPacket};
use crate::hub::Frame;
use crate::rtmp::session::MediaKind;

#[derive(Debug, Clone)]
pub struct SegmenterConfig {
    /// A segment is cut at the first keyframe at least this long after its start.
    pub target_ms: u32,
    /// A segment holding this many bytes is cut at the next frame even without a keyframe,
    /// so a stream with rare keyframes cannot grow one without bound.
    pub max_bytes: usize,
    /// One file per track (CMAF style) instead of one muxed file: DASH readers such as
    /// ffmpeg's expect a representation to hold one track.
    pub per_track: bool,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            target_ms: 2000,
            max_bytes: 32 << 20,
            per_track: false,
        }
    }
}

/// Which track a per-track part holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Video,
    Audio,
}

impl TrackKind {
    pub fn name(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
        }
    }
}

/// One track's part of an init or media segment, in per-track mode.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackPart {
    pub kind: TrackKind,
    /// RFC 6381 codec of the track (in init parts; empty in segment parts).
    pub codec: String,
    pub bytes: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An initialization segment: the first, or one for changed tracks. The segments that
    /// follow need it.
    Init(Init),
    Segment(Segment),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Init {
    /// Both tracks in one init segment (empty in per-track mode).
    pub bytes: Bytes,
    /// One init segment per track (per-track mode only).
    pub tracks: Vec<TrackPart>,
    /// RFC 6381 codecs of its tracks, e.g. `avc1.64001f,mp4a.40.2` (for manifests).
    pub codecs: String,
    /// Picture size; 0 × 0 without video.
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// `mfhd` sequence number, from 1.
    pub sequence: u32,
    /// Where it starts and how long it lasts on the segmenter's timeline, in ms.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// Both tracks in one `moof` + `mdat` (empty in per-track mode).
    pub bytes: Bytes,
    /// One fragment per track that has samples in it (per-track mode only).
    pub tracks: Vec<TrackPart>,
    /// Starts with a keyframe (false only after a cut forced by `max_bytes`).
    pub independent: bool,
    /// The first segment after a restart or a new init segment: decoders must reset.
    pub discontinuity: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SegmenterError {
    #[error("video: {0}")]
    Video(String),
    #[error("audio: {0}")]
    Audio(String),
    #[error(transparent)]
    Mp4(#[from] Fmp4Error),
}

struct VideoSample {
    dts_ms: i64,
    cts_ms: i32,
    keyframe: bool,
    data: Bytes,
}

struct AudioSample {
    /// Decode time in the audio timescale.
    time: u64,
    dts_ms: i64,
    data: Bytes,
}

pub struct Segmenter {
    cfg: SegmenterConfig,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    /// The tracks of the last init segment sent.
    sent_tracks: Option<(Option<VideoTrack>, Option<AudioTrack>)>,
    /// Unwrapping FLV timestamps: the last one seen and its extended value.
    last_ts: Option<(u32, i64)>,
    /// Timeline ms = extended timestamp + offset; set at the first frame after a (re)start.
    offset: Option<i64>,
    /// Where the last segment ended on the timeline.
    end_ms: i64,
    video_samples: Vec<VideoSample>,
    audio_samples: Vec<AudioSample>,
    pending_bytes: usize,
    /// The next AAC frame's decode time, in the audio timescale.
    audio_next: Option<u64>,
    sequence: u32,
    discontinuity: bool,
    out: VecDeque<Output>,
}

impl Segmenter {
    pub fn new(cfg: SegmenterConfig) -> Self {
        Self {
            cfg,
            video: None,
            audio: None,
            sent_tracks: None,
            last_ts: None,
            offset: None,
            end_ms: 0,
            video_samples: Vec::new(),
            audio_samples: Vec::new(),
            pending_bytes: 0,
            audio_next: None,
            sequence: 0,
            discontinuity: false,
            out: VecDeque::new(),
        }
    }

    /// What came out, in order.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Where the timeline stands: the end of the last segment, in ms.
    pub fn end_ms(&self) -> u64 {
        self.end_ms.max(0) as u64
    }

    /// Feeds one frame. An error concerns only that frame (it is skipped); the segmenter
    /// goes on with the next.
    pub fn push(&mut self, frame: &Frame) -> Result<(), SegmenterError> {
        match frame.kind {
            MediaKind::Data => Ok(()),
            MediaKind::Video => self.push_video(frame),
            MediaKind::Audio => self.push_audio(frame),
        }
    }

    /// The publisher ended: what is pending becomes the last segment.
    pub fn finish(&mut self) -> Result<(), SegmenterError> {
        self.cut(None)
    }

    /// A new publisher (after [`finish`](Self::finish) or not): its timestamps start afresh,
    /// the timeline goes on where it was, and the next segment is a discontinuity.
    pub fn restart(&mut self) -> Result<(), SegmenterError> {
        self.cut(None)?;
        self.last_ts = None;
        self.offset = None;
        self.audio_next = None;
        self.discontinuity = true;
        Ok(())
    }

    /// The frame's decode time on the timeline, in ms.
    fn timeline(&mut self, ts: u32) -> i64 {
        let ext = match self.last_ts {
            Some((last, ext)) => ext + i64::from(ts.wrapping_sub(last) as i32),
            None => i64::from(ts),
        };
        self.last_ts = Some((ts, ext));
        let offset = *self.offset.get_or_insert(self.end_ms - ext);
        ext + offset
    }

    fn push_video(&mut self, frame: &Frame) -> Result<(), SegmenterError> {
        let video =
            tag::parse_video(&frame.payload).map_err(|e| SegmenterError::Video(e.to_string()))?;
        match video.packet {
            VideoPacket::SequenceHeader => {
                let config = parse_avc_config(&video.data)
                    .map_err(|e| SegmenterError::Video(e.to_string()))?;
                let sps = config
                    .sps
                    .first()
                    .ok_or_else(|| SegmenterError::Video("sequence header without SPS".into()))
                    .and_then(|sps| {
                        parse_sps(sps).map_err(|e| SegmenterError::Video(e.to_string()))
                    })?;
                let track = VideoTrack { config, sps };
                if self.video.as_ref() != Some(&track) {
                    // Samples so far belong to the old parameters.
                    self.cut(None)?;
                    self.video = Some(track);
                }
                Ok(())
            }
            VideoPacket::Nalu => {
                if self.video.is_none() {
                    return Ok(());
                }
                let keyframe = frame.is_keyframe();
                if self.video_samples.is_empty() && !keyframe {
                    // A segment starts at a keyframe.
                    return Ok(());
                }
                let mut dts_ms = self.timeline(frame.timestamp);
                if let Some(last) = self.video_samples.last() {
                    dts_ms = dts_ms.max(last.dts_ms + 1);
                }
                if keyframe && self.segment_is_long_enough(dts_ms) {
                    self.cut(Some(dts_ms))?;
                } else if self.pending_bytes >= self.cfg.max_bytes {
                    // This frame starts the next segment, keyframe or not.
                    self.cut(Some(dts_ms))?;
                }
                if self.video_samples.is_empty() {
                    // Audio that came earlier than the segment's first video frame is dropped.
                    self.audio_samples.retain(|a| a.dts_ms >= dts_ms);
                    self.pending_bytes = self.audio_samples.iter().map(|a| a.data.len()).sum();
                }
                self.pending_bytes += video.data.len();
                self.video_samples.push(VideoSample {
                    dts_ms,
                    cts_ms: video.composition_time,
                    keyframe,
                    data: video.data,
                });
                Ok(())
            }
            VideoPacket::EndOfSequence | VideoPacket::Command => Ok(()),
        }
    }

    fn push_audio(&mut self, frame: &Frame) -> Result<(), SegmenterError> {
        // Opus from a WHIP publisher: the segments carry the video only.
        if crate::flv::make::parse_opus(&frame.payload).is_some() {
            return Ok(());
        }
        let audio =
            tag::parse_audio(&frame.payload).map_err(|e| SegmenterError::Audio(e.to_string()))?;
        match audio.packet {
            AudioPacket::SequenceHeader => {
                let config = parse_aac_config(&audio.data)
                    .map_err(|e| SegmenterError::Audio(e.to_string()))?;
                let track = AudioTrack {
                    config,
                    asc: audio.data,
                };
                if self.audio.as_ref() != Some(&track) {
                    self.cut(None)?;
                    self.audio = Some(track);
                    self.audio_next = None;
                }
                Ok(())
            }
            AudioPacket::Raw => {
                let Some(track) = &self.audio else {
                    return Ok(());
                };
                let rate = u64::from(track.config.sample_rate.max(1));
                // Explicitly signalled SBR/PS: the rate is the output rate, 2048 samples a frame.
                let frame_len = if matches!(track.config.object_type, 5 | 29) {
                    2048
                } else {
                    1024
                };
                let dts_ms = self.timeline(frame.timestamp);
                if self.video.is_some() && self.video_samples.is_empty() {
                    // Segments start with video: audio before a segment's first keyframe has
                    // nowhere to go.
                    return Ok(());
                } else if self.video.is_none() && self.segment_is_long_enough(dts_ms) {
                    self.cut(Some(dts_ms))?;
                }
                let from_clock = dts_ms.max(0) as u64 * rate / 1000;
                let time = match self.audio_next {
                    // Follow the clock only after a real gap (or jump): 100 ms.
                    Some(next) if from_clock.abs_diff(next) < rate / 10 => next,
                    _ => from_clock,
                };
                self.audio_next = Some(time + frame_len);
                self.pending_bytes += audio.data.len();
                self.audio_samples.push(AudioSample {
                    time,
                    dts_ms,
                    data: audio.data,
                });
                Ok(())
            }
        }
    }

    fn segment_start_ms(&self) -> Option<i64> {
        match (self.video_samples.first(), self.audio_samples.first()) {
            (Some(v), _) => Some(v.dts_ms),
            (None, Some(a)) => Some(a.dts_ms),
            (None, None) => None,
        }
    }

    fn segment_is_long_enough(&self, at_ms: i64) -> bool {
        self.segment_start_ms()
            .is_some_and(|start| at_ms - start >= i64::from(self.cfg.target_ms))
    }

    /// Closes the pending segment at `end_ms` (the next segment's first decode time; `None`
    /// when unknown: the last video sample then lasts as long as the one before it).
    fn cut(&mut self, end_ms: Option<i64>) -> Result<(), SegmenterError> {
        let Some(start_ms) = self.segment_start_ms() else {
            return Ok(());
        };
        if self.video_samples.is_empty() && self.video.is_some() {
            return Ok(());
        }
        // Audio at or after the cut belongs to the next segment.
        let keep_from = match end_ms {
            Some(end) => self.audio_samples.partition_point(|a| a.dts_ms < end),
            None => self.audio_samples.len(),
        };
        let later_audio = self.audio_samples.split_off(keep_from);
        let audio_samples = std::mem::replace(&mut self.audio_samples, later_audio);
        let video_samples = std::mem::take(&mut self.video_samples);
        self.pending_bytes = self.audio_samples.iter().map(|a| a.data.len()).sum();

        let video_run = self.video_run(&video_samples, end_ms);
        let audio_run = self.audio_run(&audio_samples);
        let last_video_end = video_samples.last().map(|last| {
            last.dts_ms + i64::from(video_run.samples.last().map_or(0, |s| s.duration)) / 90
        });
        let end = end_ms
            .or(last_video_end)
            .or_else(|| audio_samples.last().map(|a| a.dts_ms + 21))
            .unwrap_or(start_ms)
            .max(start_ms);

        let tracks = (self.video.clone(), self.audio.clone());
        if self.sent_tracks.as_ref() != Some(&tracks) {
            let video_codec = tracks.0.as_ref().map(|v| {
                let c = &v.config;
                format!(
                    "avc1.{:02x}{:02x}{:02x}",
                    c.profile, c.compatibility, c.level
                )
            });
            let audio_codec = tracks
                .1
                .as_ref()
                .map(|a| format!("mp4a.40.{}", a.config.object_type));
            let (bytes, parts) = if self.cfg.per_track {
                let mut parts = Vec::new();
                if let (Some(v), Some(codec)) = (&tracks.0, &video_codec) {
                    parts.push(TrackPart {
                        kind: TrackKind::Video,
                        codec: codec.clone(),
                        bytes: init_segment(Some(v), None)?,
                    });
                }
                if let (Some(a), Some(codec)) = (&tracks.1, &audio_codec) {
                    parts.push(TrackPart {
                        kind: TrackKind::Audio,
                        codec: codec.clone(),
                        bytes: init_segment(None, Some(a))?,
                    });
                }
                (Bytes::new(), parts)
            } else {
                (
                    init_segment(tracks.0.as_ref(), tracks.1.as_ref())?,
                    Vec::new(),
                )
            };
            let codecs: Vec<String> = video_codec.into_iter().chain(audio_codec).collect();
            let init = Init {
                bytes,
                tracks: parts,
                codecs: codecs.join(","),
                width: tracks.0.as_ref().map_or(0, |v| v.sps.width),
                height: tracks.0.as_ref().map_or(0, |v| v.sps.height),
            };
            if self.sent_tracks.is_some() {
                self.discontinuity = true;
            }
            self.sent_tracks = Some(tracks);
            self.out.push_back(Output::Init(init));
        }
        self.sequence += 1;
        let (bytes, parts) = if self.cfg.per_track {
            let none = Run::default();
            let mut parts = Vec::new();
            for (kind, run) in [
                (TrackKind::Video, &video_run),
                (TrackKind::Audio, &audio_run),
            ] {
                if !run.samples.is_empty() {
                    let (v, a) = match kind {
                        TrackKind::Video => (run, &none),
                        TrackKind::Audio => (&none, run),
                    };
                    parts.push(TrackPart {
                        kind,
                        codec: String::new(),
                        bytes: media_segment(self.sequence, v, a)?,
                    });
                }
            }
            (Bytes::new(), parts)
        } else {
            (
                media_segment(self.sequence, &video_run, &audio_run)?,
                Vec::new(),
            )
        };
        self.out.push_back(Output::Segment(Segment {
            sequence: self.sequence,
            start_ms: start_ms.max(0) as u64,
            duration_ms: (end - start_ms) as u64,
            bytes,
            tracks: parts,
            independent: video_samples.first().is_none_or(|v| v.keyframe),
            discontinuity: std::mem::take(&mut self.discontinuity),
        }));
        self.end_ms = self.end_ms.max(end);
        Ok(())
    }

    fn video_run(&self, samples: &[VideoSample], end_ms: Option<i64>) -> Run {
        let mut run = Run {
            base_decode_time: samples.first().map_or(0, |s| s.dts_ms.max(0) as u64 * 90),
            samples: Vec::with_capacity(samples.len()),
        };
        let ticks = (VIDEO_TIMESCALE / 1000) as i64;
        for (i, sample) in samples.iter().enumerate() {
            let next = samples.get(i + 1).map(|n| n.dts_ms).or(end_ms);
            let duration_ms = match next {
                Some(next) => next - sample.dts_ms,
                // The last one, end unknown: as long as the one before, or a 30 fps frame.
                None => i
                    .checked_sub(1)
                    .map_or(33, |p| sample.dts_ms - samples[p].dts_ms),
            };
            run.samples.push(Sample {
                duration: (duration_ms.max(1) * ticks) as u32,
                cts: sample.cts_ms.saturating_mul(ticks as i32),
                keyframe: sample.keyframe,
                data: sample.data.clone(),
            });
        }
        run
    }

    fn audio_run(&self, samples: &[AudioSample]) -> Run {
        let frame_len = self.audio.as_ref().map_or(1024, |a| {
            if matches!(a.config.object_type, 5 | 29) {
                2048
            } else {
                1024
            }
        });
        Run {
            base_decode_time: samples.first().map_or(0, |s| s.time),
            samples: samples
                .iter()
                .enumerate()
                .map(|(i, s)| Sample {
                    // Up to the next frame's time; the last, one frame.
                    duration: samples
                        .get(i + 1)
                        .map_or(frame_len, |n| n.time.saturating_sub(s.time))
                        .max(1) as u32,
                    cts: 0,
                    keyframe: true,
                    data: s.data.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use mp4_atom::{Any, Decode, Moof, Moov};

    use super::*;

    // x264 (ffmpeg, testsrc), -profile:v high, 1280x720 at 30 fps.
    const SPS: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    const PPS: [u8; 6] = [0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    /// AAC-LC, 44.1 kHz, stereo.
    const ASC: [u8; 2] = [0x12, 0x10];

    fn video_header() -> Frame {
        let mut body = vec![0x17, 0, 0, 0, 0, 1, 0x64, 0x00, 0x1f, 0xff, 0xe1];
        body.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        body.extend_from_slice(&SPS);
        body.push(1);
        body.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        body.extend_from_slice(&PPS);
        Frame {
            kind: MediaKind::Video,
            timestamp: 0,
            payload: body.into(),
        }
    }

    fn audio_header() -> Frame {
        Frame {
            kind: MediaKind::Audio,
            timestamp: 0,
            payload: Bytes::from(vec![0xaf, 0, ASC[0], ASC[1]]),
        }
    }

    /// A video frame whose one NAL unit holds `n` (so tests can find it in the mdat).
    fn video(ts: u32, key: bool, cts: i32, n: u32) -> Frame {
        let mut body = vec![if key { 0x17 } else { 0x27 }, 1];
        body.extend_from_slice(&cts.to_be_bytes()[1..]);
        let nal = [if key { 0x65 } else { 0x41 }, 0x88]
            .into_iter()
            .chain(n.to_be_bytes())
            .collect::<Vec<u8>>();
        body.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        body.extend_from_slice(&nal);
        Frame {
            kind: MediaKind::Video,
            timestamp: ts,
            payload: body.into(),
        }
    }

    fn audio(ts: u32) -> Frame {
        Frame {
            kind: MediaKind::Audio,
            timestamp: ts,
            payload: Bytes::from(vec![0xaf, 1, 0x21, 0x10, 0x05]),
        }
    }

    fn drain(s: &mut Segmenter) -> (Vec<Bytes>, Vec<Segment>) {
        let (mut inits, mut segments) = (Vec::new(), Vec::new());
        while let Some(out) = s.poll() {
            match out {
                Output::Init(init) => {
                    assert!(init.codecs.starts_with("avc1.64001f"), "{}", init.codecs);
                    inits.push(init.bytes)
                }
                Output::Segment(seg) => segments.push(seg),
            }
        }
        (inits, segments)
    }

    /// 25 fps video with a keyframe every `gop` frames and 44.1 kHz audio, from `start` ms.
    fn feed(s: &mut Segmenter, start: u32, frames: u32, gop: u32) {
        s.push(&video_header()).unwrap();
        s.push(&audio_header()).unwrap();
        let mut audio_at = 0.0f64;
        for i in 0..frames {
            let ts = start.wrapping_add(i * 40);
            while audio_at <= f64::from(i * 40) {
                s.push(&audio(start.wrapping_add(audio_at as u32))).unwrap();
                audio_at += 1024.0 * 1000.0 / 44100.0;
            }
            s.push(&video(ts, i % gop == 0, 0, i)).unwrap();
        }
    }

    fn parse(segment: &[u8]) -> (Moof, Vec<u8>) {
        let mut cur = std::io::Cursor::new(segment);
        let Ok(Any::Moof(moof)) = Any::decode(&mut cur) else {
            panic!("no moof first")
        };
        let Ok(Any::Mdat(mdat)) = Any::decode(&mut cur) else {
            panic!("no mdat second")
        };
        (moof, mdat.data)
    }

    #[test]
    fn segments_start_at_keyframes_and_tile_the_timeline() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        // A keyframe every 1.2 s: segments of 2.4 s (the first keyframe at least 2 s in).
        feed(&mut s, 5000, 250, 30);
        s.finish().unwrap();
        let (inits, segments) = drain(&mut s);
        assert_eq!(inits.len(), 1);
        let mut cur = std::io::Cursor::new(&inits[0][..]);
        let _ftyp = Any::decode(&mut cur).unwrap();
        let moov = Moov::decode(&mut cur).unwrap();
        assert_eq!(moov.trak.len(), 2);
        assert_eq!(moov.trak[0].tkhd.width, 1280.into());
        assert_eq!(moov.trak[1].mdia.mdhd.timescale, 44100);

        assert_eq!(segments.len(), 5, "{segments:?}");
        let mut expect_start = 0;
        let mut next_frame = 0u32;
        for (i, seg) in segments.iter().enumerate() {
            assert_eq!(seg.sequence, i as u32 + 1);
            assert_eq!(seg.start_ms, expect_start, "segment {i}");
            assert!(seg.independent && !seg.discontinuity);
            if i < 4 {
                assert_eq!(seg.duration_ms, 2400);
            }
            expect_start += seg.duration_ms;
            let (moof, mdat) = parse(&seg.bytes);
            let v = &moof.traf[0];
            assert_eq!(
                v.tfdt.as_ref().unwrap().base_media_decode_time,
                seg.start_ms * 90
            );
            let trun = &v.trun[0];
            // The first sample of the mdat is where data_offset says, and is frame `next_frame`.
            let offset = trun.data_offset.unwrap() as usize - (seg.bytes.len() - mdat.len());
            let first = &mdat[offset..offset + 10];
            assert_eq!(
                &first[4..6],
                &[0x65, 0x88],
                "segment {i} starts with a keyframe"
            );
            assert_eq!(&first[6..10], &next_frame.to_be_bytes());
            next_frame += trun.samples.len() as u32;
            let durations: u64 = trun
                .samples
                .iter()
                .map(|e| u64::from(e.duration.unwrap()))
                .sum();
            assert_eq!(durations, seg.duration_ms * 90);
            // Audio decode time follows the video's within one AAC frame.
            let a = &moof.traf[1];
            let audio_ms = a.tfdt.as_ref().unwrap().base_media_decode_time * 1000 / 44100;
            assert!(
                audio_ms.abs_diff(seg.start_ms) <= 24,
                "{audio_ms} vs {}",
                seg.start_ms
            );
        }
        assert_eq!(next_frame, 250, "every frame in exactly one segment");
    }

    #[test]
    fn b_frames_keep_their_composition_offsets() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        s.push(&video_header()).unwrap();
        // Decode order I P B B with PTS 80, 200, 120, 160 ms (DTS 0, 40, 80, 120).
        for (i, (key, cts)) in [(true, 80), (false, 160), (false, 40), (false, 40)]
            .into_iter()
            .enumerate()
        {
            s.push(&video(i as u32 * 40, key, cts, i as u32)).unwrap();
        }
        s.finish().unwrap();
        let (_, segments) = drain(&mut s);
        let (moof, _) = parse(&segments[0].bytes);
        let cts: Vec<i64> = moof.traf[0].trun[0]
            .samples
            .iter()
            .map(|e| e.cts.unwrap())
            .collect();
        assert_eq!(cts, [80 * 90, 160 * 90, 40 * 90, 40 * 90]);
    }

    #[test]
    fn a_restart_continues_the_timeline_and_marks_a_discontinuity() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        feed(&mut s, 0, 100, 25);
        s.restart().unwrap();
        let before = s.end_ms();
        // The new publisher's clock starts near 0 again; and near the u32 wrap for good measure.
        feed(&mut s, u32::MAX - 1000, 100, 25);
        s.finish().unwrap();
        let (inits, segments) = drain(&mut s);
        assert_eq!(inits.len(), 1, "same tracks: the init segment stays");
        let first_after = segments
            .iter()
            .position(|seg| seg.start_ms >= before)
            .unwrap();
        assert!(segments[first_after].discontinuity);
        assert_eq!(segments[first_after].start_ms, before);
        assert_eq!(segments.iter().filter(|seg| seg.discontinuity).count(), 1);
        for pair in segments.windows(2) {
            assert_eq!(pair[0].start_ms + pair[0].duration_ms, pair[1].start_ms);
        }
        assert_eq!(s.end_ms(), before + 4000);
    }

    #[test]
    fn new_parameters_bring_a_new_init_segment() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        feed(&mut s, 0, 60, 25);
        // Now without the audio track: a video-only header change (another SPS level).
        let mut header = video_header();
        let mut body = header.payload.to_vec();
        body[14] = 0x28;
        header.payload = body.into();
        s.push(&header).unwrap();
        s.push(&video(2400, true, 0, 60)).unwrap();
        s.push(&video(2440, false, 0, 61)).unwrap();
        s.finish().unwrap();
        let (inits, segments) = drain(&mut s);
        assert_eq!(inits.len(), 2);
        assert!(segments.last().unwrap().discontinuity);
    }

    #[test]
    fn malformed_frames_are_refused_one_by_one() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        let garbage = |kind, payload: &'static [u8]| Frame {
            kind,
            timestamp: 0,
            payload: Bytes::from_static(payload),
        };
        assert!(s.push(&garbage(MediaKind::Video, b"")).is_err());
        assert!(
            s.push(&garbage(MediaKind::Video, &[0x17, 0, 0, 0, 0, 9, 9]))
                .is_err()
        );
        assert!(
            s.push(&garbage(MediaKind::Audio, &[0xaf, 0, 0, 0]))
                .is_err()
        );
        assert!(s.push(&garbage(MediaKind::Audio, &[0x2f, 1])).is_err());
        // And then a good stream goes through as if nothing happened.
        feed(&mut s, 0, 60, 25);
        s.finish().unwrap();
        let (inits, segments) = drain(&mut s);
        // Keyframes at 0, 1 and 2 s: one segment to the third, the rest in a second.
        assert_eq!((inits.len(), segments.len()), (1, 2));
    }

    #[test]
    fn rare_keyframes_cannot_grow_a_segment_without_bound() {
        let mut s = Segmenter::new(SegmenterConfig {
            target_ms: 2000,
            max_bytes: 400,
            ..SegmenterConfig::default()
        });
        feed(&mut s, 0, 500, 10_000);
        let (_, segments) = drain(&mut s);
        assert!(segments.len() > 10);
        assert!(segments.iter().all(|seg| seg.bytes.len() < 2000));
        assert!(segments[0].independent && !segments[1].independent);
    }

    #[test]
    fn per_track_mode_gives_each_track_its_own_init_and_fragments() {
        let mut s = Segmenter::new(SegmenterConfig {
            per_track: true,
            ..SegmenterConfig::default()
        });
        feed(&mut s, 0, 100, 25);
        s.finish().unwrap();
        let mut inits = Vec::new();
        let mut segments = Vec::new();
        while let Some(out) = s.poll() {
            match out {
                Output::Init(init) => inits.push(init),
                Output::Segment(seg) => segments.push(seg),
            }
        }
        assert_eq!(inits.len(), 1);
        let kinds: Vec<(TrackKind, &str)> = inits[0]
            .tracks
            .iter()
            .map(|t| (t.kind, t.codec.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (TrackKind::Video, "avc1.64001f"),
                (TrackKind::Audio, "mp4a.40.2")
            ]
        );
        for part in &inits[0].tracks {
            let mut cur = std::io::Cursor::new(&part.bytes[..]);
            let _ftyp = Any::decode(&mut cur).unwrap();
            assert_eq!(Moov::decode(&mut cur).unwrap().trak.len(), 1);
        }
        assert!(inits[0].bytes.is_empty());
        for seg in &segments {
            assert!(seg.bytes.is_empty());
            assert_eq!(seg.tracks.len(), 2);
            for part in &seg.tracks {
                let (moof, _) = parse(&part.bytes);
                assert_eq!(moof.traf.len(), 1);
                let expected = match part.kind {
                    TrackKind::Video => crate::fmp4::VIDEO_TRACK,
                    TrackKind::Audio => crate::fmp4::AUDIO_TRACK,
                };
                assert_eq!(moof.traf[0].tfhd.track_id, expected);
            }
        }
    }
}
