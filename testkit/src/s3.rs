//! s3s-fs, a real S3 server over a folder (SigV4 headers and presigned URLs checked, ranges,
//! listings), as `scripts/setup` builds it into the tools cache (or `VERGE_S3S_FS`): the
//! storage tests' and benchmark's object store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Proc, wait_for};

pub const ACCESS_KEY: &str = "verge-test";
pub const SECRET_KEY: &str = "verge-test-secret";
/// The bucket the tests use: a folder under the server's root.
pub const BUCKET: &str = "verge";

/// The s3s-fs binary.
pub fn s3s_fs() -> PathBuf {
    let path = std::env::var_os("VERGE_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(crate::liveion::TOOLS_CACHE).join("s3s-fs"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (its setup builds s3s-fs)",
        path.display()
    );
    path
}

/// s3s-fs serving `root` on `addr`, with [`BUCKET`] made; returns once it accepts.
pub fn start(root: &Path, addr: SocketAddr) -> Proc {
    std::fs::create_dir_all(root.join(BUCKET)).expect("bucket folder");
    let server = Proc::spawn(
        "s3s-fs",
        &s3s_fs(),
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
            root.to_str().expect("utf-8 path"),
        ],
        root,
    );
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).ok().map(|_| ())
    })
    .expect("s3s-fs listening");
    server
}

/// manager.toml's `[storage]` for the server at `addr`, objects under `recordings/`.
pub fn storage_toml(addr: SocketAddr) -> String {
    format!(
        "[storage]\ntype = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"http://{addr}\"\n\
         path_style = true\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\
         prefix = \"recordings/\"\n"
    )
}

/// Where the server keeps the objects of that `[storage]`.
pub fn objects(root: &Path) -> PathBuf {
    root.join(BUCKET).join("recordings")
}
