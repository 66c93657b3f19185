//! Agent secrets: every agent has a secret shared with the manager. It is the agent's broker
//! password and, as a [`MacKey`], the HMAC key of everything the agent and the manager say to
//! each other, so an agent that holds broker credentials still cannot speak for another agent.
//!
//! A fleet may list each agent's secret, or derive them all from one enrollment secret with
//! [`derive_agent_secret`], so that a manager needs no table to admit ten thousand boxes.

use ring::hmac;

/// The HMAC-SHA256 key made from a secret.
#[derive(Clone)]
pub struct MacKey(hmac::Key);

impl MacKey {
    pub fn new(secret: &str) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    pub(crate) fn sign(&self, parts: &[&[u8]]) -> hmac::Tag {
        hmac::sign(&self.0, &Self::message(parts))
    }

    /// Checks `tag` in constant time.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        hmac::verify(&self.0, &Self::message(parts), tag).is_ok()
    }

    fn message(parts: &[&[u8]]) -> Vec<u8> {
        let mut message = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for part in parts {
            // Length-prefixed so that moving bytes between parts changes the MAC.
            message.extend_from_slice(&(part.len() as u64).to_be_bytes());
            message.extend_from_slice(part);
        }
        message
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// The secret of agent `id` under an enrollment secret: hex of HMAC-SHA256(enrollment, id).
pub fn derive_agent_secret(enrollment_secret: &str, id: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, enrollment_secret.as_bytes());
    let tag = hmac::sign(&key, format!("verge-agent-secret/v1/{id}").as_bytes());
    hex(tag.as_ref())
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    // Comparing MACs of both keeps the time independent of the lengths too.
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"verge-compare");
    let ta = hmac::sign(&key, a.as_bytes());
    hmac::verify(&key, b.as_bytes(), ta.as_ref()).is_ok()
}

/// A fresh random secret (32 hex characters) for enrollment and for `verge up`.
pub fn random_secret() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    hex(&bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secrets_differ_per_agent_and_are_stable() {
        let a = derive_agent_secret("fleet", "edge-1");
        assert_eq!(a, derive_agent_secret("fleet", "edge-1"));
        assert_ne!(a, derive_agent_secret("fleet", "edge-2"));
        assert_ne!(a, derive_agent_secret("other", "edge-1"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("s3cret", "s3cret"));
        assert!(!secrets_equal("s3cret", "s3cre"));
        assert!(!secrets_equal("", "x"));
    }

    #[test]
    fn hex_round_trip_and_refusals() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(random_secret().len(), 32);
        assert_ne!(random_secret(), random_secret());
    }
}
