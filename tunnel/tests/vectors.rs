//! Test vector V6 of `docs/protocol.md` (a tunnel packet), checked against this crate's public
//! API. V1–V5 are checked by `protocol/tests/vectors.rs`.
//!
//! The expected values were computed independently by `scripts/protocol_vectors.py` (Python's
//! `hmac`/`hashlib` and the `cryptography` package, following the document, not this code). If
//! one of these fails, either the wire format changed (then the document, the script and every
//! other implementation must change with it) or the code broke.

use verge_tunnel::frame::Frame;
use verge_tunnel::seal::{Direction, Epoch, Opener, Sealer};

/// The agent secret of V3–V6 (V2's derived secret, used as text).
const V2_SECRET: &str = "3ae0c10a87988cd4ce5e3a2efdec96ada44ade37403612a3e83ccbd33a5d82f0";

// V6: a tunnel packet, manager -> agent, context "manager", counter 0.
const V6_EPOCH: &str = "0000019a7afd1e000123456789abcdef";
const V6_FRAMES: &str = "06000000000000000000000007000100000001000100000468747470020000000100000000000000000012474554202f20485454502f312e300d0a0d0a";
const V6_PACKET: &str = "010000019a7afd1e000123456789abcdef0000000000000000770592d65a0fd21a99e20c204d242567ff78ee2f4e28f5338703f334037db04fc929f6c66a3662ccd51fe0b7878d76d2f9e56fa074684c80003ec33300c4f168a1cbd21a856caf6edc22805c34";

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2));
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn v6_tunnel_packet() {
    let frames = [
        Frame::Keepalive {
            token: 7,
            reply: false,
        },
        Frame::Open {
            stream: 1,
            target: "http".into(),
            window: 65_536,
        },
        Frame::Data {
            stream: 1,
            offset: 0,
            bytes: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        },
    ];
    let mut encoded = Vec::new();
    for frame in &frames {
        frame.encode(&mut encoded);
    }
    assert_eq!(encoded, unhex(V6_FRAMES));
    assert_eq!(Frame::decode_all(&encoded).unwrap(), frames);

    let epoch = Epoch(unhex(V6_EPOCH).try_into().unwrap());
    let mut sealer = Sealer::new(V2_SECRET.as_bytes(), Direction::ToAgent, b"manager", epoch);
    assert_eq!(sealer.seal(&encoded).unwrap(), unhex(V6_PACKET));
    let mut opener = Opener::new(V2_SECRET.as_bytes(), Direction::ToAgent, b"manager");
    assert_eq!(opener.open(&unhex(V6_PACKET)).unwrap(), (encoded, true));
    // The other direction's key does not open it.
    let mut wrong = Opener::new(V2_SECRET.as_bytes(), Direction::ToManager, b"manager");
    assert!(wrong.open(&unhex(V6_PACKET)).is_err());
}
