//! Fuzzes the AMF0 decoder with what a peer puts in RTMP command and data messages (`connect`,
//! `publish`, `@setDataFrame`/`onMetaData` …).
//!
//! Run from `media/`: `cargo +nightly fuzz run amf0` (needs `cargo install cargo-fuzz`).
//!
//! The input is one message payload, read as the session reads it: through
//! `amf3_as_amf0` (AMF3 messages 15 and 17 start with a format byte) and then `decode_all`;
//! `decode` reads its first value alone. Besides not panicking:
//! - a decoded value never claims more bytes than were given, and `decode_all` returns at
//!   most one value per byte;
//! - whatever decodes re-encodes to bytes that decode back to one value using exactly those
//!   bytes, and encoding that value again gives the same bytes. (Bytes, not values, are
//!   compared: a NaN number is not equal to itself, and lossy UTF-8, long keys and long
//!   strings change a value once on the first encoding, never after.)

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use verge_media::amf0::{self, Amf0Value};
use verge_media::rtmp::message::amf3_as_amf0;

fuzz_target!(|data: &[u8]| {
    if let Ok((value, used)) = amf0::decode(data) {
        assert!(
            (1..=data.len()).contains(&used),
            "{used} of {} bytes",
            data.len()
        );
        round_trip(&value);
    }
    let payload = amf3_as_amf0(&Bytes::copy_from_slice(data));
    if let Ok(values) = amf0::decode_all(&payload) {
        assert!(values.len() <= payload.len());
        for value in &values {
            round_trip(value);
        }
    }
});

fn round_trip(value: &Amf0Value) {
    let mut once = Vec::new();
    amf0::encode(value, &mut once);
    let (again, used) = amf0::decode(&once).expect("an encoded value decodes");
    assert_eq!(used, once.len(), "decoding stopped inside an encoded value");
    let mut twice = Vec::new();
    amf0::encode(&again, &mut twice);
    assert!(once == twice, "encode, decode, encode changed the bytes");
}
