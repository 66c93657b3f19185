//! `[storage] keep_days`: days older than that lose their objects and their index rows, hourly.
//! The box's own copy is the box's business (`[record] keep_days`, `keep_local_days`).

use std::time::Duration;

use super::Storage;
use crate::db::Db;

/// Days removed per sweep at most; the rest go at the next.
const PER_SWEEP: i64 = 1000;
const EVERY: Duration = Duration::from_secs(3600);

/// The first day kept at `now_ms`: `(year, month, day)`.
pub fn oldest_kept(keep_days: u32, now_ms: u64) -> (i32, u32, u32) {
    let today = (now_ms / 86_400_000) as i64;
    let (y, m, d) = verge_protocol::time::civil_from_days(today - i64::from(keep_days) + 1);
    (y, m, d)
}

/// Removes what is past `keep_days`; the days removed.
pub async fn sweep(db: &Db, storage: &Storage, now_ms: u64) -> Result<usize, String> {
    if storage.keep_days == 0 {
        return Ok(0);
    }
    let before = oldest_kept(storage.keep_days, now_ms);
    let days = db
        .stored_before(before, PER_SWEEP)
        .await
        .map_err(|e| e.to_string())?;
    let mut removed = 0;
    for (stream, (y, m, d)) in days {
        let day = format!("{stream}/{y:04}/{m:02}/{d:02}");
        match storage.delete_day(&day).await {
            Ok(objects) => {
                db.delete_day(&stream, (y, m, d))
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(%day, objects, "storage: a day past keep_days removed");
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(%day, error = %e, "storage: could not remove a day past keep_days")
            }
        }
    }
    Ok(removed)
}

/// Sweeps a minute after start, then hourly, while the database is up.
pub async fn run(index: crate::db::index::Index, storage: std::sync::Arc<Storage>) {
    if storage.keep_days == 0 {
        return;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    loop {
        if let Ok(db) = index.db()
            && let Err(e) = sweep(db, &storage, verge_protocol::now_ms()).await
        {
            tracing::warn!(error = %e, "storage: the keep_days sweep failed");
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_protocol::index::IndexRow;

    #[test]
    fn the_first_day_kept() {
        // 2026-12-05 10:00 UTC.
        let now = 1_796_464_800_000;
        assert_eq!(oldest_kept(1, now), (2026, 12, 5));
        assert_eq!(oldest_kept(7, now), (2026, 11, 29));
    }

    #[tokio::test]
    async fn days_past_keep_days_lose_objects_and_rows() {
        let (db, dir) = crate::db::scratch("retention").await;
        let cfg = crate::config::ManagerConfig::parse(&format!(
            "[storage]\ntype = \"fs\"\nroot = \"{}/store\"\nkeep_days = 2\n",
            dir.display()
        ))
        .unwrap()
        .storage
        .unwrap();
        let storage = Storage::new(&cfg, "http://m").unwrap();
        let now = 1_796_464_800_000; // 2026-12-05
        for (day, stored) in [(1, true), (3, true), (4, false), (5, true)] {
            let row = IndexRow {
                id: format!("r{day}"),
                stream: "live/cam".into(),
                year: 2026,
                month: 12,
                day,
                mpd_path: format!("live/cam/2026/12/{day:02}/manifest.mpd"),
            };
            db.upsert(&row, "edge-1").await.unwrap();
            let folder = dir.join(format!("store/live/cam/2026/12/{day:02}"));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("manifest.mpd"), b"<MPD/>").unwrap();
            if stored {
                db.mark_stored("live/cam", (2026, 12, day), "edge-1")
                    .await
                    .unwrap();
            }
        }
        assert_eq!(sweep(&db, &storage, now).await.unwrap(), 2);
        let days = crate::db::recordings::day_numbers(&db, "live/cam").await;
        assert_eq!(days, vec![5, 4]);
        assert!(!dir.join("store/live/cam/2026/12/01").exists());
        assert!(!dir.join("store/live/cam/2026/12/03").exists());
        assert!(dir.join("store/live/cam/2026/12/05").exists());
        // Not in storage: left to the box's own keep_days.
        assert!(dir.join("store/live/cam/2026/12/04").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
