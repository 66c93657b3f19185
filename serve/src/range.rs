//! HTTP byte ranges and content types, as recorded files are served (by a box, and from the
//! manager's storage).

/// The content type of a recorded file, by extension; `None`: not a recording's file.
pub fn recording_type(path: &str) -> Option<&'static str> {
    match path.rsplit_once('.')?.1 {
        "mpd" => Some("application/dash+xml"),
        "mp4" => Some("video/mp4"),
        "m4s" => Some("video/iso.segment"),
        _ => None,
    }
}

/// A single byte range of a `len`-byte file: `bytes=a-b`, `bytes=a-`, `bytes=-n`.
/// `Err(())`: unsatisfiable. Multiple ranges are answered with the whole file (allowed).
pub fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let n: u64 = end.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let a: u64 = start.parse().ok()?;
        let b = if end.is_empty() {
            len.saturating_sub(1)
        } else {
            end.parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if a >= len || b < a {
            return Some(Err(()));
        }
        (a, b)
    };
    Some(Ok(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-5000", 1000), Some(Ok((0, 999))));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some(Ok((990, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-9", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=x-1", 1000), None);
        assert_eq!(parse_range("bytes=-0", 1000), Some(Err(())));
    }
}
