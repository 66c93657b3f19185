//! The RTMP chunk stream: messages cut into chunks on the way out, chunks joined back into
//! messages on the way in.
//!
//! RTMP interleaves messages (audio, video, commands) on one TCP connection by cutting them
//! into chunks of a negotiated size, each tagged with a chunk stream id (csid). To save bytes,
//! a chunk header only carries what changed since the previous chunk of the same csid, so the
//! decoder keeps, per csid, the last header and the message being assembled.
//!
//! The peer decides the chunk size, the message lengths and the number of chunk streams, so
//! each has a ceiling here ([`MAX_CHUNK_SIZE`], the decoder's `max_message_len`,
//! [`MAX_CHUNK_STREAMS`]), and so does what all unfinished messages hold together (twice
//! `max_message_len`); nothing is reserved on a header's word beyond those. A chunk is
//! consumed only once all of it is buffered: incomplete input is `Ok(None)`, never an error, and
//! leaves the decoder as it was.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes that break the chunk stream's rules; the connection cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk stream: {0}")]
    Invalid(String),
}

/// Larger Set Chunk Size values are refused: a peer must not make us wait for gigabytes before
/// a chunk counts as complete.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Enough for any sane video frame; the decoder's limit unless its owner picks another.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 8 * 1024 * 1024;
/// Distinct csids tracked per connection; more is invalid. Encoders use a handful.
pub const MAX_CHUNK_STREAMS: usize = 64;

/// The chunk size both directions start with, until a Set Chunk Size message.
const DEFAULT_CHUNK_SIZE: u32 = 128;
/// A timestamp field with this value says the real value follows in four more bytes.
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;
/// The highest csid the three-byte basic header can carry.
const MAX_CSID: u32 = 64 + 0xFFFF;
/// The message length field has 24 bits.
const MAX_ENCODED_LEN: usize = 0xFF_FFFF;
/// What is reserved for a message before its bytes arrive, so that a declared length costs
/// nothing until the peer actually sends it.
const FIRST_RESERVE: usize = 64 * 1024;

/// One RTMP message, as the chunk stream delivers it or is asked to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The chunk stream it travelled (or is to travel) on.
    pub csid: u32,
    /// Absolute, in milliseconds, wrapping at 2^32.
    pub timestamp: u32,
    pub type_id: u8,
    /// The message stream id (0 for the connection itself, else the stream `createStream` made).
    pub stream_id: u32,
    pub payload: Bytes,
}

/// A csid's last message header: what type 1, 2 and 3 chunks leave out.
#[derive(Debug, Clone, Copy)]
struct Header {
    timestamp: u32,
    /// What a type 3 chunk that starts a new message adds to the timestamp: the last type 1/2
    /// delta, or after a type 0 its absolute timestamp (RTMP 1.0, 5.3.1.2.4).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last type 0/1/2 header used the extended field, so type 3 chunks carry it too.
    extended: bool,
}

#[derive(Debug)]
struct InStream {
    header: Header,
    /// The message being assembled, while some of its chunks are still to come.
    partial: Option<BytesMut>,
}

/// Joins incoming chunks into messages.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    max_message_len: u32,
    streams: HashMap<u32, InStream>,
    /// Payload bytes held by all partial messages together; at most
    /// [`max_unfinished`](Self::max_unfinished).
    unfinished: usize,
    bytes_received: u64,
}

/// What one chunk did to the decoder.
enum Step {
    NeedMore,
    Partial,
    Complete(Message),
}

