//! Writes one stream's recording: segments into `{dir}/{app}/{name}/{yyyy}/{mm}/{dd}/`, and
//! after each one the day's `periods.json` and `manifest.mpd` (each written to a temporary file
//! and renamed, so a crash or a full disk never leaves a manifest naming a missing or partial
//! segment). Blocking file I/O: the recording task runs it off the async threads.

use std::io;
use std::path::{Path, PathBuf};

use verge_media::fmp4::segmenter::{Init, Segment};

use super::day::Day;
use super::manifest::{DayRecord, PeriodRecord, SegmentRecord, TrackRecord, render};

/// A recording that began a new day: the row the manager's index needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDay {
    pub stream: String,
    pub day: Day,
    /// `{app}/{name}/{yyyy}/{mm}/{dd}/manifest.mpd`, relative to the record directory.
    pub mpd_path: String,
}

pub struct StreamWriter {
    root: PathBuf,
    stream: String,
    day: Option<(Day, DayRecord)>,
    init: Option<Init>,
    /// The next segment starts a new period (new init, new publisher session, new day).
    new_period: bool,
    /// Bytes written, segments written.
    pub bytes: u64,
    pub segments: u64,
}

impl StreamWriter {
    pub fn new(root: &Path, stream: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            stream: stream.to_string(),
            day: None,
            init: None,
            new_period: true,
            bytes: 0,
            segments: 0,
        }
    }

    fn day_dir(&self, day: Day) -> PathBuf {
        self.root.join(&self.stream).join(day.path())
    }

    /// The init segment of the segments that follow.
    pub fn on_init(&mut self, init: Init) {
        self.init = Some(init);
        self.new_period = true;
    }

    /// A new publisher session: its segments go into a new period.
    pub fn on_restart(&mut self) {
        self.new_period = true;
    }

    /// Writes `segment`, which started at `wall_ms` (Unix ms). `Some` when it began a day.
    pub fn on_segment(&mut self, segment: &Segment, wall_ms: u64) -> io::Result<Option<NewDay>> {
        let Some(init) = self.init.clone() else {
            return Err(io::Error::other("a segment before any init segment"));
        };
        let today = Day::of_unix_ms(wall_ms);
        let mut began = None;
        if self.day.as_ref().map(|(d, _)| *d) != Some(today) {
            let dir = self.day_dir(today);
            std::fs::create_dir_all(&dir)?;
            // A day recorded before (an earlier session, or before a restart of the agent)
            // goes on: its periods stay, this one is added.
            let record = match std::fs::read(dir.join("periods.json")) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", dir.join("periods.json").display()),
                    )
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => DayRecord::default(),
                Err(e) => return Err(e),
            };
            self.day = Some((today, record));
            self.new_period = true;
            began = Some(NewDay {
                stream: self.stream.clone(),
                day: today,
                mpd_path: format!("{}/{}/manifest.mpd", self.stream, today.path()),
            });
        }
        let dir = self.day_dir(today);
        let Some((_, record)) = self.day.as_mut() else {
            return Err(io::Error::other("no day"));
        };
        if self.new_period || record.periods.is_empty() {
            let id = record.periods.iter().map(|p| p.id).max().unwrap_or(0) + 1;
            let mut tracks = Vec::new();
            for part in &init.tracks {
                let track = TrackRecord {
                    kind: part.kind.name().to_string(),
                    codec: part.codec.clone(),
                    segments: Vec::new(),
                };
                write_atomic(
                    &dir.join(format!("p{id}-{}-init.mp4", track.letter())),
                    &part.bytes,
                )?;
                tracks.push(track);
            }
            record.periods.push(PeriodRecord {
                id,
                started_at: wall_ms,
                width: init.width,
                height: init.height,
                tracks,
            });
            self.new_period = false;
        }
        let Some(period) = record.periods.last_mut() else {
            return Err(io::Error::other("no period"));
        };
        for part in &segment.tracks {
            let Some(track) = period
                .tracks
                .iter_mut()
                .find(|t| t.kind == part.kind.name())
            else {
                continue;
            };
            write_atomic(
                &dir.join(format!(
                    "p{}-{}-{}.m4s",
                    period.id,
                    track.letter(),
                    segment.start_ms
                )),
                &part.bytes,
            )?;
            track.segments.push(SegmentRecord {
                t: segment.start_ms,
                d: segment.duration_ms.max(1),
                bytes: part.bytes.len() as u64,
            });
            self.bytes += part.bytes.len() as u64;
        }
        let json = serde_json::to_vec_pretty(&*record).map_err(io::Error::other)?;
        write_atomic(&dir.join("periods.json"), &json)?;
        write_atomic(&dir.join("manifest.mpd"), render(record).as_bytes())?;
        self.segments += 1;
        Ok(began)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
