//! A stream's Opus audio for its WebRTC viewers: one transcoder per stream, whatever the number
//! of viewers, started with the first and stopped with the last. A WHIP publisher's Opus
//! passes through as it came.
//!
//! The feed reads the stream from the hub like any reader (counted as a transcoder, not as a
//! viewer) and broadcasts each Opus packet. The broadcast is a bounded ring: a viewer that
//! cannot keep up loses the oldest packets (a gap in its audio), never slows the others. A new
//! viewer hears from the moment it subscribes: audio is live only, while video starts from
//! the cached GOP and catches up at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};
use verge_media::flv::make::{self, OpusPacketType};
use verge_media::flv::tag::{self, AudioPacket};
use verge_media::hub::{Hub, ReaderKind};
use verge_media::rtmp::session::MediaKind;

use super::transcode::{AacToOpus, OpusPacket};

/// Packets held for viewers (50 per second): a viewer more than this far behind loses audio.
const RING: usize = 64;
/// Decoder errors are logged at most this often per stream.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A stream's running transcoder; it stops when the last handle goes.
pub struct AudioFeed {
    packets: broadcast::Sender<Arc<OpusPacket>>,
    _stop: DropGuard,
}

impl AudioFeed {
    /// Starts transcoding `stream` at `bitrate` bits per second; `None` if it is not live.
    pub fn start(hub: &Hub, stream: &str, bitrate: u32) -> Option<Arc<Self>> {
        let reader = hub.subscribe_as(stream, ReaderKind::Transcoder).ok()?;
        let (packets, _) = broadcast::channel(RING);
        let stop = CancellationToken::new();
        let task = Task {
            stream: stream.to_string(),
            bitrate,
            packets: packets.clone(),
        };
        let stopped = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped.cancelled() => {}
                _ = task.run(reader) => {}
            }
        });
        Some(Arc::new(Self {
            packets,
            _stop: stop.drop_guard(),
        }))
    }

    /// Packets from now on; the receiver sees `Closed` when the stream ends.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OpusPacket>> {
        self.packets.subscribe()
    }
}

struct Task {
    stream: String,
    bitrate: u32,
    packets: broadcast::Sender<Arc<OpusPacket>>,
}

impl Task {
    async fn run(self, mut reader: verge_media::hub::Reader) {
        let stream = &self.stream;
        let mut transcoder: Option<AacToOpus> = None;
        let mut config = bytes::Bytes::new();
        let mut out = Vec::new();
        let mut last_error_log: Option<Instant> = None;
        let mut errors_logged = 0;
        // The reader starts with the hub's cached GOP: its audio is decoded (the decoder's
        // state needs it) but not sent, being seconds old; viewers hear live audio only.
        let mut live = false;
        while let Some(frame) = reader.recv().await {
            live = live || reader.pending() == 0;
            if frame.kind != MediaKind::Audio {
                continue;
            }
            // Opus from a WHIP publisher goes to viewers as it came.
            if let Some((kind, data)) = make::parse_opus(&frame.payload) {
                if kind == OpusPacketType::CodedFrames && live {
                    let _ = self.packets.send(Arc::new(OpusPacket {
                        timestamp: frame.timestamp.wrapping_mul(48),
                        data,
                    }));
                }
                continue;
            }
            let Ok(audio) = tag::parse_audio(&frame.payload) else {
                continue;
            };
            match audio.packet {
                AudioPacket::SequenceHeader => {
                    if audio.data == config {
                        continue;
                    }
                    config = audio.data.clone();
                    transcoder = match AacToOpus::new(&config, self.bitrate) {
                        Ok(t) => {
                            tracing::info!(%stream, channels = t.channels(), input_rate = t.input_rate(),
                                bitrate = self.bitrate, "AAC → Opus transcoder started");
                            Some(t)
                        }
                        Err(e) => {
                            tracing::warn!(%stream, error = %e, "WebRTC viewers get no audio");
                            None
                        }
                    };
                }
                AudioPacket::Raw => {
                    let Some(t) = &mut transcoder else { continue };
                    if !t.push(&audio.data, frame.timestamp, &mut out) {
                        let errors = t.stats().decode_errors;
                        if last_error_log.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL) {
                            tracing::warn!(%stream, errors, new = errors - errors_logged,
                                "AAC frames did not decode: muted for their duration");
                            last_error_log = Some(Instant::now());
                            errors_logged = errors;
                        }
                    }
                    for packet in out.drain(..) {
                        // No receiver yet is not an error: viewers join later.
                        if live {
                            let _ = self.packets.send(Arc::new(packet));
                        }
                    }
                }
            }
        }
        if let Some(t) = &transcoder {
            let s = t.stats();
            tracing::info!(%stream, frames = s.frames_in, packets = s.packets_out,
                decode_errors = s.decode_errors, discontinuities = s.discontinuities,
                "AAC → Opus transcoder stopped");
        }
    }
}
