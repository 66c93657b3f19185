//! The ready file: the addresses a process really bound, written once every listener is up.
//!
//! Every Verge process accepts port 0 for any listener. With `--ready-file PATH` it writes one
//! JSON object naming each listener's bound address, `{"http": "127.0.0.1:40123", "mqtt": …}`,
//! so a script or a test starts it without guessing a free port (and without the race between
//! picking a port and the process binding it). The file is written to a temporary name in the
//! same directory and renamed, so a reader never sees half of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Listener name → bound address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Listeners(BTreeMap<String, SocketAddr>);

#[derive(Debug, thiserror::Error)]
pub enum ReadyFileError {
    #[error("ready file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ready file {path} is not a JSON object of listener addresses: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl Listeners {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) listener `name`.
    pub fn with(mut self, name: &str, addr: SocketAddr) -> Self {
        self.0.insert(name.to_string(), addr);
        self
    }

    pub fn get(&self, name: &str) -> Option<SocketAddr> {
        self.0.get(name).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// `http=127.0.0.1:8080 mqtt=127.0.0.1:1883`, for a log line.
    pub fn summary(&self) -> String {
        self.iter()
            .map(|(name, addr)| format!("{name}={addr}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The JSON text of the ready file.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }

    /// Parses a ready file's text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Writes the ready file atomically: a temporary file beside `path`, then a rename.
    pub fn write_atomic(&self, path: &Path) -> Result<(), ReadyFileError> {
        let io = |source| ReadyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ready".into());
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(self.to_json().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }

    /// Reads a ready file.
    pub fn read(path: &Path) -> Result<Self, ReadyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReadyFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| ReadyFileError::Format {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("verge-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready.json");
        let listeners = Listeners::new()
            .with("http", addr(40123))
            .with("mqtt", addr(40124));
        listeners.write_atomic(&path).unwrap();
        assert_eq!(Listeners::read(&path).unwrap(), listeners);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.trim(),
            r#"{"http":"127.0.0.1:40123","mqtt":"127.0.0.1:40124"}"#
        );
        // Only the file itself is left: the temporary name was renamed away.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summary_names_every_listener() {
        let l = Listeners::new()
            .with("rtmp", addr(1935))
            .with("http", addr(7001));
        assert_eq!(l.summary(), "http=127.0.0.1:7001 rtmp=127.0.0.1:1935");
        assert_eq!(l.get("rtmp"), Some(addr(1935)));
        assert_eq!(l.get("mqtt"), None);
    }

    #[test]
    fn refuses_what_is_not_a_listener_map() {
        for bad in ["", "[]", r#"{"http": "nowhere"}"#, r#"{"http": 8080}"#, "{"] {
            assert!(Listeners::from_json(bad).is_err(), "{bad:?} accepted");
        }
        let missing = Path::new("/nonexistent/verge/ready.json");
        let err = Listeners::read(missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/verge/ready.json"), "{err}");
    }

    #[test]
    fn an_unwritable_path_is_an_error_that_names_it() {
        let err = Listeners::new()
            .with("http", addr(1))
            .write_atomic(Path::new("/nonexistent/verge/ready.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/verge/ready.json"), "{err}");
    }
}