impl ChunkDecoder {
    /// A decoder for a new connection: chunk size 128, messages up to `max_message_len` bytes.
    pub fn new(max_message_len: u32) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message_len,
            streams: HashMap::new(),
            unfinished: 0,
            bytes_received: 0,
        }
    }

    /// The most all partial messages may hold together: twice `max_message_len`.
    ///
    /// A publisher has one big message in flight (a video key frame cut into many chunks)
    /// while small audio and data messages interleave with it on other chunk streams; twice the
    /// largest message leaves room for that, and for one big message starting as another
    /// finishes. Without this bound a peer could open [`MAX_CHUNK_STREAMS`] messages of
    /// `max_message_len` bytes each and never finish them.
    fn max_unfinished(&self) -> usize {
        (self.max_message_len as usize).saturating_mul(2)
    }

    /// Applies the peer's Set Chunk Size: 1..=[`MAX_CHUNK_SIZE`] (which also keeps the top bit,
    /// reserved by the specification, at 0).
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size & 0x8000_0000 != 0 {
            return Err(ChunkError::Invalid(format!(
                "Set Chunk Size {size:#x} has the reserved top bit set"
            )));
        }
        if !(1..=MAX_CHUNK_SIZE).contains(&size) {
            return Err(ChunkError::Invalid(format!(
                "Set Chunk Size {size} is outside 1..={MAX_CHUNK_SIZE}"
            )));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Drops the partial message on `csid`, as the peer's Abort Message asks.
    pub fn abort(&mut self, csid: u32) {
        if let Some(dropped) = self
            .streams
            .get_mut(&csid)
            .and_then(|stream| stream.partial.take())
        {
            self.unfinished -= dropped.len();
        }
    }

    /// Parses complete chunks from the front of `buf` (advancing it) until one message
    /// completes or the bytes run out.
    ///
    /// Returns after each message so that the caller can apply a Set Chunk Size or Abort
    /// before the chunks that follow it are read. `buf` must be able to hold one whole chunk
    /// (the chunk size plus at most 18 header bytes).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.decode_chunk(buf)? {
                Step::NeedMore => return Ok(None),
                Step::Partial => {}
                Step::Complete(message) => return Ok(Some(message)),
            }
        }
    }

    /// Bytes of chunks consumed so far (the handshake not included), for Acknowledgements.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Reads one chunk if all of it is in `buf`; otherwise changes nothing.
    fn decode_chunk(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        let mut r = Reader::new(buf);
        let Some((fmt, csid)) = r.basic_header() else {
            return Ok(Step::NeedMore);
        };
        let previous = self.streams.get(&csid);
        if previous.is_none() && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::Invalid(format!(
                "chunk stream {csid} would be more than {MAX_CHUNK_STREAMS} chunk streams"
            )));
        }
        let continuing = fmt == 3 && previous.is_some_and(|s| s.partial.is_some());
        let header = match (fmt, previous) {
            (0, _) => {
                let (Some(field), Some(length), Some(type_id), Some(stream_id)) =
                    (r.u24(), r.u24(), r.u8(), r.u32_le())
                else {
                    return Ok(Step::NeedMore);
                };
                let Some((timestamp, extended)) = r.timestamp(field) else {
                    return Ok(Step::NeedMore);
                };
                Header {
                    timestamp,
                    delta: timestamp,
                    length,
                    type_id,
                    stream_id,
                    extended,
                }
            }
            (_, None) => {
                return Err(ChunkError::Invalid(format!(
                    "chunk type {fmt} on chunk stream {csid}, which has had no type 0 chunk"
                )));
            }
            (1, Some(previous)) => {
                let (Some(field), Some(length), Some(type_id)) = (r.u24(), r.u24(), r.u8()) else {
                    return Ok(Step::NeedMore);
                };
                let Some((delta, extended)) = r.timestamp(field) else {
                    return Ok(Step::NeedMore);
                };
                Header {
                    timestamp: previous.header.timestamp.wrapping_add(delta),
                    delta,
                    length,
                    type_id,
                    extended,
                    ..previous.header
                }
            }
            (2, Some(previous)) => {
                let Some((delta, extended)) = r.u24().and_then(|field| r.timestamp(field)) else {
                    return Ok(Step::NeedMore);
                };
                Header {
                    timestamp: previous.header.timestamp.wrapping_add(delta),
                    delta,
                    extended,
                    ..previous.header
                }
            }
            (_, Some(previous)) => {
                let header = previous.header;
                // Strict: when the header used the extended field, every type 3 chunk repeats
                // it, as Adobe's servers, FFmpeg and OBS (librtmp) send them. Guessing whether
                // four bytes are a repeat or payload could misread a message.
                let extension = if header.extended {
                    match r.u32_be() {
                        Some(value) => Some(value),
                        None => return Ok(Step::NeedMore),
                    }
                } else {
                    None
                };
                if continuing {
                    header
                } else {
                    let delta = extension.unwrap_or(header.delta);
                    Header {
                        timestamp: header.timestamp.wrapping_add(delta),
                        delta,
                        ..header
                    }
                }
            }
        };
        if header.length > self.max_message_len {
            return Err(ChunkError::Invalid(format!(
                "message of {} bytes on chunk stream {csid} is over the limit of {} bytes",
                header.length, self.max_message_len
            )));
        }
        // What this csid holds now: continued by this chunk, or dropped for a new message.
        let held = previous
            .and_then(|s| s.partial.as_ref())
            .map_or(0, BytesMut::len);
        let received = if continuing { held } else { 0 };
        let length = header.length as usize;
        let take = length
            .saturating_sub(received)
            .min(self.chunk_size as usize);
        // Checked on the header, like the message length: the verdict does not need the bytes.
        let held_after = if received + take < length {
            received + take
        } else {
            0
        };
        let unfinished = self.unfinished - held + held_after;
        if unfinished > self.max_unfinished() {
            return Err(ChunkError::Invalid(format!(
                "unfinished messages would hold {unfinished} bytes (chunk stream {csid}), over \
                 the limit of {} bytes for all chunk streams together",
                self.max_unfinished()
            )));
        }
        let header_len = r.position();
        if buf.len() < header_len + take {
            return Ok(Step::NeedMore);
        }

        buf.advance(header_len);
        self.bytes_received += (header_len + take) as u64;
        self.unfinished = unfinished;
        let stream = self.streams.entry(csid).or_insert(InStream {
            header,
            partial: None,
        });
        stream.header = header;
        if !continuing {
            if let Some(dropped) = stream.partial.take() {
                tracing::debug!(
                    csid,
                    received = dropped.len(),
                    "a new message header before the last message completed; dropping it"
                );
            }
            if take == length {
                // The whole message in one chunk: hand out the buffer's bytes without a copy.
                return Ok(Step::Complete(message(csid, header, buf.split_to(take))));
            }
        }
        let partial = stream
            .partial
            .get_or_insert_with(|| BytesMut::with_capacity(length.min(FIRST_RESERVE)));
        partial.extend_from_slice(&buf.split_to(take));
        if partial.len() < length {
            return Ok(Step::Partial);
        }
        let payload = stream.partial.take().unwrap_or_default();
        Ok(Step::Complete(message(csid, header, payload)))
    }
}

