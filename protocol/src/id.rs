//! Names of agents and managers. They become MQTT topic levels and broker client ids, so they
//! are restricted to characters that are neither MQTT wildcards nor separators.

use std::fmt;

/// Longest accepted name, far below MQTT's topic limits and comfortable in logs.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id must not be empty")]
    Empty,
    #[error("an id is at most {MAX_ID_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("an id may hold only ASCII letters, digits, '-', '_' and '.', found {0:?}")]
    BadChar(char),
}

/// Checks that `id` can be used as an agent or manager name.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

/// Longest stream app or name.
pub const MAX_STREAM_PART_LEN: usize = 128;

/// Checks one part (`app` or `name`) of a stream id `{app}/{name}`. Parts become URL path
/// segments and file names, so they use the same safe alphabet as ids.
pub fn validate_stream_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() || part.len() > MAX_STREAM_PART_LEN {
        return Err(format!(
            "{what} {part:?} must have 1 to {MAX_STREAM_PART_LEN} characters"
        ));
    }
    if matches!(part, "." | "..") {
        return Err(format!("{what} {part:?} is not a name"));
    }
    match part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "{what} {part:?} holds {c:?}; use letters, digits, '-', '_', '.'"
        )),
        None => Ok(()),
    }
}

/// A validated agent or manager name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        validate(&id)?;
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["edge-1", "box_7.lan", "A", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn stream_parts_are_safe_path_segments() {
        assert!(validate_stream_part("name", "cam-1.main_2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(validate_stream_part("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_topic_metacharacters_and_bad_lengths() {
        assert_eq!(validate(""), Err(IdError::Empty));
        assert_eq!(validate(&"x".repeat(65)), Err(IdError::TooLong(65)));
        for (bad, c) in [
            ("a/b", '/'),
            ("a+", '+'),
            ("#", '#'),
            ("a b", ' '),
            ("é", 'é'),
        ] {
            assert_eq!(validate(bad), Err(IdError::BadChar(c)));
        }
    }
}
