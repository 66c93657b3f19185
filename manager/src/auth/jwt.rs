//! HS256 JSON Web Tokens (RFC 7519) with live777's claims `{id, exp, mode}`.
//!
//! Only HS256 is accepted: the header's `alg` is checked before anything else, so a token
//! saying `none` or an asymmetric algorithm is refused rather than verified some other way.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// live777's claims: `id` a stream (`live/cam`, or `cam` for app `live`) or `*`; `exp` in Unix
/// seconds; `mode` bits 4 = read (WHEP, playback), 2 = write (WHIP, RTMP publish), 1 = admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub id: String,
    pub exp: u64,
    pub mode: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT (three base64url parts separated by dots)")]
    Malformed,
    #[error("JWT algorithm {0:?} is not accepted (HS256 only)")]
    Algorithm(String),
    #[error("JWT signature does not verify")]
    Signature,
    #[error("JWT claims are not {{id, exp, mode}}: {0}")]
    Claims(String),
    #[error("JWT expired")]
    Expired,
}

/// The HMAC key tokens are signed with.
pub struct Key(hmac::Key);

impl Key {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        // Serializing a struct of a string and two integers cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let tag = hmac::sign(&self.0, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The payload of `token` once its header says HS256 and its signature verifies.
    pub fn verify(&self, token: &str) -> Result<Vec<u8>, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header_json = decode(header)?;
        let alg = serde_json::from_slice::<Header>(&header_json)
            .map_err(|_| JwtError::Malformed)?
            .alg;
        if alg != "HS256" {
            return Err(JwtError::Algorithm(alg));
        }
        let signature = decode(signature)?;
        let signing_input = &token[..header.len() + 1 + payload.len()];
        hmac::verify(&self.0, signing_input.as_bytes(), &signature)
            .map_err(|_| JwtError::Signature)?;
        decode(payload)
    }

    /// The claims of `token`, verified and not expired at `now` (Unix seconds).
    pub fn decode(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        let payload = self.verify(token)?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|e| JwtError::Claims(e.to_string()))?;
        if claims.exp <= now {
            return Err(JwtError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 appendix A.1: an HS256 JWS and its key.
    const RFC_KEY: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    const RFC_JWS: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
        eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
        dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn rfc_key() -> Key {
        Key::new(&URL_SAFE_NO_PAD.decode(RFC_KEY).unwrap())
    }

    #[test]
    fn the_rfc_7515_example_verifies_and_any_change_breaks_it() {
        let payload = rfc_key().verify(RFC_JWS).unwrap();
        assert!(
            String::from_utf8(payload)
                .unwrap()
                .contains("\"iss\":\"joe\"")
        );
        // Its claims are not live777's.
        assert!(matches!(
            rfc_key().decode(RFC_JWS, 0),
            Err(JwtError::Claims(_))
        ));
        let mut tampered = RFC_JWS.to_string();
        tampered.replace_range(40..41, "A");
        assert!(rfc_key().verify(&tampered).is_err());
        assert_eq!(Key::new(b"other").verify(RFC_JWS), Err(JwtError::Signature));
    }

    #[test]
    fn signed_claims_round_trip_until_they_expire() {
        let key = Key::new(b"live777");
        let claims = Claims {
            id: "live/cam".into(),
            exp: 2_000,
            mode: 4,
        };
        let token = key.sign(&claims);
        assert_eq!(key.decode(&token, 1_999), Ok(claims));
        assert_eq!(key.decode(&token, 2_000), Err(JwtError::Expired));
        assert_eq!(
            Key::new(b"live7777").decode(&token, 0),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn other_algorithms_and_garbage_are_refused() {
        let key = Key::new(b"k");
        let part = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let claims = part(r#"{"id":"*","exp":9999999999,"mode":7}"#);
        let none = format!("{}.{claims}.", part(r#"{"alg":"none"}"#));
        assert_eq!(
            key.decode(&none, 0),
            Err(JwtError::Algorithm("none".into()))
        );
        let rs = format!("{}.{claims}.AAAA", part(r#"{"alg":"RS256"}"#));
        assert_eq!(key.decode(&rs, 0), Err(JwtError::Algorithm("RS256".into())));
        for garbage in ["", ".", "..", "a.b.c", "a.b.c.d", "%%.%%.%%", "e30.e30.e30"] {
            assert!(key.decode(garbage, 0).is_err(), "{garbage:?}");
        }
        // Claims of the wrong shape: mode out of u8, id missing.
        for bad in [
            r#"{"id":"*","exp":9999999999,"mode":700}"#,
            r#"{"exp":9999999999,"mode":7}"#,
        ] {
            let header = part(r#"{"alg":"HS256","typ":"JWT"}"#);
            let input = format!("{header}.{}", part(bad));
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"k"), input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
            assert!(matches!(key.decode(&token, 0), Err(JwtError::Claims(_))));
        }
    }
}
