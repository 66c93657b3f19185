//! A real PostgreSQL for tests: a data folder of its own under the test's temporary folder, a
//! free port, `trust` authentication on loopback, stopped and started by the test (a database
//! that goes down and comes back) and killed when dropped. As root, the server runs as the
//! `postgres` user (PostgreSQL refuses to run as root).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{PortReservation, Proc, reserve_port, wait_for};

pub struct Postgres {
    /// `postgres://verge@127.0.0.1:{port}/postgres`.
    pub url: String,
    pub addr: SocketAddr,
    bin: PathBuf,
    data: PathBuf,
    log_dir: PathBuf,
    server: Option<Proc>,
    runs: u32,
    /// Held while the server is down, so no other test takes the port.
    _port: PortReservation,
}

/// The folder holding `initdb` and `postgres`: Debian's versioned one, newest first.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL is not installed: run scripts/setup")
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// `program args…`, as the `postgres` user when we are root.
fn command(program: &Path, args: &[&str]) -> (PathBuf, Vec<String>) {
    let mut all: Vec<String> = Vec::new();
    if as_root() {
        all.extend(
            ["--reuid=postgres", "--regid=postgres", "--init-groups"]
                .iter()
                .map(|s| s.to_string()),
        );
        all.push(program.display().to_string());
        all.extend(args.iter().map(|s| s.to_string()));
        (PathBuf::from("setpriv"), all)
    } else {
        (
            program.to_path_buf(),
            args.iter().map(|s| s.to_string()).collect(),
        )
    }
}

impl Postgres {
    /// A new cluster in `dir/pg`, started.
    pub fn start(dir: &Path) -> Self {
        let bin = bin_dir();
        let data = dir.join("pg");
        std::fs::create_dir_all(&data).expect("create the data folder");
        if as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data folder");
        }
        let data_arg = data.display().to_string();
        let (program, args) = command(
            &bin.join("initdb"),
            &["-D", &data_arg, "-U", "verge", "--auth=trust", "-E", "UTF8"],
        );
        let out = Command::new(&program)
            .args(&args)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = reserve_port();
        let addr = port.addr();
        let mut pg = Self {
            url: format!("postgres://verge@127.0.0.1:{}/postgres", addr.port()),
            addr,
            bin,
            data,
            log_dir: dir.to_path_buf(),
            server: None,
            runs: 0,
            _port: port,
        };
        pg.resume();
        pg
    }

    /// Starts the server again (after [`Postgres::stop`]) and waits until it accepts
    /// connections.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "already running");
        self.runs += 1;
        let data = self.data.display().to_string();
        let port = self.addr.port().to_string();
        let (program, args) = command(
            &self.bin.join("postgres"),
            &[
                "-D",
                &data,
                "-p",
                &port,
                "-k",
                &data,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Proc::spawn(
            &format!("postgres-{}", self.runs),
            &program,
            &args,
            &self.log_dir,
        );
        let ready = wait_for(Duration::from_secs(30), || {
            if server.exited() {
                return Some(false);
            }
            let status = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "verge", "-q"])
                .status()
                .ok()?;
            status.success().then_some(true)
        });
        assert!(
            ready == Some(true),
            "PostgreSQL did not start:\n{}",
            server.log_text()
        );
        self.server = Some(server);
    }

    /// Stops the server (SIGINT: fast shutdown), waiting for it to exit.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.signal("INT");
            let mut server = server;
            let exited = wait_for(Duration::from_secs(30), || server.exited().then_some(()));
            assert!(exited.is_some(), "PostgreSQL did not stop");
        }
    }

    /// One SQL statement's result, through psql (unaligned, no header).
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([&self.url, "-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}
