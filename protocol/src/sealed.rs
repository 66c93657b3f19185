//! Sealed (confidential) RPC bodies. Envelopes are signed, not secret, and the broker (and every client
//! it lets subscribe to `#`) sees them; the params and results of RPCs carry SDP (ICE passwords,
//! DTLS fingerprints) and TURN credentials, so they travel as
//! `{"sealed": "<base64 of nonce ‖ ChaCha20-Poly1305 ciphertext>"}` under a key derived from the
//! agent's secret. The envelope's MAC still covers the sealed text, so a sealed body can be
//! neither altered nor moved to another message; the AEAD's associated data names the direction,
//! so a request's params cannot be replayed as a reply's result.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

/// Which way a sealed body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Manager to agent (request params).
    Request,
    /// Agent to manager (reply results).
    Reply,
    /// Agent to manager (a call's params, [`crate::call`]).
    Call,
    /// Manager to agent (a call's result).
    CallReply,
}

impl Way {
    fn aad(self) -> Aad<&'static [u8]> {
        Aad::from(match self {
            Way::Request => b"verge/rpc/request".as_slice(),
            Way::Reply => b"verge/rpc/reply".as_slice(),
            Way::Call => b"verge/call/request".as_slice(),
            Way::CallReply => b"verge/call/reply".as_slice(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateError {
    #[error("the body is not sealed ({{\"sealed\": …}})")]
    NotSealed,
    #[error("the sealed body is not base64 or too short")]
    Malformed,
    #[error("the sealed body does not decrypt under this agent's key")]
    Decrypt,
    #[error("the decrypted body is not JSON")]
    NotJson,
    #[error("no randomness for a nonce")]
    Random,
}

/// The key of one agent's RPC bodies.
pub struct PrivateKey(LessSafeKey);

impl PrivateKey {
    pub fn new(agent_secret: &str) -> Self {
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"verge/private/v1")
            .extract(agent_secret.as_bytes());
        let mut key = [0u8; 32];
        // HKDF-SHA256 always makes 32 bytes.
        let info: [&[u8]; 1] = [b"rpc"];
        let okm = prk.expand(&info, Len).expect("HKDF-SHA256 makes 32 bytes");
        okm.fill(&mut key).expect("HKDF-SHA256 fills 32 bytes");
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte ChaCha20 key");
        Self(LessSafeKey::new(unbound))
    }

    /// `value` sealed; a random nonce each time (96 bits: no repeat in any real fleet's life).
    pub fn seal(&self, way: Way, value: &Value) -> Result<Value, PrivateError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| PrivateError::Random)?;
        let mut data = serde_json::to_vec(value).map_err(|_| PrivateError::NotJson)?;
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), way.aad(), &mut data)
            .map_err(|_| PrivateError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(json!({ "sealed": STANDARD.encode(out) }))
    }

    pub fn open(&self, way: Way, value: &Value) -> Result<Value, PrivateError> {
        let text = value
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("sealed"))
            .and_then(Value::as_str)
            .ok_or(PrivateError::NotSealed)?;
        let mut bytes = STANDARD.decode(text).map_err(|_| PrivateError::Malformed)?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(PrivateError::Malformed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                way.aad(),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| PrivateError::Decrypt)?;
        serde_json::from_slice(plain).map_err(|_| PrivateError::NotJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bodies_open_only_with_the_same_secret_and_way() {
        let key = PrivateKey::new("s1");
        let body = json!({"sdp": "v=0\r\na=ice-pwd:secret\r\n", "n": 1});
        let sealed = key.seal(Way::Request, &body).unwrap();
        let text = sealed.to_string();
        assert!(!text.contains("ice-pwd"), "{text}");
        assert_eq!(key.open(Way::Request, &sealed), Ok(body.clone()));
        assert_ne!(
            key.seal(Way::Request, &body).unwrap(),
            sealed,
            "fresh nonce each time"
        );
        assert_eq!(key.open(Way::Reply, &sealed), Err(PrivateError::Decrypt));
        assert_eq!(
            PrivateKey::new("s2").open(Way::Request, &sealed),
            Err(PrivateError::Decrypt)
        );
    }

    #[test]
    fn garbage_is_refused() {
        let key = PrivateKey::new("s1");
        for bad in [
            json!(null),
            json!({"sdp": "v=0"}),
            json!({"sealed": 5}),
            json!({"sealed": "%%%"}),
            json!({"sealed": "AAAA"}),
            json!({"sealed": "x", "more": 1}),
        ] {
            assert!(key.open(Way::Request, &bad).is_err(), "{bad}");
        }
        let mut sealed = key.seal(Way::Reply, &json!([1, 2])).unwrap();
        let text = sealed["sealed"].as_str().unwrap().to_string();
        let mut raw = STANDARD.decode(text).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        sealed["sealed"] = json!(STANDARD.encode(raw));
        assert_eq!(key.open(Way::Reply, &sealed), Err(PrivateError::Decrypt));
    }
}
