//! AMF0, the value encoding of RTMP commands (`connect`, `publish`, `_result` …) and of
//! `onMetaData` script data.
//!
//! Decoding is bounded on every axis a peer controls: nesting depth ([`MAX_DEPTH`]), the
//! number of values (each consumes at least one byte), and allocation (declared lengths and
//! counts are checked against the bytes present, never trusted for capacity).
//!
//! Choices where the format leaves room:
//! - Strings that are not valid UTF-8 are decoded lossily (invalid sequences become U+FFFD)
//!   instead of failing: encoders put Latin-1 titles into metadata, and rejecting them would
//!   drop a publisher over a cosmetic field. Well-formed input decodes exactly.
//! - An ECMA array whose end marker is missing is accepted only when the buffer ends right
//!   after at least as many entries as the array's count announced: some encoders omit the
//!   marker on the last value of a message. Anywhere else a missing end marker is
//!   [`Amf0Error::Incomplete`]. AMF0 is only decoded from whole RTMP messages, so a buffer
//!   that ends there is the end of the value, not a cut.
//! - Encoding a `String` longer than 65535 bytes writes a long string (marker 12), so it
//!   decodes as [`Amf0Value::LongString`].

/// An AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    String(String),
    /// Anonymous object: ordered key/value pairs (keys may repeat on the wire; order is kept).
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    /// Associative array, as `onMetaData` usually arrives.
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the Unix epoch; the time zone field is reserved and should be 0.
    Date {
        millis: f64,
        timezone: i16,
    },
    LongString(String),
}

/// Why bytes did not decode as AMF0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    /// The buffer ends inside a value.
    #[error("incomplete AMF0 value")]
    Incomplete,
    /// The bytes break the format (unknown or misplaced marker).
    #[error("invalid AMF0: {0}")]
    Invalid(String),
    /// Objects and arrays nest deeper than [`MAX_DEPTH`].
    #[error("AMF0 nesting deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Deepest nesting of objects and arrays accepted; RTMP commands use two or three levels.
pub const MAX_DEPTH: usize = 32;

mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const MOVIECLIP: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const REFERENCE: u8 = 0x07;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0a;
    pub const DATE: u8 = 0x0b;
    pub const LONG_STRING: u8 = 0x0c;
    pub const UNSUPPORTED: u8 = 0x0d;
    pub const RECORDSET: u8 = 0x0e;
    pub const XML_DOCUMENT: u8 = 0x0f;
    pub const TYPED_OBJECT: u8 = 0x10;
    pub const AVMPLUS: u8 = 0x11;
}

/// Decodes one value from the front of `buf`; returns it and the number of bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Amf0Value, usize), Amf0Error> {
    let mut reader = Reader { buf, pos: 0 };
    let value = reader.value(0)?;
    Ok((value, reader.pos))
}

