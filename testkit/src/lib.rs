//! Verge's test harness, shared by the end-to-end tests in `tests/` and the benchmarks in
//! `examples/`: a dev-dependency of the root package, never part of the product.
//!
//! - this file: the workspace's binaries ([`bin`], built once per test process), child
//!   processes that are killed (and scratch directories removed) when they go out of scope
//!   ([`Proc`], [`TempDir`]), a minimal HTTP/1.1 client ([`http`], [`request`], [`get`],
//!   [`send`] over `verge::whep::http`), bounded waits ([`wait_for`]).
//! - [`edge`]: a manager and one agent on loopback with ffmpeg publishing to it, the fixture
//!   most tests share; [`edge::tool`] finds ffmpeg and the other external tools.
//! - [`mqtt`]: [`mqtt::Spy`], an MQTT client that keeps what it overhears, for the
//!   protocol's conformance and attack tests.
//! - [`rtmp`]: [`rtmp::RtmpClient`], a scriptable RTMP client for malformed-input tests.
//! - [`s3`]: s3s-fs, a real S3 server, for `[storage]`.
//! - [`ffprobe`]: ffprobe as a real decoder that counts what it decoded.
//! - [`chromium`]: headless Chromium over the DevTools pipe, in a network namespace of the
//!   test's own.
//! - [`netns`]: network namespaces, veths, NAT and shaped uplinks (tbf), for the NAT and
//!   cluster tests (root only).
//! - [`link`]: a box at the end of a long shaped link (tbf rate, a delay in user space), for
//!   the tunnel on real paths (root only).
//! - [`postgres`]: a real PostgreSQL the test stops and starts.
//! - [`rabbitmq`]: a real clustered MQTT broker (RabbitMQ's nodes joined on loopback) whose
//!   nodes the test kills.
//! - [`prometheus`]: a `/metrics` page read by a real Prometheus parser.
//! - [`measure`]: what the benchmarks read about processes: CPU time, memory, percentiles.
//! - [`whep`]: a WHEP viewer past its first picture ([`whep::watching`]).
//! - [`liveion`]: live777's liveion node and its `whipinto` publisher (`../shared/bin`).
//!
//! Ports: every Verge process listens on port 0 and tells what it bound through its ready file
//! ([`Proc::spawn_ready`]), so no test guesses a free port and races another for it. Where a
//! port must be known before a process starts (a third-party broker, a manager restarted on
//! the same broker port), [`reserve_port`] holds it so nobody else can take it meanwhile.

pub mod chromium;
pub mod edge;
pub mod ffprobe;
pub mod link;
pub mod liveion;
pub mod measure;
pub mod mqtt;
pub mod netns;
pub mod postgres;
pub mod prometheus;
pub mod rabbitmq;
pub mod rtmp;
pub mod s3;
pub mod whep;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use verge_broker::PortReservation;
pub use verge_protocol::ready::Listeners;

/// A loopback port held for a process the test starts later, so nobody else takes it in
/// between (and across a restart): see [`PortReservation`].
pub fn reserve_port() -> PortReservation {
    PortReservation::take("test", SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("reserve a loopback port")
}

/// `127.0.0.1:0` as TOML wants it: a listener that takes any free port.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// A TCP connection to `addr` from `source` (any of 127.0.0.0/8 on Linux): how a test plays
/// several clients on different addresses.
pub fn tcp_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        tokio::time::timeout(Duration::from_secs(15), socket.connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))?
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The path of a workspace binary, built once per test process (a no-op when up to date).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test>-hash → target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "verge-agent",
            "-p",
            "verge-manager",
            "-p",
            "verge",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace_root());
        // `cargo test` gives the test process the package's CARGO_PKG_*, CARGO_MANIFEST_DIR, …;
        // build scripts such as ring's watch those (rerun-if-env-changed), so inherited they
        // would rebuild ring and all above it here, and again in the next `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_by_cargo_test = name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_CFG_")
                || name.starts_with("CARGO_MANIFEST_")
                || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&&*name);
            if set_by_cargo_test {
                cmd.env_remove(&*name);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        profile_dir
    });
    dir.join(name)
}

/// The workspace's root folder (this crate's parent), where [`bin`] runs `cargo build`.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the workspace root")
}

