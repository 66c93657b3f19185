//! TLS for `mqtts://`: rustls with the ring provider (small, no C toolchain beyond what ring
//! needs), trusting the system's roots plus an optional CA file for a private broker.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {0} holds no PEM certificate")]
    EmptyCaFile(String),
    #[error("no trusted root certificates: the system has none and no CA file was given")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration trusting the system roots and, if given, the certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = read_certs(path)?;
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TlsError::CaFile {
        path: shown.clone(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::EmptyCaFile(shown));
    }
    Ok(certs)
}
