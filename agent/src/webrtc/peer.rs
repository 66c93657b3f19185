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
    /// How fast the cached GOP is sent when the viewer starts (see `pace`); 0: at once.
    pub backlog_speedup: u32,
    /// The viewer's Opus track, when its offer receives audio and audio is on.
    pub audio: Option<AudioOut>,
    /// What the connection's NACK responder resent and refused.
    pub resends: Arc<super::nack::Counters>,
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
    let (state, mut gathered, resends) = (watch.state, watch.gathered, watch.resends);
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
            Some(s) => negotiated_payload_type(&s, engine::is_opus).await?,
            None => None,
        };
        let payload_type = negotiated_payload_type(&sender, engine::is_sendable_h264)
            .await?
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
                backlog_speedup: 0,
                resends,
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

/// The payload type of the first codec `sender` negotiated that `wanted` picks: filled from
/// the offer during `set_remote_description`, in the offer's order.
async fn negotiated_payload_type(
    sender: &Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    wanted: fn(&rtc::rtp_transceiver::rtp_sender::RTCRtpCodec) -> bool,
) -> Result<Option<u8>, AnswerError> {
    let parameters = sender
        .get_parameters()
        .await
        .map_err(|e| AnswerError::Internal(one_line(&e)))?;
    let codecs = parameters.rtp_parameters.codecs;
    Ok(codecs
        .iter()
        .find(|c| wanted(&c.rtp_codec))
        .map(|c| c.payload_type))
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
    set_local_gathered(pc, answer, gathered, gather_timeout).await
}

/// Sets `description` as the local one and returns it with the candidates gathered within
/// `gather_timeout`.
async fn set_local_gathered(
    pc: &Arc<dyn PeerConnection>,
    description: RTCSessionDescription,
    gathered: &mut watch::Receiver<bool>,
    gather_timeout: Duration,
) -> Result<String, AnswerError> {
    pc.set_local_description(description)
        .await
        .map_err(|e| AnswerError::Internal(one_line(&e)))?;
    let _ = tokio::time::timeout(gather_timeout, gathered.wait_for(|done| *done)).await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| AnswerError::Internal("no local description".into()))
}

