//! Tunnel frames: the units a sealed tunnel packet carries, one after another.
//!
//! Every frame starts with a type byte and the stream id (u32, big-endian); integers are
//! big-endian. Byte positions in a stream are offsets from 0 in each direction, so a data frame
//! says where its bytes go, an ack says how far the receiver has everything, and a fin says where
//! the sender's half ends: duplicates and retransmissions are recognised by offset alone.
//!
//! ```text
//! open       0x01 stream u32 | window u32 | target_len u8 | target (UTF-8)
//! data       0x02 stream u32 | offset u64 | len u16 | bytes
//! ack        0x03 stream u32 | received u64 | window u32
//! fin        0x04 stream u32 | offset u64            (this direction ends at offset)
//! reset      0x05 stream u32 | code u8 | len u8 | message (UTF-8)
//! keepalive  0x06 stream u32 (0) | token u64 | reply u8
//! ```
//!
//! The decoder tells "not enough bytes" ([`FrameError::Incomplete`]) from "these bytes are
//! wrong" ([`FrameError::Invalid`]); inside a sealed packet both mean the packet is refused.

use std::fmt;

/// Largest data payload of one frame; a tunnel packet holds several.
pub const MAX_DATA: usize = 16 * 1024;
/// Longest target of an open frame (`host:port`).
pub const MAX_TARGET: usize = 255;
/// Longest reason text of a reset frame.
pub const MAX_REASON: usize = 255;

const OPEN: u8 = 0x01;
const DATA: u8 = 0x02;
const ACK: u8 = 0x03;
const FIN: u8 = 0x04;
const RESET: u8 = 0x05;
const KEEPALIVE: u8 = 0x06;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens `stream` to `target`; `window` is how many bytes the opener can take at first.
    Open {
        stream: u32,
        target: String,
        window: u32,
    },
    Data {
        stream: u32,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The receiver has every byte before `received`, and may be sent bytes up to
    /// `received + window`.
    Ack {
        stream: u32,
        received: u64,
        window: u32,
    },
    /// The sender's direction ends at `offset` (a half-close).
    Fin { stream: u32, offset: u64 },
    /// The stream is gone in both directions.
    Reset {
        stream: u32,
        code: ResetCode,
        reason: String,
    },
    /// Link liveness and round-trip time: a `reply` echoes the token of a request.
    Keepalive { token: u64, reply: bool },
}

/// Why a stream was reset; the reason text says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCode {
    /// The application (or the connection it carries) aborted.
    Aborted,
    /// The agent does not dial this target (not in `[tunnel] allow`).
    Refused,
    /// Dialling the target failed: no route, or no answer in time.
    Unreachable,
    /// The target refused the connection (nothing listens on its port).
    TargetRefused,
    /// The peer broke the protocol (data past the window, after fin, …).
    Protocol,
    /// The link was down longer than the resume time.
    LinkLost,
    /// No more streams may be opened.
    TooManyStreams,
    /// A code this build does not know.
    Other(u8),
}

impl ResetCode {
    fn to_byte(self) -> u8 {
        match self {
            ResetCode::Aborted => 1,
            ResetCode::Refused => 2,
            ResetCode::Unreachable => 3,
            ResetCode::Protocol => 4,
            ResetCode::LinkLost => 5,
            ResetCode::TooManyStreams => 6,
            ResetCode::TargetRefused => 7,
            ResetCode::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            1 => ResetCode::Aborted,
            2 => ResetCode::Refused,
            3 => ResetCode::Unreachable,
            4 => ResetCode::Protocol,
            5 => ResetCode::LinkLost,
            6 => ResetCode::TooManyStreams,
            7 => ResetCode::TargetRefused,
            other => ResetCode::Other(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResetCode::Aborted => "aborted",
            ResetCode::Refused => "refused",
            ResetCode::Unreachable => "unreachable",
            ResetCode::Protocol => "protocol error",
            ResetCode::LinkLost => "link lost",
            ResetCode::TooManyStreams => "too many streams",
            ResetCode::TargetRefused => "connection refused",
            ResetCode::Other(_) => "other",
        }
    }
}

impl fmt::Display for ResetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame truncated: {needed} more bytes needed")]
    Incomplete { needed: usize },
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
}

