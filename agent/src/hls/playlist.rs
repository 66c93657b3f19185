//! The live media playlist (RFC 8216) over a window of fMP4 segments.

use std::fmt::Write;

/// One segment as the playlist names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub sequence: u64,
    pub duration_ms: u64,
    /// Which init segment it needs (`init-{n}.mp4`).
    pub init: u32,
    pub discontinuity: bool,
}

/// What the playlist says besides its entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// `EXT-X-TARGETDURATION`: whole seconds, at least every segment's rounded duration; it
    /// must not change during a live session, so the caller keeps the largest ever seen.
    pub target_secs: u64,
    /// Discontinuities that have left the window (`EXT-X-DISCONTINUITY-SEQUENCE`).
    pub discontinuity_sequence: u64,
    /// The publisher is gone and nothing more will come (`EXT-X-ENDLIST`).
    pub ended: bool,
}

/// The playlist text for `entries` (oldest first).
pub fn render(header: &Header, entries: &[Entry]) -> String {
    let mut out = String::with_capacity(128 + 64 * entries.len());
    let first = entries.first().map_or(0, |e| e.sequence);
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{first}\n\
         #EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
        header.target_secs.max(1),
        header.discontinuity_sequence
    );
    let mut init = None;
    for entry in entries {
        if init.is_some() && (entry.discontinuity || init != Some(entry.init)) {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if init != Some(entry.init) {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"init-{}.mp4\"", entry.init);
            init = Some(entry.init);
        }
        let _ = write!(
            out,
            "#EXTINF:{}.{:03},\n{}.m4s\n",
            entry.duration_ms / 1000,
            entry.duration_ms % 1000,
            entry.sequence
        );
    }
    if header.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64, duration_ms: u64, init: u32, discontinuity: bool) -> Entry {
        Entry {
            sequence,
            duration_ms,
            init,
            discontinuity,
        }
    }

    #[test]
    fn a_window_with_a_restart_and_a_new_init() {
        let header = Header {
            target_secs: 3,
            discontinuity_sequence: 2,
            ended: false,
        };
        let text = render(
            &header,
            &[
                entry(7, 2400, 1, false),
                entry(8, 2000, 1, true),
                entry(9, 2040, 2, false),
            ],
        );
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:7\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:2\n#EXT-X-MAP:URI=\"init-1.mp4\"\n\
             #EXTINF:2.400,\n7.m4s\n#EXT-X-DISCONTINUITY\n#EXTINF:2.000,\n8.m4s\n\
             #EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-2.mp4\"\n#EXTINF:2.040,\n9.m4s\n"
        );
    }

    #[test]
    fn an_ended_stream_says_so_and_the_first_segment_never_opens_with_a_discontinuity() {
        let header = Header {
            target_secs: 0,
            discontinuity_sequence: 0,
            ended: true,
        };
        let text = render(&header, &[entry(1, 999, 1, true)]);
        assert!(text.contains("#EXT-X-TARGETDURATION:1\n"));
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"));
        assert!(text.ends_with("#EXTINF:0.999,\n1.m4s\n#EXT-X-ENDLIST\n"));
    }
}
