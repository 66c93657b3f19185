//! Fuzzes the RTMP chunk reader with whatever a peer could send after the handshake.
//!
//! Run from `media/`: `cargo +nightly fuzz run chunk_decoder` (needs `cargo install cargo-fuzz`).
//!
//! The input's first three bytes pick where the rest is split in two (so that resuming after
//! "incomplete" is exercised) and the starting chunk size; Set Chunk Size and Abort messages
//! in the stream are applied as a session would, to reach the states they lead to. Besides not
//! panicking, the decoder must account for every byte: consumed plus still buffered equals fed.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use verge_media::rtmp::chunk::ChunkDecoder;

/// Small, so that the length limit is reached as well as the data's end.
const MAX_MESSAGE_LEN: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let [split, size_hi, size_lo, stream @ ..] = data else {
        return;
    };
    let split = usize::from(*split) * stream.len() / 255;
    let (first, second) = stream.split_at(split.min(stream.len()));

    let mut decoder = ChunkDecoder::new(MAX_MESSAGE_LEN);
    // 1..=65536; a refused size would be a bug, as these are all within the limits.
    let chunk_size = u32::from(u16::from_be_bytes([*size_hi, *size_lo])) + 1;
    decoder
        .set_chunk_size(chunk_size)
        .expect("chunk sizes up to 65536 are accepted");

    let mut buf = BytesMut::new();
    let mut fed = 0u64;
    for part in [first, second] {
        buf.extend_from_slice(part);
        fed += part.len() as u64;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    assert!(message.payload.len() <= MAX_MESSAGE_LEN as usize);
                    let control = message
                        .payload
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    match (message.type_id, control) {
                        (1, Some(size)) => {
                            let _ = decoder.set_chunk_size(size & 0x7FFF_FFFF);
                        }
                        (2, Some(csid)) => decoder.abort(csid),
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(decoder.bytes_received() + buf.len() as u64, fed);
                    return;
                }
            }
        }
        assert_eq!(decoder.bytes_received() + buf.len() as u64, fed);
    }
});
