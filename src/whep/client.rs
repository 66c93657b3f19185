//! A WHEP viewer: offers to receive H.264, POSTs the offer, and hands back complete access
//! units as they arrive, with the numbers a benchmark wants (time to the first keyframe,
//! picture size, losses).

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use rtc::rtp_transceiver::RTCRtpTransceiverInit;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::shared::marshal::Marshal;
use tokio::sync::{mpsc, watch};
use verge_agent::webrtc::engine::{self, IceSettings};
use verge_media::codec::avc;
use verge_media::rtp::h264::{AccessUnit, DEFAULT_MAX_ACCESS_UNIT, H264Depacketizer};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use super::WhepError;
use super::http::{self, HttpUrl};

/// RTP packets buffered between the connection and [`Viewer::next_frame`]; beyond this they
/// are dropped (and show as lost access units), so a slow consumer cannot grow memory.
const PACKET_QUEUE: usize = 4096;

#[derive(Debug, Clone)]
pub struct ViewerOptions {
    pub ice: IceSettings,
    /// Bound on each HTTP request (the POST includes the server's ICE gathering).
    pub http_timeout: Duration,
    /// Longest wait for our own ICE candidates before offering with those gathered so far.
    pub gather_timeout: Duration,
    /// Also receive audio (Opus); its packets are counted, not decoded ([`Viewer::audio`]).
    pub audio: bool,
    /// Sent as `Authorization: Bearer` with the offer and the DELETE.
    pub token: Option<String>,
}

impl ViewerOptions {
    /// Defaults for `url`: candidates on loopback when the server is on this machine's
    /// loopback, on every interface otherwise.
    pub fn for_url(url: &str) -> Self {
        let loopback = HttpUrl::parse(url)
            .ok()
            .and_then(|u| (u.host.as_str(), u.port).to_socket_addrs().ok())
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|a| a.ip().is_loopback());
        let ip = if loopback {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        Self {
            ice: IceSettings {
                udp_ips: vec![ip],
                // A server that closes the session sends a DTLS close_notify, which leaves the
                // connection "connected" (W3C rules) until ICE hears nothing: keep that short.
                disconnected_after: Duration::from_secs(3),
                ..IceSettings::default()
            },
            http_timeout: Duration::from_secs(10),
            gather_timeout: Duration::from_secs(2),
            audio: false,
            token: None,
        }
    }
}

/// Audio packets whose RTP numbers [`AudioCounters::rtp`] keeps (a minute at 50 a second).
const AUDIO_HISTORY: usize = 3000;

/// Audio received by a [`Viewer`].
#[derive(Debug, Default)]
pub struct AudioCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// The payload of the last packet (an Opus packet).
    pub last: Mutex<bytes::Bytes>,
    /// RTP sequence number and timestamp of each packet, in arrival order: the first
    /// [`AUDIO_HISTORY`] of them.
    pub rtp: Mutex<Vec<(u16, u32)>>,
}

/// What a viewer has received so far.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Complete access units.
    pub frames: u64,
    pub keyframes: u64,
    /// Annex-B bytes of those access units.
    pub bytes: u64,
    /// From the start of the POST to its answer: the signaling time.
    pub answer_ms: Option<f64>,
    /// From the start of the POST to the first packet of video.
    pub connected_ms: Option<f64>,
    /// From the start of the POST to the first complete keyframe.
    pub first_frame_ms: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Access units lost to gaps or damage.
    pub lost: u64,
    /// Video RTP packets whose sequence number does not follow the one before: each loss,
    /// and each packet that came late (resent on a NACK, or reordered), breaks the sequence.
    pub sequence_breaks: u64,
    /// PLIs sent after a loss.
    pub keyframe_requests: u64,
    /// Complete access units received before the first decodable keyframe (one with its SPS),
    /// which no decoder can use.
    pub skipped: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let dim = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "frames={} keyframes={} bytes={} first_frame_ms={} width={} height={} answer_ms={} connected_ms={} lost={} skipped={} keyframe_requests={} sequence_breaks={}",
            self.frames,
            self.keyframes,
            self.bytes,
            opt(self.first_frame_ms),
            dim(self.width),
            dim(self.height),
            opt(self.answer_ms),
            opt(self.connected_ms),
            self.lost,
            self.skipped,
            self.keyframe_requests,
            self.sequence_breaks
        )
    }
}

/// The received video track and its SSRC, once it exists: keyframe requests go through it.
type TrackSlot = Arc<std::sync::Mutex<Option<(Arc<dyn TrackRemote>, u32)>>>;

/// Keyframe requests at most this often: the answer (a GOP) takes a moment to arrive.
const PLI_INTERVAL: Duration = Duration::from_millis(300);

