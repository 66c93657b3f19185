//! The server side of one RTMP connection, sans-IO: bytes from the socket go into
//! [`Session::receive`]; what the peer asked for comes out of [`Session::poll_event`]; bytes for
//! the socket come out of [`Session::take_output`].
//!
//! The session answers what needs no decision by itself (handshake, `connect`,
//! `createStream`, acknowledgements, pings) and leaves decisions to its owner: a `publish` or
//! `play` becomes an event, and the owner calls [`Session::accept_publish`] or
//! [`Session::reject_publish`] (and the `play` pair). Media that follows a `publish` in the same
//! read is queued behind the publish event, so nothing is lost while the owner decides.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Message};
use super::handshake::{HandshakeError, ServerHandshake};
use super::message::{self, Control, ControlError, UserControl};
use crate::amf0::{self, Amf0Value};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest message the peer may send.
    pub max_message_len: u32,
    /// Chunk size of what this server sends.
    pub chunk_size: u32,
    /// Window acknowledgement size announced to the peer.
    pub window_ack_size: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_message_len: super::chunk::DEFAULT_MAX_MESSAGE_LEN,
            chunk_size: 4096,
            window_ack_size: 2_500_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
    /// Script data (`onMetaData`).
    Data,
}

impl MediaKind {
    pub fn type_id(self) -> u8 {
        match self {
            MediaKind::Audio => message::AUDIO,
            MediaKind::Video => message::VIDEO,
            MediaKind::Data => message::DATA_AMF0,
        }
    }