fn message(csid: u32, header: Header, payload: BytesMut) -> Message {
    Message {
        csid,
        timestamp: header.timestamp,
        type_id: header.type_id,
        stream_id: header.stream_id,
        payload: payload.freeze(),
    }
}

/// Reads a chunk's headers from the front of a buffer without consuming it; `None` means the
/// buffer ends first.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn position(&self) -> usize {
        self.position
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.bytes.get(self.position..self.position + N)?;
        self.position += N;
        bytes.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn u24(&mut self) -> Option<u32> {
        self.take::<3>()
            .map(|[a, b, c]| u32::from_be_bytes([0, a, b, c]))
    }

    fn u32_be(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }

    /// The message stream id is the one little-endian field of RTMP.
    fn u32_le(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    /// The format (2 bits) and csid. Ids 0 and 1 in the first byte announce one or two more
    /// bytes of csid (minus 64, the low byte first).
    fn basic_header(&mut self) -> Option<(u8, u32)> {
        let first = self.u8()?;
        let csid = match first & 0x3F {
            0 => 64 + u32::from(self.u8()?),
            1 => 64 + u32::from(u16::from_le_bytes(self.take()?)),
            csid => u32::from(csid),
        };
        Some((first >> 6, csid))
    }

    /// A timestamp or delta whose 24-bit `field` has been read, and whether it was extended.
    fn timestamp(&mut self, field: u32) -> Option<(u32, bool)> {
        if field == EXTENDED_TIMESTAMP {
            Some((self.u32_be()?, true))
        } else {
            Some((field, false))
        }
    }
}

