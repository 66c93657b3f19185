//! `[storage] type = "fs"`: objects in a folder of the manager's machine. Boxes upload with
//! `PUT {manager}/api/storage/put/{key}?expires={unix s}&sig={hex}`: the signature is an
//! HMAC-SHA256 of the method, the key and the expiry under a key this process draws at start
//! (URLs die with the process; a box asks again). Files are written beside their place and
//! renamed into it, so a reader never sees half an object.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use ring::hmac;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{Fetched, StorageError};

/// The largest object one PUT may write (a recorded segment is a few MiB).
pub const MAX_OBJECT: u64 = 256 * 1024 * 1024;

pub struct FsStore {
    root: PathBuf,
    public_url: String,
    key: hmac::Key,
}

/// A key as a relative path of plain parts, or why not.
fn checked(key: &str) -> Result<&Path, StorageError> {
    let path = Path::new(key);
    let plain = !key.is_empty()
        && !key.contains('\0')
        && key.split('/').all(|p| !p.is_empty() && !p.starts_with('.'))
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(StorageError::Backend(format!(
            "not a plain object key: {key:?}"
        )))
    }
}

impl FsStore {
    pub fn new(root: PathBuf, public_url: &str) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&root)
            .map_err(|e| StorageError::Config(format!("root {}: {e}", root.display())))?;
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| StorageError::Config("no randomness for the URL key".into()))?;
        Ok(Self {
            root,
            public_url: public_url.trim_end_matches('/').to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn signature(&self, method: &str, key: &str, expires: u64) -> hmac::Tag {
        hmac::sign(&self.key, format!("{method}\n{key}\n{expires}").as_bytes())
    }

    pub fn signed_url(&self, method: &str, key: &str, ttl: Duration) -> String {
        let expires = verge_protocol::now_ms() / 1000 + ttl.as_secs();
        let sig: String = self
            .signature(method, key, expires)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}/api/storage/put/{key}?expires={expires}&sig={sig}",
            self.public_url
        )
    }

    /// Whether `sig` allows `method` on `key` until `expires`, at `now` (Unix s).
    pub fn allows(&self, method: &str, key: &str, expires: u64, sig: &str, now: u64) -> bool {
        let Some(sig) = hex(sig) else {
            return false;
        };
        now <= expires
            && hmac::verify(
                &self.key,
                format!("{method}\n{key}\n{expires}").as_bytes(),
                &sig,
            )
            .is_ok()
    }

    /// Writes `body` to `key`, at most [`MAX_OBJECT`] bytes.
    pub async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError> {
        let path = self.root.join(checked(key)?);
        let dir = path
            .parent()
            .ok_or_else(|| StorageError::Backend("no folder".into()))?;
        let io = |e: std::io::Error| StorageError::Backend(e.to_string());
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let tmp = dir.join(format!(
            ".{}.part-{:x}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object"),
            verge_protocol::now_ms()
        ));
        let written = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
            let mut body = body;
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| StorageError::Backend(e.to_string()))?;
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                total += chunk.len() as u64;
                if total > MAX_OBJECT {
                    return Err(StorageError::Backend(format!(
                        "an object larger than {MAX_OBJECT} bytes"
                    )));
                }
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            tokio::fs::rename(&tmp, &path).await.map_err(io)?;
            Ok(total)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    /// Removes the folder `key` and what it holds; the files removed.
    pub async fn delete_folder(&self, key: &str) -> Result<u64, StorageError> {
        let dir = self.root.join(checked(key)?);
        let count = std::fs::read_dir(&dir)
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(count),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StorageError::Backend(e.to_string())),
        }
    }

    pub async fn get(&self, key: &str, range: Option<&str>) -> Result<Fetched, StorageError> {
        let path = self.root.join(checked(key)?);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound);
            }
            Err(e) => return Err(StorageError::Backend(e.to_string())),
        };
        let io = |e: std::io::Error| StorageError::Backend(e.to_string());
        let len = file.metadata().await.map_err(io)?.len();
        let range = match range.and_then(|r| verge_serve::range::parse_range(r, len)) {
            Some(Ok(r)) => Some(r),
            Some(Err(())) => return Err(StorageError::Range(len)),
            None => None,
        };
        let (start, count) = range.map_or((0, len), |(a, b)| (a, b - a + 1));
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(io)?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
        Ok(Fetched { len, range, body })
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signed_urls_allow_one_method_one_key_until_they_expire() {
        let dir = std::env::temp_dir().join(format!("verge-fs-store-{}", std::process::id()));
        let store = FsStore::new(dir.clone(), "http://m:8080/").unwrap();
        let url = store.signed_url("PUT", "live/cam/2026/12/05/a.m4s", Duration::from_secs(60));
        let query = url.split_once('?').unwrap().1;
        assert!(url.starts_with("http://m:8080/api/storage/put/live/cam/2026/12/05/a.m4s?"));
        let (expires, sig) = {
            let mut e = 0;
            let mut s = "";
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("expires", v)) => e = v.parse().unwrap(),
                    Some(("sig", v)) => s = v,
                    _ => {}
                }
            }
            (e, s.to_string())
        };
        let now = verge_protocol::now_ms() / 1000;
        let key = "live/cam/2026/12/05/a.m4s";
        assert!(store.allows("PUT", key, expires, &sig, now));
        assert!(!store.allows("GET", key, expires, &sig, now));
        assert!(!store.allows("PUT", "live/cam/2026/12/05/b.m4s", expires, &sig, now));
        assert!(!store.allows("PUT", key, expires + 1, &sig, now));
        assert!(!store.allows("PUT", key, expires, &sig, expires + 1));
        assert!(!store.allows("PUT", key, expires, "zz", now));

        // Written whole, read whole and in part; keys that leave the folder are refused.
        let n = store.put(key, Body::from(vec![7u8; 1000])).await.unwrap();
        assert_eq!(n, 1000);
        let whole = store.get(key, None).await.unwrap();
        assert_eq!((whole.len, whole.range), (1000, None));
        let part = store.get(key, Some("bytes=10-19")).await.unwrap();
        assert_eq!(part.range, Some((10, 19)));
        let bytes = axum::body::to_bytes(part.body, 100).await.unwrap();
        assert_eq!(bytes.len(), 10);
        assert!(matches!(
            store.get(key, Some("bytes=5000-")).await,
            Err(StorageError::Range(1000))
        ));
        assert!(matches!(
            store.get("live/none", None).await,
            Err(StorageError::NotFound)
        ));
        for bad in ["../x", "/etc/passwd", "a/./b", "a//b", ".hidden/x", ""] {
            assert!(store.put(bad, Body::empty()).await.is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
