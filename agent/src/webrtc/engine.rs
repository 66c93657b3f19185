//! How every Verge peer connection is built: the H.264 formats, the interceptors, the ICE
//! settings. The agent (answering viewers) and the WHEP client (offering) share it, so both
//! sides of every test negotiate exactly what production does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use tokio::sync::watch;
use verge_protocol::whep::IceServer;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateType, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionState, Registry, SettingEngineBuilder, register_default_interceptors,
};

/// The H.264 formats offered and answered, with packetization mode 1 only (FU-A), which every
/// browser supports. Constrained Baseline comes first: it is what every browser decodes in
/// hardware and software. Registering Baseline, Main and High separately makes each format a
/// browser offers an exact match, so the answer names the browser's own payload type;
/// software decoders play a High-profile stream labelled as any of them.
const H264_FORMATS: [(&str, u8); 4] = [
    ("42e01f", 102),
    ("42001f", 104),
    ("4d001f", 106),
    ("640c1f", 108),
];

/// Opus's payload type when we offer (browsers use 111 too; an answer takes the offer's).
const OPUS_PAYLOAD_TYPE: u8 = 111;

/// Every video RTP payload this side sends fits in this many bytes, below any path MTU once
/// SRTP, UDP, IP and a TURN channel header are added.
pub const RTP_MTU: usize = 1200;

/// Time between ICE connectivity checks (webrtc's default is 200 ms).
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// A peer connection's ICE behaviour.
#[derive(Debug, Clone)]
pub struct IceSettings {
    /// Local addresses to gather host candidates on. An unspecified address (`0.0.0.0`) means
    /// every non-loopback interface.
    pub udp_ips: Vec<IpAddr>,
    /// Public addresses to advertise instead of the host ones (a box with a known 1:1 NAT).
    pub nat_ips: Vec<String>,
    /// ICE: no traffic for this long makes the connection `disconnected`…
    pub disconnected_after: Duration,
    /// …and this long after that, `failed`.
    pub failed_after: Duration,
}

impl Default for IceSettings {
    fn default() -> Self {
        Self {
            udp_ips: vec![IpAddr::from([0, 0, 0, 0])],
            nat_ips: Vec::new(),
            disconnected_after: Duration::from_secs(5),
            failed_after: Duration::from_secs(10),
        }
    }
}

/// Called with each remote track (on the connection's driver task: spawn, do not wait).
pub type OnTrack = Box<dyn Fn(Arc<dyn TrackRemote>) + Send + Sync>;

/// The events Verge's peer connections act on. webrtc has no state getters, so the connection
/// state and the end of ICE gathering are mirrored into watches.
pub struct Events {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    on_track: Option<OnTrack>,
    /// What the connection's NACK responder did.
    resends: Arc<super::nack::Counters>,
}

/// The receiving ends of [`Events`].
pub struct EventWatch {
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub gathered: watch::Receiver<bool>,
    pub resends: Arc<super::nack::Counters>,
}

impl Events {
    pub fn new(on_track: Option<OnTrack>) -> (Arc<Self>, EventWatch) {
        let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (gathered, gathered_rx) = watch::channel(false);
        let resends = Arc::<super::nack::Counters>::default();
        let events = Arc::new(Self {
            state,
            gathered,
            on_track,
            resends: resends.clone(),
        });
        (
            events,
            EventWatch {
                state: state_rx,
                gathered: gathered_rx,
                resends,
            },
        )
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    // These run on the connection's driver task: only cheap, non-blocking work here, or ICE
    // consent and DTLS stall.
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(on_track) = &self.on_track {
            on_track(track);
        }
    }
}

fn h264_codec(profile_level_id: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_string(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: format!(
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile_level_id}"
        ),
        // NACK and PLI are added by `register_default_interceptors`.
        rtcp_feedback: vec![RTCPFeedback {
            typ: "ccm".into(),
            parameter: "fir".into(),
        }],
    }
}

/// Opus as WebRTC signals it: always `opus/48000/2`, whatever the channels actually sent
/// (RFC 7587 §7); in-band FEC lets the receiver conceal a lost packet from the next one.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_string(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_string(),
        rtcp_feedback: Vec::new(),
    }
}