/// Stores the received video track for keyframe requests and forwards its packets to
/// `packets` from a task of its own (the callback runs on the connection's driver).
fn on_track(
    packets: mpsc::Sender<bytes::Bytes>,
    slot: TrackSlot,
    audio: Arc<AudioCounters>,
) -> engine::OnTrack {
    Box::new(move |track: Arc<dyn TrackRemote>| {
        let (packets, slot, audio) = (packets.clone(), slot.clone(), audio.clone());
        tokio::spawn(async move {
            if track.kind().await == RtpCodecKind::Audio {
                while let Some(event) = track.poll().await {
                    if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                        audio.packets.fetch_add(1, Ordering::Relaxed);
                        audio
                            .bytes
                            .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
                        if let Ok(mut rtp) = audio.rtp.lock()
                            && rtp.len() < AUDIO_HISTORY
                        {
                            rtp.push((packet.header.sequence_number, packet.header.timestamp));
                        }
                        if let Ok(mut last) = audio.last.lock() {
                            *last = packet.payload;
                        }
                    }
                }
                return;
            }
            if let Some(&ssrc) = track.ssrcs().await.first()
                && let Ok(mut slot) = slot.lock()
            {
                *slot = Some((track.clone(), ssrc));
            }
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let Ok(raw) = packet.marshal() else { continue };
                    if packets.try_send(raw.freeze()).is_err() && packets.is_closed() {
                        break;
                    }
                }
            }
        });
    })
}

/// One WHEP session, receiving.
pub struct Viewer {
    pc: Arc<dyn PeerConnection>,
    /// The session URL from `Location`.
    pub session_url: HttpUrl,
    /// `Link` headers of the answer (the server's ICE servers).
    pub links: Vec<String>,
    started: Instant,
    state: watch::Receiver<RTCPeerConnectionState>,
    packets: mpsc::Receiver<bytes::Bytes>,
    depacketizer: H264Depacketizer,
    http_timeout: Duration,
    token: Option<String>,
    track: TrackSlot,
    last_pli: Option<Instant>,
    /// Sequence number of the latest video packet, for [`Stats::sequence_breaks`].
    last_sequence: Option<u16>,
    pub stats: Stats,
    /// What arrived of the audio (nothing unless [`ViewerOptions::audio`]).
    pub audio: Arc<AudioCounters>,
}

