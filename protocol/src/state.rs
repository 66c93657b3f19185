//! An agent's state snapshot, retained on `{p}/v1/a/{agent}/state` and republished when it
//! changes. `seq` grows with every change, so a reader can tell a newer snapshot from a replay.

use serde::{Deserialize, Serialize};

use crate::envelope::{Kind, Message};
use crate::relay::RelayOf;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub seq: u64,
    #[serde(default)]
    pub streams: Vec<StreamInfo>,
    /// Media the agent hands its viewers and players (WebRTC, RTMP, HTTP-FLV, HLS; not the
    /// recorder), in kbit/s over the last report interval: most of what it sends up its link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_kbps: Option<u32>,
    /// Recordings waiting for the manager's `[storage]`; absent while nothing waits or this
    /// agent does not upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadBacklog>,
}

/// An agent's uploads to storage, as of its last look (every few seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadBacklog {
    /// Files, and their bytes, not uploaded yet.
    pub files: u64,
    pub bytes: u64,
    /// Unix ms of the last file uploaded; 0: none since the agent started.
    #[serde(default)]
    pub last_ms: u64,
    /// Why the last attempt failed, while uploads are failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
}

/// One live stream on an agent. Fields beyond `app` and `name` are filled as the agent learns
/// them from the publisher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub app: String,
    pub name: String,
    /// When the publisher started (Unix ms).
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub video: Option<String>,
    #[serde(default)]
    pub audio: Option<String>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub fps: Option<f64>,
    #[serde(default)]
    pub bitrate_kbps: Option<u32>,
    #[serde(default)]
    pub publisher: Option<String>,
    #[serde(default)]
    pub readers: u32,
    /// What WebRTC viewers do not get of this stream, and why (e.g. AAC audio, which WebRTC
    /// cannot carry). `None` when they get all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webrtc_omits: Option<String>,
    /// The encoder sends B-frames (frames out of display order).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub b_frames: bool,
    /// What to change at the encoder, in plain words, when something about the stream hurts
    /// its viewers (B-frames today).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_advice: Option<String>,
    /// Set on a cloud node's copy of a stream it relays from another node; `None` on the node
    /// where the stream is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayOf>,
}

impl StreamInfo {
    /// `{app}/{name}`, the stream's id across Verge.
    pub fn id(&self) -> String {
        format!("{}/{}", self.app, self.name)
    }
}

impl Message for State {
    const KIND: Kind = Kind::State;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_default_to_empty_and_ids_join_app_and_name() {
        let s: State = serde_json::from_str(r#"{"seq":3}"#).unwrap();
        assert_eq!(
            s,
            State {
                seq: 3,
                streams: vec![],
                egress_kbps: None,
                upload: None,
            }
        );
        let with_rate: State = serde_json::from_str(r#"{"seq":5,"egress_kbps":1200}"#).unwrap();
        assert_eq!(with_rate.egress_kbps, Some(1200));
        assert!(!serde_json::to_string(&s).unwrap().contains("egress"));
        let s: State = serde_json::from_str(
            r#"{"seq":4,"streams":[{"app":"live","name":"cam","new_field":1}]}"#,
        )
        .unwrap();
        assert_eq!(s.streams[0].id(), "live/cam");
    }
}
