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
/// How often uploaded days past `keep_local_days` are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the uploader did, for `/metrics`.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Files (and their bytes) waiting, as of the last look.
    pub queued_files: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub uploaded_files: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Failed attempts by reason ([`UploadStats::REASONS`]).
    pub failures: [AtomicU64; 5],
    /// Unix ms of the last file uploaded; 0: none yet.
    pub last_upload_ms: AtomicU64,
}

impl UploadStats {
    /// Why an attempt failed: the manager has no storage, the day is not indexed yet, the
    /// manager did not answer or refused, the storage server refused or was not reached, the
    /// box's own disk.
    pub const REASONS: [&'static str; 5] = ["no_storage", "not_indexed", "manager", "put", "disk"];
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

/// Day folders found wholly uploaded, with their modification time then: a folder whose time
/// has not moved since (the writer renames every file into place, which moves it) is not read
/// again, so a box with months of recordings does not reread and hash every manifest each tick.
pub type Settled = std::collections::HashMap<PathBuf, std::time::SystemTime>;

/// The days with something to upload (blocking file I/O); `settled` is kept across calls.
fn look(root: &Path, settled: &mut Settled) -> Vec<DayWork> {
    let mut work = Vec::new();
    let mut seen = Settled::new();
    for (day, dir) in day_folders(root) {
        let Some(modified) = std::fs::metadata(&dir).and_then(|m| m.modified()).ok() else {
            continue;
        };
        if settled.get(&dir) == Some(&modified) {
            seen.insert(dir, modified);
            continue;
        }
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
        } else {
            seen.insert(dir, modified);
        }
    }
    // Days gone (removed, pruned) are forgotten.
    *settled = seen;
    work
}

/// Removes the local copies of days older than `keep` days (today counts as one) that are
/// wholly in storage: every media file and the manifest as they are now. Returns the days
/// removed.
pub fn prune_uploaded(root: &Path, keep: u32, now_ms: u64) -> Vec<String> {
    if keep == 0 {
        return Vec::new();
    }
    let today = super::day::Day::of_unix_ms(now_ms).to_days();
    let oldest_kept = super::day::Day::from_days(today - i64::from(keep) + 1).path();
    let mut removed = Vec::new();
    for (day, dir) in day_folders(root) {
        // `{app}/{name}/{yyyy}/{mm}/{dd}`: the date is the last ten characters.
        let date = day.get(day.len().saturating_sub(10)..).unwrap_or_default();
        if date >= oldest_kept.as_str() {
            continue;
        }
        let ledger = read_ledger(&dir);
        let manifest = std::fs::read(dir.join("manifest.mpd"))
            .ok()
            .map(Bytes::from);
        let listing: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    meta.len(),
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                ))
            })
            .collect();
        let (files, changed) = pending(&listing, manifest.clone(), &ledger);
        if files.is_empty() && changed.is_none() && manifest.is_some() && ledger.manifest.is_some()
        {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(day),
                Err(e) => tracing::warn!(%day, error = %e, "could not remove an uploaded day"),
            }
        }
    }
    removed
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
    /// Its place in [`UploadStats::REASONS`].
    fn reason(&self) -> usize {
        match self {
            UploadError::Call(CallError::Refused { error, .. }) => match error.code {
                ErrorCode::Unsupported => 0,
                ErrorCode::NotFound => 1,
                _ => 2,
            },
            UploadError::Call(_) => 2,
            UploadError::Put { .. } => 3,
            UploadError::Io(_) => 4,
        }
    }

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

