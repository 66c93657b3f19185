//! `[storage]`: where boxes upload their recordings, so a day outlives its box and its
//! playback costs the box's uplink nothing. The boxes never hold credentials: they ask the
//! manager (the `storage.presign` call) for URLs that allow one PUT each, for a while.
//!
//! - `s3`: any S3-compatible server, through the `object_store` crate: presigned PUT and GET
//!   URLs (SigV4), and ranged reads streamed through the manager.
//! - `fs`: a folder on the manager's machine; the URLs are the manager's own
//!   (`PUT /api/storage/put/{path}?expires=…&sig=…`, an HMAC under a key of this process).
//!
//! Objects are named as on the box, under `prefix`: `{prefix}{app}/{name}/{yyyy}/{mm}/{dd}/{file}`.

mod fs;
pub mod retention;
mod s3;

use std::time::Duration;

use axum::body::Body;

use crate::config::{StorageConfig, StorageKind};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no such object")]
    NotFound,
    #[error("the range is outside the object's {0} bytes")]
    Range(u64),
    #[error("{0}")]
    Config(String),
    #[error("storage: {0}")]
    Backend(String),
}

/// An object read, whole or in part.
pub struct Fetched {
    /// The object's length.
    pub len: u64,
    /// The bytes sent, inclusive, when a range was asked for.
    pub range: Option<(u64, u64)>,
    pub body: Body,
}

enum Backend {
    Fs(fs::FsStore),
    S3(s3::S3Store),
}

pub struct Storage {
    backend: Backend,
    prefix: String,
    presign: Duration,
    /// Playback answers with a redirect to a presigned GET.
    pub redirect: bool,
    /// Days kept in storage (objects and index rows); 0 keeps everything.
    pub keep_days: u32,
}

impl Storage {
    /// `public_url`: the manager's URL as boxes reach it (for `fs`'s upload URLs).
    pub fn new(cfg: &StorageConfig, public_url: &str) -> Result<Self, StorageError> {
        let backend = match cfg.kind {
            StorageKind::Fs => {
                let root = cfg
                    .root
                    .clone()
                    .ok_or_else(|| StorageError::Config("type = \"fs\" needs root".into()))?;
                Backend::Fs(fs::FsStore::new(root, public_url)?)
            }
            StorageKind::S3 => Backend::S3(s3::S3Store::new(cfg)?),
        };
        Ok(Self {
            backend,
            prefix: cfg.prefix.clone(),
            presign: Duration::from_secs(cfg.presign_secs),
            redirect: cfg.redirect,
            keep_days: cfg.keep_days,
        })
    }

    /// What it is, for logs: `s3 bucket`, `fs /srv/recordings`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Fs(f) => format!("fs {}", f.root().display()),
            Backend::S3(s) => format!("s3 {}", s.describe()),
        }
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    /// How long a URL made now stays valid.
    pub fn presign_for(&self) -> Duration {
        self.presign
    }

    /// A URL that allows one `PUT` of the recorded file `path` (`{app}/{name}/…/{file}`).
    pub async fn upload_url(&self, path: &str) -> Result<String, StorageError> {
        let key = self.key(path);
        match &self.backend {
            Backend::Fs(f) => Ok(f.signed_url("PUT", &key, self.presign)),
            Backend::S3(s) => {
                s.signed_url(axum::http::Method::PUT, &key, self.presign)
                    .await
            }
        }
    }

    /// A URL a player may `GET` `path` from (for `redirect`); `None` where objects are read
    /// only through the manager (`fs`).
    pub async fn download_url(&self, path: &str) -> Result<Option<String>, StorageError> {
        match &self.backend {
            Backend::Fs(_) => Ok(None),
            Backend::S3(s) => s
                .signed_url(axum::http::Method::GET, &self.key(path), self.presign)
                .await
                .map(Some),
        }
    }

    /// `path`, or the part `range` (an HTTP `Range` header's value) names.
    pub async fn get(&self, path: &str, range: Option<&str>) -> Result<Fetched, StorageError> {
        let key = self.key(path);
        match &self.backend {
            Backend::Fs(f) => f.get(&key, range).await,
            Backend::S3(s) => s.get(&key, range).await,
        }
    }

    /// Removes every object of the stream-day `day` (`{app}/{name}/{yyyy}/{mm}/{dd}`); the
    /// number removed.
    pub async fn delete_day(&self, day: &str) -> Result<u64, StorageError> {
        let key = self.key(day);
        match &self.backend {
            Backend::Fs(f) => f.delete_folder(&key).await,
            Backend::S3(s) => s.delete_prefix(&key).await,
        }
    }

    /// The `fs` backend, for its upload route.
    pub fn fs(&self) -> Option<&fs::FsStore> {
        match &self.backend {
            Backend::Fs(f) => Some(f),
            Backend::S3(_) => None,
        }
    }

    /// The key `path` is stored under (the `fs` upload route checks URLs against it).
    pub fn key_of(&self, path: &str) -> String {
        self.key(path)
    }
}
