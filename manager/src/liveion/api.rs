//! The parts of liveion's JSON the manager reads (live777's `libs/api`: `response::Stream`,
//! `strategy::Strategy`). Every field it does not need is kept as it came, so a stream is
//! passed on to Verge's API clients whole, and a newer liveion's additions survive.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One stream of `GET /api/streams/` (or one event of `/api/sse/streams`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub id: String,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub publish: PubSub,
    #[serde(default)]
    pub subscribe: PubSub,
    #[serde(default)]
    pub codecs: Vec<Value>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PubSub {
    #[serde(default)]
    pub leave_at: i64,
    #[serde(default)]
    pub sessions: Vec<Session>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub leave_at: i64,
    /// `new`, `connecting`, `connected`, `disconnected`, `failed`, `closed`.
    #[serde(default)]
    pub state: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Session {
    /// Not yet closed: liveion lists ended sessions for a while, with `leave_at` set.
    pub fn active(&self) -> bool {
        self.leave_at == 0 && !matches!(self.state.as_str(), "closed" | "failed")
    }
}

impl Stream {
    /// Someone publishes it (a WHIP client or a cascade pulling it in).
    pub fn has_publisher(&self) -> bool {
        self.publish.sessions.iter().any(Session::active)
    }

    /// Its open subscriber sessions (viewers and cascades pushing it on).
    pub fn subscribers(&self) -> usize {
        self.subscribe
            .sessions
            .iter()
            .filter(|s| s.active())
            .count()
    }

    /// Its subscribers with media flowing (a `disconnected` one may come back, but takes
    /// nothing meanwhile).
    pub fn watching(&self) -> usize {
        let connected = |s: &&Session| s.active() && s.state == "connected";
        self.subscribe.sessions.iter().filter(connected).count()
    }

    /// Its publisher is a cascade pulling from `source` (a WHEP URL).
    pub fn pulled_from(&self) -> Option<&str> {
        self.publish
            .sessions
            .iter()
            .filter(|s| s.active())
            .find_map(|s| {
                s.rest
                    .get("cascade")
                    .and_then(|c| c.get("sourceUrl"))
                    .and_then(Value::as_str)
            })
    }
}

/// `GET /api/strategy/`: the node's limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Strategy {
    /// Subscribers one stream may have (liveion's default: 65535, no limit).
    #[serde(default = "no_limit")]
    pub each_stream_max_sub: u16,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn no_limit() -> u16 {
    u16::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream as liveion 0.9 (commit 42205144) lists it.
    const STREAMS: &str = r#"[{"id":"cam","createdAt":1764950000000,
        "publish":{"leaveAt":0,"sessions":[{"id":"a1b2","createdAt":1764950000001,"leaveAt":0,
          "state":"connected","cascade":{"sourceUrl":"http://m/whep/cam"},"hasDataChannel":false,
          "stats":{"bytes":1,"packets":2,"bitrate":3}}]},
        "subscribe":{"leaveAt":1764950001000,"sessions":[
          {"id":"s1","createdAt":1,"leaveAt":0,"state":"connected","hasDataChannel":false},
          {"id":"s2","createdAt":1,"leaveAt":5,"state":"closed","hasDataChannel":false}]},
        "codecs":[{"kind":"video","codec":"h264","fmtp":"profile-level-id=42e01f"}],
        "provisioned":false,"onDemand":false,
        "stats":{"publish":{"bytes":1,"packets":2,"bitrate":3},"subscribe":{"bytes":0,"packets":0,"bitrate":0}},
        "statsScope":"node"}]"#;

    #[test]
    fn liveion_streams_are_read_and_passed_on_whole() {
        let streams: Vec<Stream> = serde_json::from_str(STREAMS).unwrap();
        let s = &streams[0];
        assert!(s.has_publisher());
        assert_eq!((s.subscribers(), s.watching()), (1, 1));
        assert_eq!(s.pulled_from(), Some("http://m/whep/cam"));
        let again = serde_json::to_value(s).unwrap();
        let original: Value = serde_json::from_str(STREAMS).unwrap();
        assert_eq!(again, original[0], "a field was lost on the way through");
    }

    #[test]
    fn malformed_and_partial_answers() {
        assert!(serde_json::from_str::<Vec<Stream>>(r#"[{"createdAt":1}]"#).is_err());
        assert!(serde_json::from_str::<Vec<Stream>>(r#"{"id":"x"}"#).is_err());
        let bare: Vec<Stream> = serde_json::from_str(r#"[{"id":"x"}]"#).unwrap();
        assert!(!bare[0].has_publisher() && bare[0].subscribers() == 0);
        let s: Strategy =
            serde_json::from_str(r#"{"each_stream_max_sub":4,"auto_create_whip":true}"#).unwrap();
        assert_eq!(s.each_stream_max_sub, 4);
        assert_eq!(
            serde_json::from_str::<Strategy>("{}")
                .unwrap()
                .each_stream_max_sub,
            u16::MAX
        );
        assert!(serde_json::from_str::<Strategy>(r#"{"each_stream_max_sub":-1}"#).is_err());
    }
}