impl Frame {
    /// The stream the frame belongs to (0 for keepalives).
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Open { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::Ack { stream, .. }
            | Frame::Fin { stream, .. }
            | Frame::Reset { stream, .. } => *stream,
            Frame::Keepalive { .. } => 0,
        }
    }

    /// Bytes [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        5 + match self {
            Frame::Open { target, .. } => 4 + 1 + target.len().min(MAX_TARGET),
            Frame::Data { bytes, .. } => 8 + 2 + bytes.len(),
            Frame::Ack { .. } => 8 + 4,
            Frame::Fin { .. } => 8,
            Frame::Reset { reason, .. } => 1 + 1 + truncated(reason, MAX_REASON).len(),
            Frame::Keepalive { .. } => 8 + 1,
        }
    }

    /// Appends the frame to `out`. Texts longer than their limit are cut at a character
    /// boundary; a data frame must hold at most [`MAX_DATA`] bytes (a caller's bug otherwise).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let head = |out: &mut Vec<u8>, kind: u8, stream: u32| {
            out.push(kind);
            out.extend_from_slice(&stream.to_be_bytes());
        };
        match self {
            Frame::Open {
                stream,
                target,
                window,
            } => {
                head(out, OPEN, *stream);
                out.extend_from_slice(&window.to_be_bytes());
                let target = truncated(target, MAX_TARGET);
                out.push(target.len() as u8);
                out.extend_from_slice(target.as_bytes());
            }
            Frame::Data {
                stream,
                offset,
                bytes,
            } => {
                assert!(bytes.len() <= MAX_DATA, "data frame over MAX_DATA");
                head(out, DATA, *stream);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::Ack {
                stream,
                received,
                window,
            } => {
                head(out, ACK, *stream);
                out.extend_from_slice(&received.to_be_bytes());
                out.extend_from_slice(&window.to_be_bytes());
            }
            Frame::Fin { stream, offset } => {
                head(out, FIN, *stream);
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Frame::Reset {
                stream,
                code,
                reason,
            } => {
                head(out, RESET, *stream);
                out.push(code.to_byte());
                let reason = truncated(reason, MAX_REASON);
                out.push(reason.len() as u8);
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::Keepalive { token, reply } => {
                head(out, KEEPALIVE, 0);
                out.extend_from_slice(&token.to_be_bytes());
                out.push(u8::from(*reply));
            }
        }
    }

    /// Decodes one frame from the start of `buf`; returns it and the bytes it took.
    pub fn decode(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
        let mut r = Reader { buf, pos: 0 };
        let kind = r.u8()?;
        let stream = r.u32()?;
        let frame = match kind {
            OPEN => {
                let window = r.u32()?;
                let len = usize::from(r.u8()?);
                let target = r.text(len, "open target is not UTF-8")?;
                if target.is_empty() {
                    return Err(FrameError::Invalid("open without a target"));
                }
                Frame::Open {
                    stream,
                    target,
                    window,
                }
            }
            DATA => {
                let offset = r.u64()?;
                let len = usize::from(r.u16()?);
                if len > MAX_DATA {
                    return Err(FrameError::Invalid("data frame larger than MAX_DATA"));
                }
                if len == 0 {
                    return Err(FrameError::Invalid("empty data frame"));
                }
                if offset.checked_add(len as u64).is_none() {
                    return Err(FrameError::Invalid("data offset overflows"));
                }
                Frame::Data {
                    stream,
                    offset,
                    bytes: r.take(len)?.to_vec(),
                }
            }
            ACK => Frame::Ack {
                stream,
                received: r.u64()?,
                window: r.u32()?,
            },
            FIN => Frame::Fin {
                stream,
                offset: r.u64()?,
            },
            RESET => {
                let code = ResetCode::from_byte(r.u8()?);
                let len = usize::from(r.u8()?);
                Frame::Reset {
                    stream,
                    code,
                    reason: r.text(len, "reset reason is not UTF-8")?,
                }
            }
            KEEPALIVE => {
                if stream != 0 {
                    return Err(FrameError::Invalid("keepalive on a stream"));
                }
                let token = r.u64()?;
                let reply = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Invalid("keepalive reply flag is not 0 or 1")),
                };
                Frame::Keepalive { token, reply }
            }
            _ => return Err(FrameError::Invalid("unknown frame type")),
        };
        if stream == 0 && !matches!(frame, Frame::Keepalive { .. }) {
            return Err(FrameError::Invalid("stream 0 carries only keepalives"));
        }
        Ok((frame, r.pos))
    }

    /// Decodes a whole packet's worth of frames; any truncated or invalid frame refuses it all.
    pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while !buf.is_empty() {
            let (frame, used) = Frame::decode(buf)?;
            frames.push(frame);
            buf = &buf[used..];
        }
        Ok(frames)
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let left = self.buf.len() - self.pos;
        if left < n {
            return Err(FrameError::Incomplete { needed: n - left });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn text(&mut self, len: usize, invalid: &'static str) -> Result<String, FrameError> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::Invalid(invalid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Frame> {
        vec![
            Frame::Open {
                stream: 7,
                target: "127.0.0.1:1935".into(),
                window: 1 << 20,
            },
            Frame::Data {
                stream: 7,
                offset: 123_456_789_012,
                bytes: vec![1, 2, 3, 255],
            },
            Frame::Ack {
                stream: 7,
                received: u64::MAX - 1,
                window: 65536,
            },
            Frame::Fin {
                stream: 9,
                offset: 42,
            },
            Frame::Reset {
                stream: 9,
                code: ResetCode::Refused,
                reason: "10.0.0.1:22 is not in [tunnel] allow".into(),
            },
            Frame::Reset {
                stream: 9,
                code: ResetCode::Other(200),
                reason: String::new(),
            },
            Frame::Keepalive {
                token: 99,
                reply: true,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_alone_and_packed() {
        let mut packet = Vec::new();
        for frame in all_kinds() {
            let mut one = Vec::new();
            frame.encode(&mut one);
            assert_eq!(one.len(), frame.encoded_len(), "{frame:?}");
            assert_eq!(Frame::decode(&one), Ok((frame.clone(), one.len())));
            packet.extend_from_slice(&one);
        }
        assert_eq!(Frame::decode_all(&packet), Ok(all_kinds()));
        assert_eq!(Frame::decode_all(&[]), Ok(vec![]));
    }

    #[test]
    fn every_truncation_is_incomplete_never_a_wrong_frame() {
        for frame in all_kinds() {
            let mut bytes = Vec::new();
            frame.encode(&mut bytes);
            for cut in 0..bytes.len() {
                match Frame::decode(&bytes[..cut]) {
                    Err(FrameError::Incomplete { needed }) => {
                        assert!(
                            needed >= 1 && needed <= bytes.len() - cut,
                            "{frame:?} cut {cut}"
                        )
                    }
                    other => panic!("{frame:?} cut at {cut}: {other:?}"),
                }
            }
            // In a packet, a truncated last frame refuses the packet.
            let mut packet = Vec::new();
            frame.encode(&mut packet);
            packet.extend_from_slice(&bytes[..bytes.len() - 1]);
            assert!(Frame::decode_all(&packet).is_err());
        }
    }

    #[test]
    fn invalid_frames_say_why() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x7f, 0, 0, 0, 1], "unknown frame type"),
            (
                vec![DATA, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "empty",
            ),
            (
                [vec![DATA, 0, 0, 0, 1], vec![0; 8], vec![0x40, 0x01]].concat(),
                "MAX_DATA",
            ),
            (
                [vec![DATA, 0, 0, 0, 1], vec![0xff; 8], vec![0, 2, 1, 2]].concat(),
                "overflows",
            ),
            (vec![OPEN, 0, 0, 0, 1, 0, 0, 0, 1, 0], "without a target"),
            (vec![OPEN, 0, 0, 0, 1, 0, 0, 0, 1, 2, 0xc3, 0x28], "UTF-8"),
            (vec![RESET, 0, 0, 0, 1, 1, 1, 0xff], "UTF-8"),
            (
                [vec![KEEPALIVE, 0, 0, 0, 0], vec![0; 8], vec![2]].concat(),
                "reply flag",
            ),
            (
                [vec![KEEPALIVE, 0, 0, 0, 3], vec![0; 8], vec![0]].concat(),
                "keepalive on a stream",
            ),
            ([vec![FIN, 0, 0, 0, 0], vec![0; 8]].concat(), "stream 0"),
        ];
        for (bytes, why) in cases {
            match Frame::decode(&bytes) {
                Err(FrameError::Invalid(reason)) => {
                    assert!(reason.contains(why), "{bytes:?}: {reason}")
                }
                other => panic!("{bytes:?} gave {other:?}, expected invalid ({why})"),
            }
        }
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let frame = Frame::Reset {
            stream: 1,
            code: ResetCode::Aborted,
            reason: "é".repeat(200),
        };
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        assert_eq!(bytes.len(), frame.encoded_len());
        let (decoded, _) = Frame::decode(&bytes).unwrap();
        let Frame::Reset { reason, .. } = decoded else {
            panic!("not a reset")
        };
        assert_eq!(reason, "é".repeat(127));
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic stand-in for the fuzz target: xorshift bytes of every length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x & 0xff) as u8
                })
                .collect();
            let _ = Frame::decode_all(&bytes);
        }
    }
}
