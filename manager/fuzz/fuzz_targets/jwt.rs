//! Fuzzes the JWT parser (`auth::jwt::Key::verify` and `decode`), which reads the bearer
//! token of every WHIP, WHEP and API request and the token in an RTMP stream's query.
//!
//! Run from `manager/`: `cargo +nightly fuzz run jwt` (needs `cargo install cargo-fuzz`).
//!
//! The input's first byte sets the time the token is checked at; the rest is used twice:
//! - as a token, verified and decoded with a fixed key;
//! - cut at its first 0xff byte (never part of UTF-8 JSON) into a header and a claims part,
//!   base64url-encoded and signed with that key: this reaches the header's `alg` check and
//!   the claims' parsing past the signature.
//!
//! Besides not panicking: a verified token has three parts and a payload no longer than
//! itself; decoded claims are not expired and sign into a token that decodes to them again;
//! a token signed with the key never fails its signature, and one whose header says HS256
//! fails only on its claims.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ring::hmac;
use serde::Deserialize;
use verge_manager::auth::jwt::{JwtError, Key};

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let [clock, rest @ ..] = data else {
        return;
    };
    // From 0 to about 34 billion seconds, past u32 time and around common `exp` values.
    let now = u64::from(*clock) << 27;
    let key = Key::new(SECRET);

    if let Ok(token) = std::str::from_utf8(rest) {
        let _ = check(&key, token, now);
    }

    let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET), input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    let decoded = check(&key, &token, now);
    assert_ne!(decoded, Err(JwtError::Signature));

    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    if serde_json::from_slice::<Header>(header).is_ok_and(|h| h.alg == "HS256") {
        assert_eq!(key.verify(&token).as_deref(), Ok(claims));
        assert!(
            matches!(
                decoded,
                Ok(_) | Err(JwtError::Claims(_) | JwtError::Expired)
            ),
            "{decoded:?}"
        );
    }
});

fn check(key: &Key, token: &str, now: u64) -> Result<verge_manager::auth::Claims, JwtError> {
    if let Ok(payload) = key.verify(token) {
        assert_eq!(token.matches('.').count(), 2);
        assert!(payload.len() <= token.len());
    }
    let decoded = key.decode(token, now);
    if let Ok(claims) = &decoded {
        assert!(claims.exp > now);
        assert_eq!(key.decode(&key.sign(claims), now).as_ref(), Ok(claims));
    }
    decoded
}
