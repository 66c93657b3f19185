//! Recorded files over HTTP: `GET /recordings/{*path}` on the agent's HTTP port (and so, through
//! the tunnel, on the manager), with the right content type and single byte ranges (players
//! seek, resumable downloads resume). Paths are relative to `[record] dir`; `..`, absolute
//! paths, hidden names and anything not a manifest or segment are refused.

use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// The content type of a recorded file, by extension; `None`: not served.
pub fn content_type(path: &str) -> Option<&'static str> {
    match path.rsplit_once('.')?.1 {
        "mpd" => Some("application/dash+xml"),
        "mp4" => Some("video/mp4"),
        "m4s" => Some("video/iso.segment"),
        _ => None,
    }
}

/// `path` under `root`, if it is a plain relative path of normal, non-hidden components.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    if path.is_empty() || path.contains('\\') || path.contains('\0') {
        return None;
    }
    // Split by hand: `Path::components` quietly drops `.` and empty parts.
    let plain = path
        .split('/')
        .all(|part| !part.is_empty() && !part.starts_with('.'))
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    plain.then(|| root.join(path))
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

fn plain(status: StatusCode, reason: String) -> Response {
    (
        status,
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// Serves `path` from `root` (`None`: recording is not configured on this agent).
pub async fn serve(root: Option<&Path>, path: &str, headers: &HeaderMap) -> Response {
    let Some(root) = root else {
        return plain(
            StatusCode::NOT_FOUND,
            "this agent serves no recordings".into(),
        );
    };
    let (Some(file_path), Some(content_type)) = (resolve(root, path), content_type(path)) else {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("not a recording path: {path:?} (relative, no .., a .mpd, .mp4 or .m4s)"),
        );
    };
    let mut file = match tokio::fs::File::open(&file_path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return plain(StatusCode::NOT_FOUND, format!("no recording {path}"));
        }
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}")),
    };
    let len = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return plain(StatusCode::NOT_FOUND, format!("no recording {path}")),
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}")),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Some(Err(())) => {
            let mut response = plain(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("{path} has {len} bytes"),
            );
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    if start > 0
        && let Err(e) = file.seek(SeekFrom::Start(start)).await
    {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}"));
    }
    // 64 KiB reads: the default 4 KiB made a large segment crawl at ~120 MB/s.
    let body = Body::from_stream(ReaderStream::with_capacity(
        file.take(end - start),
        64 * 1024,
    ));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Ok(value) = HeaderValue::from_str(&(end - start).to_string()) {
        h.insert(header::CONTENT_LENGTH, value);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_resolve() {
        let root = Path::new("/rec");
        assert_eq!(
            resolve(root, "live/cam/2026/12/01/manifest.mpd"),
            Some(PathBuf::from("/rec/live/cam/2026/12/01/manifest.mpd"))
        );
        for bad in [
            "",
            "../etc/passwd",
            "live/../../etc/passwd",
            "/etc/passwd",
            "live/./cam",
            "live/.hidden/x.mp4",
            "live\\..\\x",
            "a/\0/b",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad:?}");
        }
        assert_eq!(content_type("a/manifest.mpd"), Some("application/dash+xml"));
        assert_eq!(content_type("a/p1-3.m4s"), Some("video/iso.segment"));
        assert_eq!(content_type("a/periods.json"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-5000", 1000), Some(Ok((0, 999))));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some(Ok((990, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=x-1", 1000), None);
    }
}
