//! Handing a client's RTMP connection to another RTMP server mid-session, sans-IO: the
//! manager's RTMP router answers a publisher's handshake, `connect` and `createStream` itself
//! (it has to, to learn which key is published), then hands the connection to the agent that
//! owns the key.
//!
//! The agent must see the connection as if the client had dialled it: [`Handover`] opens an
//! RTMP client handshake to the agent, then replays every byte the client sent after its own
//! handshake (so the agent's chunk decoder ends up in exactly the state the client's encoder
//! is in) and from then on the client's bytes go to the agent untouched. The other way cannot be
//! raw: the client's chunk decoder already holds our chunk headers and chunk size, and the agent
//! repeats answers the client already has. So the agent's messages are decoded, those before
//! its first `onStatus` (its copies of our answers to `connect` and `createStream`) dropped, its
//! chunk-size changes kept to ourselves, and the rest re-encoded with the encoder the client has
//! been decoding all along. Publishers receive little (acknowledgements, status), so the
//! re-encoding costs nothing that matters; the media, client to agent, is never touched.

use bytes::{Bytes, BytesMut};

use super::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Message};
use super::handshake::{CLIENT_HANDSHAKE_LEN, PACKET_LEN};
use super::message::{self, Control, ControlError};
use super::session::{Session, status_message};
use crate::amf0::{self, Amf0Value};

/// S0 + S1 + S2.
const SERVER_HANDSHAKE_LEN: usize = 1 + 2 * PACKET_LEN;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the client's bytes end inside its handshake ({0} bytes)")]
    ShortClientInput(usize),
    #[error("the server is not RTMP: its handshake starts with {0:#04x}")]
    NotRtmp(u8),
    #[error("the server's chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("the server's control message: {0}")]
    Control(#[from] ControlError),
}

enum State {
    /// S0 S1 S2 so far.
    Handshake(Vec<u8>),
    Relaying,
}

/// The router's side of one handed-over connection.
pub struct Handover {
    state: State,
    /// What the client sent after its handshake, sent to the server once its S1 is read.
    replay: Bytes,
    decoder: ChunkDecoder,
    input: BytesMut,
    /// Continues the encoder the client has been decoding.
    encoder: ChunkEncoder,
    /// Whether the server's first `onStatus` (its answer to `publish`) has gone by.
    answered: bool,
    to_server: BytesMut,
    to_client: BytesMut,
}

impl Handover {
    /// Starts handing over `session`, whose client sent `client_bytes` (everything, handshake
    /// included). `random` fills C1. Bytes for the server and for the client are ready at once
    /// (C0 C1, and whatever `session` had not yet sent).
    pub fn start(
        session: Session,
        client_bytes: &[u8],
        random: [u8; PACKET_LEN - 8],
    ) -> Result<Self, HandoverError> {
        let replay = client_bytes
            .get(CLIENT_HANDSHAKE_LEN..)
            .ok_or(HandoverError::ShortClientInput(client_bytes.len()))?;
        let (encoder, pending) = session.into_encoder();
        let mut to_server = BytesMut::with_capacity(1 + PACKET_LEN);
        // C0, then a plain C1: time 0, zero version (no digest), random.
        to_server.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0]);
        to_server.extend_from_slice(&random);
        Ok(Self {
            state: State::Handshake(Vec::with_capacity(SERVER_HANDSHAKE_LEN)),
            replay: Bytes::copy_from_slice(replay),
            decoder: ChunkDecoder::new(super::chunk::DEFAULT_MAX_MESSAGE_LEN),
            input: BytesMut::new(),
            encoder,
            answered: false,
            to_server,
            to_client: pending,
        })
    }

    /// Whether the handshake with the server is over: from now on the client's bytes go to the
    /// server as they are (after [`take_to_server`](Self::take_to_server)).
    pub fn is_relaying(&self) -> bool {
        matches!(self.state, State::Relaying)
    }

    /// Feeds bytes from the server. An error means both connections must be closed.
    pub fn from_server(&mut self, data: &[u8]) -> Result<(), HandoverError> {
        let mut rest = data;
        if let State::Handshake(got) = &mut self.state {
            let take = rest.len().min(SERVER_HANDSHAKE_LEN - got.len());
            got.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if let Some(&version) = got.first()
                && version != 3
            {
                return Err(HandoverError::NotRtmp(version));
            }
            if got.len() < SERVER_HANDSHAKE_LEN {
                return Ok(());
            }
            // C2 echoes S1; then the client's story so far.
            self.to_server.extend_from_slice(&got[1..1 + PACKET_LEN]);
            self.to_server.extend_from_slice(&self.replay);
            self.replay = Bytes::new();
            self.state = State::Relaying;
        }
        self.input.extend_from_slice(rest);
        while let Some(msg) = self.decoder.decode(&mut self.input)? {
            self.relay(msg)?;
        }
        Ok(())
    }

    /// Bytes to write to the server, in order.
    pub fn take_to_server(&mut self) -> Bytes {
        self.to_server.split().freeze()
    }

    /// Bytes to write to the client, in order.
    pub fn take_to_client(&mut self) -> Bytes {
        self.to_client.split().freeze()
    }

    /// Refuses the client's `publish` on `stream_id` ourselves (the server could not be reached
    /// or hung up before answering); the caller closes the connection after flushing.
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        let status = status_message(stream_id, "error", code, description);
        self.encoder.encode(&status, &mut self.to_client);
        self.answered = true;
    }

    fn relay(&mut self, msg: Message) -> Result<(), HandoverError> {
        match message::parse_control(msg.type_id, &msg.payload) {
            Some(Ok(Control::SetChunkSize(size))) => {
                self.decoder.set_chunk_size(size)?;
                return Ok(());
            }
            Some(Ok(Control::Abort(csid))) => {
                self.decoder.abort(csid);
                return Ok(());
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) | None => {}
        }
        if !self.answered {
            if !is_on_status(&msg) {
                return Ok(());
            }
            self.answered = true;
        }
        self.encoder.encode(&msg, &mut self.to_client);
        Ok(())
    }
}

