//! Recordings copied to the manager's `[storage]`, so a day outlives its box: each finished
//! segment, then the day's manifest, `PUT` over HTTPS to URLs the manager presigns (the
//! `storage.presign` call; the box holds no cloud credentials), then `storage.stored` so
//! playback reads the day from storage.
//!
//! - **The disk is the queue.** What is uploaded is written down per day in a ledger beside
//!   the files (`.uploaded.json`: each file's size, the manifest's digest); whatever the folder
//!   holds beyond it is still to go. So the queue survives restarts and outages of any length,
//!   and is bounded by the recordings themselves.
//! - **In order.** Days go oldest first; within a day every segment the manifest names is
//!   uploaded before the manifest: the manifest is read *before* the folder is listed, and the
//!   writer renames a segment into place before it rewrites the manifest naming it, so the
//!   bucket's manifest never names a segment the bucket lacks.
//! - **Polite.** `[record.upload] max_kbps` paces the uploads so live viewers keep the uplink;
//!   a failure waits (2 s doubling to 5 min) before the next try; a manager without storage
//!   is asked again after 10 minutes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use verge_protocol::call::{self, PresignParams, PresignResult, StoredParams};
use verge_protocol::rpc::ErrorCode;
use verge_serve::client;

use crate::calls::{CallError, ManagerCalls};
use crate::config::UploadConfig;

/// How often the recordings are looked over.
const TICK: Duration = Duration::from_secs(2);
/// The ledger's name in each day's folder (hidden: never served, never uploaded).
const LEDGER: &str = ".uploaded.json";
/// Files presigned and uploaded per batch.
const BATCH: usize = 16;
/// Day folders looked at, at most.
const MAX_DAYS: usize = 20_000;
/// A call's and an upload's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const PUT_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest file uploaded (larger ones are logged and left).
const MAX_FILE: u64 = 256 * 1024 * 1024;
/// Waits after failures.
const FIRST_WAIT: Duration = Duration::from_secs(2);
const LONGEST_WAIT: Duration = Duration::from_secs(300);
const NO_STORAGE_WAIT: Duration = Duration::from_secs(600);

/// What the uploader did, for `/metrics`.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Files (and their bytes) waiting, as of the last look.
    pub queued_files: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub uploaded_files: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub failures: AtomicU64,
    /// Unix ms of the last file uploaded; 0: none yet.
    pub last_upload_ms: AtomicU64,
}

/// One day's record of what reached storage.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// File name → size uploaded.
    #[serde(default)]
    pub files: BTreeMap<String, u64>,
    /// SHA-256 (hex) of the manifest last uploaded.
    #[serde(default)]
    pub manifest: Option<String>,
}

/// A day with something to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayWork {
    /// `{app}/{name}/{yyyy}/{mm}/{dd}`.
    pub day: String,
    pub dir: PathBuf,
    /// Files not uploaded (or changed since), oldest first: (name, size).
    pub files: Vec<(String, u64)>,
    /// The manifest as read before the folder was listed, when it differs from the uploaded one.
    pub manifest: Option<Bytes>,
    pub ledger: Ledger,
}

/// Whether `name` is a recording's media file (not the manifest, not bookkeeping).
fn is_media(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".m4s") || name.ends_with(".mp4"))
}

fn digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What is left to upload of one day, from its folder's listing (name, size, modified) and
/// the manifest read before it.
pub fn pending(
    listing: &[(String, u64, std::time::SystemTime)],
    manifest: Option<Bytes>,
    ledger: &Ledger,
) -> (Vec<(String, u64)>, Option<Bytes>) {
    let mut files: Vec<_> = listing
        .iter()
        .filter(|(name, size, _)| is_media(name) && ledger.files.get(name) != Some(size))
        .collect();
    files.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    let manifest = manifest.filter(|m| ledger.manifest.as_deref() != Some(digest(m).as_str()));
    (
        files.into_iter().map(|(n, s, _)| (n.clone(), *s)).collect(),
        manifest,
    )
}

/// Every day folder under `root` (`{app}/{name}/{yyyy}/{mm}/{dd}`), oldest day first.
fn day_folders(root: &Path) -> Vec<(String, PathBuf)> {
    fn children(dir: &Path) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                (!name.starts_with('.')).then(|| (name, e.path()))
            })
            .collect();
        out.sort();
        out
    }
    let mut days = Vec::new();
    for (app, app_dir) in children(root) {
        for (name, name_dir) in children(&app_dir) {
            for (y, y_dir) in children(&name_dir) {
                for (m, m_dir) in children(&y_dir) {
                    for (d, d_dir) in children(&m_dir) {
                        if days.len() >= MAX_DAYS {
                            return days;
                        }
                        days.push((format!("{y}/{m}/{d} {app}/{name}"), d_dir));
                    }
                }
            }
        }
    }
    days.sort();
    days.into_iter()
        .map(|(key, dir)| {
            let (date, stream) = key.split_once(' ').unwrap_or_default();
            (format!("{stream}/{date}"), dir)
        })
        .collect()
}