/// A scratch directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "verge-test-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    /// Removed, unless `VERGE_TEST_KEEP` is set (to read the logs of a failing test).
    fn drop(&mut self) {
        if std::env::var_os("VERGE_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process with its output in a log file; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[&str], log_dir: &Path) -> Self {
        Self::spawn_with_env(name, program, args, log_dir, &[])
    }

    /// [`Proc::spawn`] with extra environment variables (they override the defaults).
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[&str],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        // A manager's recording index goes into the test's folder unless the test names one.
        let database = format!("sqlite://{}/{name}.db?mode=rwc", log_dir.display());
        let child = Command::new(program)
            .args(args)
            // VERGE_TEST_RUST_LOG: more detail from every Verge process a test starts.
            .env(
                "RUST_LOG",
                std::env::var("VERGE_TEST_RUST_LOG").unwrap_or_else(|_| "info,rumqttd=warn".into()),
            )
            .env("NO_COLOR", "1")
            .env("DATABASE_URL", database)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    /// Starts a Verge process with `--ready-file` appended and waits (bounded) until it has
    /// written the addresses it bound. Fails the test with its log if it exits first.
    pub fn spawn_ready(
        name: &str,
        program: &Path,
        args: &[&str],
        log_dir: &Path,
    ) -> (Self, Listeners) {
        Self::spawn_ready_with_env(name, program, args, log_dir, &[])
    }

    /// `verge-manager --config {config}`, once it has bound its listeners (its log in `dir`).
    pub fn manager(config: &Path, dir: &Path) -> (Self, Listeners) {
        let config = config.to_str().expect("a UTF-8 temp path");
        Self::spawn_ready("manager", &bin("verge-manager"), &["--config", config], dir)
    }

    /// [`Proc::spawn_ready`] with extra environment variables.
    pub fn spawn_ready_with_env(
        name: &str,
        program: &Path,
        args: &[&str],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> (Self, Listeners) {
        let ready = log_dir.join(format!("{name}.ready.json"));
        let _ = std::fs::remove_file(&ready);
        let ready_arg = ready.to_str().expect("a UTF-8 temp path");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--ready-file", ready_arg]);
        let mut proc = Self::spawn_with_env(name, program, &all, log_dir, env);
        let listeners = wait_for(READY_TIMEOUT, || {
            if let Ok(listeners) = Listeners::read(&ready) {
                return Some(Ok(listeners));
            }
            proc.exited().then_some(Err(()))
        });
        match listeners {
            Some(Ok(listeners)) => (proc, listeners),
            Some(Err(())) => panic!("{name} exited before it was ready:\n{}", proc.log_text()),
            None => panic!(
                "{name} wrote no ready file in {READY_TIMEOUT:?}:\n{}",
                proc.log_text()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Whether every thread of the process is stopped (`T`, after SIGSTOP). `kill` returns
    /// before a thread running on another core has stopped.
    pub fn is_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    let state = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .next()?
                        .to_string();
                    Some(state == "T" || state == "t")
                })
                .unwrap_or(false)
        })
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a process may take to bind its listeners. Generous: two test suites may share
/// two cores.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The address of listener `name` in a ready file, or a test failure naming what is there.
pub fn listener(listeners: &Listeners, name: &str) -> SocketAddr {
    listeners.get(name).unwrap_or_else(|| {
        panic!(
            "no {name} listener in the ready file: {}",
            listeners.summary()
        )
    })
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response from [`http`]: the WHEP client's response, plus a JSON reader that fails the
/// test with the body when it is not JSON.
#[derive(Debug)]
pub struct Response(verge::whep::http::Response);

impl std::ops::Deref for Response {
    type Target = verge::whep::http::Response;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request with `Connection: close`, bounded by `timeout`.
pub fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    request(method, addr, path, &[], body, timeout)
}

/// [`http`] with extra request headers.
pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response"))
}

/// A request without a body, for a test: fails the test if the exchange itself fails.
pub fn send(method: &str, addr: SocketAddr, path: &str) -> Response {
    http(method, addr, path, b"", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    http("GET", addr, path, b"", Duration::from_secs(10))
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    verge::whep::http::parse(raw).map(Response)
}

/// A liveman-style token (HS256 JWT with `id`, `exp`, `mode`) signed here, independently of
/// the manager's code, so tests check the format the manager reads.
pub fn liveman_jwt(secret: &str, id: &str, mode: u8, exp: u64) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"id":"{id}","exp":{exp},"mode":{mode}}}"#));
    let input = format!("{header}.{claims}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}
