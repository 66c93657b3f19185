//! The FLV byte stream: a 9-byte file header, then tags each followed by its size.
//!
//! HTTP-FLV serves a live stream as one endless FLV file, so the writer here is what viewers
//! receive; the reader is its sans-IO inverse, used by tests and by anything that ingests FLV.
//! Both work on whole tags in memory: callers feed bytes in and take tags out, no I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::FlvError;

/// Largest tag body [`FlvReader`] accepts by default. FLV's 24-bit size field cannot exceed
/// it; [`FlvReader::with_max_tag`] sets a tighter bound.
pub const MAX_TAG: usize = 16 * 1024 * 1024;

/// Largest body the 24-bit size field of a tag header can describe.
const MAX_BODY: usize = 0xff_ffff;
const SIGNATURE: &[u8; 3] = b"FLV";
const FILE_HEADER_LEN: usize = 9;
const TAG_HEADER_LEN: usize = 11;
const PREVIOUS_TAG_SIZE_LEN: usize = 4;
/// Real files put the first tag right after the 9-byte header; a header that claims a much
/// larger offset is not FLV we can use.
const MAX_DATA_OFFSET: u32 = 4096;
/// Set in a tag header's first byte when the body is encrypted (the "Filter" bit).
const FILTER_BIT: u8 = 0x20;

/// The FLV file header (signature, version 1, audio/video flags, data offset 9) followed by
/// PreviousTagSize0, which is always 0.
pub fn file_header(has_audio: bool, has_video: bool) -> [u8; 13] {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// Appends one tag: the 11-byte header (type, body size, timestamp as its low 24 bits plus
/// an extension byte for the high 8, stream id 0), the body, and the PreviousTagSize that
/// lets players seek backwards.
///
/// A body longer than FLV's 24-bit size field can describe is refused and nothing is written.
pub fn write_tag(
    out: &mut BytesMut,
    tag_type: u8,
    timestamp_ms: u32,
    body: &[u8],
) -> Result<(), FlvError> {
    if body.len() > MAX_BODY {
        return Err(FlvError::Invalid(format!(
            "tag body of {} bytes exceeds the 24-bit size field",
            body.len()
        )));
    }
    let [ts_ext, ts_hi, ts_mid, ts_lo] = timestamp_ms.to_be_bytes();
    let [_, size_hi, size_mid, size_lo] = (body.len() as u32).to_be_bytes();
    out.reserve(TAG_HEADER_LEN + body.len() + PREVIOUS_TAG_SIZE_LEN);
    out.put_slice(&[
        tag_type, size_hi, size_mid, size_lo, ts_hi, ts_mid, ts_lo, ts_ext, 0, 0, 0,
    ]);
    out.put_slice(body);
    out.put_u32((TAG_HEADER_LEN + body.len()) as u32);
    Ok(())
}

/// One tag read from an FLV stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    pub tag_type: u8,
    /// Milliseconds, with the extension byte already applied.
    pub timestamp_ms: u32,
    pub body: Bytes,
}

enum State {
    /// Waiting for the 9-byte file header.
    Header,
    /// Skipping header bytes past the 9 (data offset larger than 9).
    SkipHeader(usize),
    /// Reading `PreviousTagSize` + tag, repeatedly.
    Tags,
}

/// Sans-IO reader of an FLV byte stream: [`push`](Self::push) bytes as they arrive and call
/// [`next_tag`](Self::next_tag) until it returns `Ok(None)`.
///
/// A tag is returned as soon as its body is complete; the PreviousTagSize after it is read
/// (and, like most players, not checked) with the next tag, so the last tag of a live stream
/// is not held back waiting for four more bytes. Memory is bounded by the largest tag
/// accepted plus what the caller pushes between calls.
pub struct FlvReader {
    buf: BytesMut,
    state: State,
    max_tag: usize,
}

impl Default for FlvReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FlvReader {
    /// A reader accepting tags up to [`MAX_TAG`] bytes.
    pub fn new() -> Self {
        Self::with_max_tag(MAX_TAG)
    }

