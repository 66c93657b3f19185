//! Recorded files over HTTP: `GET /recordings/{*path}` on the agent's HTTP port (and so, through
//! the tunnel, on the manager), with the right content type and single byte ranges (players
//! seek, resumable downloads resume). Paths are relative to `[record] dir`; `..`, absolute
//! paths, hidden names and anything not a manifest or segment are refused, and no symbolic
//! link below the record folder is followed ([`open_beneath`]).

use std::io::SeekFrom;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

pub use verge_serve::range::recording_type as content_type;

/// Whether `path` is a plain relative path of normal, non-hidden components.
pub fn is_plain(path: &str) -> bool {
    if path.is_empty() || path.contains('\\') || path.contains('\0') {
        return false;
    }
    // Split by hand: `Path::components` quietly drops `.` and empty parts.
    path.split('/')
        .all(|part| !part.is_empty() && !part.starts_with('.'))
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Opens `relative` (a path [`is_plain`] took) under `root` one component at a time, each with
/// `O_NOFOLLOW` relative to the folder opened before it: a symbolic link anywhere below the
/// root, to a file or a folder, inside the root or out of it, is not followed (`ELOOP`), so it
/// is not served. Canonicalizing the path and checking it instead would leave a moment between
/// the check and the open in which a folder can be swapped for a link; opened this way, what
/// was checked is what is read. The root itself may be a link: it is the operator's
/// `[record] dir`. The file is opened non-blocking, so a FIFO planted there does not hold the
/// request (and is then refused as not a file).
pub fn open_beneath(root: &Path, relative: &str) -> std::io::Result<std::fs::File> {
    let mut at: OwnedFd = std::fs::File::open(root)?.into();
    let mut parts = relative.split('/').peekable();
    while let Some(part) = parts.next() {
        let kind = if parts.peek().is_some() {
            OFlag::O_DIRECTORY
        } else {
            OFlag::O_NONBLOCK
        };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | kind;
        at = openat(&at, part, flags, Mode::empty())?;
    }
    Ok(at.into())
}

/// An open that found nothing to serve: no such file, or a link (or a file) where a folder or
/// a file should be.
fn not_there(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || [Errno::ELOOP, Errno::ENOTDIR]
            .map(|errno| errno as i32)
            .contains(&e.raw_os_error().unwrap_or(0))
}

pub use verge_serve::range::parse_range;

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
    let (true, Some(content_type)) = (is_plain(path), content_type(path)) else {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("not a recording path: {path:?} (relative, no .., a .mpd, .mp4 or .m4s)"),
        );
    };
    let opened = {
        let (root, relative) = (root.to_path_buf(), path.to_string());
        tokio::task::spawn_blocking(move || open_beneath(&root, &relative)).await
    };
    let mut file = match opened {
        Ok(Ok(file)) => tokio::fs::File::from_std(file),
        Ok(Err(e)) if not_there(&e) => {
            return plain(StatusCode::NOT_FOUND, format!("no recording {path}"));
        }
        Ok(Err(e)) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}")),
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
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn only_plain_relative_paths_resolve() {
        assert!(is_plain("live/cam/2026/12/01/manifest.mpd"));
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
            assert!(!is_plain(bad), "{bad:?}");
        }
        assert_eq!(content_type("a/manifest.mpd"), Some("application/dash+xml"));
        assert_eq!(content_type("a/p1-3.m4s"), Some("video/iso.segment"));
        assert_eq!(content_type("a/periods.json"), None);
    }

    #[tokio::test]
    async fn links_below_the_record_folder_are_not_followed() {
        let base = std::env::temp_dir().join(format!("verge-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, outside) = (base.join("rec"), base.join("outside"));
        std::fs::create_dir_all(root.join("live/cam")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("live/cam/p1-1.m4s"), b"segment").unwrap();
        std::fs::write(outside.join("secret.mp4"), b"secret").unwrap();
        let link = |to: &Path, at: &str| std::os::unix::fs::symlink(to, root.join(at)).unwrap();
        // What the probe planted: a link to /etc/passwd, named like a recording.
        link(Path::new("/etc/passwd"), "live/cam/passwd.mp4");
        link(&outside.join("secret.mp4"), "live/cam/leak.mp4");
        link(&outside, "live/out");
        // Links that stay inside the folder are refused too: none is followed.
        link(&root.join("live/cam/p1-1.m4s"), "live/cam/alias.m4s");
        link(&root.join("live/cam"), "live/same");
        std::fs::create_dir(root.join("live/cam/dir.mp4")).unwrap();

        let get = |root: PathBuf, path: &'static str| async move {
            let response = serve(Some(&root), path, &HeaderMap::new()).await;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, body)
        };
        let (status, body) = get(root.clone(), "live/cam/p1-1.m4s").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"segment"[..]));
        for refused in [
            "live/cam/passwd.mp4",
            "live/cam/leak.mp4",
            "live/out/secret.mp4",
            "live/cam/alias.m4s",
            "live/same/p1-1.m4s",
            "live/cam/dir.mp4",
        ] {
            let (status, body) = get(root.clone(), refused).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{refused}: {body:?}");
        }
        // The record folder itself may be a link (the operator's choice).
        std::os::unix::fs::symlink(&root, base.join("rec-link")).unwrap();
        let (status, _) = get(base.join("rec-link"), "live/cam/p1-1.m4s").await;
        assert_eq!(status, StatusCode::OK);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
