//! `[storage] type = "s3"`: an S3-compatible server through `object_store` (SigV4 signing,
//! presigned URLs, ranged reads). Its HTTP client is reqwest over rustls with the process's
//! ring provider, so ring stays the one crypto provider.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::{Fetched, StorageError};
use crate::config::StorageConfig;

pub struct S3Store {
    store: Arc<AmazonS3>,
    bucket: String,
    endpoint: String,
}

fn backend(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        other => StorageError::Backend(other.to_string()),
    }
}

impl S3Store {
    pub fn new(cfg: &StorageConfig) -> Result<Self, StorageError> {
        // reqwest's rustls wants a process-wide provider: ring, as everywhere in Verge.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let key_id = env("AWS_ACCESS_KEY_ID").unwrap_or_else(|| cfg.access_key_id.clone());
        let secret = env("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| cfg.secret_access_key.clone());
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret);
        if !cfg.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&cfg.endpoint)
                .with_allow_http(cfg.endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(|e| StorageError::Config(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            bucket: cfg.bucket.clone(),
            endpoint: cfg.endpoint.clone(),
        })
    }

    pub fn describe(&self) -> String {
        if self.endpoint.is_empty() {
            self.bucket.clone()
        } else {
            format!("{} at {}", self.bucket, self.endpoint)
        }
    }

    pub async fn signed_url(
        &self,
        method: axum::http::Method,
        key: &str,
        ttl: Duration,
    ) -> Result<String, StorageError> {
        let path = Path::parse(key).map_err(|e| StorageError::Backend(e.to_string()))?;
        self.store
            .signed_url(method, &path, ttl)
            .await
            .map(|url| url.to_string())
            .map_err(backend)
    }

    /// Removes every object under `prefix/`; the number removed.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        use futures_util::StreamExt;
        let path = Path::parse(prefix).map_err(|e| StorageError::Backend(e.to_string()))?;
        let mut listed = self.store.list(Some(&path));
        let mut removed = 0;
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(backend)?;
            self.store.delete(&meta.location).await.map_err(backend)?;
            removed += 1;
        }
        Ok(removed)
    }

    pub async fn get(&self, key: &str, range: Option<&str>) -> Result<Fetched, StorageError> {
        let path = Path::parse(key).map_err(|e| StorageError::Backend(e.to_string()))?;
        let len = self.store.head(&path).await.map_err(backend)?.size;
        let range = match range.and_then(|r| verge_serve::range::parse_range(r, len)) {
            Some(Ok(r)) => Some(r),
            Some(Err(())) => return Err(StorageError::Range(len)),
            None => None,
        };
        let options = GetOptions {
            range: range.map(|(a, b)| GetRange::Bounded(a..b + 1)),
            ..Default::default()
        };
        let got = self.store.get_opts(&path, options).await.map_err(backend)?;
        Ok(Fetched {
            len,
            range,
            body: Body::from_stream(got.into_stream()),
        })
    }
}