fn is_on_status(msg: &Message) -> bool {
    msg.type_id == message::COMMAND_AMF0
        && matches!(
            amf0::decode_all(&msg.payload).ok().as_deref(),
            Some([Amf0Value::String(name), ..]) if name == "onStatus"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::session::{Event, MediaKind, SessionConfig};

    /// A client's bytes: a plain handshake (C0 C1 C2), a chunk size, `connect`,
    /// `createStream`, `publish` and one video message. `c2` must echo the server's S1, but
    /// our server does not check it.
    fn client_bytes(key: &str) -> Vec<u8> {
        let mut out = vec![3];
        out.extend_from_slice(&[0; 2 * PACKET_LEN]);
        let mut enc = ChunkEncoder::new();
        let mut buf = BytesMut::new();
        enc.encode(
            &message::control_message(Control::SetChunkSize(60_000)),
            &mut buf,
        );
        enc.set_chunk_size(60_000);
        let command = |values: Vec<Amf0Value>, stream_id: u32| {
            let mut payload = Vec::new();
            for v in &values {
                amf0::encode(v, &mut payload);
            }
            Message {
                csid: message::CSID_COMMAND,
                timestamp: 0,
                type_id: message::COMMAND_AMF0,
                stream_id,
                payload: payload.into(),
            }
        };
        let connect = command(
            vec![
                Amf0Value::string("connect"),
                Amf0Value::Number(1.0),
                Amf0Value::object([("app", Amf0Value::string("live"))]),
            ],
            0,
        );
        enc.encode(&connect, &mut buf);
        let create = command(
            vec![
                Amf0Value::string("createStream"),
                Amf0Value::Number(2.0),
                Amf0Value::Null,
            ],
            0,
        );
        enc.encode(&create, &mut buf);
        let publish = command(
            vec![
                Amf0Value::string("publish"),
                Amf0Value::Number(3.0),
                Amf0Value::Null,
                Amf0Value::string(key),
                Amf0Value::string("live"),
            ],
            1,
        );
        enc.encode(&publish, &mut buf);
        let video = Message {
            csid: message::CSID_VIDEO,
            timestamp: 40,
            type_id: message::VIDEO,
            stream_id: 1,
            payload: Bytes::from(vec![0x17; 100_000]),
        };
        enc.encode(&video, &mut buf);
        out.extend_from_slice(&buf);
        out
    }

    /// The router's session, fed the client's bytes until it asks to publish.
    fn router_session(bytes: &[u8]) -> Session {
        let mut session = Session::new(SessionConfig::default(), [7; 1528], 0);
        session.receive(bytes).unwrap();
        let mut published = false;
        while let Some(event) = session.poll_event() {
            published |= matches!(event, Event::PublishRequested { name, .. } if name == "k1");
        }
        assert!(published);
        session
    }

    fn decode_all(bytes: &[u8]) -> Vec<Message> {
        // The client's view: the router's output after S0 S1 S2, with the router's chunk size.
        let mut dec = ChunkDecoder::new(super::super::chunk::DEFAULT_MAX_MESSAGE_LEN);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(msg) = dec.decode(&mut buf).unwrap() {
            if let Some(Ok(Control::SetChunkSize(size))) =
                message::parse_control(msg.type_id, &msg.payload)
            {
                dec.set_chunk_size(size).unwrap();
            }
            out.push(msg);
        }
        assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
        out
    }

    fn command_name(msg: &Message) -> Option<String> {
        (msg.type_id == message::COMMAND_AMF0).then(|| {
            amf0::decode_all(&msg.payload).unwrap()[0]
                .as_str()
                .unwrap()
                .to_string()
        })
    }

    #[test]
    fn the_server_sees_the_clients_story_and_the_client_one_continuous_conversation() {
        let bytes = client_bytes("k1");
        let mut router = router_session(&bytes);
        let before = router.take_output();
        let mut handover = Handover::start(router, &bytes, [9; 1528]).unwrap();
        assert!(handover.take_to_client().is_empty());

        // The agent: a real server session, fed what the handover sends.
        let mut agent = Session::new(SessionConfig::default(), [5; 1528], 0);
        let hello = handover.take_to_server();
        assert_eq!(hello.len(), 1 + PACKET_LEN);
        agent.receive(&hello).unwrap();
        let s = agent.take_output();
        assert_eq!(s.len(), SERVER_HANDSHAKE_LEN);
        // S0 S1 S2 in two pieces: nothing is sent on before the whole of it.
        handover.from_server(&s[..100]).unwrap();
        assert!(handover.take_to_server().is_empty() && !handover.is_relaying());
        handover.from_server(&s[100..]).unwrap();
        assert!(handover.is_relaying());
        let to_agent = handover.take_to_server();
        assert_eq!(
            &to_agent[..PACKET_LEN],
            &s[1..1 + PACKET_LEN],
            "C2 echoes S1"
        );
        assert_eq!(&to_agent[PACKET_LEN..], &bytes[CLIENT_HANDSHAKE_LEN..]);
        agent.receive(&to_agent).unwrap();
        let mut events = Vec::new();
        while let Some(event) = agent.poll_event() {
            events.push(event);
        }
        assert!(
            matches!(&events[1], Event::PublishRequested { name, stream_id: 1, .. } if name == "k1")
        );
        assert!(
            matches!(&events[2], Event::Media { kind: MediaKind::Video, timestamp: 40, payload } if payload.len() == 100_000)
        );
        agent.accept_publish(1, "live/cam");
        handover.from_server(&agent.take_output()).unwrap();

        // The client sees the router's answers, then the agent's onStatus only, all in one
        // chunk stream it can decode.
        let mut seen = before[SERVER_HANDSHAKE_LEN..].to_vec();
        seen.extend_from_slice(&handover.take_to_client());
        let messages = decode_all(&seen);
        let commands: Vec<String> = messages.iter().filter_map(command_name).collect();
        assert_eq!(commands, ["_result", "_result", "onStatus"], "{messages:?}");
        let status = amf0::decode_all(&messages.last().unwrap().payload).unwrap();
        assert_eq!(
            status[3].get("code").and_then(Amf0Value::as_str),
            Some("NetStream.Publish.Start")
        );
    }

    #[test]
    fn the_servers_chunk_size_stays_between_it_and_the_router() {
        let bytes = client_bytes("k1");
        let mut router = router_session(&bytes);
        let before = router.take_output();
        let mut handover = Handover::start(router, &bytes, [9; 1528]).unwrap();
        let mut agent = Session::new(
            SessionConfig {
                chunk_size: 128,
                ..SessionConfig::default()
            },
            [5; 1528],
            0,
        );
        agent.receive(&handover.take_to_server()).unwrap();
        handover.from_server(&agent.take_output()).unwrap();
        agent.receive(&handover.take_to_server()).unwrap();
        while agent.poll_event().is_some() {}
        agent.reject_publish(1, "NetStream.Publish.BadName", &"x".repeat(900));
        // Byte by byte: any split of the agent's output decodes the same.
        for b in agent.take_output().iter() {
            handover.from_server(&[*b]).unwrap();
        }
        let mut seen = before[SERVER_HANDSHAKE_LEN..].to_vec();
        seen.extend_from_slice(&handover.take_to_client());
        let messages = decode_all(&seen);
        let last = amf0::decode_all(&messages.last().unwrap().payload).unwrap();
        assert_eq!(
            last[3].get("code").and_then(Amf0Value::as_str),
            Some("NetStream.Publish.BadName")
        );
        let sizes = messages
            .iter()
            .filter(|m| m.type_id == message::SET_CHUNK_SIZE)
            .count();
        assert_eq!(
            sizes, 1,
            "only the router's own chunk size reaches the client"
        );
    }

    #[test]
    fn garbage_from_the_server_is_an_error_not_a_panic() {
        let bytes = client_bytes("k1");
        let router = router_session(&bytes);
        let mut handover = Handover::start(router, &bytes, [0; 1528]).unwrap();
        assert!(matches!(
            handover.from_server(b"HTTP/1.1 400 Bad Request\r\n"),
            Err(HandoverError::NotRtmp(b'H'))
        ));

        let router = router_session(&bytes);
        let mut handover = Handover::start(router, &bytes, [0; 1528]).unwrap();
        let mut s = vec![3u8];
        s.extend_from_slice(&[0; 2 * PACKET_LEN]);
        handover.from_server(&s).unwrap();
        // A chunk-size control with size 0, then a stream of junk: errors, never panics.
        let mut junk = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        junk.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        assert!(handover.from_server(&junk).is_err());

        let router = router_session(&bytes);
        assert!(matches!(
            Handover::start(router, &bytes[..100], [0; 1528]),
            Err(HandoverError::ShortClientInput(100))
        ));
    }
}
