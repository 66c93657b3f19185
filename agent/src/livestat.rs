//! LiveGo's `/stat/livestat` from the hub: each live stream's publisher and players with
//! their audio and video bytes ([`verge_protocol::livestat`] has the shape). Players are the
//! viewers (RTMP, HTTP-FLV, WebRTC); the recorder, HLS's segmenter and the Opus transcoder
//! read too but watch nothing.

use verge_media::hub::{Hub, Peer, ReaderKind};
use verge_protocol::livestat::{Entry, LiveStat, MAX_ENTRIES};

/// The streams' publishers and players, of stream `only` or all.
pub fn collect(hub: &Hub, only: Option<&str>) -> LiveStat {
    let mut stat = LiveStat::default();
    for stream in hub.peers(only) {
        if stat.publishers.len() + stat.players.len() >= MAX_ENTRIES {
            break;
        }
        stat.publishers.push(entry(
            &stream.stream,
            &stream.publisher,
            publisher_url(&stream.publisher.label),
        ));
        let players = stream.readers.iter().filter(|r| {
            matches!(
                r.kind,
                Some(ReaderKind::Rtmp | ReaderKind::Flv | ReaderKind::Webrtc)
            )
        });
        for player in players {
            let mut e = entry(&stream.stream, player, player.label.clone());
            e.kind = player.kind.map(|k| k.as_str().to_string());
            stat.players.push(e);
        }
    }
    stat.players
        .truncate(MAX_ENTRIES.saturating_sub(stat.publishers.len()));
    stat
}

fn entry(stream: &str, peer: &Peer, url: String) -> Entry {
    Entry {
        key: stream.to_string(),
        url,
        // LiveGo's is the RTMP message stream; ours is the reader's number in its stream.
        stream_id: u32::try_from(peer.id).unwrap_or(u32::MAX),
        video_total_bytes: peer.media.video_bytes,
        video_speed: peer.media.video_kbps,
        audio_total_bytes: peer.media.audio_bytes,
        audio_speed: peer.media.audio_kbps,
        kind: None,
        agent: None,
    }
}

/// `RTMP 203.0.113.7:50432` → `rtmp://203.0.113.7:50432`, `WHIP {session}` → `whip:{session}`:
/// the hub names publishers by kind and peer.
fn publisher_url(label: &str) -> String {
    match label.split_once(' ') {
        Some(("RTMP", peer)) => format!("rtmp://{peer}"),
        Some(("WHIP", session)) => format!("whip:{session}"),
        _ => label.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use verge_media::hub::{Frame, HubConfig};
    use verge_media::rtmp::session::MediaKind;

    #[tokio::test]
    async fn publishers_and_viewers_not_the_internal_readers() {
        let hub = std::sync::Arc::new(Hub::new(HubConfig::default()));
        let publisher = hub.publish("live/cam", "RTMP 10.0.0.5:50432").unwrap();
        let viewer = hub.subscribe_as("live/cam", ReaderKind::Webrtc).unwrap();
        viewer.set_label("webrtc:edge-1~00");
        let _recorder = hub.subscribe_as("live/cam", ReaderKind::Recorder).unwrap();
        publisher.push(Frame {
            kind: MediaKind::Video,
            timestamp: 0,
            payload: Bytes::from_static(&[0x17, 1, 0, 0, 0, 9, 9]),
        });
        let stat = collect(&hub, None);
        assert_eq!(stat.publishers.len(), 1);
        let p = &stat.publishers[0];
        assert_eq!(
            (p.key.as_str(), p.url.as_str()),
            ("live/cam", "rtmp://10.0.0.5:50432")
        );
        assert_eq!(p.video_total_bytes, 7);
        assert_eq!(stat.players.len(), 1);
        assert_eq!(stat.players[0].url, "webrtc:edge-1~00");
        assert_eq!(stat.players[0].kind.as_deref(), Some("webrtc"));
        assert_eq!(collect(&hub, Some("live/none")), LiveStat::default());
        assert_eq!(publisher_url("WHIP edge-1~ab"), "whip:edge-1~ab");
        assert_eq!(publisher_url("odd"), "odd");
    }
}
