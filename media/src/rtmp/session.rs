//! The server side of one RTMP connection, sans-IO: bytes from the socket go into
//! [`Session::receive`]; what the peer asked for comes out of [`Session::poll_event`]; bytes for
//! the socket come out of [`Session::take_output`].
//!
//! The session answers what needs no decision by itself (handshake, `connect`,
//! `createStream`, acknowledgements, pings) and leaves decisions to its owner: a `publish` or
//! `play` becomes an event, and the owner calls [`Session::accept_publish`] or
//! [`Session::reject_publish`] (and the `play` pair). Media that follows a `publish` in the same
//! read is queued behind the publish event, so nothing is lost while the owner decides.
//!
//! Queries are cut off here, once: `connect`'s app and the names in `publish` and `play` come
//! out as names, their queries (where encoders put tokens) as a [`Query`] beside them, so
//! nothing downstream logs or echoes a token by way of a name.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Message};
use super::handshake::{HandshakeError, ServerHandshake};
use super::message::{self, Control, ControlError, UserControl};
use super::query::Query;
use crate::amf0::{self, Amf0Value};

/// The longest status description sent, in bytes. Descriptions are for people and may echo a
/// name the peer chose (`connect`'s app, a stream name): cut, they cannot make a reply outgrow
/// RTMP's 24-bit message length, which the chunk encoder refuses with a panic.
const MAX_DESCRIPTION_LEN: usize = 1024;

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
    /// `app` and `tc_url` without their query.
    Connected { app: String, tc_url: Option<String> },
    /// `name` is the stream name or channel key as sent, without its query; `query` is the
    /// name's query, then the app's.
    PublishRequested {
        stream_id: u32,
        name: String,
        query: Query,
    },
    /// As [`Event::PublishRequested`].
    PlayRequested {
        stream_id: u32,
        name: String,
        query: Query,
    },
    /// Audio, video or metadata from the publishing stream. Metadata is re-encoded as
    /// `onMetaData` + object, without `@setDataFrame`, ready to send to players.
    Media {
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    },
    /// `deleteStream`, `closeStream` or `FCUnpublish`: that stream ended.
    StreamClosed { stream_id: u32 },
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
    /// What followed `?` in `connect`'s app.
    app_query: Query,
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
            app_query: Query::default(),
            next_stream_id: 1,
            publishing: None,
            received: 0,
            peer_window: 0,
            acked_at: 0,
        }
    }

    /// The application name from `connect`, without its query.
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

    /// The encoder the client has been decoding, and what it encoded that was not taken yet:
    /// for a [`Handover`](super::handover::Handover), which keeps talking to the client in it.
    pub(crate) fn into_encoder(self) -> (ChunkEncoder, BytesMut) {
        (self.encoder, self.output)
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
        self.send(status_message(stream_id, level, code, description));
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
                let (app, app_query) = Query::split_off(
                    obj.and_then(|o| o.get("app"))
                        .and_then(Amf0Value::as_str)
                        .unwrap_or_default(),
                );
                let app = app.trim_matches('/').to_string();
                let tc_url = obj
                    .and_then(|o| o.get("tcUrl"))
                    .and_then(Amf0Value::as_str)
                    .map(|url| Query::split_off(url).0.to_string());
                self.on_connect(txn, &app);
                self.app = Some(app.clone());
                self.app_query = app_query;
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
                let (stream, query) = Query::split_off(&stream);
                let (stream, query) = (stream.to_string(), query.then(&self.app_query));
                if name == "publish" {
                    self.publishing = Some(stream_id);
                    self.events.push_back(Event::PublishRequested {
                        stream_id,
                        name: stream,
                        query,
                    });
                } else {
                    self.events.push_back(Event::PlayRequested {
                        stream_id,
                        name: stream,
                        query,
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
            ("description", brief(&format!("connected to {app}"))),
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
        // Metadata is informational: a publisher whose encoder writes odd AMF keeps publishing.
        let values = match amf0::decode_all(payload) {
            Ok(values) => values,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring an undecodable data message");
                return Ok(());
            }
        };
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

/// A description cut to [`MAX_DESCRIPTION_LEN`] bytes, on a character boundary.
/// `onStatus` on `stream_id`: how a server tells a client what became of its request.
pub(crate) fn status_message(
    stream_id: u32,
    level: &str,
    code: &str,
    description: &str,
) -> Message {
    let info = Amf0Value::object([
        ("level", Amf0Value::string(level)),
        ("code", Amf0Value::string(code)),
        ("description", brief(description)),
    ]);
    let mut payload = Vec::new();
    for value in [
        Amf0Value::string("onStatus"),
        Amf0Value::Number(0.0),
        Amf0Value::Null,
        info,
    ] {
        amf0::encode(&value, &mut payload);
    }
    Message {
        csid: message::CSID_COMMAND,
        timestamp: 0,
        type_id: message::COMMAND_AMF0,
        stream_id,
        payload: Bytes::from(payload),
    }
}

fn brief(text: &str) -> Amf0Value {
    let mut end = text.len().min(MAX_DESCRIPTION_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Amf0Value::string(text.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S1's time field.
    const EPOCH: u32 = 0x0102_0304;
    /// What the handshake's three parts add up to: S0, S1 and S2.
    const S0_S1_S2_LEN: usize = 1 + 2 * 1536;

    fn pattern(seed: u8) -> [u8; 1528] {
        let mut bytes = [0; 1528];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        bytes
    }

    /// C0 and a plain C1: zero time, zero version, then the client's random bytes.
    fn c0_c1() -> Vec<u8> {
        let mut bytes = vec![3, 0, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&pattern(0x5A));
        bytes
    }

    /// S1 as the server builds it for a plain client: its epoch, zero, its random bytes.
    fn expected_s1() -> Vec<u8> {
        let mut s1 = EPOCH.to_be_bytes().to_vec();
        s1.extend_from_slice(&[0; 4]);
        s1.extend_from_slice(&pattern(7));
        s1
    }

    fn new_session(config: SessionConfig) -> Session {
        Session::new(config, pattern(7), EPOCH)
    }

    /// A client after a plain handshake: it encodes what it sends with its own chunk encoder
    /// and decodes what the server sends with its own chunk decoder.
    struct Client {
        session: Session,
        encoder: ChunkEncoder,
        decoder: ChunkDecoder,
        inbox: BytesMut,
        /// Bytes fed to the session, the handshake included.
        fed: u64,
    }

    impl Client {
        fn new() -> Self {
            Self::with_config(SessionConfig::default())
        }

        fn with_config(config: SessionConfig) -> Self {
            let mut client = Self {
                session: new_session(config),
                encoder: ChunkEncoder::new(),
                decoder: ChunkDecoder::new(u32::MAX),
                inbox: BytesMut::new(),
                fed: 0,
            };
            let c0_c1 = c0_c1();
            client.feed(&c0_c1).unwrap();
            let s0_s1_s2 = client.session.take_output();
            assert_eq!(s0_s1_s2.len(), S0_S1_S2_LEN);
            assert_eq!(s0_s1_s2[0], 3, "S0");
            let s1 = s0_s1_s2[1..1537].to_vec();
            assert_eq!(s1, expected_s1());
            assert_eq!(&s0_s1_s2[1537..], &c0_c1[1..], "S2 echoes C1");
            client.feed(&s1).unwrap();
            assert!(!client.session.has_output());
            assert_eq!(client.events(), []);
            client
        }

        fn feed(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
            self.fed += bytes.len() as u64;
            self.session.receive(bytes)
        }

        fn encode(&mut self, messages: &[Message]) -> Vec<u8> {
            encode(&mut self.encoder, messages)
        }

        /// Sends `messages` in one read.
        fn send(&mut self, messages: &[Message]) -> Result<(), SessionError> {
            let bytes = self.encode(messages);
            self.feed(&bytes)
        }

        /// What the server wrote since the last call, as messages.
        fn replies(&mut self) -> Vec<Message> {
            self.inbox.extend_from_slice(&self.session.take_output());
            let mut replies = Vec::new();
            while let Some(m) = self.decoder.decode(&mut self.inbox).unwrap() {
                if let Some(Ok(Control::SetChunkSize(size))) =
                    message::parse_control(m.type_id, &m.payload)
                {
                    self.decoder.set_chunk_size(size).unwrap();
                }
                replies.push(m);
            }
            assert!(self.inbox.is_empty(), "the server wrote part of a chunk");
            replies
        }

        /// [`Self::replies`], described.
        fn said(&mut self) -> Vec<String> {
            self.replies().iter().map(describe).collect()
        }

        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.session.poll_event()).collect()
        }

        /// `connect` to `live`, with the replies and the event taken.
        fn connected() -> Self {
            let mut client = Self::new();
            client.send(&[connect(1.0, "live")]).unwrap();
            client.replies();
            client.events();
            client
        }

        /// Connected, `createStream` answered with stream 1 and `publish` of `key` accepted.
        fn publishing() -> Self {
            let mut client = Self::connected();
            client
                .send(&[create_stream(2.0), publish(1, "key")])
                .unwrap();
            assert_eq!(client.said(), ["0: _result 2 null 1"]);
            assert_eq!(
                client.events(),
                [Event::PublishRequested {
                    stream_id: 1,
                    name: "key".into(),
                    query: Query::default(),
                }]
            );
            client.session.accept_publish(1, "live/key");
            client.replies();
            client
        }
    }

    /// The chunks of `messages` as a client cuts them. A Set Chunk Size among them applies to
    /// the messages after it.
    fn encode(encoder: &mut ChunkEncoder, messages: &[Message]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for m in messages {
            encoder.encode(m, &mut out);
            if let Some(Ok(Control::SetChunkSize(size))) =
                message::parse_control(m.type_id, &m.payload)
            {
                encoder.set_chunk_size(size);
            }
        }
        out.to_vec()
    }

    fn amf(values: &[Amf0Value]) -> Bytes {
        let mut out = Vec::new();
        for v in values {
            amf0::encode(v, &mut out);
        }
        Bytes::from(out)
    }

    /// A command on csid 3 for message stream 0, csid 8 for the others (as OBS sends them).
    fn command(stream_id: u32, values: &[Amf0Value]) -> Message {
        Message {
            csid: if stream_id == 0 { 3 } else { 8 },
            timestamp: 0,
            type_id: message::COMMAND_AMF0,
            stream_id,
            payload: amf(values),
        }
    }

    fn s(text: &str) -> Amf0Value {
        Amf0Value::string(text)
    }

    fn n(number: f64) -> Amf0Value {
        Amf0Value::Number(number)
    }

    fn connect(txn: f64, app: &str) -> Message {
        let object = Amf0Value::object([
            ("app", s(app)),
            ("type", s("nonprivate")),
            ("flashVer", s("FMLE/3.0 (compatible; FMSc/1.0)")),
            ("tcUrl", s(&format!("rtmp://localhost/{app}"))),
        ]);
        command(0, &[s("connect"), n(txn), object])
    }

    fn create_stream(txn: f64) -> Message {
        command(0, &[s("createStream"), n(txn), Amf0Value::Null])
    }

    fn publish(stream_id: u32, name: &str) -> Message {
        command(
            stream_id,
            &[s("publish"), n(0.0), Amf0Value::Null, s(name), s("live")],
        )
    }

    fn play(stream_id: u32, name: &str) -> Message {
        command(
            stream_id,
            &[s("play"), n(0.0), Amf0Value::Null, s(name), n(-2000.0)],
        )
    }

    fn metadata() -> Amf0Value {
        Amf0Value::EcmaArray(vec![
            ("width".into(), n(1280.0)),
            ("height".into(), n(720.0)),
            ("encoder".into(), s("obs-output module")),
        ])
    }

    fn set_data_frame(stream_id: u32) -> Message {
        Message {
            csid: 4,
            timestamp: 0,
            type_id: message::DATA_AMF0,
            stream_id,
            payload: amf(&[s("@setDataFrame"), s("onMetaData"), metadata()]),
        }
    }

    fn bytes(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect()
    }

    fn video(stream_id: u32, timestamp: u32, len: usize) -> Message {
        Message {
            csid: 6,
            timestamp,
            type_id: message::VIDEO,
            stream_id,
            payload: bytes(len, 0x17),
        }
    }

    fn audio(stream_id: u32, timestamp: u32, len: usize) -> Message {
        Message {
            csid: 4,
            timestamp,
            type_id: message::AUDIO,
            stream_id,
            payload: bytes(len, 0xAF),
        }
    }

    fn control(control: Control) -> Message {
        message::control_message(control)
    }

    fn media(kind: MediaKind, m: &Message) -> Event {
        Event::Media {
            kind,
            timestamp: m.timestamp,
            payload: m.payload.clone(),
        }
    }

    /// A reply as `stream: what`, e.g. `1: onStatus 0 null {status NetStream.Play.Start}`.
    fn describe(m: &Message) -> String {
        let what = if let Some(control) = message::parse_control(m.type_id, &m.payload) {
            format!("{:?}", control.unwrap())
        } else {
            match m.type_id {
                message::COMMAND_AMF0 | message::DATA_AMF0 => amf0::decode_all(&m.payload)
                    .unwrap()
                    .iter()
                    .map(render)
                    .collect::<Vec<_>>()
                    .join(" "),
                message::VIDEO => format!("video {} bytes at {}", m.payload.len(), m.timestamp),
                message::AUDIO => format!("audio {} bytes at {}", m.payload.len(), m.timestamp),
                other => format!("type {other}"),
            }
        };
        format!("{}: {what}", m.stream_id)
    }

    /// An AMF0 value in brief: an object as `{level code}` when it is a status, else `{}`.
    fn render(value: &Amf0Value) -> String {
        let text = |key| value.get(key).and_then(Amf0Value::as_str);
        match value {
            Amf0Value::Number(n) => n.to_string(),
            Amf0Value::Boolean(b) => b.to_string(),
            Amf0Value::String(s) | Amf0Value::LongString(s) => s.clone(),
            Amf0Value::Null => "null".into(),
            Amf0Value::Undefined => "undefined".into(),
            _ => match (text("level"), text("code")) {
                (Some(level), Some(code)) => format!("{{{level} {code}}}"),
                _ => "{}".into(),
            },
        }
    }

    #[test]
    fn connect_is_answered_with_window_bandwidth_chunk_size_and_success() {
        let mut client = Client::new();
        client.send(&[connect(3.0, "/live/")]).unwrap();
        let replies = client.replies();
        assert_eq!(
            replies.iter().map(describe).collect::<Vec<_>>(),
            [
                "0: WindowAckSize(2500000)",
                "0: SetPeerBandwidth { size: 2500000, limit: 2 }",
                "0: SetChunkSize(4096)",
                "0: _result 3 {} {status NetConnection.Connect.Success}",
            ]
        );
        let result = amf0::decode_all(&replies[3].payload).unwrap();
        assert_eq!(
            result[2].get("fmsVer").and_then(Amf0Value::as_str),
            Some("FMS/3,0,1,123")
        );
        assert_eq!(
            client.events(),
            [Event::Connected {
                app: "live".into(),
                tc_url: Some("rtmp://localhost//live/".into()),
            }]
        );
        assert_eq!(client.session.app(), Some("live"));
    }

    #[test]
    fn queries_of_the_app_and_the_name_are_cut_off_and_never_echoed() {
        // What ffmpeg sends for rtmp://host/live?token=…/key: the token in the app (and the
        // tcUrl); OBS's key field puts one after the key.
        let mut client = Client::new();
        client
            .send(&[connect(1.0, "live?token=eyJ.app-secret")])
            .unwrap();
        client
            .send(&[create_stream(2.0), publish(1, "key?token=eyJ.name-secret")])
            .unwrap();
        let events = client.events();
        assert_eq!(client.session.app(), Some("live"));
        let [
            Event::Connected { app, tc_url },
            Event::PublishRequested {
                stream_id: 1,
                name,
                query,
            },
        ] = &events[..]
        else {
            panic!("{events:?}");
        };
        assert_eq!(app, "live");
        assert_eq!(tc_url.as_deref(), Some("rtmp://localhost/live"));
        assert_eq!(name, "key");
        assert_eq!(
            query.get("token"),
            Some("eyJ.name-secret"),
            "the name's first"
        );
        client
            .session
            .reject_publish(1, "NetStream.Publish.BadName", name);
        client.session.accept_publish(1, name);
        // Everything the server wrote: the connect result, statuses.
        let out = client.session.take_output();
        let shown = format!("{events:?}");
        for secret in ["app-secret", "name-secret"] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(
                !out.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} echoed to the client"
            );
        }

        // The app's query alone, and a play.
        let mut client = Client::new();
        client.send(&[connect(1.0, "live/?token=t1")]).unwrap();
        client.send(&[create_stream(2.0), play(1, "cam")]).unwrap();
        let events = client.events();
        assert!(
            matches!(&events[1], Event::PlayRequested { name, query, .. }
                if name == "cam" && query.get("token") == Some("t1")),
            "{events:?}"
        );
        assert_eq!(client.session.app(), Some("live"));
    }

    #[test]
    fn server_chunk_size_applies_to_what_follows_connect() {
        let mut client = Client::connected();
        client.send(&[create_stream(2.0), play(1, "key")]).unwrap();
        client.replies();
        client.session.accept_play(1, "key");
        client.replies();
        let frame = bytes(4000, 1);
        client
            .session
            .send_media(1, MediaKind::Video, 0, frame.clone());
        let out = client.session.take_output();
        // One chunk: a type 0 header (12 bytes) and 4000 bytes, no type 3 headers within.
        assert_eq!(out.len(), 12 + 4000);
        client.inbox.extend_from_slice(&out);
        let decoded = client.decoder.decode(&mut client.inbox).unwrap().unwrap();
        assert_eq!(decoded.payload, frame);
    }

    #[test]
    fn release_fcpublish_and_create_stream_get_results() {
        let mut client = Client::connected();
        client
            .send(&[
                command(0, &[s("releaseStream"), n(2.0), Amf0Value::Null, s("key")]),
                command(0, &[s("FCPublish"), n(3.0), Amf0Value::Null, s("key")]),
                create_stream(4.0),
                create_stream(5.0),
            ])
            .unwrap();
        assert_eq!(
            client.said(),
            [
                "0: _result 2 null undefined",
                "0: _result 3 null undefined",
                "0: _result 4 null 1",
                "0: _result 5 null 2",
            ]
        );
        assert_eq!(client.events(), []);
    }

    #[test]
    fn publish_metadata_and_media_in_one_read_come_out_in_order() {
        let mut client = Client::connected();
        client.send(&[create_stream(2.0)]).unwrap();
        client.replies();
        let frame = video(1, 0, 1000);
        let sound = audio(1, 21, 300);
        // All of it in one read, before the owner has decided on the publish.
        client
            .send(&[
                publish(1, "key?secret=1"),
                set_data_frame(1),
                frame.clone(),
                sound.clone(),
            ])
            .unwrap();
        assert_eq!(
            client.said(),
            Vec::<String>::new(),
            "nothing before the decision"
        );
        let metadata = amf(&[s("onMetaData"), metadata()]);
        assert_eq!(
            client.events(),
            [
                Event::PublishRequested {
                    stream_id: 1,
                    name: "key".into(),
                    query: Query::split_off("key?secret=1").1,
                },
                Event::Media {
                    kind: MediaKind::Data,
                    timestamp: 0,
                    payload: metadata,
                },
                media(MediaKind::Video, &frame),
                media(MediaKind::Audio, &sound),
            ]
        );
        client.session.accept_publish(1, "live/key");
        assert_eq!(
            client.said(),
            ["1: onStatus 0 null {status NetStream.Publish.Start}"]
        );
        let more = video(1, 40, 10);
        client.send(std::slice::from_ref(&more)).unwrap();
        assert_eq!(client.events(), [media(MediaKind::Video, &more)]);
    }

    #[test]
    fn rejected_publish_gets_an_error_status_and_its_media_is_dropped() {
        let mut client = Client::connected();
        client
            .send(&[create_stream(2.0), publish(1, "taken")])
            .unwrap();
        client.replies();
        assert_eq!(
            client.events(),
            [Event::PublishRequested {
                stream_id: 1,
                name: "taken".into(),
                query: Query::default(),
            }]
        );
        client
            .session
            .reject_publish(1, "NetStream.Publish.BadName", "taken is in use");
        let replies = client.replies();
        assert_eq!(
            replies.iter().map(describe).collect::<Vec<_>>(),
            ["1: onStatus 0 null {error NetStream.Publish.BadName}"]
        );
        let info = &amf0::decode_all(&replies[0].payload).unwrap()[3];
        assert_eq!(
            info.get("description").and_then(Amf0Value::as_str),
            Some("taken is in use")
        );
        client
            .send(&[set_data_frame(1), video(1, 0, 500), audio(1, 0, 50)])
            .unwrap();
        assert_eq!(client.events(), []);
    }

    #[test]
    fn media_on_a_stream_that_never_published_is_dropped() {
        let mut client = Client::connected();
        client
            .send(&[create_stream(2.0), create_stream(3.0)])
            .unwrap();
        client.replies();
        let on_both = |client: &mut Client| {
            client
                .send(&[
                    set_data_frame(2),
                    video(2, 0, 500),
                    audio(2, 0, 50),
                    video(0, 0, 5),
                ])
                .unwrap();
        };
        on_both(&mut client);
        client.send(&[video(1, 0, 5)]).unwrap();
        assert_eq!(client.events(), [], "before any publish");
        client.send(&[publish(1, "key")]).unwrap();
        client.events();
        client.session.accept_publish(1, "live/key");
        on_both(&mut client);
        assert_eq!(client.events(), [], "stream 1 publishes, not 2 or 0");
    }

    /// Connected, stream 1 created and `play` of `key` asked for; with what the session said.
    fn play_requested() -> (Client, Vec<String>) {
        let mut client = Client::connected();
        client.send(&[create_stream(2.0), play(1, "key")]).unwrap();
        let said = client.said();
        assert_eq!(
            client.events(),
            [Event::PlayRequested {
                stream_id: 1,
                name: "key".into(),
                query: Query::default(),
            }]
        );
        (client, said)
    }

    /// Connected, stream 1 created, `play` of `key` accepted, the replies taken.
    fn playing() -> Client {
        let (mut client, _) = play_requested();
        client.session.accept_play(1, "live/key");
        client.replies();
        client
    }

    #[test]
    fn accepted_play_gets_stream_begin_reset_start_and_sample_access() {
        let (mut client, said) = play_requested();
        assert_eq!(said, ["0: _result 2 null 1"]);
        client.session.accept_play(1, "live/key");
        assert_eq!(
            client.said(),
            [
                "0: User(StreamBegin(1))",
                "1: onStatus 0 null {status NetStream.Play.Reset}",
                "1: onStatus 0 null {status NetStream.Play.Start}",
                "1: |RtmpSampleAccess true true",
            ]
        );
    }

    #[test]
    fn sent_media_decodes_to_the_same_messages() {
        let mut client = playing();
        let sent = [
            (MediaKind::Data, 0, amf(&[s("onMetaData"), metadata()])),
            (MediaKind::Video, 0, bytes(9000, 1)),
            (MediaKind::Audio, 23, bytes(300, 2)),
            (MediaKind::Video, 33, bytes(10, 3)),
            (MediaKind::Video, 0x0100_0000, bytes(5000, 4)),
        ];
        for (kind, timestamp, payload) in sent.clone() {
            client.session.send_media(1, kind, timestamp, payload);
        }
        let received: Vec<_> = client
            .replies()
            .into_iter()
            .map(|m| {
                assert_eq!(m.stream_id, 1);
                (m.type_id, m.timestamp, m.payload)
            })
            .collect();
        let sent: Vec<_> = sent
            .into_iter()
            .map(|(kind, timestamp, payload)| (kind.type_id(), timestamp, payload))
            .collect();
        assert_eq!(received, sent);
    }

    #[test]
    fn end_of_stream_tells_the_player_and_sends_stream_eof() {
        let mut client = playing();
        client.session.end_of_stream(1);
        assert_eq!(
            client.said(),
            [
                "1: onStatus 0 null {status NetStream.Play.UnpublishNotify}",
                "0: User(StreamEof(1))",
            ]
        );
    }

    #[test]
    fn rejected_play_gets_stream_not_found() {
        let mut client = Client::connected();
        client
            .send(&[create_stream(2.0), play(1, "nobody")])
            .unwrap();
        client.replies();
        client.events();
        client.session.reject_play(1, "live/nobody is not live");
        assert_eq!(
            client.said(),
            ["1: onStatus 0 null {error NetStream.Play.StreamNotFound}"]
        );
    }

    #[test]
    fn delete_stream_closes_the_publishing_stream() {
        let mut client = Client::publishing();
        client
            .send(&[command(
                0,
                &[s("deleteStream"), n(0.0), Amf0Value::Null, n(1.0)],
            )])
            .unwrap();
        assert_eq!(client.events(), [Event::StreamClosed { stream_id: 1 }]);
        client.send(&[video(1, 80, 100)]).unwrap();
        assert_eq!(client.events(), [], "media after the stream closed");
    }

    #[test]
    fn fc_unpublish_closes_the_publishing_stream() {
        let mut client = Client::publishing();
        client
            .send(&[command(
                0,
                &[s("FCUnpublish"), n(6.0), Amf0Value::Null, s("key")],
            )])
            .unwrap();
        assert_eq!(client.said(), ["0: _result 6 null undefined"]);
        assert_eq!(client.events(), [Event::StreamClosed { stream_id: 1 }]);
        client.send(&[audio(1, 80, 10)]).unwrap();
        assert_eq!(client.events(), [], "media after the stream closed");
    }

    #[test]
    fn close_stream_closes_the_stream_it_arrives_on() {
        let mut client = Client::publishing();
        client
            .send(&[command(1, &[s("closeStream"), n(0.0), Amf0Value::Null])])
            .unwrap();
        assert_eq!(client.events(), [Event::StreamClosed { stream_id: 1 }]);
    }

    #[test]
    fn client_chunk_size_applies_to_the_messages_after_it() {
        let mut client = Client::publishing();
        let big = video(1, 0, 10_000);
        client
            .send(&[control(Control::SetChunkSize(4096)), big.clone()])
            .unwrap();
        assert_eq!(client.events(), [media(MediaKind::Video, &big)]);

        let small = audio(1, 10, 40);
        client
            .send(&[
                control(Control::SetChunkSize(1)),
                small.clone(),
                create_stream(7.0),
            ])
            .unwrap();
        assert_eq!(client.events(), [media(MediaKind::Audio, &small)]);
        assert_eq!(client.said(), ["0: _result 7 null 2"]);
    }

    #[test]
    fn chunk_size_out_of_range_closes_the_connection() {
        // 0x8000_0000 has only the reserved bit set, which the parser clears: 0 as well.
        for size in [0x7FFF_FFFF, 0, 0x8000_0000] {
            let mut client = Client::connected();
            let result = client.send(&[control(Control::SetChunkSize(size))]);
            assert!(
                matches!(result, Err(SessionError::Chunk(_))),
                "{size:#x}: {result:?}"
            );
        }
    }

    #[test]
    fn declared_message_length_over_the_limit_closes_the_connection() {
        let mut client = Client::connected();
        // A type 0 header on csid 3 announcing a command of 0xFFFFFF bytes.
        let header = [
            0x03,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            message::COMMAND_AMF0,
            0,
            0,
            0,
            0,
        ];
        let result = client.feed(&header);
        assert!(matches!(result, Err(SessionError::Chunk(_))), "{result:?}");
    }

    #[test]
    fn ping_request_is_answered_with_the_same_time() {
        let mut client = Client::connected();
        client
            .send(&[control(Control::User(UserControl::PingRequest(123_456)))])
            .unwrap();
        assert_eq!(client.said(), ["0: User(PingResponse(123456))"]);
    }

    #[test]
    fn acknowledgement_follows_each_window_of_received_bytes() {
        const WINDOW: u64 = 5000;
        let mut client = Client::new();
        client
            .send(&[control(Control::WindowAckSize(WINDOW as u32))])
            .unwrap();
        assert!(client.fed < WINDOW);
        assert_eq!(client.said(), Vec::<String>::new());
        let mut acked = 0;
        let mut acks = Vec::new();
        for i in 0..100 {
            client.send(&[video(0, i * 40, 150)]).unwrap();
            let replies = client.said();
            if client.fed - acked >= WINDOW {
                assert_eq!(
                    replies,
                    [format!("0: Acknowledgement({})", client.fed)],
                    "after {} bytes",
                    client.fed
                );
                acked = client.fed;
                acks.push(acked);
            } else {
                assert_eq!(replies, Vec::<String>::new(), "after {} bytes", client.fed);
            }
        }
        assert!(acks.len() >= 3, "{acks:?}");
    }

    #[test]
    fn http_instead_of_a_handshake_is_a_handshake_error() {
        let mut session = new_session(SessionConfig::default());
        let request = b"GET / HTTP/1.1\r\nHost: localhost:1935\r\n\r\n";
        let result = session.receive(request);
        assert!(
            matches!(
                result,
                Err(SessionError::Handshake(HandshakeError::NotRtmp(_)))
            ),
            "{result:?}"
        );
        assert!(!session.has_output());
        assert!(session.receive(&c0_c1()).is_err(), "no fresh start after");
    }

    #[test]
    fn publish_before_connect_is_an_error() {
        for early in [publish(1, "key"), play(1, "key")] {
            let mut client = Client::new();
            match client.send(&[create_stream(1.0), early]) {
                Err(SessionError::Command(reason)) => {
                    assert!(reason.contains("before connect"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(client.events(), []);
        }
    }

    #[test]
    fn command_that_does_not_start_with_a_name_is_an_error() {
        for values in [vec![n(1.0), s("connect")], vec![Amf0Value::Null], vec![]] {
            let mut client = Client::connected();
            let result = client.send(&[command(0, &values)]);
            assert!(
                matches!(result, Err(SessionError::Command(_))),
                "{values:?}: {result:?}"
            );
        }
    }

    use crate::XorShift;

    /// Random pieces of RTMP commands.
    impl XorShift {
        fn bytes(&mut self, max_len: u64) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }

        fn value(&mut self) -> Amf0Value {
            match self.below(6) {
                0 => n(self.below(4) as f64),
                1 => Amf0Value::Null,
                2 => s(["", "live", "key", "/"][self.below(4) as usize]),
                3 => Amf0Value::Boolean(self.below(2) == 0),
                4 => Amf0Value::object([("app", s("live"))]),
                _ => metadata(),
            }
        }
    }

    /// Noise that reaches past the chunk layer: messages of every type on a few csids and
    /// streams, their payloads random bytes or commands with random arguments and tails.
    fn noisy_messages(rng: &mut XorShift) -> Vec<Message> {
        const TYPES: [u8; 14] = [1, 2, 3, 4, 5, 6, 8, 9, 15, 17, 18, 20, 22, 0];
        const NAMES: [&str; 12] = [
            "connect",
            "createStream",
            "publish",
            "play",
            "deleteStream",
            "closeStream",
            "FCUnpublish",
            "releaseStream",
            "FCPublish",
            "@setDataFrame",
            "onMetaData",
            "_checkbw",
        ];
        (0..1 + rng.below(8))
            .map(|_| {
                let type_id = TYPES[rng.below(TYPES.len() as u64) as usize];
                let payload = if rng.below(2) == 0 {
                    let mut values = vec![s(NAMES[rng.below(NAMES.len() as u64) as usize])];
                    values.extend((0..rng.below(5)).map(|_| rng.value()));
                    let mut payload = amf(&values).to_vec();
                    if rng.below(3) == 0 {
                        payload.extend(rng.bytes(20));
                    }
                    if type_id == message::COMMAND_AMF3 || type_id == message::DATA_AMF3 {
                        payload.insert(0, 0);
                    }
                    Bytes::from(payload)
                } else {
                    Bytes::from(rng.bytes(300))
                };
                Message {
                    csid: 3 + rng.below(6) as u32,
                    timestamp: rng.next() as u32,
                    type_id,
                    stream_id: rng.below(3) as u32,
                    payload,
                }
            })
            .collect()
    }

    #[test]
    fn garbage_after_the_handshake_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..400 {
            let mut client = Client::new();
            if round % 3 == 0 {
                client
                    .send(&[connect(1.0, "live"), create_stream(2.0), publish(1, "key")])
                    .unwrap();
            }
            let bytes = if round % 2 == 0 {
                rng.bytes(600)
            } else {
                let messages = noisy_messages(&mut rng);
                client.encode(&messages)
            };
            let _ = client.feed(&bytes);
            while let Some(event) = client.session.poll_event() {
                // The owner's answers must not panic either.
                match event {
                    Event::PublishRequested {
                        stream_id, name, ..
                    } => {
                        client.session.accept_publish(stream_id, &name);
                    }
                    Event::PlayRequested {
                        stream_id, name, ..
                    } => {
                        client.session.accept_play(stream_id, &name);
                        client.session.end_of_stream(stream_id);
                    }
                    _ => {}
                }
            }
            let _ = client.session.take_output();
        }
    }

    /// The bytes of a whole publishing session, handshake first, as a client would send them.
    fn whole_client_stream(type_id: u8) -> Vec<u8> {
        let mut handshake = c0_c1();
        handshake.extend(expected_s1());
        let as_type = |m: Message| -> Message {
            if type_id == message::COMMAND_AMF3 && m.type_id == message::COMMAND_AMF0 {
                let mut payload = vec![0];
                payload.extend_from_slice(&m.payload);
                Message {
                    type_id,
                    payload: Bytes::from(payload),
                    ..m
                }
            } else {
                m
            }
        };
        let messages: Vec<Message> = [
            connect(1.0, "live"),
            command(0, &[s("releaseStream"), n(2.0), Amf0Value::Null, s("key")]),
            command(0, &[s("FCPublish"), n(3.0), Amf0Value::Null, s("key")]),
            create_stream(4.0),
            publish(1, "key"),
            set_data_frame(1),
            video(1, 0, 700),
            audio(1, 0, 200),
            control(Control::SetChunkSize(300)),
            video(1, 40, 1000),
            audio(1, 23, 200),
            control(Control::User(UserControl::PingRequest(9))),
            command(0, &[s("FCUnpublish"), n(5.0), Amf0Value::Null, s("key")]),
            command(0, &[s("deleteStream"), n(6.0), Amf0Value::Null, n(1.0)]),
        ]
        .into_iter()
        .map(as_type)
        .collect();
        handshake.extend(encode(&mut ChunkEncoder::new(), &messages));
        handshake
    }

    /// Feeds `stream` to a new session in pieces of `piece` bytes; returns the events and all
    /// the bytes the session wrote.
    fn run(stream: &[u8], piece: usize) -> (Vec<Event>, Vec<u8>) {
        let mut session = new_session(SessionConfig::default());
        let mut output = Vec::new();
        for bytes in stream.chunks(piece) {
            session.receive(bytes).unwrap();
            output.extend_from_slice(&session.take_output());
        }
        let events = std::iter::from_fn(|| session.poll_event()).collect();
        (events, output)
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events_and_output() {
        let stream = whole_client_stream(message::COMMAND_AMF0);
        let (events, output) = run(&stream, stream.len());
        // Connected, PublishRequested, metadata, four media; FCUnpublish and deleteStream
        // each close stream 1.
        assert_eq!(events.len(), 9, "{events:#?}");
        assert_eq!(events[7], Event::StreamClosed { stream_id: 1 });
        assert_eq!(
            events.first(),
            Some(&Event::Connected {
                app: "live".into(),
                tc_url: Some("rtmp://localhost/live".into())
            })
        );
        assert_eq!(events.last(), Some(&Event::StreamClosed { stream_id: 1 }));
        assert_eq!(run(&stream, 1), (events.clone(), output.clone()));
        assert_eq!(run(&stream, 7), (events, output));
    }

    #[test]
    fn amf3_commands_are_understood_like_amf0() {
        let amf0 = run(&whole_client_stream(message::COMMAND_AMF0), usize::MAX);
        let amf3_stream = whole_client_stream(message::COMMAND_AMF3);
        assert_ne!(amf3_stream.len(), 0);
        assert_eq!(run(&amf3_stream, usize::MAX), amf0);
    }

    #[test]
    fn reply_to_connect_with_the_longest_app_fits_a_message() {
        // The largest connect the chunk stream carries: 33 bytes of command around the app.
        let config = SessionConfig {
            max_message_len: 0xFF_FFFF,
            ..SessionConfig::default()
        };
        let mut client = Client::with_config(config);
        let app = "é".repeat((0xFF_FFFF - 33) / 2);
        let object = Amf0Value::object([("app", s(&app))]);
        let connect = command(0, &[s("connect"), n(1.0), object]);
        assert!(connect.payload.len() >= 0xFF_FFFF - 1);
        client.send(&[connect]).unwrap();
        let replies = client.replies();
        assert_eq!(
            describe(&replies[3]),
            "0: _result 1 {} {status NetConnection.Connect.Success}"
        );
        let info = &amf0::decode_all(&replies[3].payload).unwrap()[3];
        let description = info.get("description").and_then(Amf0Value::as_str);
        assert!(description.is_some_and(|d| d.starts_with("connected to éé")
            && d.len() <= MAX_DESCRIPTION_LEN));
        assert_eq!(client.events(), [Event::Connected { app, tc_url: None }]);
    }
}
