//! RTMP message types and the protocol control / user control messages (RTMP 1.0 §5.4, §6.2),
//! parsed from and written to [`Message`]s. Commands and data (AMF0) live in
//! [`super::session`].

use bytes::{BufMut, Bytes, BytesMut};

use super::chunk::Message;

pub const SET_CHUNK_SIZE: u8 = 1;
pub const ABORT: u8 = 2;
pub const ACKNOWLEDGEMENT: u8 = 3;
pub const USER_CONTROL: u8 = 4;
pub const WINDOW_ACK_SIZE: u8 = 5;
pub const SET_PEER_BANDWIDTH: u8 = 6;
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const DATA_AMF3: u8 = 15;
pub const COMMAND_AMF3: u8 = 17;
pub const DATA_AMF0: u8 = 18;
pub const COMMAND_AMF0: u8 = 20;
pub const AGGREGATE: u8 = 22;

/// Chunk stream ids Verge sends on: control, commands, and one per media kind.
pub const CSID_CONTROL: u32 = 2;
pub const CSID_COMMAND: u32 = 3;
pub const CSID_AUDIO: u32 = 4;
pub const CSID_DATA: u32 = 5;
pub const CSID_VIDEO: u32 = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control message type {type_id}: {why}")]
pub struct ControlError {
    pub type_id: u8,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    SetChunkSize(u32),
    Abort(u32),
    Acknowledgement(u32),
    WindowAckSize(u32),
    SetPeerBandwidth { size: u32, limit: u8 },
    User(UserControl),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserControl {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength {
        stream_id: u32,
        ms: u32,
    },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    /// An event type this server has no use for; kept so it can be logged.
    Other(u16),
}

fn be32(payload: &[u8], at: usize, type_id: u8) -> Result<u32, ControlError> {
    payload
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| ControlError {
            type_id,
            why: format!("{} bytes is too short", payload.len()),
        })
}

/// Parses a protocol control or user control message. `None` for other message types.
pub fn parse_control(type_id: u8, payload: &[u8]) -> Option<Result<Control, ControlError>> {
    let parsed = match type_id {
        SET_CHUNK_SIZE => be32(payload, 0, type_id).map(|v| Control::SetChunkSize(v & 0x7fff_ffff)),
        ABORT => be32(payload, 0, type_id).map(Control::Abort),
        ACKNOWLEDGEMENT => be32(payload, 0, type_id).map(Control::Acknowledgement),
        WINDOW_ACK_SIZE => be32(payload, 0, type_id).map(Control::WindowAckSize),
        SET_PEER_BANDWIDTH => be32(payload, 0, type_id).map(|size| Control::SetPeerBandwidth {
            size,
            limit: payload.get(4).copied().unwrap_or(2),
        }),
        USER_CONTROL => parse_user(payload).map(Control::User),
        _ => return None,
    };
    Some(parsed)
}

fn parse_user(payload: &[u8]) -> Result<UserControl, ControlError> {
    let kind = payload
        .get(0..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| ControlError {
            type_id: USER_CONTROL,
            why: "no event type".into(),
        })?;
    let arg = |at| be32(payload, at, USER_CONTROL);
    Ok(match kind {
        0 => UserControl::StreamBegin(arg(2)?),
        1 => UserControl::StreamEof(arg(2)?),
        2 => UserControl::StreamDry(arg(2)?),
        3 => UserControl::SetBufferLength {
            stream_id: arg(2)?,
            ms: arg(6)?,
        },
        4 => UserControl::StreamIsRecorded(arg(2)?),
        6 => UserControl::PingRequest(arg(2)?),
        7 => UserControl::PingResponse(arg(2)?),
        other => UserControl::Other(other),
    })
}

/// The message carrying `control`, on the control chunk stream and message stream 0.
pub fn control_message(control: Control) -> Message {
    let mut p = BytesMut::with_capacity(10);
    let type_id = match control {
        Control::SetChunkSize(v) => {
            p.put_u32(v);
            SET_CHUNK_SIZE
        }
        Control::Abort(v) => {
            p.put_u32(v);
            ABORT
        }
        Control::Acknowledgement(v) => {
            p.put_u32(v);
            ACKNOWLEDGEMENT
        }
        Control::WindowAckSize(v) => {
            p.put_u32(v);
            WINDOW_ACK_SIZE
        }
        Control::SetPeerBandwidth { size, limit } => {
            p.put_u32(size);
            p.put_u8(limit);
            SET_PEER_BANDWIDTH
        }
        Control::User(event) => {
            let (kind, a, b) = match event {
                UserControl::StreamBegin(s) => (0, s, None),
                UserControl::StreamEof(s) => (1, s, None),
                UserControl::StreamDry(s) => (2, s, None),
                UserControl::SetBufferLength { stream_id, ms } => (3, stream_id, Some(ms)),
                UserControl::StreamIsRecorded(s) => (4, s, None),
                UserControl::PingRequest(t) => (6, t, None),
                UserControl::PingResponse(t) => (7, t, None),
                UserControl::Other(k) => (k, 0, None),
            };
            p.put_u16(kind);
            p.put_u32(a);
            if let Some(b) = b {
                p.put_u32(b);
            }
            USER_CONTROL
        }
    };
    Message {
        csid: CSID_CONTROL,
        timestamp: 0,
        type_id,
        stream_id: 0,
        payload: p.freeze(),
    }
}

/// Payload of an AMF3 command or data message: a format byte (0) and then AMF0, which is how
/// every encoder in practice writes them.
pub fn amf3_as_amf0(payload: &Bytes) -> Bytes {
    if payload.first() == Some(&0) {
        payload.slice(1..)
    } else {
        payload.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let all = [
            Control::SetChunkSize(4096),
            Control::Abort(5),
            Control::Acknowledgement(123_456),
            Control::WindowAckSize(2_500_000),
            Control::SetPeerBandwidth {
                size: 2_500_000,
                limit: 2,
            },
            Control::User(UserControl::StreamBegin(1)),
            Control::User(UserControl::StreamEof(1)),
            Control::User(UserControl::SetBufferLength {
                stream_id: 1,
                ms: 3000,
            }),
            Control::User(UserControl::PingRequest(77)),
            Control::User(UserControl::PingResponse(77)),
        ];
        for control in all {
            let msg = control_message(control);
            assert_eq!(parse_control(msg.type_id, &msg.payload), Some(Ok(control)));
        }
    }

    #[test]
    fn short_control_messages_are_errors_and_media_is_not_control() {
        for type_id in [
            SET_CHUNK_SIZE,
            ABORT,
            ACKNOWLEDGEMENT,
            WINDOW_ACK_SIZE,
            SET_PEER_BANDWIDTH,
            USER_CONTROL,
        ] {
            for len in 0..2 {
                assert!(
                    matches!(parse_control(type_id, &[0; 8][..len]), Some(Err(_))),
                    "type {type_id} len {len}"
                );
            }
        }
        assert!(matches!(
            parse_control(USER_CONTROL, &[0, 3, 0, 0, 0, 1]),
            Some(Err(_))
        ));
        assert_eq!(parse_control(VIDEO, &[1, 2, 3]), None);
        assert_eq!(
            parse_control(SET_CHUNK_SIZE, &[0xff, 0xff, 0xff, 0xff]),
            Some(Ok(Control::SetChunkSize(0x7fff_ffff)))
        );
    }
}