fn read_ledger(dir: &Path) -> Ledger {
    std::fs::read(dir.join(LEDGER))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_ledger(dir: &Path, ledger: &Ledger) -> std::io::Result<()> {
    let tmp = dir.join(".uploaded.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(ledger).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join(LEDGER))
}

/// The days with something to upload (blocking file I/O).
fn look(root: &Path) -> Vec<DayWork> {
    let mut work = Vec::new();
    for (day, dir) in day_folders(root) {
        let ledger = read_ledger(&dir);
        // First the manifest, then the listing: see the module's notes.
        let manifest = std::fs::read(dir.join("manifest.mpd"))
            .ok()
            .map(Bytes::from);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let listing: Vec<_> = entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        meta.len(),
                        meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    )
                })
            })
            .collect();
        let (files, manifest) = pending(&listing, manifest, &ledger);
        if !files.is_empty() || manifest.is_some() {
            work.push(DayWork {
                day,
                dir,
                files,
                manifest,
                ledger,
            });
        }
    }
    work
}

#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("PUT {path}: {why}")]
    Put { path: String, why: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl UploadError {
    /// How long to wait before trying again.
    fn wait(&self, backoff: Duration) -> Duration {
        match self {
            UploadError::Call(CallError::Refused { error, .. })
                if error.code == ErrorCode::Unsupported =>
            {
                NO_STORAGE_WAIT
            }
            _ => backoff,
        }
    }
}

struct Uploader {
    calls: ManagerCalls,
    max_kbps: u32,
    stats: Arc<UploadStats>,
}

impl Uploader {
    async fn presign(&self, paths: Vec<String>) -> Result<Vec<String>, UploadError> {
        let params = serde_json::to_value(PresignParams { paths }).unwrap_or_default();
        let value = self
            .calls
            .call(call::METHOD_STORAGE_PRESIGN, &params, CALL_TIMEOUT)
            .await?;
        let result: PresignResult =
            serde_json::from_value(value).map_err(|e| UploadError::Put {
                path: String::new(),
                why: format!("the manager's URLs do not read: {e}"),
            })?;
        Ok(result.urls)
    }

    async fn put(&self, path: &str, url: &str, body: Bytes) -> Result<(), UploadError> {
        let failed = |why: String| UploadError::Put {
            path: path.to_string(),
            why,
        };
        let url = client::Url::parse(url).map_err(|e| failed(e.to_string()))?;
        let content_type = verge_serve::range::recording_type(path).unwrap_or("application/xml");
        let len = body.len() as u64;
        let started = Instant::now();
        let call =
            client::Call::get(&url, "").with_body(axum::http::Method::PUT, content_type, body);
        let answer = client::send(call, PUT_TIMEOUT, 64 * 1024)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !(200..300).contains(&answer.status) {
            return Err(failed(format!("{}: {}", answer.status, answer.text())));
        }
        self.stats.uploaded_files.fetch_add(1, Ordering::Relaxed);
        self.stats.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
        self.stats
            .last_upload_ms
            .store(verge_protocol::now_ms(), Ordering::Relaxed);
        // The uplink's share: what this file may have taken at `max_kbps`, minus what it did.
        if self.max_kbps > 0 {
            let due = Duration::from_millis(len * 8 / u64::from(self.max_kbps));
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        }
        Ok(())
    }

    async fn day(&self, work: DayWork) -> Result<(), UploadError> {
        let DayWork {
            day,
            dir,
            files,
            manifest,
            mut ledger,
        } = work;
        for batch in files.chunks(BATCH) {
            let paths: Vec<String> = batch.iter().map(|(n, _)| format!("{day}/{n}")).collect();
            let urls = self.presign(paths.clone()).await?;
            for (((name, size), path), url) in batch.iter().zip(&paths).zip(&urls) {
                if *size > MAX_FILE {
                    tracing::warn!(%path, size, "not uploaded: larger than {MAX_FILE} bytes");
                    continue;
                }
                let body = Bytes::from(tokio::fs::read(dir.join(name)).await?);
                let uploaded = body.len() as u64;
                self.put(path, url, body).await?;
                ledger.files.insert(name.clone(), uploaded);
            }
            let (dir, copy) = (dir.clone(), ledger.clone());
            tokio::task::spawn_blocking(move || write_ledger(&dir, &copy))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
        }
        if let Some(manifest) = manifest {
            let path = format!("{day}/manifest.mpd");
            let urls = self.presign(vec![path.clone()]).await?;
            let url = urls.first().ok_or_else(|| UploadError::Put {
                path: path.clone(),
                why: "no URL".into(),
            })?;
            let sha = digest(&manifest);
            self.put(&path, url, manifest).await?;
            ledger.manifest = Some(sha);
            let (dir2, copy) = (dir.clone(), ledger.clone());
            tokio::task::spawn_blocking(move || write_ledger(&dir2, &copy))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
            let params =
                serde_json::to_value(StoredParams { day: day.clone() }).unwrap_or_default();
            self.calls
                .call(call::METHOD_STORAGE_STORED, &params, CALL_TIMEOUT)
                .await?;
            tracing::debug!(%day, files = ledger.files.len(), "day uploaded to storage");
        }
        Ok(())
    }
}

/// Uploads what `root` holds until the task is aborted.
pub async fn run(root: PathBuf, calls: ManagerCalls, cfg: UploadConfig, stats: Arc<UploadStats>) {
    let uploader = Uploader {
        calls,
        max_kbps: cfg.max_kbps,
        stats: stats.clone(),
    };
    let mut backoff = FIRST_WAIT;
    loop {
        tokio::time::sleep(TICK).await;
        let dir = root.clone();
        let Ok(work) = tokio::task::spawn_blocking(move || look(&dir)).await else {
            continue;
        };
        let queued: u64 = work.iter().map(|w| w.files.len() as u64).sum();
        let bytes: u64 = work.iter().flat_map(|w| &w.files).map(|(_, s)| *s).sum();
        stats.queued_files.store(queued, Ordering::Relaxed);
        stats.queued_bytes.store(bytes, Ordering::Relaxed);
        for day in work {
            let name = day.day.clone();
            match uploader.day(day).await {
                Ok(()) => backoff = FIRST_WAIT,
                Err(UploadError::Call(CallError::NotAttached)) => break,
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = e.wait(backoff);
                    tracing::warn!(day = %name, error = %e, wait_s = wait.as_secs(), "upload to storage failed; trying again later");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(LONGEST_WAIT);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn pending_is_what_the_ledger_lacks_oldest_first_and_the_changed_manifest() {
        let listing = vec![
            ("p1-v-3.m4s".to_string(), 30, at(3)),
            ("p1-v-init.mp4".to_string(), 5, at(1)),
            ("p1-v-2.m4s".to_string(), 20, at(2)),
            ("manifest.mpd".to_string(), 9, at(4)),
            ("periods.json".to_string(), 9, at(4)),
            (".uploaded.json".to_string(), 9, at(4)),
            (".p1-v-4.m4s.tmp".to_string(), 9, at(4)),
        ];
        let mut ledger = Ledger::default();
        ledger.files.insert("p1-v-2.m4s".into(), 20);
        let manifest = Bytes::from_static(b"<MPD/>");
        let (files, m) = pending(&listing, Some(manifest.clone()), &ledger);
        assert_eq!(
            files,
            vec![
                ("p1-v-init.mp4".to_string(), 5),
                ("p1-v-3.m4s".to_string(), 30)
            ]
        );
        assert_eq!(m, Some(manifest.clone()));
        // Uploaded as it is now: nothing left; a file that grew since goes again.
        ledger.files.insert("p1-v-init.mp4".into(), 5);
        ledger.files.insert("p1-v-3.m4s".into(), 29);
        ledger.manifest = Some(digest(&manifest));
        let (files, m) = pending(&listing, Some(manifest), &ledger);
        assert_eq!(files, vec![("p1-v-3.m4s".to_string(), 30)]);
        assert_eq!(m, None);
    }

    #[test]
    fn days_are_found_oldest_first_and_the_ledger_round_trips() {
        let root = std::env::temp_dir().join(format!("verge-upload-{}", std::process::id()));
        for day in [
            "live/b/2026/12/05",
            "live/a/2026/12/06",
            "live/a/2026/11/30",
        ] {
            std::fs::create_dir_all(root.join(day)).unwrap();
        }
        std::fs::create_dir_all(root.join(".hidden/x/2026/01/01")).unwrap();
        let days: Vec<String> = day_folders(&root).into_iter().map(|(d, _)| d).collect();
        assert_eq!(
            days,
            vec![
                "live/a/2026/11/30",
                "live/b/2026/12/05",
                "live/a/2026/12/06"
            ]
        );
        let dir = root.join("live/b/2026/12/05");
        std::fs::write(dir.join("p1-v-1.m4s"), b"x").unwrap();
        std::fs::write(dir.join("manifest.mpd"), b"<MPD/>").unwrap();
        let work = look(&root);
        assert_eq!(work.len(), 1);
        assert_eq!(work[0].day, "live/b/2026/12/05");
        let mut ledger = work[0].ledger.clone();
        ledger.files.insert("p1-v-1.m4s".into(), 1);
        ledger.manifest = Some(digest(b"<MPD/>"));
        write_ledger(&dir, &ledger).unwrap();
        assert_eq!(read_ledger(&dir), ledger);
        assert!(look(&root).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