/// What the encoder last sent on a csid, so the next header can leave it out.
#[derive(Debug, Clone, Copy)]
struct OutHeader {
    timestamp: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Cuts outgoing messages into chunks.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    streams: HashMap<u32, OutHeader>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    /// An encoder for a new connection: chunk size 128.
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
        }
    }

    /// Changes the outgoing chunk size, clamped to 1..=[`MAX_CHUNK_SIZE`]. The caller also
    /// sends the Set Chunk Size message, before any message encoded after this call.
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Appends `msg` to `out` as chunks.
    ///
    /// The first chunk has a type 1 header when the csid's last message had the same stream id
    /// and an earlier or equal timestamp, type 2 when also the length and type match, type 0
    /// otherwise (a delta is never negative, as some players would take a wrapped one at its
    /// word). The rest are type 3.
    ///
    /// # Panics
    ///
    /// If `msg.csid` is outside 2..=65599 or the payload is longer than 2^24 - 1 bytes: both
    /// are the caller's mistakes, which the wire format cannot express.
    pub fn encode(&mut self, msg: &Message, out: &mut BytesMut) {
        assert!(
            (2..=MAX_CSID).contains(&msg.csid),
            "csid {} is outside 2..={MAX_CSID}",
            msg.csid
        );
        assert!(
            msg.payload.len() <= MAX_ENCODED_LEN,
            "a message of {} bytes does not fit RTMP's 24-bit length",
            msg.payload.len()
        );
        let length = msg.payload.len() as u32;
        let current = OutHeader {
            timestamp: msg.timestamp,
            length,
            type_id: msg.type_id,
            stream_id: msg.stream_id,
        };
        let (fmt, time) = match self.streams.insert(msg.csid, current) {
            Some(last) if last.stream_id == msg.stream_id && last.timestamp <= msg.timestamp => {
                let delta = msg.timestamp - last.timestamp;
                if last.length == length && last.type_id == msg.type_id {
                    (2, delta)
                } else {
                    (1, delta)
                }
            }
            _ => (0, msg.timestamp),
        };
        let extended = time >= EXTENDED_TIMESTAMP;
        let field = time.min(EXTENDED_TIMESTAMP);

        let chunk_size = self.chunk_size as usize;
        let chunks = msg.payload.len().div_ceil(chunk_size).max(1);
        let per_chunk = 3 + if extended { 4 } else { 0 };
        out.reserve(msg.payload.len() + 11 + chunks * per_chunk);

        put_basic_header(out, fmt, msg.csid);
        if fmt <= 2 {
            out.put_uint(u64::from(field), 3);
        }
        if fmt <= 1 {
            out.put_uint(u64::from(length), 3);
            out.put_u8(msg.type_id);
        }
        if fmt == 0 {
            out.put_u32_le(msg.stream_id);
        }
        if extended {
            out.put_u32(time);
        }
        for (i, chunk) in msg.payload.chunks(chunk_size).enumerate() {
            if i > 0 {
                put_basic_header(out, 3, msg.csid);
                if extended {
                    out.put_u32(time);
                }
            }
            out.extend_from_slice(chunk);
        }
    }
}