/// Uploads what `root` holds until the task is aborted; the backlog goes into `state` for the
/// manager's dashboard.
pub async fn run(
    root: PathBuf,
    calls: ManagerCalls,
    cfg: UploadConfig,
    stats: Arc<UploadStats>,
    state: crate::state::StateHandle,
) {
    let uploader = Uploader {
        calls,
        max_kbps: cfg.max_kbps,
        stats: stats.clone(),
    };
    let mut backoff = FIRST_WAIT;
    let mut pruned = Instant::now();
    let mut settled = Settled::new();
    loop {
        tokio::time::sleep(TICK).await;
        if cfg.keep_local_days > 0 && pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            let (dir, keep) = (root.clone(), cfg.keep_local_days);
            let removed = tokio::task::spawn_blocking(move || {
                prune_uploaded(&dir, keep, verge_protocol::now_ms())
            })
            .await
            .unwrap_or_default();
            if !removed.is_empty() {
                tracing::info!(
                    days = removed.len(),
                    "local copies of uploaded days removed (keep_local_days)"
                );
            }
        }
        let dir = root.clone();
        let mut held = std::mem::take(&mut settled);
        let Ok((work, held)) = tokio::task::spawn_blocking(move || {
            let work = look(&dir, &mut held);
            (work, held)
        })
        .await
        else {
            continue;
        };
        settled = held;
        let queued: u64 = work.iter().map(|w| w.files.len() as u64).sum();
        let bytes: u64 = work.iter().flat_map(|w| &w.files).map(|(_, s)| *s).sum();
        stats.queued_files.store(queued, Ordering::Relaxed);
        stats.queued_bytes.store(bytes, Ordering::Relaxed);
        let backlog = |failing: Option<String>| {
            (queued > 0 || failing.is_some()).then(|| verge_protocol::state::UploadBacklog {
                files: queued,
                bytes,
                last_ms: stats.last_upload_ms.load(Ordering::Relaxed),
                failing,
            })
        };
        state.set_upload(backlog(None));
        for day in work {
            let name = day.day.clone();
            match uploader.day(day).await {
                Ok(()) => backoff = FIRST_WAIT,
                Err(UploadError::Call(CallError::NotAttached)) => break,
                Err(e) => {
                    stats.failures[e.reason()].fetch_add(1, Ordering::Relaxed);
                    state.set_upload(backlog(Some(e.to_string())));
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
    fn only_old_days_wholly_in_storage_lose_their_local_copy() {
        let root = std::env::temp_dir().join(format!("verge-prune-{}", std::process::id()));
        let now = super::super::day::Day::parse("2026", "12", "05")
            .unwrap()
            .start_unix_ms()
            + 3_600_000;
        let day = |d: &str, uploaded: bool| {
            let dir = root.join("live/cam/2026/12").join(d);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("p1-v-1.m4s"), b"seg").unwrap();
            std::fs::write(dir.join("manifest.mpd"), b"<MPD/>").unwrap();
            if uploaded {
                let mut ledger = Ledger::default();
                ledger.files.insert("p1-v-1.m4s".into(), 3);
                ledger.manifest = Some(digest(b"<MPD/>"));
                write_ledger(&dir, &ledger).unwrap();
            }
            dir
        };
        let old_done = day("01", true);
        let old_behind = day("02", false);
        let recent_done = day("05", true);
        // A file added after the upload: not wholly in storage any more.
        let old_grown = day("03", true);
        std::fs::write(old_grown.join("p1-v-2.m4s"), b"more").unwrap();
        assert!(prune_uploaded(&root, 0, now).is_empty());
        let removed = prune_uploaded(&root, 2, now);
        assert_eq!(removed, vec!["live/cam/2026/12/01"]);
        assert!(!old_done.exists());
        assert!(old_behind.exists() && recent_done.exists() && old_grown.exists());
        std::fs::remove_dir_all(&root).unwrap();
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
        let mut settled = Settled::new();
        let work = look(&root, &mut settled);
        assert_eq!(work.len(), 1);
        assert_eq!(work[0].day, "live/b/2026/12/05");
        let mut ledger = work[0].ledger.clone();
        ledger.files.insert("p1-v-1.m4s".into(), 1);
        ledger.manifest = Some(digest(b"<MPD/>"));
        write_ledger(&dir, &ledger).unwrap();
        assert_eq!(read_ledger(&dir), ledger);
        assert!(look(&root, &mut settled).is_empty());
        // Settled now: not read again until its folder changes.
        assert!(settled.contains_key(&dir));
        std::fs::write(dir.join("manifest.mpd"), b"<MPD>2</MPD>").unwrap();
        let tmp = dir.join("p1-v-2.m4s.tmp");
        std::fs::write(&tmp, b"yy").unwrap();
        std::fs::rename(&tmp, dir.join("p1-v-2.m4s")).unwrap();
        let again = look(&root, &mut settled);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].files, vec![("p1-v-2.m4s".to_string(), 2)]);
        assert!(!settled.contains_key(&dir));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