    /// A reader that rejects tags declaring more than `max_tag` bytes of body.
    pub fn with_max_tag(max_tag: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            state: State::Header,
            max_tag,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete tag; `Ok(None)` when more bytes are needed. An error is final: the
    /// stream is not FLV (bad signature) or declares a tag this reader will not hold.
    pub fn next_tag(&mut self) -> Result<Option<FlvTag>, FlvError> {
        loop {
            match self.state {
                State::Header => {
                    // Check the signature as soon as its bytes arrive, not after nine.
                    let seen = self.buf.len().min(SIGNATURE.len());
                    if self.buf.get(..seen) != SIGNATURE.get(..seen) {
                        return Err(FlvError::Invalid("missing FLV signature".into()));
                    }
                    let Some(header) = self.buf.get(..FILE_HEADER_LEN) else {
                        return Ok(None);
                    };
                    let offset = header
                        .get(5..9)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map(u32::from_be_bytes)
                        .unwrap_or_default();
                    if !(FILE_HEADER_LEN as u32..=MAX_DATA_OFFSET).contains(&offset) {
                        return Err(FlvError::Invalid(format!(
                            "header data offset {offset} is not between 9 and {MAX_DATA_OFFSET}"
                        )));
                    }
                    self.buf.advance(FILE_HEADER_LEN);
                    self.state = State::SkipHeader(offset as usize - FILE_HEADER_LEN);
                }
                State::SkipHeader(left) => {
                    let n = left.min(self.buf.len());
                    self.buf.advance(n);
                    if n < left {
                        self.state = State::SkipHeader(left - n);
                        return Ok(None);
                    }
                    self.state = State::Tags;
                }
                State::Tags => return self.tag(),
            }
        }
    }

    fn tag(&mut self) -> Result<Option<FlvTag>, FlvError> {
        const HEAD: usize = PREVIOUS_TAG_SIZE_LEN + TAG_HEADER_LEN;
        let Some(&[_, _, _, _, kind, s0, s1, s2, t0, t1, t2, t_ext, ..]) = self.buf.get(..HEAD)
        else {
            return Ok(None);
        };
        if kind & FILTER_BIT != 0 {
            return Err(FlvError::Invalid(
                "encrypted tag (filter bit set) is not supported".into(),
            ));
        }
        let size = u32::from_be_bytes([0, s0, s1, s2]) as usize;
        // Rejected on the header alone, before any of the body is buffered.
        if size > self.max_tag {
            return Err(FlvError::Invalid(format!(
                "tag of {size} bytes exceeds the {} byte limit",
                self.max_tag
            )));
        }
        if self.buf.len() < HEAD + size {
            return Ok(None);
        }
        self.buf.advance(HEAD);
        let body = self.buf.split_to(size).freeze();
        Ok(Some(FlvTag {
            tag_type: kind & 0x1f,
            timestamp_ms: u32::from_be_bytes([t_ext, t0, t1, t2]),
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flv::{TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

    fn stream(tags: &[(u8, u32, &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_slice(&file_header(true, true));
        for &(tag_type, ts, body) in tags {
            write_tag(&mut out, tag_type, ts, body).unwrap();
        }
        out.to_vec()
    }

    fn sample_tags() -> Vec<(u8, u32, &'static [u8])> {
        vec![
            (TAG_SCRIPT, 0, b"\x02\x00\x0aonMetaData"),
            (TAG_VIDEO, 0, &[0x17, 0x00, 0, 0, 0, 1, 0x64]),
            (TAG_AUDIO, 0, &[0xaf, 0x00, 0x12, 0x10]),
            (TAG_VIDEO, 33, &[0x27, 0x01, 0, 0, 0x21, 0, 0, 0, 1, 0x41]),
            (TAG_AUDIO, 0x0123_4567, &[0xaf, 0x01, 0xde, 0xad]),
            (TAG_VIDEO, u32::MAX, &[]),
        ]
    }

    fn read_all(reader: &mut FlvReader) -> Vec<FlvTag> {
        let mut tags = Vec::new();
        while let Some(tag) = reader.next_tag().unwrap() {
            tags.push(tag);
        }
        tags
    }

    fn expected(tags: &[(u8, u32, &[u8])]) -> Vec<FlvTag> {
        tags.iter()
            .map(|&(tag_type, timestamp_ms, body)| FlvTag {
                tag_type,
                timestamp_ms,
                body: Bytes::copy_from_slice(body),
            })
            .collect()
    }

    #[test]
    fn file_header_flags() {
        assert_eq!(
            file_header(true, true),
            [b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0]
        );
        assert_eq!(file_header(true, false)[4], 0x04);
        assert_eq!(file_header(false, true)[4], 0x01);
        assert_eq!(file_header(false, false)[4], 0x00);
    }

    #[test]
    fn tag_layout_with_extended_timestamp() {
        let mut out = BytesMut::new();
        write_tag(&mut out, TAG_VIDEO, 0x0123_4567, &[0xaa, 0xbb]).unwrap();
        assert_eq!(
            &out[..],
            &[
                9, 0, 0, 2, // type, size
                0x23, 0x45, 0x67, 0x01, // timestamp low 24 bits, extension
                0, 0, 0, // stream id
                0xaa, 0xbb, // body
                0, 0, 0, 13, // previous tag size
            ]
        );
    }

    #[test]
    fn oversized_body_is_refused_and_nothing_written() {
        let mut out = BytesMut::new();
        let body = vec![0u8; MAX_BODY + 1];
        assert!(matches!(
            write_tag(&mut out, TAG_VIDEO, 0, &body),
            Err(FlvError::Invalid(_))
        ));
        assert!(out.is_empty());
        write_tag(&mut out, TAG_VIDEO, 0, &body[..MAX_BODY]).unwrap();
        assert_eq!(out.len(), TAG_HEADER_LEN + MAX_BODY + 4);
    }

    #[test]
    fn written_stream_reads_back() {
        let tags = sample_tags();
        let mut reader = FlvReader::new();
        reader.push(&stream(&tags));
        assert_eq!(read_all(&mut reader), expected(&tags));
        assert_eq!(reader.next_tag(), Ok(None));
    }

    #[test]
    fn stream_split_at_every_offset_reads_back() {
        let tags = sample_tags();
        let bytes = stream(&tags);
        for split in 0..=bytes.len() {
            let mut reader = FlvReader::new();
            reader.push(&bytes[..split]);
            let mut got = read_all(&mut reader);
            reader.push(&bytes[split..]);
            got.extend(read_all(&mut reader));
            assert_eq!(got, expected(&tags), "split at {split}");
        }
    }

    #[test]
    fn stream_fed_byte_by_byte_reads_back() {
        let tags = sample_tags();
        let mut reader = FlvReader::new();
        let mut got = Vec::new();
        for byte in stream(&tags) {
            reader.push(&[byte]);
            got.extend(read_all(&mut reader));
        }
        assert_eq!(got, expected(&tags));
    }

    #[test]
    fn truncated_stream_at_every_offset_waits_for_more() {
        let tags = sample_tags();
        let bytes = stream(&tags);
        for len in 0..bytes.len() {
            let mut reader = FlvReader::new();
            reader.push(&bytes[..len]);
            let got = read_all(&mut reader);
            assert!(got.len() <= tags.len());
            assert_eq!(got, expected(&tags[..got.len()]));
        }
    }

    #[test]
    fn last_tag_is_not_held_back_for_its_trailing_size() {
        let mut reader = FlvReader::new();
        let bytes = stream(&[(TAG_VIDEO, 1, &[0x17, 0x01])]);
        reader.push(&bytes[..bytes.len() - 4]);
        assert_eq!(read_all(&mut reader).len(), 1);
    }

    #[test]
    fn bad_signature_is_invalid_as_soon_as_seen() {
        let mut reader = FlvReader::new();
        reader.push(b"F");
        assert_eq!(reader.next_tag(), Ok(None));
        reader.push(b"X");
        assert!(matches!(reader.next_tag(), Err(FlvError::Invalid(_))));
        let mut reader = FlvReader::new();
        reader.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(reader.next_tag(), Err(FlvError::Invalid(_))));
    }

    #[test]
    fn larger_data_offset_is_skipped() {
        let mut bytes = file_header(false, true).to_vec();
        bytes[8] = 12;
        bytes.splice(9..9, [0xee; 3]);
        let mut out = BytesMut::new();
        write_tag(&mut out, TAG_VIDEO, 7, &[0x17, 0x02, 0, 0, 0]).unwrap();
        bytes.extend_from_slice(&out);
        let mut reader = FlvReader::new();
        for byte in &bytes {
            reader.push(&[*byte]);
        }
        let tags = read_all(&mut reader);
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].timestamp_ms, 7);
    }

    #[test]
    fn data_offset_out_of_range_is_invalid() {
        for offset in [0u32, 8, MAX_DATA_OFFSET + 1, u32::MAX] {
            let mut bytes = file_header(true, true).to_vec();
            bytes[5..9].copy_from_slice(&offset.to_be_bytes());
            let mut reader = FlvReader::new();
            reader.push(&bytes);
            assert!(
                matches!(reader.next_tag(), Err(FlvError::Invalid(_))),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn tag_larger_than_limit_is_invalid_before_its_body_arrives() {
        let bytes = stream(&[(TAG_VIDEO, 0, &[0u8; 100])]);
        let mut reader = FlvReader::with_max_tag(99);
        // Header and tag header only.
        reader.push(&bytes[..13 + TAG_HEADER_LEN]);
        assert!(matches!(reader.next_tag(), Err(FlvError::Invalid(_))));
        let mut reader = FlvReader::with_max_tag(100);
        reader.push(&bytes);
        assert_eq!(read_all(&mut reader).len(), 1);
    }

    #[test]
    fn encrypted_tag_is_invalid() {
        let mut bytes = stream(&[(TAG_VIDEO, 0, &[0x17, 0x01])]);
        bytes[13] |= FILTER_BIT;
        let mut reader = FlvReader::new();
        reader.push(&bytes);
        assert!(matches!(reader.next_tag(), Err(FlvError::Invalid(_))));
    }

    #[test]
    fn bodies_share_the_reader_buffer() {
        let mut reader = FlvReader::new();
        reader.push(&stream(&[
            (TAG_AUDIO, 0, &[0xaf, 0x01, 1, 2, 3]),
            (TAG_AUDIO, 0, &[0xaf, 0x01, 4]),
        ]));
        let first = reader.next_tag().unwrap().unwrap();
        let second = reader.next_tag().unwrap().unwrap();
        // Both bodies point into the one pushed buffer: tags are split off, not copied.
        let gap = first.body.len() + PREVIOUS_TAG_SIZE_LEN + TAG_HEADER_LEN;
        assert_eq!(first.body.as_ptr().wrapping_add(gap), second.body.as_ptr());
    }

    #[test]
    fn garbage_after_header_never_panics() {
        let mut state = 0x2545_f491u32;
        for _ in 0..500 {
            let mut reader = FlvReader::with_max_tag(4096);
            reader.push(&file_header(true, true));
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                reader.push(&state.to_be_bytes());
            }
            while let Ok(Some(_)) = reader.next_tag() {}
        }
    }
}
