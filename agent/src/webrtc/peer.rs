//! Answering one WHEP offer: a peer connection with one H.264 track, its answer SDP, and the
//! connection state mirrored into a `watch` (the crate has no state getter).

use std::sync::Arc;
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::watch;
use verge_protocol::whep::IceServer;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use super::engine::{self, IceSettings};

/// Why an offer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the offer is not a usable SDP offer: {0}")]
    BadOffer(String),
    #[error("the offer has no H.264 video with packetization-mode=1 to receive")]
    NoH264,
    #[error(
        "the offer sends no H.264 video with packetization-mode=1 (the only video a WHIP publisher can send here)"
    )]
    NoH264ToPublish,
    #[error("WebRTC failed: {0}")]
    Internal(String),
}

/// A viewer's connection, answered and ready to carry video once `Connected`.
pub struct Peer {
    /// `{app}/{name}`.
    pub stream: String,
    pub pc: Arc<dyn PeerConnection>,
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    /// The viewer's payload type for the H.264 format we send.
    pub payload_type: u8,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    /// B-frames are left out of what this viewer is sent.
    pub drop_b_frames: bool,
    /// The viewer's Opus track, when its offer receives audio and audio is on.
    pub audio: Option<AudioOut>,
}

/// Where a viewer's audio goes.
pub struct AudioOut {
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    /// The viewer's payload type for Opus.
    pub payload_type: u8,
}

/// True if an SDP offer has an audio section that can take Opus.
pub fn offers_opus(sdp: &str) -> bool {
    sdp.lines().any(|l| l.starts_with("m=audio "))
        && sdp
            .lines()
            .any(|l| l.starts_with("a=rtpmap:") && l.to_ascii_lowercase().contains(" opus/48000"))
}

fn local_track(
    kind: RtpCodecKind,
    ssrc: u32,
    codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    let name = match kind {
        RtpCodecKind::Audio => "audio",
        _ => "video",
    };
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "verge".into(),
        name.into(),
        name.into(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )))
}

/// Answers `offer` (non-trickle: the answer holds every candidate gathered within
/// `gather_timeout`, so a slow STUN server delays the answer by at most that much). With
/// `audio_ssrc`, an offer that receives Opus gets an audio track too.
pub async fn answer(
    stream: &str,
    offer: String,
    ice: &IceSettings,
    ice_servers: &[IceServer],
    gather_timeout: Duration,
    ssrc: u32,
    audio_ssrc: Option<u32>,
) -> Result<(String, Peer), AnswerError> {
    let audio_track = audio_ssrc.filter(|_| offers_opus(&offer)).map(|ssrc| {
        (
            ssrc,
            local_track(RtpCodecKind::Audio, ssrc, engine::opus_codec()),
        )
    });
    let offer =
        RTCSessionDescription::offer(offer).map_err(|e| AnswerError::BadOffer(one_line(&e)))?;
    let (events, watch) = engine::Events::new(None);
    let (state, mut gathered) = (watch.state, watch.gathered);
    let pc = engine::build(ice, ice_servers, true, events)
        .await
        .map_err(|e| AnswerError::Internal(one_line(&e)))?;
    let track = local_track(RtpCodecKind::Video, ssrc, engine::h264_codec_for_track());

    let negotiated = async {
        // add_track before the remote offer: its sendrecv transceiver pairs with a `recvonly`
        // (or `sendrecv`) video m-line, and the answer says `sendonly`.
        let sender = pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| AnswerError::Internal(one_line(&e)))?;
        let audio_sender = match &audio_track {
            Some((_, t)) => Some(
                pc.add_track(t.clone() as Arc<dyn TrackLocal>)
                    .await
                    .map_err(|e| AnswerError::Internal(one_line(&e)))?,
            ),
            None => None,
        };
        pc.set_remote_description(offer)
            .await
            .map_err(|e| AnswerError::BadOffer(one_line(&e)))?;
        let audio_payload_type = match audio_sender {
            Some(s) => s
                .get_parameters()
                .await
                .map_err(|e| AnswerError::Internal(one_line(&e)))?
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| engine::is_opus(&c.rtp_codec))
                .map(|c| c.payload_type),
            None => None,
        };
        // Filled from the offer during set_remote_description, in the offer's order.
        let payload_type = sender
            .get_parameters()
            .await
            .map_err(|e| AnswerError::Internal(one_line(&e)))?
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| engine::is_sendable_h264(&c.rtp_codec))
            .map(|c| c.payload_type)
            .ok_or(AnswerError::NoH264)?;
        let sdp = answer_gathered(&pc, &mut gathered, gather_timeout).await?;
        Ok((sdp, payload_type, audio_payload_type))
    }
    .await;
    match negotiated {
        Ok((sdp, payload_type, audio_payload_type)) => Ok((
            sdp,
            Peer {
                stream: stream.to_string(),
                pc,
                track,
                ssrc,
                payload_type,
                state,
                drop_b_frames: true,
                audio: audio_track
                    .zip(audio_payload_type)
                    .map(|((ssrc, track), payload_type)| AudioOut {
                        track,
                        ssrc,
                        payload_type,
                    }),
            },
        )),
        Err(e) => {
            // A connection that is only dropped keeps its driver task running.
            let _ = pc.close().await;
            Err(e)
        }
    }
}

