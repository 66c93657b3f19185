//! One stream-day's recording as data (`periods.json`, the source of truth, rewritten after
//! every segment) and as a static DASH manifest (`manifest.mpd`, rendered from it).
//!
//! A period is one run of segments with one init segment: a publisher session, or the part of
//! it after a change of codec parameters or after midnight. Periods follow each other in the
//! presentation without the wall-clock gaps between them; each records when it started.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayRecord {
    pub periods: Vec<PeriodRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodRecord {
    /// Files are `p{id}-{track}-init.mp4` and `p{id}-{track}-{t}.m4s` (`v` or `a`, and the
    /// segment's start in ms).
    pub id: u32,
    /// Wall clock of its first segment, Unix ms.
    pub started_at: u64,
    pub width: u32,
    pub height: u32,
    pub tracks: Vec<TrackRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackRecord {
    /// `video` or `audio`.
    pub kind: String,
    /// RFC 6381, e.g. `avc1.64001f` or `mp4a.40.2`.
    pub codec: String,
    pub segments: Vec<SegmentRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Start on the segmenter's timeline and duration, in ms.
    pub t: u64,
    pub d: u64,
    pub bytes: u64,
}

impl TrackRecord {
    /// The short name in file names.
    pub fn letter(&self) -> &'static str {
        if self.kind == "audio" { "a" } else { "v" }
    }

    fn duration_ms(&self) -> u64 {
        self.segments.iter().map(|s| s.d).sum()
    }

    fn bandwidth(&self) -> u64 {
        let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
        (bytes * 8 * 1000)
            .checked_div(self.duration_ms())
            .unwrap_or(1)
            .max(1)
    }
}

impl PeriodRecord {
    /// From its first segment's start to its last one's end (over all tracks).
    pub fn duration_ms(&self) -> u64 {
        let all = || self.tracks.iter().flat_map(|t| t.segments.iter());
        let start = all().map(|s| s.t).min();
        let end = all().map(|s| s.t + s.d).max();
        match (start, end) {
            (Some(start), Some(end)) => end - start,
            _ => 0,
        }
    }

    fn start_ms(&self) -> u64 {
        self.tracks
            .iter()
            .flat_map(|t| t.segments.iter().map(|s| s.t))
            .min()
            .unwrap_or(0)
    }
}

fn iso_duration(ms: u64) -> String {
    format!("PT{}.{:03}S", ms / 1000, ms % 1000)
}

