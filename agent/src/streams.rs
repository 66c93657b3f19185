//! Stream names and the agent's stream list as the manager sees it.
//!
//! A stream is `{app}/{name}` (LiveGo's model; app `live` by default). Names become URL path
//! segments and MQTT payload fields, so they are restricted to a safe alphabet.
//! [`report`] copies the hub's live streams into the retained state snapshot: at once when a
//! stream starts, stops or learns its codec and size, and at most every `refresh` for changing
//! numbers (bitrate, fps, readers), because the snapshot travels over the box's uplink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use verge_media::hub::{Hub, StreamStatus};
use verge_protocol::id::validate_stream_part;
use verge_protocol::relay::RelayOf;
use verge_protocol::state::StreamInfo;

use crate::state::StateHandle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamName {
    pub app: String,
    pub name: String,
}

impl StreamName {
    pub fn parse(app: &str, name: &str) -> Result<Self, String> {
        let app = if app.is_empty() { "live" } else { app };
        validate_stream_part("app", app)?;
        validate_stream_part("stream name", name)?;
        Ok(Self {
            app: app.to_string(),
            name: name.to_string(),
        })
    }

    /// `{app}/{name}`, or a bare `{name}` in the default app `live` (liveman's WHEP paths).
    pub fn from_id(id: &str) -> Result<Self, String> {
        match id.split_once('/') {
            Some((app, name)) => Self::parse(app, name),
            None => Self::parse("live", id),
        }
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.app, self.name)
    }
}

fn info(status: &StreamStatus, opus: bool, relay: Option<RelayOf>) -> StreamInfo {
    let (app, name) = status
        .id
        .split_once('/')
        .unwrap_or(("live", status.id.as_str()));
    StreamInfo {
        app: app.to_string(),
        name: name.to_string(),
        started_at: status.started_at,
        video: status.video.clone(),
        audio: status.audio.clone(),
        width: status.width,
        height: status.height,
        fps: status.fps,
        bitrate_kbps: Some(status.bitrate_kbps),
        publisher: Some(status.publisher.clone()),
        readers: status.readers as u32,
        webrtc_omits: crate::webrtc::omits(status.video.as_deref(), status.audio.as_deref(), opus),
        b_frames: status.b_frames,
        encoder_advice: status.b_frames.then(|| B_FRAME_ADVICE.to_string()),
        relay,
    }
}

/// What the operator of a B-frame encoder should change.
pub const B_FRAME_ADVICE: &str = "the encoder sends B-frames, which add their reorder delay (two \
     frames with x264's defaults) to every WebRTC viewer's latency, or cost them three frames in four with \
     [webrtc] b_frames = \"drop\": for the lowest latency turn them off (OBS: Output > x264 options bframes=0, or a NVENC/QuickSync preset with \
     'Max B-frames' 0; ffmpeg: -bf 0)";

/// What makes a stream list worth publishing at once: which streams, and what they are.
/// Bitrate, fps and reader counts wait for the periodic refresh.
fn identity(status: &[StreamStatus]) -> Vec<Identity> {
    status
        .iter()
        .map(|s| Identity {
            id: s.id.clone(),
            video: s.video.clone(),
            audio: s.audio.clone(),
            size: s.width.zip(s.height),
        })
        .collect()
}

#[derive(PartialEq)]
struct Identity {
    id: String,
    video: Option<String>,
    audio: Option<String>,
    size: Option<(u32, u32)>,
}

/// Keeps the state snapshot in step with the hub until the task is dropped.
/// Media bytes the hub has handed to viewers and players (not to the recorder or the audio
/// transcoder).
fn viewer_bytes(hub: &Hub) -> u64 {
    hub.totals()
        .readers
        .iter()
        .filter(|(kind, ..)| {
            !matches!(
                kind,
                verge_media::hub::ReaderKind::Recorder | verge_media::hub::ReaderKind::Transcoder
            )
        })
        .map(|(_, _, bytes, _)| bytes)
        .sum()
}

/// `opus`: WebRTC viewers get AAC-LC audio as Opus (`[webrtc] audio`). `relay_of` tells a
/// relayed stream's source (a cloud node's relays).
pub async fn report(
    hub: Arc<Hub>,
    state: StateHandle,
    refresh: Duration,
    opus: bool,
    relay_of: impl Fn(&str) -> Option<RelayOf>,
) {
    let mut published = identity(&[]);
    let mut published_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Bytes handed to viewers and players so far, and when, for the egress rate.
    let mut egress = (viewer_bytes(&hub), Instant::now());
    loop {
        tick.tick().await;
        let status = hub.status();
        let now = identity(&status);
        let due = published_at.elapsed() >= refresh;
        if now != published || due {
            let kbps = due.then(|| {
                let bytes = viewer_bytes(&hub);
                let secs = egress.1.elapsed().as_secs_f64().max(0.001);
                let kbps = (bytes.saturating_sub(egress.0) as f64 * 8.0 / 1000.0 / secs) as u32;
                egress = (bytes, Instant::now());
                kbps
            });
            let streams = status.iter().map(|s| info(s, opus, relay_of(&s.id)));
            state.set(streams.collect(), kbps);
            published = now;
            published_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_the_app() {
        assert_eq!(StreamName::parse("", "cam1").unwrap().id(), "live/cam1");
        assert_eq!(
            StreamName::parse("studio", "a.b-c_d").unwrap().id(),
            "studio/a.b-c_d"
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", "a/b", "../x", "a b", "é", &"x".repeat(129)] {
            assert!(StreamName::parse("live", bad).is_err(), "{bad:?}");
        }
        assert!(StreamName::parse("li ve", "x").is_err());
    }
}