/// Adds a receive-only transceiver of each kind.
async fn receive_only(
    pc: &Arc<dyn PeerConnection>,
    kinds: &[RtpCodecKind],
) -> Result<(), AnswerError> {
    for kind in kinds {
        pc.add_transceiver_from_kind(
            *kind,
            Some(rtc::rtp_transceiver::RTCRtpTransceiverInit {
                direction: rtc::rtp_transceiver::RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| AnswerError::Internal(one_line(&e)))?;
    }
    Ok(())
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
        receive_only(&pc, &kinds).await?;
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

/// A relay's connection to its source (the cloud node offers, as a WHEP client does): receive
/// only H.264 and Opus, candidates gathered within `gather_timeout`; each remote track is
/// handed to `on_track`. Returns the offer; the source's answer goes to [`accept_answer`].
pub async fn offer_receiver(
    ice: &IceSettings,
    ice_servers: &[IceServer],
    gather_timeout: Duration,
    on_track: engine::OnTrack,
) -> Result<(String, Receiving), AnswerError> {
    let (events, watch) = engine::Events::new(Some(on_track));
    let (state, mut gathered) = (watch.state, watch.gathered);
    let pc = engine::build(ice, ice_servers, false, events)
        .await
        .map_err(|e| AnswerError::Internal(one_line(&e)))?;
    let offered = async {
        receive_only(&pc, &[RtpCodecKind::Video, RtpCodecKind::Audio]).await?;
        let offer = pc
            .create_offer(None)
            .await
            .map_err(|e| AnswerError::Internal(one_line(&e)))?;
        set_local_gathered(&pc, offer, &mut gathered, gather_timeout).await
    }
    .await;
    match offered {
        Ok(sdp) => Ok((sdp, Receiving { pc, state })),
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}

/// Applies a source's answer to an offer made by [`offer_receiver`].
pub async fn accept_answer(pc: &Arc<dyn PeerConnection>, sdp: String) -> Result<(), AnswerError> {
    let answer =
        RTCSessionDescription::answer(sdp).map_err(|e| AnswerError::BadOffer(one_line(&e)))?;
    pc.set_remote_description(answer)
        .await
        .map_err(|e| AnswerError::BadOffer(one_line(&e)))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use rtc::ice::mdns::MulticastDnsMode;
    use rtc::interceptor::Registry;
    use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MediaEngine};
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters};
    use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
    use tokio::sync::mpsc;
    use webrtc::media_stream::track_local::TrackLocalEvent;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{PeerConnectionBuilder, SettingEngineBuilder};

    use super::*;

    /// Chromium's H.264 formats, with its payload types (not ours) and its feedback.
    const CHROMIUM_H264: [(u8, &str); 3] = [(102, "42001f"), (108, "42e01f"), (116, "4d001f")];

    fn chromium_h264(profile: &str) -> RTCRtpCodec {
        let fb = |typ: &str, parameter: &str| RTCPFeedback {
            typ: typ.into(),
            parameter: parameter.into(),
        };
        RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_string(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
            ),
            rtcp_feedback: vec![
                fb("goog-remb", ""),
                fb("transport-cc", ""),
                fb("ccm", "fir"),
                fb("nack", ""),
                fb("nack", "pli"),
            ],
        }
    }

    fn loopback() -> IceSettings {
        IceSettings {
            udp_ips: vec![IpAddr::from([127, 0, 0, 1])],
            ..IceSettings::default()
        }
    }

    /// A publisher shaped like Chromium's WHIP offer (audio first, then sendonly H.264 with
    /// its SSRC declared, Chromium's payload types and feedback) sends video with every tenth
    /// packet missing: the answer offers NACK for every H.264 format, and the agent asks for
    /// each missing packet (what the browser test checks with real Chromium and nftables).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whip_publisher_is_asked_for_lost_video_packets() {
        const SSRC: u32 = 0x1234_5678;
        let mut media = MediaEngine::default();
        for (payload_type, profile) in CHROMIUM_H264 {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: chromium_h264(profile),
                        payload_type,
                    },
                    RtpCodecKind::Video,
                )
                .expect("codec");
        }
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: engine::opus_codec(),
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .expect("opus");
        let registry = webrtc::peer_connection::register_default_interceptors(
            Registry::new().with(
                rtc::interceptor::Slot::from(14_000),
                // The NACKs a publisher receives reach the test, which counts them.
                super::super::keyframe::DeliverRtcp::new(|p| p.as_any().is::<TransportLayerNack>()),
            ),
            &mut media,
        )
        .expect("interceptors");
        let (events, mut publisher_watch) = engine::Events::new(None);
        let publisher = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_handler(events)
            .with_udp_addrs(vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))])
            .build()
            .await
            .expect("publisher");
        // Audio first, as Chromium's offer has it.
        let audio = local_track(RtpCodecKind::Audio, SSRC + 1, engine::opus_codec());
        let track = local_track(RtpCodecKind::Video, SSRC, chromium_h264("42001f"));
        for sent in [audio, track.clone()] {
            publisher
                .add_transceiver_from_track(
                    sent as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        ..Default::default()
                    }),
                )
                .await
                .expect("transceiver");
        }
        let offer = publisher.create_offer(None).await.expect("offer");
        publisher
            .set_local_description(offer)
            .await
            .expect("local offer");
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            publisher_watch.gathered.wait_for(|done| *done),
        )
        .await;
        let offer = publisher.local_description().await.expect("offer").sdp;

        let (tracks_tx, mut tracks) = mpsc::channel::<Arc<dyn TrackRemote>>(4);
        let (answer, receiving) = answer_publisher(
            offer,
            &loopback(),
            &[],
            Duration::from_secs(2),
            Box::new(move |t| {
                let _ = tracks_tx.try_send(t);
            }),
        )
        .await
        .expect("answer");
        // Every H.264 format answered carries generic NACK feedback.
        let h264: Vec<&str> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter(|l| l.contains(" H264/90000"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(!h264.is_empty(), "no H.264 in the answer:\n{answer}");
        for pt in &h264 {
            assert!(
                answer.lines().any(|l| l == format!("a=rtcp-fb:{pt} nack")),
                "no NACK feedback for H.264 payload type {pt}:\n{answer}"
            );
        }
        publisher
            .set_remote_description(RTCSessionDescription::answer(answer).expect("answer sdp"))
            .await
            .expect("remote answer");
        let mut agent_state = receiving.state.clone();
        engine::connected(&mut publisher_watch.state, Duration::from_secs(10))
            .await
            .expect("publisher connected");
        engine::connected(&mut agent_state, Duration::from_secs(10))
            .await
            .expect("agent connected");

        // The agent reads its track, as the publish session does.
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            while let Some(track) = tracks.recv().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    while let Some(event) = track.poll().await {
                        if let TrackRemoteEvent::OnRtpPacket(_) = event {
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });

        let nacked = Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
        let listener = {
            let (track, nacked) = (track.clone(), nacked.clone());
            tokio::spawn(async move {
                while let Some(event) = track.poll().await {
                    if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                        for p in packets {
                            if let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() {
                                let mut seen = nacked.lock().unwrap();
                                for pair in &nack.nacks {
                                    seen.extend(pair.packet_list());
                                }
                            }
                        }
                    }
                }
            })
        };

        // 300 packets at 500 per second, every tenth (after the first few) missing.
        let mut dropped = Vec::new();
        for seq in 0u16..300 {
            if seq >= 20 && seq % 10 == 0 {
                dropped.push(seq);
            } else {
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: CHROMIUM_H264[0].0,
                        sequence_number: seq,
                        timestamp: u32::from(seq / 5) * 3000,
                        ssrc: SSRC,
                        marker: seq % 5 == 4,
                        ..Default::default()
                    },
                    // A single NAL unit (non-IDR slice).
                    payload: bytes::Bytes::from_static(&[0x41, 0x9a, 0x00, 0x01]),
                };
                track.write_rtp(packet).await.expect("write");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let nacked = nacked.lock().unwrap().clone();
        assert!(
            received.load(std::sync::atomic::Ordering::Relaxed) >= 250,
            "the agent's track did not receive the video"
        );
        listener.abort();
        let _ = publisher.close().await;
        let _ = receiving.pc.close().await;
        let missed: Vec<u16> = dropped
            .iter()
            .copied()
            .filter(|s| !nacked.contains(s))
            .collect();
        assert!(
            missed.is_empty(),
            "packets lost and never NACKed: {missed:?} (NACKed: {nacked:?})"
        );
    }
}
