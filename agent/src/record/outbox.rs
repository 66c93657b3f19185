//! Index rows not yet acknowledged by a manager, kept in a small file so that nothing is lost
//! across broker outages and agent restarts; and the task that delivers them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};
use verge_protocol::envelope;
use verge_protocol::index::{IndexAck, IndexEvent, IndexRow};
use verge_protocol::secret::MacKey;

use super::writer::NewDay;

/// Rows sent in one event.
const ROWS_PER_EVENT: usize = 100;
/// Unacknowledged rows are sent again this often (and at every reconnect).
const RESEND: Duration = Duration::from_secs(15);

pub struct Outbox {
    path: PathBuf,
    rows: Vec<IndexRow>,
    next: u64,
}

impl Outbox {
    /// Loads `path`; a missing file is an empty outbox, a corrupt one an error.
    pub fn open(path: &Path) -> io::Result<Self> {
        let rows: Vec<IndexRow> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_path_buf(),
            rows,
            next: verge_protocol::now_ms(),
        })
    }

    /// An empty outbox saving to `path`.
    pub fn empty(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            rows: Vec::new(),
            next: verge_protocol::now_ms(),
        }
    }

    pub fn pending(&self) -> &[IndexRow] {
        &self.rows
    }

    /// Adds the row of `day` (once: a day already waiting is not added twice), and saves.
    pub fn add(&mut self, day: &NewDay) -> io::Result<()> {
        if self.rows.iter().any(|r| r.mpd_path == day.mpd_path) {
            return Ok(());
        }
        self.next += 1;
        self.rows.push(IndexRow {
            id: format!("{:x}", self.next),
            stream: day.stream.clone(),
            year: day.day.year,
            month: day.day.month,
            day: day.day.day,
            mpd_path: day.mpd_path.clone(),
        });
        self.save()
    }

    /// Drops acknowledged rows and saves; the count dropped.
    pub fn ack(&mut self, ids: &[String]) -> io::Result<usize> {
        let before = self.rows.len();
        self.rows.retain(|r| !ids.contains(&r.id));
        let dropped = before - self.rows.len();
        if dropped > 0 {
            self.save()?;
        }
        Ok(dropped)
    }

    fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.rows).map_err(io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// What the delivery task needs of the MQTT session.
pub struct Link {
    pub agent: String,
    pub key: MacKey,
    pub client: AsyncClient,
    pub topic: String,
    /// The MQTT session number; changes at every (re)connect, 0 while down.
    pub connected: watch::Receiver<u64>,
}

/// Sends pending rows at start, for each new day, at every reconnect and every [`RESEND`],
/// until acknowledged (`acks` carries opened acknowledgements).
pub async fn deliver(
    mut outbox: Outbox,
    mut days: mpsc::Receiver<NewDay>,
    mut acks: mpsc::Receiver<IndexAck>,
    mut link: Link,
) {
    let mut resend = tokio::time::interval(RESEND);
    loop {
        tokio::select! {
            day = days.recv() => {
                let Some(day) = day else { return };
                if let Err(e) = outbox.add(&day) {
                    tracing::error!(agent = %link.agent, path = %day.mpd_path, error = %e, "index outbox: cannot save a row; it is sent once, unsaved");
                }
            }
            ack = acks.recv() => {
                let Some(ack) = ack else { return };
                for refused in &ack.refused {
                    if let Some(row) = outbox.pending().iter().find(|r| r.id == refused.id) {
                        tracing::error!(agent = %link.agent, path = %row.mpd_path, reason = %refused.reason, "the manager refused an index row; it is dropped");
                    }
                }
                let done: Vec<String> = ack
                    .ids
                    .iter()
                    .cloned()
                    .chain(ack.refused.iter().map(|r| r.id.clone()))
                    .collect();
                match outbox.ack(&done) {
                    Ok(n) if n > 0 => tracing::info!(agent = %link.agent, rows = n, left = outbox.pending().len(), "index rows acknowledged"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(agent = %link.agent, error = %e, "index outbox: cannot save"),
                }
                continue;
            }
            changed = link.connected.changed() => {
                if changed.is_err() { return }
            }
            _ = resend.tick() => {}
        }
        if *link.connected.borrow() == 0 || outbox.pending().is_empty() {
            continue;
        }
        for rows in outbox.pending().chunks(ROWS_PER_EVENT) {
            let event = IndexEvent {
                rows: rows.to_vec(),
            };
            let payload = envelope::seal(&link.key, &link.agent, verge_protocol::now_ms(), &event);
            if let Err(e) = link
                .client
                .publish(link.topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
            {
                tracing::warn!(agent = %link.agent, error = %e, "index rows not sent; retrying");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::day::Day;

    #[test]
    fn rows_survive_a_restart_until_acknowledged_and_are_never_doubled() {
        let path = std::env::temp_dir().join(format!("verge-outbox-{}/o.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let day = |d: u32| NewDay {
            stream: "live/cam".into(),
            day: Day {
                year: 2026,
                month: 12,
                day: d,
            },
            mpd_path: format!("live/cam/2026/12/{d:02}/manifest.mpd"),
        };
        let mut outbox = Outbox::open(&path).unwrap();
        outbox.add(&day(1)).unwrap();
        outbox.add(&day(1)).unwrap();
        outbox.add(&day(2)).unwrap();
        assert_eq!(outbox.pending().len(), 2);
        assert!(outbox.pending().iter().all(|r| r.check().is_ok()));
        let first = outbox.pending()[0].id.clone();

        let mut reopened = Outbox::open(&path).unwrap();
        assert_eq!(reopened.pending(), outbox.pending());
        assert_eq!(reopened.ack(&[first, "unknown".into()]).unwrap(), 1);
        let reopened = Outbox::open(&path).unwrap();
        assert_eq!(reopened.pending().len(), 1);
        assert_eq!(reopened.pending()[0].day, 2);

        std::fs::write(&path, b"{not json").unwrap();
        assert!(Outbox::open(&path).is_err());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