/// The static MPD of a day: a period per run, an adaptation set per track (one track per
/// representation, as DASH readers expect), segments addressed by their start time. Periods
/// without segments are left out.
pub fn render(day: &DayRecord) -> String {
    let periods: Vec<&PeriodRecord> = day.periods.iter().filter(|p| p.duration_ms() > 0).collect();
    let total: u64 = periods.iter().map(|p| p.duration_ms()).sum();
    let max_segment = periods
        .iter()
        .flat_map(|p| p.tracks.iter().flat_map(|t| t.segments.iter().map(|s| s.d)))
        .max()
        .unwrap_or(2000);
    let mut out = String::with_capacity(1024);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" \
         type=\"static\" mediaPresentationDuration=\"{}\" minBufferTime=\"{}\">\n",
        iso_duration(total),
        iso_duration(max_segment)
    );
    let mut start = 0;
    for period in periods {
        let offset = period.start_ms();
        let _ = writeln!(
            out,
            "  <Period id=\"{}\" start=\"{}\" duration=\"{}\">",
            period.id,
            iso_duration(start),
            iso_duration(period.duration_ms())
        );
        for track in period.tracks.iter().filter(|t| !t.segments.is_empty()) {
            let (id, letter) = (period.id, track.letter());
            let size = if track.kind == "video" {
                format!(" width=\"{}\" height=\"{}\"", period.width, period.height)
            } else {
                String::new()
            };
            let _ = write!(
                out,
                "    <AdaptationSet contentType=\"{kind}\" mimeType=\"{kind}/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\">\n\
                 \x20     <Representation id=\"p{id}{letter}\" codecs=\"{codec}\" bandwidth=\"{bandwidth}\"{size}>\n\
                 \x20       <SegmentTemplate timescale=\"1000\" presentationTimeOffset=\"{offset}\" \
                 initialization=\"p{id}-{letter}-init.mp4\" media=\"p{id}-{letter}-$Time$.m4s\">\n\
                 \x20         <SegmentTimeline>\n",
                kind = track.kind,
                codec = track.codec,
                bandwidth = track.bandwidth(),
            );
            // Runs of back-to-back equal durations in one <S r=…>, as DASH allows.
            let segments = &track.segments;
            let mut i = 0;
            while i < segments.len() {
                let s = &segments[i];
                let mut repeat = 0;
                while segments
                    .get(i + repeat + 1)
                    .is_some_and(|n| n.d == s.d && n.t == s.t + (repeat as u64 + 1) * s.d)
                {
                    repeat += 1;
                }
                let r = if repeat > 0 {
                    format!(" r=\"{repeat}\"")
                } else {
                    String::new()
                };
                let _ = writeln!(out, "            <S t=\"{}\" d=\"{}\"{r}/>", s.t, s.d);
                i += repeat + 1;
            }
            out.push_str(
                "          </SegmentTimeline>\n        </SegmentTemplate>\n      </Representation>\n    </AdaptationSet>\n",
            );
        }
        out.push_str("  </Period>\n");
        start += period.duration_ms();
    }
    out.push_str("</MPD>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(kind: &str, segments: &[(u64, u64)]) -> TrackRecord {
        TrackRecord {
            kind: kind.into(),
            codec: if kind == "video" {
                "avc1.64001f"
            } else {
                "mp4a.40.2"
            }
            .into(),
            segments: segments
                .iter()
                .map(|&(t, d)| SegmentRecord {
                    t,
                    d,
                    bytes: d * 125,
                })
                .collect(),
        }
    }

    fn period(id: u32, video: &[(u64, u64)], audio: &[(u64, u64)]) -> PeriodRecord {
        PeriodRecord {
            id,
            started_at: 0,
            width: 1280,
            height: 720,
            tracks: vec![track("video", video), track("audio", audio)],
        }
    }

    #[test]
    fn periods_follow_each_other_with_a_set_per_track() {
        let v = [(0, 4000), (4000, 4000), (8000, 4000), (12000, 2500)];
        let day = DayRecord {
            periods: vec![
                period(1, &v, &v),
                period(2, &[], &[]),
                period(3, &[(500, 4000)], &[]),
            ],
        };
        let mpd = render(&day);
        assert!(
            mpd.contains("mediaPresentationDuration=\"PT18.500S\""),
            "{mpd}"
        );
        assert!(
            mpd.contains("<Period id=\"1\" start=\"PT0.000S\" duration=\"PT14.500S\">"),
            "{mpd}"
        );
        assert!(
            mpd.contains(
                "<S t=\"0\" d=\"4000\" r=\"2\"/>\n            <S t=\"12000\" d=\"2500\"/>"
            ),
            "{mpd}"
        );
        assert_eq!(mpd.matches("contentType=\"audio\"").count(), 1, "{mpd}");
        assert!(
            !mpd.contains("id=\"2\""),
            "an empty period is left out: {mpd}"
        );
        assert!(
            mpd.contains("<Period id=\"3\" start=\"PT14.500S\""),
            "{mpd}"
        );
        assert!(mpd.contains("presentationTimeOffset=\"500\""), "{mpd}");
        assert!(mpd.contains("media=\"p3-v-$Time$.m4s\""), "{mpd}");
        assert!(mpd.contains("initialization=\"p1-a-init.mp4\""), "{mpd}");
        // 1 Mbit/s from the byte counts.
        assert!(
            mpd.contains("bandwidth=\"1000000\" width=\"1280\""),
            "{mpd}"
        );
    }
}
