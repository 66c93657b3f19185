//! A blocking RTMP client that says exactly what a test tells it to, including things no
//! encoder would send: the way to prove the agent survives malformed input.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use verge_media::amf0::{self, Amf0Value};
use verge_media::rtmp::chunk::{ChunkDecoder, ChunkEncoder, Message};
use verge_media::rtmp::message::{self, Control};

pub struct RtmpClient {
    pub stream: TcpStream,
    encoder: ChunkEncoder,
    decoder: ChunkDecoder,
    input: BytesMut,
    txn: f64,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl RtmpClient {
    /// Connects and completes a plain handshake.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        Self::handshake(TcpStream::connect_timeout(&addr, Duration::from_secs(15))?)
    }

    /// Completes a plain handshake on a connected socket (e.g. [`super::tcp_from`]).
    pub fn handshake(mut stream: TcpStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        stream.set_write_timeout(Some(Duration::from_secs(15)))?;
        stream.set_nodelay(true)?;
        let mut c0c1 = vec![3u8];
        c0c1.extend(std::iter::repeat_n(0u8, 1536));
        stream.write_all(&c0c1)?;
        let mut s0s1s2 = vec![0u8; 3073];
        stream.read_exact(&mut s0s1s2)?;
        stream.write_all(&s0s1s2[1..1537])?;
        Ok(Self {
            stream,
            encoder: ChunkEncoder::new(),
            decoder: ChunkDecoder::new(16 * 1024 * 1024),
            input: BytesMut::new(),
            txn: 1.0,
        })
    }

    pub fn send(&mut self, msg: &Message) -> io::Result<()> {
        let mut out = BytesMut::new();
        self.encoder.encode(msg, &mut out);
        self.stream.write_all(&out)
    }

    pub fn set_chunk_size(&mut self, size: u32) -> io::Result<()> {
        self.send(&message::control_message(Control::SetChunkSize(size)))?;
        self.encoder.set_chunk_size(size);
        Ok(())
    }

    pub fn command(&mut self, stream_id: u32, name: &str, args: Vec<Amf0Value>) -> io::Result<()> {
        let mut payload = Vec::new();
        amf0::encode(&Amf0Value::string(name), &mut payload);
        amf0::encode(&Amf0Value::Number(self.txn), &mut payload);
        self.txn += 1.0;
        for arg in &args {
            amf0::encode(arg, &mut payload);
        }
        self.send(&Message {
            csid: message::CSID_COMMAND,
            timestamp: 0,
            type_id: message::COMMAND_AMF0,
            stream_id,
            payload: payload.into(),
        })
    }

    /// The next message from the server, or `None` when none arrives within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Option<Message>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(msg) = self
                .decoder
                .decode(&mut self.input)
                .map_err(|e| invalid(e.to_string()))?
            {
                if let Some(Ok(Control::SetChunkSize(size))) =
                    message::parse_control(msg.type_id, &msg.payload)
                {
                    self.decoder
                        .set_chunk_size(size)
                        .map_err(|e| invalid(e.to_string()))?;
                }
                return Ok(Some(msg));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed",
                    ));
                }
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a command named `name` and returns its values.
    pub fn expect_command(&mut self, name: &str, timeout: Duration) -> io::Result<Vec<Amf0Value>> {
        let deadline = Instant::now() + timeout;
        while let Some(msg) = self.recv(deadline.saturating_duration_since(Instant::now()))? {
            if msg.type_id == message::COMMAND_AMF0 {
                let values = amf0::decode_all(&msg.payload).map_err(|e| invalid(e.to_string()))?;
                if values.first().and_then(Amf0Value::as_str) == Some(name) {
                    return Ok(values);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no {name} within {timeout:?}"),
        ))
    }

    /// `connect`, `createStream` and `publish`; returns the onStatus code.
    pub fn publish(&mut self, app: &str, name: &str) -> io::Result<String> {
        Ok(self.publish_status(app, name)?.0)
    }

    /// [`publish`](Self::publish), returning the onStatus code and description.
    pub fn publish_status(&mut self, app: &str, name: &str) -> io::Result<(String, String)> {
        let wait = Duration::from_secs(15);
        self.command(
            0,
            "connect",
            vec![Amf0Value::object([("app", Amf0Value::string(app))])],
        )?;
        self.expect_command("_result", wait)?;
        self.command(0, "createStream", vec![Amf0Value::Null])?;
        let created = self.expect_command("_result", wait)?;
        let stream_id = created.get(3).and_then(Amf0Value::as_number).unwrap_or(1.0) as u32;
        self.command(
            stream_id,
            "publish",
            vec![
                Amf0Value::Null,
                Amf0Value::string(name),
                Amf0Value::string("live"),
            ],
        )?;
        let status = self.expect_command("onStatus", wait)?;
        let field = |name: &str| {
            status
                .get(3)
                .and_then(|info| info.get(name))
                .and_then(Amf0Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok((field("code"), field("description")))
    }

    /// True if the server closes the connection within `within` (reading and discarding).
    pub fn closed_by_server(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 16 * 1024];
        while Instant::now() < deadline {
            let _ = self
                .stream
                .set_read_timeout(Some(Duration::from_millis(100)));
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}