    fn csid(self) -> u32 {
        match self {
            MediaKind::Audio => message::CSID_AUDIO,
            MediaKind::Video => message::CSID_VIDEO,
            MediaKind::Data => message::CSID_DATA,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected {
        app: String,
        tc_url: Option<String>,
    },
    /// `name` is the stream name or channel key as sent, query string included.
    PublishRequested {
        stream_id: u32,
        name: String,
    },
    PlayRequested {
        stream_id: u32,
        name: String,
    },
    /// Audio, video or metadata from the publishing stream. Metadata is re-encoded as
    /// `onMetaData` + object, without `@setDataFrame`, ready to send to players.
    Media {
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    },
    /// `deleteStream`, `closeStream` or `FCUnpublish`: that stream ended.
    StreamClosed {
        stream_id: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("command: {0}")]
    Command(String),
}

pub struct Session {
    config: SessionConfig,
    handshake: ServerHandshake,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    input: BytesMut,
    output: BytesMut,
    events: VecDeque<Event>,
    app: Option<String>,
    next_stream_id: u32,
    /// The stream whose `publish` was requested and not refused: its media is forwarded.
    publishing: Option<u32>,
    received: u64,
    peer_window: u32,
    acked_at: u64,
}

impl Session {
    pub fn new(config: SessionConfig, random: [u8; 1528], epoch: u32) -> Self {
        Self {
            decoder: ChunkDecoder::new(config.max_message_len),
            encoder: ChunkEncoder::new(),
            config,
            handshake: ServerHandshake::new(random, epoch),
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            app: None,
            next_stream_id: 1,
            publishing: None,
            received: 0,
            peer_window: 0,
            acked_at: 0,
        }
    }

    /// The application name from `connect`.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// Feeds bytes read from the socket. An error means the connection must be closed.
    pub fn receive(&mut self, data: &[u8]) -> Result<(), SessionError> {
        self.received += data.len() as u64;
        let mut rest = data;
        if !self.handshake.is_done() {
            let mut out = Vec::new();
            let used = self.handshake.read(rest, &mut out)?;
            self.output.extend_from_slice(&out);
            rest = &rest[used.min(rest.len())..];
            if !self.handshake.is_done() {
                return Ok(());
            }
        }
        self.input.extend_from_slice(rest);
        while let Some(msg) = self.decoder.decode(&mut self.input)? {
            self.on_message(msg)?;
        }
        if self.peer_window > 0 && self.received - self.acked_at >= u64::from(self.peer_window) {
            self.acked_at = self.received;
            self.send(message::control_message(Control::Acknowledgement(
                self.received as u32,
            )));
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to write to the socket, in order.
    pub fn take_output(&mut self) -> Bytes {
        self.output.split().freeze()
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    pub fn accept_publish(&mut self, stream_id: u32, name: &str) {
        self.publishing = Some(stream_id);
        self.on_status(
            stream_id,
            "status",
            "NetStream.Publish.Start",
            &format!("{name} is now published"),
        );
    }

    /// Refuses a publish with a status encoders understand (`NetStream.Publish.BadName` for a
    /// name in use or a wrong key). The owner should close the connection after flushing.
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        if self.publishing == Some(stream_id) {
            self.publishing = None;
        }
        self.on_status(stream_id, "error", code, description);
    }

    pub fn accept_play(&mut self, stream_id: u32, name: &str) {
        self.send(message::control_message(Control::User(
            UserControl::StreamBegin(stream_id),
        )));
        self.on_status(
            stream_id,
            "status",
            "NetStream.Play.Reset",
            &format!("playing and resetting {name}"),
        );
        self.on_status(
            stream_id,
            "status",
            "NetStream.Play.Start",
            &format!("started playing {name}"),
        );
        let access = [
            Amf0Value::string("|RtmpSampleAccess"),
            Amf0Value::Boolean(true),
            Amf0Value::Boolean(true),
        ];
        self.send_values(message::CSID_DATA, message::DATA_AMF0, stream_id, &access);
    }

    pub fn reject_play(&mut self, stream_id: u32, description: &str) {
        self.on_status(
            stream_id,
            "error",
            "NetStream.Play.StreamNotFound",
            description,
        );
    }

    /// Sends one audio, video or data message to a player.
    pub fn send_media(&mut self, stream_id: u32, kind: MediaKind, timestamp: u32, payload: Bytes) {
        self.send(Message {
            csid: kind.csid(),
            timestamp,
            type_id: kind.type_id(),
            stream_id,
            payload,
        });
    }

    /// Tells a player the publisher has gone.
    pub fn end_of_stream(&mut self, stream_id: u32) {
        self.on_status(
            stream_id,
            "status",
            "NetStream.Play.UnpublishNotify",
            "the publisher stopped",
        );
        self.send(message::control_message(Control::User(
            UserControl::StreamEof(stream_id),
        )));
    }

    fn send(&mut self, msg: Message) {
        self.encoder.encode(&msg, &mut self.output);
    }

    fn send_values(&mut self, csid: u32, type_id: u8, stream_id: u32, values: &[Amf0Value]) {
        let mut payload = Vec::new();
        for v in values {
            amf0::encode(v, &mut payload);
        }
        self.send(Message {
            csid,
            timestamp: 0,
            type_id,
            stream_id,
            payload: Bytes::from(payload),
        });
    }

    fn on_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        let info = Amf0Value::object([
            ("level", Amf0Value::string(level)),
            ("code", Amf0Value::string(code)),
            ("description", Amf0Value::string(description)),
        ]);
        let values = [
            Amf0Value::string("onStatus"),
            Amf0Value::Number(0.0),
            Amf0Value::Null,
            info,
        ];
        self.send_values(
            message::CSID_COMMAND,
            message::COMMAND_AMF0,
            stream_id,
            &values,
        );
    }

    fn result(&mut self, txn: f64, values: Vec<Amf0Value>) {
        if txn <= 0.0 {
            return;
        }
        let mut all = vec![Amf0Value::string("_result"), Amf0Value::Number(txn)];
        all.extend(values);
        self.send_values(message::CSID_COMMAND, message::COMMAND_AMF0, 0, &all);
    }

    fn on_message(&mut self, msg: Message) -> Result<(), SessionError> {
        if let Some(control) = message::parse_control(msg.type_id, &msg.payload) {
            return self.on_control(control?);
        }
        match msg.type_id {
            message::COMMAND_AMF0 => self.on_command(msg.stream_id, &msg.payload),
            message::COMMAND_AMF3 => {
                self.on_command(msg.stream_id, &message::amf3_as_amf0(&msg.payload))
            }
            message::DATA_AMF0 => self.on_data(msg.stream_id, msg.timestamp, &msg.payload),
            message::DATA_AMF3 => self.on_data(
                msg.stream_id,
                msg.timestamp,
                &message::amf3_as_amf0(&msg.payload),
            ),
            message::AUDIO | message::VIDEO => {
                if self.publishing == Some(msg.stream_id) {
                    let kind = if msg.type_id == message::AUDIO {
                        MediaKind::Audio
                    } else {
                        MediaKind::Video
                    };
                    self.events.push_back(Event::Media {
                        kind,
                        timestamp: msg.timestamp,
                        payload: msg.payload,
                    });
                }
                Ok(())
            }
            other => {
                tracing::debug!(
                    type_id = other,
                    len = msg.payload.len(),
                    "ignoring RTMP message"
                );
                Ok(())
            }
        }
    }

    fn on_control(&mut self, control: Control) -> Result<(), SessionError> {
        match control {
            Control::SetChunkSize(size) => self.decoder.set_chunk_size(size)?,
            Control::Abort(csid) => self.decoder.abort(csid),
            Control::WindowAckSize(size) => self.peer_window = size,
            Control::User(UserControl::PingRequest(t)) => {
                self.send(message::control_message(Control::User(
                    UserControl::PingResponse(t),
                )));
            }
            Control::Acknowledgement(_) | Control::SetPeerBandwidth { .. } | Control::User(_) => {}
        }
        Ok(())
    }

    fn on_command(&mut self, stream_id: u32, payload: &[u8]) -> Result<(), SessionError> {
        let values = amf0::decode_all(payload).map_err(|e| SessionError::Command(e.to_string()))?;
        let name = values
            .first()
            .and_then(Amf0Value::as_str)
            .ok_or_else(|| SessionError::Command("a command must start with its name".into()))?
            .to_string();
        let txn = values.get(1).and_then(Amf0Value::as_number).unwrap_or(0.0);
        let arg = |i: usize| {
            values
                .get(i)
                .and_then(Amf0Value::as_str)
                .map(str::to_string)
        };
        match name.as_str() {
            "connect" => {
                let obj = values.get(2);
                let app = obj
                    .and_then(|o| o.get("app"))
                    .and_then(Amf0Value::as_str)
                    .unwrap_or_default()
                    .trim_matches('/')
                    .to_string();
                let tc_url = obj
                    .and_then(|o| o.get("tcUrl"))
                    .and_then(Amf0Value::as_str)
                    .map(str::to_string);
                self.on_connect(txn, &app);
                self.app = Some(app.clone());
                self.events.push_back(Event::Connected { app, tc_url });
            }
            "createStream" => {
                let id = self.next_stream_id;
                self.next_stream_id = self.next_stream_id.saturating_add(1);
                self.result(txn, vec![Amf0Value::Null, Amf0Value::Number(f64::from(id))]);
            }
            "publish" | "play" => {
                if self.app.is_none() {
                    return Err(SessionError::Command(format!("{name} before connect")));
                }
                let stream = arg(3).ok_or_else(|| {
                    SessionError::Command(format!("{name} without a stream name"))
                })?;
                if name == "publish" {
                    self.publishing = Some(stream_id);
                    self.events.push_back(Event::PublishRequested {
                        stream_id,
                        name: stream,
                    });
                } else {
                    self.events.push_back(Event::PlayRequested {
                        stream_id,
                        name: stream,
                    });
                }
            }
            "deleteStream" => {
                let closed = values
                    .get(3)
                    .and_then(Amf0Value::as_number)
                    .map_or(stream_id, |n| n as u32);
                self.close_stream(closed);
            }
            "closeStream" => self.close_stream(stream_id),
            "FCUnpublish" => {
                self.result(txn, vec![Amf0Value::Null, Amf0Value::Undefined]);
                if let Some(publishing) = self.publishing {
                    self.close_stream(publishing);
                }
            }
            "releaseStream" | "FCPublish" | "getStreamLength" | "FCSubscribe" => {
                self.result(txn, vec![Amf0Value::Null, Amf0Value::Undefined]);
            }
            other => tracing::debug!(command = other, "ignoring RTMP command"),
        }
        Ok(())
    }

    fn close_stream(&mut self, stream_id: u32) {
        if self.publishing == Some(stream_id) {
            self.publishing = None;
        }
        self.events.push_back(Event::StreamClosed { stream_id });
    }

    fn on_connect(&mut self, txn: f64, app: &str) {
        self.send(message::control_message(Control::WindowAckSize(
            self.config.window_ack_size,
        )));
        self.send(message::control_message(Control::SetPeerBandwidth {
            size: self.config.window_ack_size,
            limit: 2,
        }));
        self.send(message::control_message(Control::SetChunkSize(
            self.config.chunk_size,
        )));
        self.encoder.set_chunk_size(self.config.chunk_size);
        let props = Amf0Value::object([
            ("fmsVer", Amf0Value::string("FMS/3,0,1,123")),
            ("capabilities", Amf0Value::Number(31.0)),
        ]);
        let info = Amf0Value::object([
            ("level", Amf0Value::string("status")),
            ("code", Amf0Value::string("NetConnection.Connect.Success")),
            (
                "description",
                Amf0Value::string(format!("connected to {app}")),
            ),
            ("objectEncoding", Amf0Value::Number(0.0)),
        ]);
        self.result(txn, vec![props, info]);
    }

    fn on_data(
        &mut self,
        stream_id: u32,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        if self.publishing != Some(stream_id) {
            return Ok(());
        }
        let values = amf0::decode_all(payload)
            .map_err(|e| SessionError::Command(format!("data message: {e}")))?;
        let mut values = values.as_slice();
        if values.first().and_then(Amf0Value::as_str) == Some("@setDataFrame") {
            values = &values[1..];
        }
        if values.first().and_then(Amf0Value::as_str) != Some("onMetaData") {
            return Ok(());
        }
        let mut out = Vec::new();
        for v in values {
            amf0::encode(v, &mut out);
        }
        self.events.push_back(Event::Media {
            kind: MediaKind::Data,
            timestamp,
            payload: Bytes::from(out),
        });
        Ok(())
    }
}