/// Decodes every value in `buf`, as in an RTMP command message (name, transaction id,
/// command object, arguments …). Every value uses at least one byte, so this returns at most
/// `buf.len()` values.
pub fn decode_all(buf: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut reader = Reader { buf, pos: 0 };
    let mut values = Vec::new();
    while reader.remaining() > 0 {
        values.push(reader.value(0)?);
    }
    Ok(values)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Amf0Error> {
        let end = self.pos.checked_add(n).ok_or(Amf0Error::Incomplete)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Amf0Error::Incomplete)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Amf0Error> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| Amf0Error::Incomplete)
    }

    fn u8(&mut self) -> Result<u8, Amf0Error> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, Amf0Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, Amf0Error> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    fn peek(&self, n: usize) -> Option<&'a [u8]> {
        self.buf.get(self.pos..self.pos.checked_add(n)?)
    }

    fn utf8(&mut self, len: usize) -> Result<String, Amf0Error> {
        // `take` checks the length against the buffer before anything is allocated.
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn short_string(&mut self) -> Result<String, Amf0Error> {
        let len = usize::from(self.u16()?);
        self.utf8(len)
    }

    /// Reads one value; `depth` counts the containers around it.
    fn value(&mut self, depth: usize) -> Result<Amf0Value, Amf0Error> {
        let marker = self.u8()?;
        Ok(match marker {
            marker::NUMBER => Amf0Value::Number(self.f64()?),
            marker::BOOLEAN => Amf0Value::Boolean(self.u8()? != 0),
            marker::STRING => Amf0Value::String(self.short_string()?),
            marker::OBJECT => Amf0Value::Object(self.properties(depth + 1, None)?),
            marker::NULL => Amf0Value::Null,
            marker::UNDEFINED => Amf0Value::Undefined,
            marker::ECMA_ARRAY => {
                // The count is only a hint: entries run to the end marker.
                let count = self.u32()?;
                Amf0Value::EcmaArray(self.properties(depth + 1, Some(count))?)
            }
            marker::OBJECT_END => {
                return Err(Amf0Error::Invalid(
                    "object end marker outside an object".into(),
                ));
            }
            marker::STRICT_ARRAY => {
                let count = self.u32()?;
                if depth + 1 > MAX_DEPTH {
                    return Err(Amf0Error::TooDeep);
                }
                // Each element needs at least its marker byte.
                let capacity = usize::try_from(count)
                    .unwrap_or(usize::MAX)
                    .min(self.remaining());
                let mut items = Vec::with_capacity(capacity);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Amf0Value::StrictArray(items)
            }
            marker::DATE => Amf0Value::Date {
                millis: self.f64()?,
                timezone: i16::from_be_bytes(self.array()?),
            },
            marker::LONG_STRING => {
                let len = usize::try_from(self.u32()?).map_err(|_| Amf0Error::Incomplete)?;
                Amf0Value::LongString(self.utf8(len)?)
            }
            other => return Err(Amf0Error::Invalid(unsupported(other))),
        })
    }

    /// Reads key/value pairs up to the `00 00 09` end marker. `ecma_count` is the count an
    /// ECMA array announced, which allows its missing end marker at the end of the buffer.
    fn properties(
        &mut self,
        depth: usize,
        ecma_count: Option<u32>,
    ) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
        if depth > MAX_DEPTH {
            return Err(Amf0Error::TooDeep);
        }
        let mut pairs = Vec::new();
        loop {
            if self.remaining() == 0
                && let Some(count) = ecma_count
                && u32::try_from(pairs.len()).unwrap_or(u32::MAX) >= count
            {
                return Ok(pairs);
            }
            if self.peek(3) == Some(&[0, 0, marker::OBJECT_END][..]) {
                self.pos += 3;
                return Ok(pairs);
            }
            let key = self.short_string()?;
            let value = self.value(depth)?;
            pairs.push((key, value));
        }
    }
}

fn unsupported(marker: u8) -> String {
    let name = match marker {
        marker::MOVIECLIP => "movieclip",
        marker::REFERENCE => "reference",
        marker::UNSUPPORTED => "unsupported",
        marker::RECORDSET => "recordset",
        marker::XML_DOCUMENT => "XML document",
        marker::TYPED_OBJECT => "typed object",
        marker::AVMPLUS => "AVM+ (AMF3) switch",
        _ => "unknown",
    };
    format!("{name} marker 0x{marker:02x} is not supported")
}