/// True for Opus.
pub fn is_opus(codec: &RTCRtpCodec) -> bool {
    codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS)
}

/// True for an H.264 format we can send: packetization mode 1.
pub fn is_sendable_h264(codec: &RTCRtpCodec) -> bool {
    codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_H264)
        && codec
            .sdp_fmtp_line
            .split(';')
            .any(|p| p.trim() == "packetization-mode=1")
}

/// Builds a peer connection for H.264 video with `handler` receiving its events. A `sender`
/// (the agent) answers, takes the DTLS server role and hears viewers' keyframe requests.
pub async fn build(
    ice: &IceSettings,
    ice_servers: &[IceServer],
    sender: bool,
    handler: Arc<Events>,
) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
    let mut media = MediaEngine::default();
    for (profile, payload_type) in H264_FORMATS {
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: h264_codec(profile),
                payload_type,
            },
            RtpCodecKind::Video,
        )?;
    }
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PAYLOAD_TYPE,
        },
        RtpCodecKind::Audio,
    )?;
    // After the codecs: the NACK/PLI feedback it adds goes only to codecs already registered.
    let mut registry = register_default_interceptors(Registry::new(), &mut media)?
        // In place of webrtc's responder, which resends whatever is asked as often as it is
        // asked (see `nack`), and of its generator, which asks without end.
        .with(
            rtc::interceptor::Slot::NackResponder,
            super::nack::Responder::new(handler.resends.clone()),
        )
        .with(
            rtc::interceptor::Slot::NackGenerator,
            rtc::interceptor::NackGeneratorBuilder::new()
                .with_max_nacks_per_packet(super::nack::MAX_NACKS_PER_PACKET)
                .build(),
        );
    if sender {
        registry = registry.with(
            rtc::interceptor::Slot::from(super::keyframe::SLOT),
            super::keyframe::keyframe_requests(),
        );
    }

    let mut settings = SettingEngineBuilder::new()
        // The default mDNS mode opens a multicast socket per connection, which fails where there
        // is no multicast route and leaks names onto the LAN; remote `.local` candidates are
        // ignored, and browsers still connect through peer-reflexive candidates.
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(
            Some(ice.disconnected_after),
            Some(ice.failed_after),
            Some(Duration::from_secs(2)),
        )
        // The default 200 ms between checks puts the nomination (one more check) 200 ms after
        // the first success: with 50 ms, POST → first keyframe went from 204 to 55 ms (p50,
        // whep_bench). 40 attempts keep about the default's time of trying per pair.
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(40));
    if sender {
        // Measured: Chromium as DTLS server answers our ClientHello late; as the DTLS server
        // the connection is up in ~60 ms instead of ~230 ms.
        settings = settings.with_answering_dtls_role(RTCDtlsRole::Server);
    }
    if !ice.nat_ips.is_empty() {
        settings = settings.with_nat_1to1_ips(ice.nat_ips.clone(), RTCIceCandidateType::Host);
    }

    let servers = ice_servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(servers)
                .build(),
        )
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings.build())
        .with_handler(handler)
        .with_udp_addrs(
            ice.udp_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect(),
        )
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// The codec a local track is created with: the first registered format. The format actually
/// sent is the one negotiated (see `peer::answer`), which uses the same clock and packetization.
pub fn h264_codec_for_track() -> RTCRtpCodec {
    h264_codec(H264_FORMATS[0].0)
}

/// Why a connection did not come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotConnected {
    /// Not connected within the timeout.
    Timeout,
    /// ICE or DTLS failed, or the connection closed.
    Lost,
}

/// Waits at most `timeout` for `state` to reach `Connected`.
pub async fn connected(
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    timeout: Duration,
) -> Result<(), NotConnected> {
    let settled = state.wait_for(|s| {
        matches!(
            s,
            RTCPeerConnectionState::Connected
                | RTCPeerConnectionState::Failed
                | RTCPeerConnectionState::Closed
        )
    });
    match tokio::time::timeout(timeout, settled).await {
        Err(_) => Err(NotConnected::Timeout),
        Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
        Ok(_) => Err(NotConnected::Lost),
    }
}