impl Viewer {
    /// Offers to receive from the WHEP endpoint `url` and applies its answer.
    pub async fn connect(url: &str, opts: &ViewerOptions) -> Result<Self, WhepError> {
        let endpoint = HttpUrl::parse(url)?;
        let (packets_tx, packets) = mpsc::channel(PACKET_QUEUE);
        let track = TrackSlot::default();
        let audio = Arc::new(AudioCounters::default());
        let (events, watch) =
            engine::Events::new(Some(on_track(packets_tx, track.clone(), audio.clone())));
        let (state, mut gathered) = (watch.state, watch.gathered);
        let pc = engine::build(&opts.ice, &[], false, events)
            .await
            .map_err(webrtc_error)?;
        let negotiated = async {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .map_err(webrtc_error)?;
            if opts.audio {
                pc.add_transceiver_from_kind(
                    RtpCodecKind::Audio,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(webrtc_error)?;
            }
            let offer = pc.create_offer(None).await.map_err(webrtc_error)?;
            pc.set_local_description(offer)
                .await
                .map_err(webrtc_error)?;
            let _ = tokio::time::timeout(opts.gather_timeout, gathered.wait_for(|g| *g)).await;
            let offer = pc
                .local_description()
                .await
                .ok_or_else(|| WhepError::WebRtc("no local description".into()))?;
            let started = Instant::now();
            let bearer = opts.token.as_ref().map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .iter()
                .map(|b| ("Authorization", b.as_str()))
                .collect();
            let response = http::request_with(
                "POST",
                &endpoint,
                &headers,
                Some("application/sdp"),
                &offer.sdp,
                opts.http_timeout,
            )
            .await?;
            let answered = started.elapsed();
            if response.status != 201 {
                return Err(WhepError::Refused {
                    status: response.status,
                    reason: response.text().trim().to_string(),
                });
            }
            let location = response
                .header("location")
                .ok_or_else(|| WhepError::Http("201 without a Location header".into()))?;
            let session_url = endpoint.with_path(location)?;
            let links = response.all("link").map(str::to_string).collect();
            let answer = RTCSessionDescription::answer(response.text())
                .map_err(|e| WhepError::BadAnswer(e.to_string()))?;
            pc.set_remote_description(answer)
                .await
                .map_err(|e| WhepError::BadAnswer(e.to_string()))?;
            Ok::<_, WhepError>((session_url, links, started, answered))
        }
        .await;
        let (session_url, links, started, answered) = match negotiated {
            Ok(v) => v,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let stats = Stats {
            answer_ms: Some(ms(answered)),
            ..Stats::default()
        };
        Ok(Self {
            pc,
            session_url,
            links,
            started,
            state,
            packets,
            depacketizer: H264Depacketizer::new(DEFAULT_MAX_ACCESS_UNIT),
            http_timeout: opts.http_timeout,
            token: opts.token.clone(),
            track,
            last_pli: None,
            last_sequence: None,
            stats,
            audio,
        })
    }

    /// The next complete access unit; `None` once the session has ended (the server closed
    /// it, or ICE lost the server). Errors only when nothing arrives for `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Option<AccessUnit>, WhepError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let packet = tokio::select! {
                p = self.packets.recv() => p,
                _ = self.state.wait_for(|s| matches!(s, RTCPeerConnectionState::Disconnected
                    | RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed)) => None,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(WhepError::Stalled(timeout));
                }
            };
            let Some(packet) = packet else {
                return Ok(None);
            };
            if self.stats.connected_ms.is_none() {
                self.stats.connected_ms = Some(ms(self.started.elapsed()));
            }
            self.count_sequence(&packet);
            let unit = self.depacketizer.push(&packet).ok().flatten();
            if self.depacketizer.dropped() > self.stats.lost {
                // A lost access unit breaks the pictures after it until the next keyframe.
                self.request_keyframe();
            }
            self.stats.lost = self.depacketizer.dropped();
            if let Some(unit) = unit {
                // A decoder can do nothing with frames before the first keyframe, nor with a
                // first keyframe whose parameter sets were lost (the session's first packets
                // can arrive before SRTP is up): ask for another, as a browser does.
                let decodable = unit.keyframe
                    && annex_b_nalus(&unit.data).any(|n| avc::nal_type(n) == Some(avc::NAL_SPS));
                if self.stats.keyframes == 0 && !decodable {
                    self.stats.skipped += 1;
                    self.request_keyframe();
                    continue;
                }
                self.count(&unit);
                return Ok(Some(unit));
            }
        }
    }

    /// Asks the server for a keyframe (a PLI, at most every [`PLI_INTERVAL`]); the viewer
    /// does this by itself when it loses an access unit.
    pub fn request_keyframe(&mut self) {
        if self.last_pli.is_some_and(|t| t.elapsed() < PLI_INTERVAL) {
            return;
        }
        let Some((track, ssrc)) = self.track.lock().ok().and_then(|s| s.clone()) else {
            return;
        };
        self.last_pli = Some(Instant::now());
        self.stats.keyframe_requests += 1;
        tokio::spawn(async move {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            };
            let _ = track.write_rtcp(vec![Box::new(pli)]).await;
        });
    }

    /// Counts `packet` in [`Stats::sequence_breaks`] unless its sequence number follows the
    /// one before (the depacketizer drops an access unit only at such a break, or for damage).
    fn count_sequence(&mut self, packet: &[u8]) {
        let Some(&[hi, lo]) = packet.get(2..4) else {
            return;
        };
        let sequence = u16::from_be_bytes([hi, lo]);
        if self
            .last_sequence
            .is_some_and(|last| sequence != last.wrapping_add(1))
        {
            self.stats.sequence_breaks += 1;
        }
        self.last_sequence = Some(sequence);
    }

    fn count(&mut self, unit: &AccessUnit) {
        self.stats.frames += 1;
        self.stats.bytes += unit.data.len() as u64;
        if unit.keyframe {
            self.stats.keyframes += 1;
            if self.stats.first_frame_ms.is_none() {
                self.stats.first_frame_ms = Some(ms(self.started.elapsed()));
            }
            if let Some(sps) =
                annex_b_nalus(&unit.data).find(|n| avc::nal_type(n) == Some(avc::NAL_SPS))
                && let Ok(info) = avc::parse_sps(sps)
            {
                self.stats.width = Some(info.width);
                self.stats.height = Some(info.height);
            }
        }
    }

    /// Receives for `duration` or until the session ends; returns whether it ended.
    pub async fn watch(&mut self, duration: Duration) -> Result<bool, WhepError> {
        let until = Instant::now() + duration;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.next_frame(left).await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(true),
                Err(WhepError::Stalled(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// DELETEs the session; returns the HTTP status.
    pub async fn delete(&self) -> Result<u16, WhepError> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        let r = http::request_with(
            "DELETE",
            &self.session_url,
            &headers,
            None,
            "",
            self.http_timeout,
        )
        .await?;
        Ok(r.status)
    }

    /// Closes our side of the connection (without telling the server over HTTP).
    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        // A connection that is only dropped keeps its driver task running.
        let pc = self.pc.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn webrtc_error(e: webrtc::error::Error) -> WhepError {
    WhepError::WebRtc(e.to_string().lines().next().unwrap_or_default().to_string())
}

/// The NAL units of an Annex-B buffer (start codes of three or four bytes).
pub fn annex_b_nalus(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            let mut e = s - 3;
            // A four-byte start code's leading zero belongs to it, not to the NAL unit before.
            if e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .map(move |(s, e)| &data[s..e.max(s)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_splits_three_and_four_byte_start_codes() {
        let data = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65];
        let nalus: Vec<&[u8]> = annex_b_nalus(&data).collect();
        assert_eq!(nalus, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65][..]]);
        assert_eq!(annex_b_nalus(&[]).count(), 0);
        let empty: &[u8] = &[];
        assert_eq!(annex_b_nalus(&[0, 0, 1]).collect::<Vec<_>>(), vec![empty]);
    }
}