fn segment(start_ms: u64, duration_ms: u64, bytes: &'static [u8]) -> Segment {
    use verge_media::fmp4::segmenter::{TrackKind, TrackPart};
    Segment {
        sequence: 0,
        start_ms,
        duration_ms,
        bytes: bytes::Bytes::new(),
        tracks: vec![TrackPart {
            kind: TrackKind::Video,
            codec: String::new(),
            bytes: bytes::Bytes::from_static(bytes),
        }],
        independent: true,
        discontinuity: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() -> Init {
        use verge_media::fmp4::segmenter::{TrackKind, TrackPart};
        Init {
            bytes: bytes::Bytes::new(),
            tracks: vec![TrackPart {
                kind: TrackKind::Video,
                codec: "avc1.64001f".into(),
                bytes: bytes::Bytes::from_static(b"init"),
            }],
            codecs: "avc1.64001f".into(),
            width: 640,
            height: 360,
        }
    }

    #[test]
    fn sessions_of_a_day_become_periods_and_midnight_starts_a_new_day() {
        let dir = std::env::temp_dir().join(format!("verge-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let before_midnight = 1_796_083_200_000 - 3000;
        let mut w = StreamWriter::new(&dir, "live/cam");
        w.on_init(init());
        let began = w
            .on_segment(&segment(0, 2000, b"s1"), before_midnight)
            .unwrap();
        assert_eq!(
            began.map(|b| b.mpd_path),
            Some("live/cam/2026/11/30/manifest.mpd".to_string())
        );
        assert_eq!(
            w.on_segment(&segment(2000, 2000, b"s2"), before_midnight + 2000)
                .unwrap(),
            None
        );
        // Midnight: the next segment is the first of a new day (and a new period there).
        let began = w
            .on_segment(&segment(4000, 2000, b"s3"), before_midnight + 4000)
            .unwrap();
        assert_eq!(began.unwrap().day.path(), "2026/12/01");
        let day1 = dir.join("live/cam/2026/11/30");
        assert_eq!(std::fs::read(day1.join("p1-v-2000.m4s")).unwrap(), b"s2");
        assert_eq!(
            std::fs::read(dir.join("live/cam/2026/12/01/p1-v-4000.m4s")).unwrap(),
            b"s3"
        );
        assert_eq!(
            std::fs::read(dir.join("live/cam/2026/12/01/p1-v-init.mp4")).unwrap(),
            b"init"
        );

        // The agent restarts: a new writer continues the day with period 2.
        let mut w = StreamWriter::new(&dir, "live/cam");
        w.on_init(init());
        w.on_segment(&segment(0, 2000, b"s4"), before_midnight + 9000)
            .unwrap();
        let mpd = std::fs::read_to_string(dir.join("live/cam/2026/12/01/manifest.mpd")).unwrap();
        assert!(
            mpd.contains("<Period id=\"1\"") && mpd.contains("<Period id=\"2\""),
            "{mpd}"
        );
        assert_eq!(
            std::fs::read(dir.join("live/cam/2026/12/01/p2-v-0.m4s")).unwrap(),
            b"s4"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("live/cam/2026/12/01"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        let file = std::env::temp_dir().join(format!("verge-writer-file-{}", std::process::id()));
        std::fs::write(&file, b"not a directory").unwrap();
        let mut w = StreamWriter::new(&file, "live/cam");
        w.on_init(init());
        assert!(w.on_segment(&segment(0, 2000, b"s1"), 0).is_err());
        std::fs::remove_file(&file).unwrap();
    }
}