/// The shortest basic header for `csid` (which is within 2..=65599).
fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let fmt = fmt << 6;
    match csid {
        2..=63 => out.put_u8(fmt | csid as u8),
        64..=319 => {
            out.put_u8(fmt);
            out.put_u8((csid - 64) as u8);
        }
        _ => {
            out.put_u8(fmt | 1);
            out.put_u16_le((csid - 64) as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: Vec<u8>) -> Message {
        Message {
            csid,
            timestamp,
            type_id,
            stream_id,
            payload: Bytes::from(payload),
        }
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    fn decoder_with_chunk_size(size: u32) -> ChunkDecoder {
        let mut decoder = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        decoder.set_chunk_size(size).unwrap();
        decoder
    }

    fn drain(decoder: &mut ChunkDecoder, buf: &mut BytesMut) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Some(message) = decoder.decode(buf).unwrap() {
            messages.push(message);
        }
        messages
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Vec<Message>, ChunkError> {
        let mut decoder = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let mut buf = BytesMut::from(bytes);
        let mut messages = Vec::new();
        while let Some(message) = decoder.decode(&mut buf)? {
            messages.push(message);
        }
        Ok(messages)
    }

    fn encode_all(encoder: &mut ChunkEncoder, messages: &[Message]) -> BytesMut {
        let mut out = BytesMut::new();
        for message in messages {
            encoder.encode(message, &mut out);
        }
        out
    }

    /// Timestamps that make the encoder pick every header type, extended or not.
    fn sample_messages(csid: u32, sizes: &[usize]) -> Vec<Message> {
        let timestamps = [
            0,
            40,
            80,
            60,
            0xFF_FFFE,
            0xFF_FFFF,
            0x0100_0000,
            0xFFFF_FFFF,
        ];
        sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let type_id = if i % 3 == 0 { 8 } else { 9 };
                let stream_id = if i % 5 == 4 { 2 } else { 1 };
                let timestamp = timestamps[i % timestamps.len()];
                msg(csid, timestamp, type_id, stream_id, payload(len, i as u8))
            })
            .collect()
    }

    #[test]
    fn messages_round_trip_for_every_chunk_size_and_csid_width() {
        for chunk_size in [1, 128, 4096, 65536] {
            for csid in [2, 63, 64, 319, 320, 65599] {
                let sizes: &[usize] = if chunk_size == 1 {
                    &[0, 1, 2, 5, 5, 300, 300, 1000]
                } else {
                    &[
                        0, 1, 127, 128, 129, 129, 4095, 4096, 4097, 65536, 70000, 200_000, 0,
                    ]
                };
                let messages = sample_messages(csid, sizes);
                let mut encoder = ChunkEncoder::new();
                encoder.set_chunk_size(chunk_size);
                let mut buf = encode_all(&mut encoder, &messages);
                let total = buf.len() as u64;
                let mut decoder = decoder_with_chunk_size(chunk_size);
                assert_eq!(
                    drain(&mut decoder, &mut buf),
                    messages,
                    "chunk size {chunk_size}, csid {csid}"
                );
                assert!(buf.is_empty());
                assert_eq!(decoder.bytes_received(), total);
            }
        }
    }

    #[test]
    fn all_four_header_types_decode() {
        let bytes = [
            &[0x03, 0, 0, 16, 0, 0, 3, 8, 1, 0, 0, 0, 0xA0, 0xA1, 0xA2][..], // type 0, ts 16
            &[0x43, 0, 0, 5, 0, 0, 2, 9, 0xB0, 0xB1],                        // type 1, +5
            &[0x83, 0, 0, 10, 0xC0, 0xC1],                                   // type 2, +10
            &[0xC3, 0xD0, 0xD1],                                             // type 3, +10 again
        ]
        .concat();
        assert_eq!(
            decode_bytes(&bytes).unwrap(),
            [
                msg(3, 16, 8, 1, vec![0xA0, 0xA1, 0xA2]),
                msg(3, 21, 9, 1, vec![0xB0, 0xB1]),
                msg(3, 31, 9, 1, vec![0xC0, 0xC1]),
                msg(3, 41, 9, 1, vec![0xD0, 0xD1]),
            ]
        );
    }

    #[test]
    fn type_3_after_type_0_adds_the_type_0_timestamp_again() {
        let bytes = [0x04, 0, 0, 100, 0, 0, 1, 8, 1, 0, 0, 0, 0xAA, 0xC4, 0xBB];
        let messages = decode_bytes(&bytes).unwrap();
        assert_eq!(messages[1], msg(4, 200, 8, 1, vec![0xBB]));
    }

    #[test]
    fn two_and_three_byte_csids_decode() {
        let bytes = [
            &[0x00, 0, 0, 0, 1, 0, 0, 1, 8, 0, 0, 0, 0, 0xAA][..], // csid 64
            &[0x01, 0xFF, 0xFF, 0, 0, 2, 0, 0, 1, 8, 0, 0, 0, 0, 0xBB], // csid 65599
        ]
        .concat();
        let messages = decode_bytes(&bytes).unwrap();
        assert_eq!(messages[0].csid, 64);
        assert_eq!(messages[1].csid, 65599);
        assert_eq!(messages[1].timestamp, 2);
    }

    #[test]
    fn extended_timestamp_on_type_0_is_repeated_on_type_3_continuation() {
        let body = payload(200, 3);
        let bytes = [
            &[
                0x04, 0xFF, 0xFF, 0xFF, 0, 0, 200, 9, 1, 0, 0, 0, 0x01, 0x00, 0x00, 0x00,
            ][..],
            &body[..128],
            &[0xC4, 0x01, 0x00, 0x00, 0x00],
            &body[128..],
        ]
        .concat();
        assert_eq!(
            decode_bytes(&bytes).unwrap(),
            [msg(4, 0x0100_0000, 9, 1, body)]
        );
    }

    #[test]
    fn extended_delta_is_read_again_by_a_type_3_that_starts_a_message() {
        let bytes = [
            &[0x04, 0, 0, 1, 0, 0, 1, 9, 1, 0, 0, 0, 0xAA][..],
            &[0x84, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x00, 0x00, 0xBB], // type 2, delta 2^24
            &[0xC4, 0x01, 0x00, 0x00, 0x00, 0xCC],                   // type 3, same delta
        ]
        .concat();
        let timestamps: Vec<u32> = decode_bytes(&bytes)
            .unwrap()
            .iter()
            .map(|m| m.timestamp)
            .collect();
        assert_eq!(timestamps, [1, 0x0100_0001, 0x0200_0001]);
    }

    #[test]
    fn timestamps_wrap_at_two_to_the_32() {
        let bytes = [
            &[
                0x04, 0xFF, 0xFF, 0xFF, 0, 0, 0, 9, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xF0,
            ][..],
            &[0x84, 0, 0, 0x20],
        ]
        .concat();
        let messages = decode_bytes(&bytes).unwrap();
        assert_eq!(messages[1].timestamp, 0x10);
    }

    #[test]
    fn empty_message_is_delivered() {
        let bytes = [0x05, 0, 0, 7, 0, 0, 0, 20, 0, 0, 0, 0];
        assert_eq!(decode_bytes(&bytes).unwrap(), [msg(5, 7, 20, 0, vec![])]);
    }

    #[test]
    fn interleaved_messages_on_two_csids_come_out_whole() {
        let video = payload(200, 1);
        let audio = payload(50, 2);
        let bytes = [
            &[0x06, 0, 0, 40, 0, 0, 200, 9, 1, 0, 0, 0][..],
            &video[..128],
            &[0x04, 0, 0, 41, 0, 0, 50, 8, 1, 0, 0, 0],
            &audio,
            &[0xC6],
            &video[128..],
        ]
        .concat();
        assert_eq!(
            decode_bytes(&bytes).unwrap(),
            [msg(4, 41, 8, 1, audio), msg(6, 40, 9, 1, video)]
        );
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_messages() {
        let mut messages = sample_messages(6, &[0, 1, 128, 129, 300, 300, 5, 1000, 77]);
        messages.extend(sample_messages(320, &[300, 2, 3]));
        let bytes = encode_all(&mut ChunkEncoder::new(), &messages);
        let mut decoder = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in bytes.iter() {
            buf.put_u8(*byte);
            decoded.extend(drain(&mut decoder, &mut buf));
        }
        assert_eq!(decoded, messages);
        assert_eq!(decoder.bytes_received(), bytes.len() as u64);
    }

    #[test]
    fn incomplete_input_never_errors_and_is_kept() {
        let messages = sample_messages(3, &[0, 10, 200, 129, 40, 40]);
        let bytes = encode_all(&mut ChunkEncoder::new(), &messages);
        for cut in 0..bytes.len() {
            let mut decoder = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
            let mut buf = BytesMut::from(&bytes[..cut]);
            let decoded = drain(&mut decoder, &mut buf);
            assert!(decoded.len() < messages.len());
            assert_eq!(decoder.bytes_received() + buf.len() as u64, cut as u64);
            buf.extend_from_slice(&bytes[cut..]);
            let mut all = decoded;
            all.extend(drain(&mut decoder, &mut buf));
            assert_eq!(all, messages, "cut at {cut}");
        }
    }

    #[test]
    fn chunk_size_outside_the_limits_is_refused() {
        let mut decoder = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        for size in [0, MAX_CHUNK_SIZE + 1, 0x7FFF_FFFF, 0x8000_0000, u32::MAX] {
            assert!(decoder.set_chunk_size(size).is_err(), "{size:#x}");
        }
        assert_eq!(decoder.set_chunk_size(1), Ok(()));
        assert_eq!(decoder.set_chunk_size(MAX_CHUNK_SIZE), Ok(()));
    }

    #[test]
    fn message_longer_than_the_limit_is_refused_before_its_bytes_arrive() {
        let bytes = [0x04, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0];
        let ChunkError::Invalid(reason) = decode_bytes(&bytes).unwrap_err();
        assert!(
            reason.contains("16777215") && reason.contains("8388608"),
            "{reason}"
        );
    }

    #[test]
    fn type_1_without_type_0_is_refused() {
        let bytes = [0x44, 0, 0, 0, 0, 0, 1, 9, 0xAA];
        let ChunkError::Invalid(reason) = decode_bytes(&bytes).unwrap_err();
        assert!(
            reason.contains("type 1") && reason.contains("stream 4"),
            "{reason}"
        );
        assert!(decode_bytes(&[0xC4, 0xAA]).is_err());
    }

    #[test]
    fn more_than_max_chunk_streams_is_refused() {
        let mut encoder = ChunkEncoder::new();
        let messages: Vec<Message> = (0..MAX_CHUNK_STREAMS as u32)
            .map(|i| msg(3 + i, 0, 8, 1, vec![1]))
            .collect();
        let mut bytes = encode_all(&mut encoder, &messages);
        assert_eq!(decode_bytes(&bytes).unwrap().len(), MAX_CHUNK_STREAMS);
        encoder.encode(&msg(1000, 0, 8, 1, vec![1]), &mut bytes);
        assert!(decode_bytes(&bytes).is_err());
    }

    #[test]
    fn abort_drops_the_partial_message() {
        let aborted = payload(200, 1);
        let next = payload(200, 2);
        let mut decoder = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let mut buf = BytesMut::from(
            &[
                &[0x04, 0, 0, 10, 0, 0, 200, 9, 1, 0, 0, 0][..],
                &aborted[..128],
            ]
            .concat()[..],
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        decoder.abort(4);
        // Without the abort these type 3 chunks would finish the first message; after it they
        // start a new one with the same header and delta.
        buf.extend_from_slice(&[0xC4]);
        buf.extend_from_slice(&next[..128]);
        buf.extend_from_slice(&[0xC4]);
        buf.extend_from_slice(&next[128..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(msg(4, 20, 9, 1, next))));
        assert!(buf.is_empty());
    }

    /// A type 0 header on a one-byte csid: timestamp 0, video, message stream 1.
    fn type_0_header(csid: u8, length: u32) -> Vec<u8> {
        let mut header = vec![csid];
        header.extend_from_slice(&[0, 0, 0]);
        header.extend_from_slice(&length.to_be_bytes()[1..]);
        header.extend_from_slice(&[9, 1, 0, 0, 0]);
        header
    }

    /// Opens a 1000-byte message on each of csids 3..=6 and feeds them 128-byte chunks in
    /// turn, seven each (896 bytes), so none ever completes. Returns the bytes fed, or the
    /// error and the bytes fed before it.
    fn feed_unfinished_messages(max_message_len: u32) -> Result<usize, (usize, String)> {
        let mut decoder = ChunkDecoder::new(max_message_len);
        let body = payload(1000, 5);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        for round in 0..7 {
            for csid in 3..=6 {
                if round == 0 {
                    buf.extend_from_slice(&type_0_header(csid, 1000));
                } else {
                    buf.put_u8(0xC0 | csid);
                }
                buf.extend_from_slice(&body[round * 128..(round + 1) * 128]);
                match decoder.decode(&mut buf) {
                    Ok(None) => fed += 128,
                    Ok(Some(message)) => panic!("no message can complete: {message:?}"),
                    Err(ChunkError::Invalid(reason)) => return Err((fed, reason)),
                }
            }
        }
        assert_eq!(decoder.unfinished, fed);
        Ok(fed)
    }

    #[test]
    fn partial_messages_across_chunk_streams_are_bounded() {
        // Twice 1000 bytes for all csids together: the sixteenth chunk (2048 bytes) is over.
        let (fed, reason) = feed_unfinished_messages(1000).unwrap_err();
        assert_eq!(fed, 15 * 128);
        assert!(
            reason.contains("2048") && reason.contains("2000"),
            "{reason}"
        );
        // The same chunks fit under twice 2000 bytes.
        assert_eq!(feed_unfinished_messages(2000), Ok(4 * 7 * 128));
    }

    #[test]
    fn finished_dropped_and_aborted_messages_leave_the_bound() {
        // Each round leaves 1000 + 128 + 128 bytes unfinished for a moment; over the rounds
        // that is far more than the bound of 2000, so any byte not released would trip it.
        let body = payload(1000, 3);
        let mut decoder = ChunkDecoder::new(1000);
        let mut buf = BytesMut::new();
        for round in 0..50 {
            // Aborted after one chunk.
            buf.extend_from_slice(&type_0_header(3, 1000));
            buf.extend_from_slice(&body[..128]);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "round {round}");
            decoder.abort(3);
            // Replaced by a new message after one chunk; the new one is cut short too.
            buf.extend_from_slice(&type_0_header(4, 1000));
            buf.extend_from_slice(&body[..128]);
            buf.extend_from_slice(&type_0_header(4, 200));
            buf.extend_from_slice(&body[..128]);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "round {round}");
            // Finished, while csid 4 still holds 128 bytes.
            let whole = msg(5, 0, 9, 1, body.clone());
            buf.extend_from_slice(&encode_all(
                &mut ChunkEncoder::new(),
                std::slice::from_ref(&whole),
            ));
            assert_eq!(decoder.decode(&mut buf), Ok(Some(whole)), "round {round}");
            assert_eq!(decoder.unfinished, 128);
            // csid 4's second message finished.
            buf.put_u8(0xC4);
            buf.extend_from_slice(&body[128..200]);
            assert_eq!(
                decoder.decode(&mut buf),
                Ok(Some(msg(4, 0, 9, 1, body[..200].to_vec()))),
                "round {round}"
            );
            assert_eq!(decoder.unfinished, 0);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_new_header_mid_message_drops_the_partial_message() {
        let body = payload(200, 1);
        let bytes = [
            &[0x04, 0, 0, 10, 0, 0, 200, 9, 1, 0, 0, 0][..],
            &body[..128],
            &[0x84, 0, 0, 5],
            &body[..128],
            &[0xC4],
            &body[128..],
        ]
        .concat();
        assert_eq!(decode_bytes(&bytes).unwrap(), [msg(4, 15, 9, 1, body)]);
    }

    #[test]
    fn chunk_size_change_applies_to_the_chunks_after_it() {
        let mut encoder = ChunkEncoder::new();
        let set_chunk_size = msg(2, 0, 1, 0, 4096u32.to_be_bytes().to_vec());
        let mut bytes = encode_all(&mut encoder, std::slice::from_ref(&set_chunk_size));
        encoder.set_chunk_size(4096);
        let video = msg(6, 0, 9, 1, payload(5000, 9));
        encoder.encode(&video, &mut bytes);

        let mut decoder = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        assert_eq!(decoder.decode(&mut bytes), Ok(Some(set_chunk_size)));
        decoder.set_chunk_size(4096).unwrap();
        assert_eq!(decoder.decode(&mut bytes), Ok(Some(video)));
    }

    #[test]
    fn encoder_leaves_out_what_the_last_header_said() {
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        encoder.encode(&msg(6, 100, 9, 1, vec![0; 10]), &mut out);
        assert_eq!(&out[..12], &[0x06, 0, 0, 100, 0, 0, 10, 9, 1, 0, 0, 0]);
        out.clear();
        encoder.encode(&msg(6, 133, 9, 1, vec![0; 10]), &mut out);
        assert_eq!(&out[..4], &[0x86, 0, 0, 33], "type 2: same length and type");
        out.clear();
        encoder.encode(&msg(6, 140, 8, 1, vec![0; 4]), &mut out);
        assert_eq!(
            &out[..8],
            &[0x46, 0, 0, 7, 0, 0, 4, 8],
            "type 1: new length and type"
        );
        out.clear();
        encoder.encode(&msg(6, 120, 8, 1, vec![0; 4]), &mut out);
        assert_eq!(out[0], 0x06, "type 0: the timestamp went back");
        out.clear();
        encoder.encode(&msg(6, 130, 8, 2, vec![0; 4]), &mut out);
        assert_eq!(out[0], 0x06, "type 0: another message stream");
    }

    #[test]
    fn encoder_repeats_the_extended_timestamp_on_continuations() {
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        encoder.encode(&msg(4, 0x0123_4567, 9, 1, vec![0xEE; 130]), &mut out);
        let expected = [
            &[
                0x04, 0xFF, 0xFF, 0xFF, 0, 0, 130, 9, 1, 0, 0, 0, 0x01, 0x23, 0x45, 0x67,
            ][..],
            &[0xEE; 128],
            &[0xC4, 0x01, 0x23, 0x45, 0x67, 0xEE, 0xEE],
        ]
        .concat();
        assert_eq!(&out[..], &expected[..]);
    }

    use crate::XorShift;

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let valid = encode_all(
            &mut ChunkEncoder::new(),
            &sample_messages(5, &[3, 200, 129]),
        );
        for round in 0..4000 {
            let len = (rng.next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the rounds start well formed, so the noise reaches the deeper states.
            if round % 2 == 0 {
                bytes.splice(0..0, valid.iter().copied());
            }
            let mut decoder = ChunkDecoder::new(1 << (rng.next() % 20));
            let _ = decoder.set_chunk_size((rng.next() % 300) as u32);
            let mut buf = BytesMut::from(&bytes[..]);
            let mut consumed_before = 0;
            while let Ok(Some(_)) = decoder.decode(&mut buf) {
                assert!(decoder.bytes_received() > consumed_before || bytes.is_empty());
                consumed_before = decoder.bytes_received();
            }
            assert!(decoder.bytes_received() + buf.len() as u64 == bytes.len() as u64);
        }
    }
}
