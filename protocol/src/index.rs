//! The recording index, agent to manager: each day a stream's recording begins is one row
//! `(stream, year, month, day, mpd_path)`. Delivery is at least once: the agent keeps rows in an
//! on-disk outbox until a manager acknowledges them, and resends after reconnects and restarts;
//! the manager upserts, so a resend changes nothing.
//!
//! ```text
//! {p}/v1/a/{agent}/idx        IndexEvent, agent -> managers (QoS 1), signed by the agent
//! {p}/v1/a/{agent}/ack:{mgr}  IndexAck, manager -> agent (QoS 1), signed with the agent's secret
//! ```

use serde::{Deserialize, Serialize};

use crate::envelope::{Kind, Message};

/// RPC: record `stream` from now on (now if it is live, else from its next publish), whatever
/// `[record] streams` says. Params [`RecordParams`], result [`RecordState`].
pub const METHOD_RECORD_START: &str = "record.start";
/// RPC: stop recording `stream` (what is written stays), even if `[record] streams` names it.
pub const METHOD_RECORD_STOP: &str = "record.stop";
/// RPC: whether and how `stream` is recorded.
pub const METHOD_RECORD_STATE: &str = "record.state";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordParams {
    /// `{app}/{name}`.
    pub stream: String,
}

/// A stream's recording as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordState {
    pub stream: String,
    /// Recorded whenever it is published (by `[record] streams` or `record.start`).
    pub wanted: bool,
    /// `recording`, `waiting` (wanted, not live), `stopped` (not wanted), or `failed` (a write
    /// failed: `error` says why; tried again at the next publish).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Of the current (or failed) recording.
    #[serde(default)]
    pub segments: u64,
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    /// Chosen by the agent, unique among its rows: what an acknowledgement names.
    pub id: String,
    /// `{app}/{name}`.
    pub stream: String,
    pub year: i32,
    pub month: u32,
    pub day: u32,
    /// `{stream}/{yyyy}/{mm}/{dd}/manifest.mpd`, relative to the agent's record directory.
    pub mpd_path: String,
}

impl IndexRow {
    /// The only `mpd_path` a row may carry: the one its stream and day name. A manager refuses
    /// rows that point anywhere else, so an agent can index nothing but its own recordings'
    /// manifests.
    pub fn expected_path(&self) -> String {
        format!(
            "{}/{:04}/{:02}/{:02}/manifest.mpd",
            self.stream, self.year, self.month, self.day
        )
    }

    /// Why this row cannot be indexed, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let (app, name) = self
            .stream
            .split_once('/')
            .ok_or_else(|| format!("stream {:?} is not app/name", self.stream))?;
        crate::id::validate_stream_part("app", app)?;
        crate::id::validate_stream_part("name", name)?;
        if !(1..=12).contains(&self.month) || !(1..=31).contains(&self.day) {
            return Err(format!(
                "no such date {}-{}-{}",
                self.year, self.month, self.day
            ));
        }
        if !(1970..=9999).contains(&self.year) {
            return Err(format!("year {} out of range", self.year));
        }
        if self.mpd_path != self.expected_path() {
            return Err(format!(
                "mpd_path {:?} is not {:?}",
                self.mpd_path,
                self.expected_path()
            ));
        }
        if self.id.is_empty() || self.id.len() > 64 {
            return Err("row id must be 1 to 64 bytes".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEvent {
    pub rows: Vec<IndexRow>,
}

impl Message for IndexEvent {
    const KIND: Kind = Kind::Index;
}

/// Rows stored (`ids`) and rows that can never be (`refused`, with the reason): either way
/// the agent drops them from its outbox. Rows named in neither are sent again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexAck {
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub id: String,
    pub reason: String,
}

impl Message for IndexAck {
    const KIND: Kind = Kind::IndexAck;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> IndexRow {
        IndexRow {
            id: "r1".into(),
            stream: "live/cam".into(),
            year: 2026,
            month: 12,
            day: 1,
            mpd_path: "live/cam/2026/12/01/manifest.mpd".into(),
        }
    }

    #[test]
    fn rows_point_only_at_their_own_manifest() {
        assert_eq!(row().check(), Ok(()));
        for bad in [
            IndexRow {
                mpd_path: "live/other/2026/12/01/manifest.mpd".into(),
                ..row()
            },
            IndexRow {
                mpd_path: "../../etc/passwd".into(),
                ..row()
            },
            IndexRow {
                stream: "live/../x".into(),
                mpd_path: "live/../x/2026/12/01/manifest.mpd".into(),
                ..row()
            },
            IndexRow {
                stream: "cam".into(),
                ..row()
            },
            IndexRow { month: 13, ..row() },
            IndexRow {
                id: String::new(),
                ..row()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wire_shape() {
        let event = IndexEvent { rows: vec![row()] };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            text,
            r#"{"rows":[{"id":"r1","stream":"live/cam","year":2026,"month":12,"day":1,"mpd_path":"live/cam/2026/12/01/manifest.mpd"}]}"#
        );
        assert!(serde_json::from_str::<IndexEvent>(r#"{"rows":[{"id":1}]}"#).is_err());
    }
}
