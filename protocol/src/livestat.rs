//! LiveGo's `/stat/livestat` (`gwuhaolin/livego`, `protocol/api/api.go`): the publishers and
//! players of live streams with their audio and video bytes. A box answers it on its own HTTP
//! port and to the RPC method [`METHOD`]; the manager merges its boxes' answers.
//!
//! LiveGo's fields, names and units are kept: `key` is the stream (`live/{room}`), the totals
//! are bytes and the speeds kbit/s over the last 5 s. Verge adds `kind` (how a player reads:
//! `rtmp`, `flv`, `webrtc`) and, in the manager's merge, `agent`. Unlike LiveGo, which marshals
//! an empty list as `null`, empty lists are `[]`; and players are every viewer, not only RTMP
//! ones.

use serde::{Deserialize, Serialize};

/// The RPC method: params `{"stream": "app/name"?}` (every stream when absent), result a
/// [`LiveStat`].
pub const METHOD: &str = "livestat";

/// Most entries a box puts in one answer: the RPC reply must fit in one MQTT message.
pub const MAX_ENTRIES: usize = 2_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStat {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub publishers: Vec<Entry>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub players: Vec<Entry>,
}

/// LiveGo writes an empty list as `null`.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    Ok(Option::<Vec<Entry>>::deserialize(d)?.unwrap_or_default())
}

/// One publisher or player.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `{app}/{name}`.
    pub key: String,
    /// Who it is: the peer's address (`rtmp://203.0.113.7:50432`) or WebRTC session.
    pub url: String,
    pub stream_id: u32,
    pub video_total_bytes: u64,
    /// kbit/s.
    pub video_speed: u64,
    pub audio_total_bytes: u64,
    /// kbit/s.
    pub audio_speed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// The params of [`METHOD`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

impl LiveStat {
    /// `other`'s entries added, each marked with `agent`.
    pub fn merge(&mut self, agent: &str, other: LiveStat) {
        let mark = |mut e: Entry| {
            e.agent = Some(agent.to_string());
            e
        };
        self.publishers
            .extend(other.publishers.into_iter().map(mark));
        self.players.extend(other.players.into_iter().map(mark));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livegos_shape_with_verges_additions() {
        let stat = LiveStat {
            publishers: vec![Entry {
                key: "live/cam".into(),
                url: "rtmp://10.0.0.5:50432".into(),
                stream_id: 1,
                video_total_bytes: 1000,
                video_speed: 800,
                audio_total_bytes: 100,
                audio_speed: 64,
                ..Default::default()
            }],
            players: vec![],
        };
        let json = serde_json::to_value(&stat).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"publishers": [{"key": "live/cam", "url": "rtmp://10.0.0.5:50432",
                "stream_id": 1, "video_total_bytes": 1000, "video_speed": 800,
                "audio_total_bytes": 100, "audio_speed": 64}], "players": []})
        );
        // LiveGo's own answer (nil lists are null) reads too.
        let livego: LiveStat =
            serde_json::from_str(r#"{"publishers":null,"players":null}"#).unwrap();
        assert_eq!(livego, LiveStat::default());
        let mut all = LiveStat::default();
        all.merge("edge-1", stat);
        assert_eq!(all.publishers[0].agent.as_deref(), Some("edge-1"));
        assert!(serde_json::from_str::<LiveStat>(r#"{"publishers":[{"key":1}]}"#).is_err());
    }
}