/// Appends the encoding of `value` to `out`.
///
/// Object keys are limited to 65535 bytes by the format; a longer key is cut at the last
/// character boundary that fits rather than written corrupt. Lengths and counts past
/// `u32::MAX` are likewise cut (only values built locally could reach them).
pub fn encode(value: &Amf0Value, out: &mut Vec<u8>) {
    match value {
        Amf0Value::Number(n) => {
            out.push(marker::NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf0Value::Boolean(b) => {
            out.push(marker::BOOLEAN);
            out.push(u8::from(*b));
        }
        Amf0Value::String(s) => match u16::try_from(s.len()) {
            Ok(len) => {
                out.push(marker::STRING);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Err(_) => encode_long_string(s, out),
        },
        Amf0Value::Object(pairs) => {
            out.push(marker::OBJECT);
            encode_properties(pairs, out);
        }
        Amf0Value::Null => out.push(marker::NULL),
        Amf0Value::Undefined => out.push(marker::UNDEFINED),
        Amf0Value::EcmaArray(pairs) => {
            out.push(marker::ECMA_ARRAY);
            out.extend_from_slice(&clamp_u32(pairs.len()).to_be_bytes());
            encode_properties(pairs, out);
        }
        Amf0Value::StrictArray(items) => {
            let count = clamp_u32(items.len());
            out.push(marker::STRICT_ARRAY);
            out.extend_from_slice(&count.to_be_bytes());
            for item in items.iter().take(count as usize) {
                encode(item, out);
            }
        }
        Amf0Value::Date { millis, timezone } => {
            out.push(marker::DATE);
            out.extend_from_slice(&millis.to_be_bytes());
            out.extend_from_slice(&timezone.to_be_bytes());
        }
        Amf0Value::LongString(s) => encode_long_string(s, out),
    }
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The longest prefix of `s` that fits in `max` bytes and ends on a character boundary.
fn truncate_to(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn encode_long_string(s: &str, out: &mut Vec<u8>) {
    let s = truncate_to(s, u32::MAX as usize);
    out.push(marker::LONG_STRING);
    out.extend_from_slice(&clamp_u32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_properties(pairs: &[(String, Amf0Value)], out: &mut Vec<u8>) {
    for (key, value) in pairs {
        let key = truncate_to(key, usize::from(u16::MAX));
        // truncate_to guarantees the length fits in u16.
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        encode(value, out);
    }
    out.extend_from_slice(&[0, 0, marker::OBJECT_END]);
}

impl Amf0Value {
    /// The text of a `String` or `LongString`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::LongString(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The first property named `key` of an `Object` or `EcmaArray`.
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(pairs) | Amf0Value::EcmaArray(pairs) => {
                pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// An `Object` from borrowed keys, for building command replies.
    pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a str, Amf0Value)>) -> Self {
        Amf0Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn string(s: impl Into<String>) -> Self {
        Amf0Value::String(s.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &Amf0Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, &mut out);
        out
    }

    fn round_trip(value: &Amf0Value) -> Amf0Value {
        let bytes = encoded(value);
        let (decoded, used) = decode(&bytes).expect("decodes");
        assert_eq!(used, bytes.len());
        decoded
    }

    fn sample_values() -> Vec<Amf0Value> {
        vec![
            Amf0Value::Number(1.5),
            Amf0Value::Number(-0.0),
            Amf0Value::Boolean(true),
            Amf0Value::Boolean(false),
            Amf0Value::string("live"),
            Amf0Value::string(""),
            Amf0Value::string("caméra ☃"),
            Amf0Value::Null,
            Amf0Value::Undefined,
            Amf0Value::Date {
                millis: 1.7e12,
                timezone: 0,
            },
            Amf0Value::LongString("short but long-encoded".into()),
            Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::Null]),
            Amf0Value::StrictArray(vec![]),
            Amf0Value::object([
                ("app", Amf0Value::string("live")),
                ("flashVer", Amf0Value::string("FMLE/3.0")),
                ("capabilities", Amf0Value::Number(239.0)),
                (
                    "nested",
                    Amf0Value::object([("deep", Amf0Value::Boolean(true))]),
                ),
            ]),
            Amf0Value::Object(vec![]),
            Amf0Value::EcmaArray(vec![
                ("width".into(), Amf0Value::Number(1280.0)),
                ("height".into(), Amf0Value::Number(720.0)),
                ("encoder".into(), Amf0Value::string("obs")),
            ]),
            Amf0Value::EcmaArray(vec![]),
        ]
    }

    #[test]
    fn values_round_trip() {
        for value in sample_values() {
            assert_eq!(round_trip(&value), value);
        }
    }

    #[test]
    fn known_encodings() {
        assert_eq!(
            encoded(&Amf0Value::string("connect")),
            b"\x02\x00\x07connect"
        );
        assert_eq!(
            encoded(&Amf0Value::Number(1.0)),
            [0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(encoded(&Amf0Value::Boolean(true)), [0x01, 0x01]);
        assert_eq!(encoded(&Amf0Value::Null), [0x05]);
        assert_eq!(
            encoded(&Amf0Value::object([("a", Amf0Value::Null)])),
            [0x03, 0x00, 0x01, b'a', 0x05, 0x00, 0x00, 0x09]
        );
        assert_eq!(
            encoded(&Amf0Value::EcmaArray(vec![("a".into(), Amf0Value::Null)])),
            [0x08, 0, 0, 0, 1, 0x00, 0x01, b'a', 0x05, 0x00, 0x00, 0x09]
        );
    }

    #[test]
    fn connect_command_decodes() {
        let mut msg = Vec::new();
        encode(&Amf0Value::string("connect"), &mut msg);
        encode(&Amf0Value::Number(1.0), &mut msg);
        encode(
            &Amf0Value::object([
                ("app", Amf0Value::string("live")),
                ("tcUrl", Amf0Value::string("rtmp://host/live")),
            ]),
            &mut msg,
        );
        let values = decode_all(&msg).unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!(values[0].as_str(), Some("connect"));
        assert_eq!(values[1].as_number(), Some(1.0));
        assert_eq!(
            values[2].get("tcUrl").and_then(Amf0Value::as_str),
            Some("rtmp://host/live")
        );
        assert_eq!(values[2].get("missing"), None);
        assert_eq!(values[0].get("app"), None);
    }

    #[test]
    fn decode_reports_bytes_used_and_ignores_the_rest() {
        let (value, used) = decode(&[0x05, 0x01, 0x01]).unwrap();
        assert_eq!((value, used), (Amf0Value::Null, 1));
    }

    #[test]
    fn accessors() {
        assert_eq!(Amf0Value::LongString("x".into()).as_str(), Some("x"));
        assert_eq!(Amf0Value::Null.as_str(), None);
        assert_eq!(Amf0Value::string("1").as_number(), None);
        let meta = Amf0Value::EcmaArray(vec![("fps".into(), Amf0Value::Number(30.0))]);
        assert_eq!(meta.get("fps").and_then(Amf0Value::as_number), Some(30.0));
    }

    #[test]
    fn long_strings_encode_as_long_string() {
        let text = "x".repeat(70_000);
        let bytes = encoded(&Amf0Value::String(text.clone()));
        assert_eq!(bytes[0], marker::LONG_STRING);
        assert_eq!(&bytes[1..5], &70_000u32.to_be_bytes());
        assert_eq!(
            round_trip(&Amf0Value::String(text.clone())),
            Amf0Value::LongString(text)
        );
        let exact = "y".repeat(65_535);
        assert_eq!(
            encoded(&Amf0Value::String(exact.clone()))[0],
            marker::STRING
        );
        assert_eq!(
            round_trip(&Amf0Value::String(exact.clone())),
            Amf0Value::String(exact)
        );
    }

    #[test]
    fn overlong_keys_are_cut_at_a_char_boundary() {
        // 'é' is two bytes: 32768 of them are 65536 bytes, one too many.
        let key = "é".repeat(32_768);
        let value = Amf0Value::Object(vec![(key, Amf0Value::Null)]);
        match round_trip(&value) {
            Amf0Value::Object(pairs) => assert_eq!(pairs[0].0, "é".repeat(32_767)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let (value, _) = decode(&[0x02, 0x00, 0x03, b'a', 0xe9, b'b']).unwrap();
        assert_eq!(value, Amf0Value::string("a\u{fffd}b"));
    }

    #[test]
    fn truncated_at_every_offset_is_incomplete() {
        for value in sample_values() {
            let bytes = encoded(&value);
            for len in 0..bytes.len() {
                let result = decode(&bytes[..len]);
                // The one tolerated cut: an ECMA array missing only its end marker.
                let lenient =
                    matches!(value, Amf0Value::EcmaArray(_)) && len + 3 == bytes.len() && len >= 5;
                if lenient {
                    assert_eq!(result.map(|(v, _)| v), Ok(value.clone()));
                } else {
                    assert_eq!(result, Err(Amf0Error::Incomplete), "{value:?} cut at {len}");
                }
            }
        }
    }

    #[test]
    fn ecma_array_without_end_marker_is_accepted_only_at_the_end() {
        let body = [
            0x08, 0, 0, 0, 1, 0x00, 0x01, b'a', 0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0,
        ];
        let (value, used) = decode(&body).unwrap();
        assert_eq!(used, body.len());
        assert_eq!(
            value,
            Amf0Value::EcmaArray(vec![("a".into(), Amf0Value::Number(1.0))])
        );
        // Fewer entries than the count announced: the array was cut.
        let mut short = body;
        short[4] = 2;
        assert_eq!(decode(&short), Err(Amf0Error::Incomplete));
        // Inside an object the enclosing end marker is missing too: incomplete.
        let mut nested = vec![0x03, 0x00, 0x01, b'm'];
        nested.extend(body);
        assert_eq!(decode(&nested), Err(Amf0Error::Incomplete));
    }

    #[test]
    fn ecma_array_count_is_only_a_hint() {
        // Count 0 but two entries, as some encoders write.
        let mut bytes = vec![0x08, 0, 0, 0, 0];
        for key in [b'a', b'b'] {
            bytes.extend([0x00, 0x01, key, 0x05]);
        }
        bytes.extend([0x00, 0x00, 0x09]);
        let (value, _) = decode(&bytes).unwrap();
        assert_eq!(
            value,
            Amf0Value::EcmaArray(vec![
                ("a".into(), Amf0Value::Null),
                ("b".into(), Amf0Value::Null)
            ])
        );
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        assert_eq!(
            decode(&[0x0a, 0xff, 0xff, 0xff, 0xff]),
            Err(Amf0Error::Incomplete)
        );
        assert_eq!(
            decode(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x05, 0x05]),
            Err(Amf0Error::Incomplete)
        );
        assert_eq!(
            decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0x00, 0x01, b'a', 0x05]),
            Err(Amf0Error::Incomplete)
        );
        assert_eq!(
            decode(&[0x0c, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(Amf0Error::Incomplete)
        );
        assert_eq!(
            decode(&[0x02, 0xff, 0xff, b'a']),
            Err(Amf0Error::Incomplete)
        );
    }

    #[test]
    fn unsupported_and_misplaced_markers_are_invalid() {
        for marker in [0x04, 0x07, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0xff] {
            assert!(
                matches!(decode(&[marker, 0, 0, 0, 0]), Err(Amf0Error::Invalid(_))),
                "marker {marker:#x}"
            );
        }
        assert!(matches!(decode(&[0x09]), Err(Amf0Error::Invalid(_))));
        // An object end marker as a property value.
        assert!(matches!(
            decode(&[0x03, 0x00, 0x01, b'a', 0x09, 0x00, 0x00, 0x09]),
            Err(Amf0Error::Invalid(_))
        ));
        assert!(matches!(
            decode_all(&[0x05, 0x05, 0x09]),
            Err(Amf0Error::Invalid(_))
        ));
    }

    #[test]
    fn empty_key_without_end_marker_is_a_property() {
        let bytes = [0x03, 0x00, 0x00, 0x05, 0x00, 0x00, 0x09];
        let (value, _) = decode(&bytes).unwrap();
        assert_eq!(
            value,
            Amf0Value::Object(vec![(String::new(), Amf0Value::Null)])
        );
    }

    fn nested_objects(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..depth {
            bytes.extend([0x03, 0x00, 0x01, b'o']);
        }
        bytes.push(0x05);
        for _ in 0..depth {
            bytes.extend([0x00, 0x00, 0x09]);
        }
        bytes
    }

    #[test]
    fn nesting_up_to_max_depth_is_accepted() {
        // MAX_DEPTH - 1 objects around an empty one: exactly MAX_DEPTH deep.
        let mut bytes = nested_objects(MAX_DEPTH - 1);
        let null_at = 4 * (MAX_DEPTH - 1);
        bytes.splice(null_at..=null_at, [0x03, 0x00, 0x00, 0x09]);
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn deep_nesting_is_too_deep() {
        // One object more than the limit.
        let mut bytes = nested_objects(MAX_DEPTH);
        let null_at = 4 * MAX_DEPTH;
        bytes.splice(null_at..=null_at, [0x03, 0x00, 0x00, 0x09]);
        assert_eq!(decode(&bytes), Err(Amf0Error::TooDeep));
        // A hostile stream of nothing but container openings, far deeper than the limit.
        let openings: Vec<u8> = [0x0a, 0, 0, 0, 1].repeat(100_000);
        assert_eq!(decode(&openings), Err(Amf0Error::TooDeep));
        let openings: Vec<u8> = [0x08, 0, 0, 0, 1, 0, 0].repeat(100_000);
        assert_eq!(decode(&openings), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn mixed_containers_count_towards_depth() {
        let mut bytes = Vec::new();
        for i in 0..=MAX_DEPTH {
            match i % 3 {
                0 => bytes.extend([0x03, 0x00, 0x01, b'o']),
                1 => bytes.extend([0x0a, 0, 0, 0, 1]),
                _ => bytes.extend([0x08, 0, 0, 0, 1, 0x00, 0x01, b'e']),
            }
        }
        bytes.push(0x05);
        assert_eq!(decode(&bytes), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn decode_all_is_bounded_by_input_length() {
        let bytes = vec![0x05; 1000];
        assert_eq!(decode_all(&bytes).unwrap().len(), 1000);
        assert_eq!(decode_all(&[]).unwrap(), vec![]);
        assert_eq!(decode_all(&[0x05, 0x02, 0x00]), Err(Amf0Error::Incomplete));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9u32;
        for len in 0..48 {
            for _ in 0..200 {
                let mut bytes = Vec::with_capacity(len);
                for _ in 0..len {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    // Bias towards valid markers so the decoder gets past the first byte.
                    bytes.push(if state.is_multiple_of(3) {
                        (state >> 8) as u8 % 0x0d
                    } else {
                        (state >> 8) as u8
                    });
                }
                let _ = decode(&bytes);
                let _ = decode_all(&bytes);
            }
        }
    }
}