/// Creates and sets the answer to the remote offer already set, and returns it with the
/// candidates gathered within `gather_timeout` (non-trickle; after the timeout, those so far).
async fn answer_gathered(
    pc: &Arc<dyn PeerConnection>,
    gathered: &mut watch::Receiver<bool>,
    gather_timeout: Duration,
) -> Result<String, AnswerError> {
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| AnswerError::BadOffer(one_line(&e)))?;
    pc.set_local_description(answer)
        .await
        .map_err(|e| AnswerError::Internal(one_line(&e)))?;
    let _ = tokio::time::timeout(gather_timeout, gathered.wait_for(|done| *done)).await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| AnswerError::Internal("no local description".into()))
}

/// webrtc's errors can carry multi-line dumps; a reason sent to a client is one short line.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.chars().take(200).collect()
}

/// A WHIP publisher's connection, answered: it receives what the offer sends.
pub struct Receiving {
    pub pc: Arc<dyn PeerConnection>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
}

/// Answers a publisher's `offer`: receive-only H.264 (and Opus when the offer sends audio);
/// each remote track is handed to `on_track`.
pub async fn answer_publisher(
    offer: String,
    ice: &IceSettings,
    ice_servers: &[IceServer],
    gather_timeout: Duration,
    on_track: engine::OnTrack,
) -> Result<(String, Receiving), AnswerError> {
    let audio = offers_opus(&offer);
    let offer =
        RTCSessionDescription::offer(offer).map_err(|e| AnswerError::BadOffer(one_line(&e)))?;
    let (events, watch) = engine::Events::new(Some(on_track));
    let (state, mut gathered) = (watch.state, watch.gathered);
    let pc = engine::build(ice, ice_servers, true, events)
        .await
        .map_err(|e| AnswerError::Internal(one_line(&e)))?;
    let negotiated = async {
        let mut kinds = vec![RtpCodecKind::Video];
        if audio {
            kinds.push(RtpCodecKind::Audio);
        }
        for kind in kinds {
            pc.add_transceiver_from_kind(
                kind,
                Some(rtc::rtp_transceiver::RTCRtpTransceiverInit {
                    direction: rtc::rtp_transceiver::RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| AnswerError::Internal(one_line(&e)))?;
        }
        pc.set_remote_description(offer)
            .await
            .map_err(|e| AnswerError::BadOffer(one_line(&e)))?;
        answer_gathered(&pc, &mut gathered, gather_timeout).await
    }
    .await;
    match negotiated {
        Ok(sdp) => Ok((sdp, Receiving { pc, state })),
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}
