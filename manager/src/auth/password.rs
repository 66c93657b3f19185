//! Account passwords: argon2 PHC strings (`$argon2id$v=19$…`), or plain text as in liveman's
//! manual. Both are compared in time that does not depend on where they differ.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

pub fn matches(stored: &str, given: &str) -> bool {
    if stored.starts_with("$argon2") {
        return match PasswordHash::new(stored) {
            Ok(hash) => argon2::Argon2::default()
                .verify_password(given.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        };
    }
    verge_protocol::secret::secrets_equal(stored, given)
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the operating system's random source failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `stored` is a hash this build cannot read (told at start, not at the first login).
pub fn unreadable(stored: &str) -> Option<String> {
    if !stored.starts_with("$argon2") {
        return None;
    }
    match PasswordHash::new(stored) {
        Err(e) => Some(e.to_string()),
        Ok(hash) if hash.hash.is_none() || hash.salt.is_none() => {
            Some("it has no salt or no hash".into())
        }
        Ok(hash) => argon2::Algorithm::try_from(hash.algorithm)
            .and_then(|_| argon2::Params::try_from(&hash))
            .err()
            .map(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_passwords() {
        assert!(matches("live777", "live777"));
        assert!(!matches("live777", "live7777"));
        assert!(!matches("live777", ""));
        let hashed = hash("s3cret").unwrap();
        assert!(hashed.starts_with("$argon2id$"), "{hashed}");
        assert!(matches(&hashed, "s3cret"));
        assert!(!matches(&hashed, "s3cre"));
        assert!(unreadable(&hashed).is_none());
        assert!(unreadable("$argon2id$garbage").is_some());
        assert!(!matches("$argon2id$garbage", "$argon2id$garbage"));
    }
}
