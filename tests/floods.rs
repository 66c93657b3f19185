//! A manager under the floods of issue #27's probe: idle and slowloris connections past its
//! open-files limit, and a login flood from many addresses. Either stopped the manager before;
//! here it keeps answering, and its log stays small.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use verge_testkit::{Listeners, Proc, TempDir, bin, listener, measure, tcp_from};

/// The open-files limit the manager runs under: below the probe's connections, above what
/// the test's caps let peers hold (the manager counts 413 and would warn past it).
const OPEN_FILES: u32 = 512;

/// A raw MQTT 3.1.1 CONNECT (clean session, keepalive 10 s) with a username and password.
fn mqtt_connect(id: &str, password: &str) -> Vec<u8> {
    let field = |s: &str| {
        let mut f = (s.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(s.as_bytes());
        f
    };
    let mut body = field("MQTT");
    body.extend_from_slice(&[4, 0b1100_0010, 0, 10]);
    for part in [id, id, password] {
        body.extend(field(part));
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// edge-1 connects to the broker at `mqtt` and is accepted (CONNACK 0) within `patience`.
fn agent_connects(mqtt: SocketAddr, patience: Duration) {
    let mut agent = TcpStream::connect_timeout(&mqtt, patience).expect("MQTT");
    agent.write_all(&mqtt_connect("edge-1", "s1")).unwrap();
    agent.set_read_timeout(Some(patience)).unwrap();
    let mut connack = [0u8; 4];
    agent
        .read_exact(&mut connack)
        .expect("CONNACK during the flood");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK, accepted");
}

/// Whether the peer closes `stream` before `deadline` (bytes it sends first are read).
fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A manager with `settings` (its `[http]` and `[broker]`) and edge-1 enrolled, started by
/// `/bin/sh -c {limit}` (a `ulimit` and an `exec`). The flood outnumbers the manager's
/// descriptors: this process's own limit is raised to hold it.
fn manager_under_limit(dir: &TempDir, settings: &str, limit: &str) -> (Proc, Listeners) {
    verge_mqtt::process::raise_open_files_limit();
    let cfg = dir.write(
        "manager.toml",
        &format!(
            "{settings}[keys]\nfile = \"{}/keys.json\"\n\
             [[agents]]\nid = \"edge-1\"\nsecret = \"s1\"\n",
            dir.path().display()
        ),
    );
    let manager = bin("verge-manager");
    let args = [
        "-c",
        limit,
        manager.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    Proc::spawn_ready("manager", Path::new("/bin/sh"), &args, dir.path())
}

#[test]
fn idle_and_slowloris_connections_past_the_open_files_limit_do_not_stop_the_manager() {
    // The flood outnumbers the manager's descriptors; this process holds it.
    let dir = TempDir::new("floods-conn");
    let (proc, listeners) = manager_under_limit(
        &dir,
        "[http]\nlisten = \"127.0.0.1:0\"\nmax_connections = 64\nheader_timeout_secs = 1\n\
         idle_timeout_secs = 5\n\
         [broker]\nlisten = \"127.0.0.1:0\"\nmax_connections = 32\nconnect_timeout_ms = 1000\n\
         accept_interval_ms = 20\n",
        &format!("ulimit -n {OPEN_FILES} && exec \"$0\" \"$@\""),
    );
    let (http, mqtt) = (listener(&listeners, "http"), listener(&listeners, "mqtt"));
    let log_before = std::fs::metadata(&proc.log).unwrap().len();

    // Watch the manager's descriptors while the flood lasts.
    let flooding = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(Mutex::new(0usize));
    let watcher = std::thread::spawn({
        let (flooding, peak, pid) = (flooding.clone(), peak.clone(), proc.pid());
        move || {
            while flooding.load(Ordering::Relaxed) {
                let n = descriptors(pid);
                let mut p = peak.lock().unwrap();
                *p = (*p).max(n);
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });

    // The flood: 300 idle and 300 slowloris connections to HTTP, 200 idle ones to MQTT, 800
    // in all, opened as fast as the manager's listen queues take them and never closed by the
    // attacker. (The manager drains them: 64 at a time, each closed 1 s after its accept.)
    let attacker = |addr: SocketAddr, count: usize, first_bytes: &'static [u8]| {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while held.len() < count && flooding.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else {
                    continue;
                };
                let _ = s.write_all(first_bytes);
                held.push(s);
            }
            held
        })
    };
    let attackers = [
        attacker(http, 300, b""),
        attacker(
            http,
            300,
            b"GET /api/health HTTP/1.1\r\nHost: manager\r\nX-a: ",
        ),
        attacker(mqtt, 200, b""),
    ];
    std::thread::sleep(Duration::from_secs(2));

    // Meanwhile an API client is answered,
    let flood_start = Instant::now();
    let health = verge_testkit::http("GET", http, "/api/health", b"", Duration::from_secs(40))
        .expect("GET /api/health during the flood");
    let health_after = flood_start.elapsed();
    assert_eq!(health.status, 200, "{}", health.text());

    // and an agent connects to the broker.
    agent_connects(mqtt, Duration::from_secs(40));
    let connack_after = flood_start.elapsed();

    // Every connection that never finished its request is closed by the manager.
    let mut held: Vec<TcpStream> = attackers
        .into_iter()
        .flat_map(|a| a.join().unwrap())
        .collect();
    let opened_after = flood_start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let open: usize = held
        .iter_mut()
        .map(|s| usize::from(!closed_by(s, deadline)))
        .sum();
    let closed_after = flood_start.elapsed();
    flooding.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let peak = *peak.lock().unwrap();
    let log = proc.log_text();
    let grown = std::fs::metadata(&proc.log).unwrap().len() - log_before;
    eprintln!(
        "health after {health_after:?}, CONNACK after {connack_after:?}; {} attacking \
         connections opened after {opened_after:?}, all closed after {closed_after:?}; peak \
         {peak} descriptors of {OPEN_FILES}; log grew {grown} bytes",
        held.len()
    );
    assert_eq!(
        held.len(),
        800,
        "the attacker could not open its connections"
    );
    assert_eq!(open, 0, "connections the manager never closed");
    assert!(
        peak < OPEN_FILES as usize,
        "the manager reached its open-files limit"
    );
    assert!(
        !log.contains("Unable to accept") && !log.contains("accept failed"),
        "accepts failed: the caps did not keep the manager within its descriptors"
    );
    assert!(grown < 1 << 20, "the log grew {grown} bytes");
    // And it still serves once the flood is over.
    let health = verge_testkit::get(http, "/api/health").expect("GET /api/health after");
    assert_eq!(health.status, 200);
}

/// The probe's shape: many addresses, five guesses each, as fast as they are answered.
#[test]
fn a_login_flood_from_many_addresses_is_refused_after_the_global_budget_and_health_stays_fast() {
    const ADDRESSES: u8 = 40;
    const GUESSES: usize = 5;
    // manager/src/auth/limit.rs
    const GLOBAL_BURST: usize = 30;
    const GLOBAL_REFILL_SECS: f64 = 2.0;
    let dir = TempDir::new("floods-login");
    let hash = verge_manager::auth::password::hash("the right one").unwrap();
    let cfg = dir.write(
        "manager.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[broker]\nlisten = \"127.0.0.1:0\"\n\
             [keys]\nfile = \"{}/keys.json\"\n\
             [auth]\nsecret = \"jwt-secret\"\n\
             [[auth.accounts]]\nusername = \"ops\"\npassword = \"{hash}\"\n",
            dir.path().display()
        ),
    );
    let (proc, listeners) = Proc::manager(&cfg, dir.path());
    let http = listener(&listeners, "http");

    // /api/health, polled while the flood lasts.
    let flooding = Arc::new(AtomicBool::new(true));
    let prober = std::thread::spawn({
        let flooding = flooding.clone();
        move || {
            let mut latencies = Vec::new();
            while flooding.load(Ordering::Relaxed) {
                let started = Instant::now();
                let health = verge_testkit::get(http, "/api/health").expect("health");
                assert_eq!(health.status, 200);
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_millis(20));
            }
            latencies
        }
    });

    /// What one guess came to.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Wrong,
        RefusedForEveryone,
    }
    let login = |from: IpAddr| -> (u16, String, Option<String>) {
        let mut s = tcp_from(from, http).expect("connect from a loopback address");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = r#"{"username":"ops","password":"a guess"}"#;
        write!(
            s,
            "POST /api/login HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("login answer");
        let status = raw[9..12].parse().unwrap();
        let retry_after = raw.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        });
        (status, raw, retry_after)
    };
    let started = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let attackers: Vec<_> = (0..8u8)
            .map(|t| {
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for a in (0..ADDRESSES).filter(|a| a % 8 == t) {
                        let from = IpAddr::from([127, 0, 0, 10 + a]);
                        for _ in 0..GUESSES {
                            // A login that finds a password check in progress is told to come
                            // back at once; a guesser does, until its guess is judged.
                            loop {
                                let (status, raw, retry_after) = login(from);
                                match status {
                                    401 => outcomes.push(Outcome::Wrong),
                                    429 if raw.contains("being checked") => {
                                        assert_eq!(retry_after.as_deref(), Some("1"));
                                        std::thread::sleep(Duration::from_millis(5));
                                        continue;
                                    }
                                    429 if raw.contains("from all addresses") => {
                                        let wait: u64 =
                                            retry_after.expect("Retry-After").parse().unwrap();
                                        assert!((1..=2).contains(&wait), "Retry-After {wait}");
                                        outcomes.push(Outcome::RefusedForEveryone);
                                    }
                                    _ => panic!("unexpected answer to a guess:\n{raw}"),
                                }
                                break;
                            }
                        }
                    }
                    outcomes
                })
            })
            .collect();
        attackers
            .into_iter()
            .flat_map(|a| a.join().unwrap())
            .collect()
    });
    let took = started.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let latencies = prober.join().unwrap();
    let judged = outcomes.iter().filter(|o| **o == Outcome::Wrong).count();
    let refused = outcomes.len() - judged;
    let median = measure::percentile(&latencies, 0.5);
    let max = latencies.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{} guesses in {took:?}: {judged} judged, {refused} refused for everyone; /api/health \
         median {median:.1} ms, max {max:.1} ms over {} probes",
        outcomes.len(),
        latencies.len()
    );
    assert_eq!(outcomes.len(), usize::from(ADDRESSES) * GUESSES);
    let budget = GLOBAL_BURST + (took.as_secs_f64() / GLOBAL_REFILL_SECS).ceil() as usize;
    assert!(
        judged <= budget,
        "{judged} guesses judged in {took:?}; the budget allows {budget}"
    );
    assert!(refused > 0, "no guess was refused for everyone");
    assert!(latencies.len() >= 5, "too few health probes: {latencies:?}");
    assert!(median < 100.0, "/api/health median {median:.1} ms");
    assert!(max < 1000.0, "/api/health max {max:.1} ms");
    // The log says so once, not per refusal.
    let log = proc.log_text();
    assert_eq!(
        log.matches("too many failed logins from all addresses")
            .count(),
        1,
        "{log}"
    );
}

/// The probe's numbers against the shipped defaults (the systemd unit's `LimitNOFILE`):
/// 3,000 slowloris and 1,100 idle connections to HTTP. `GET /api/health` answers within
/// 100 ms while they are held, an agent connects over MQTT, every attacking connection is
/// closed at the header timeout, and the log grows by less than 1 MB. (Before: ~1,100 idle
/// connections used up the 1,024 descriptors, and both HTTP and MQTT accepts stopped.)
#[test]
fn the_probes_flood_of_slowloris_and_idle_connections_leaves_health_fast() {
    let dir = TempDir::new("floods-probe");
    // The unit's limit (root may raise it; otherwise the hard limit stands).
    let (proc, listeners) = manager_under_limit(
        &dir,
        "[http]\nlisten = \"127.0.0.1:0\"\n[broker]\nlisten = \"127.0.0.1:0\"\n",
        "ulimit -n 65536 2>/dev/null; exec \"$0\" \"$@\"",
    );
    let (http, mqtt) = (listener(&listeners, "http"), listener(&listeners, "mqtt"));
    let log_before = std::fs::metadata(&proc.log).unwrap().len();

    let mut held = Vec::new();
    let opened_at = Instant::now();
    for n in 0..4_100 {
        let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("attacking connection {n}: {e}"));
        if n < 3_000 {
            s.write_all(b"GET /api/health HTTP/1.1\r\nHost: manager\r\nX-a: ")
                .unwrap();
        }
        held.push(s);
    }
    let opened = opened_at.elapsed();
    // The burst sits in the listen queue until the manager has accepted it (a debug build
    // takes a few seconds for 4,100): a request behind it is answered once it has been. What
    // is measured is the manager holding them (the first of them closes at the default header
    // timeout, 10 s after its accept).
    verge_testkit::http("GET", http, "/api/health", b"", Duration::from_secs(60))
        .expect("GET /api/health behind the burst");
    let accepted = opened_at.elapsed();

    // While they are held: health, ten times, each within 100 ms.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let health = verge_testkit::http("GET", http, "/api/health", b"", Duration::from_secs(10))
            .expect("GET /api/health during the flood");
        assert_eq!(health.status, 200, "{}", health.text());
        slowest = slowest.max(started.elapsed());
    }
    // And an agent connects to the broker.
    let started = Instant::now();
    agent_connects(mqtt, Duration::from_secs(10));
    let connack_after = started.elapsed();

    // Every attacking connection is closed at the header timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    let open: usize = held
        .iter_mut()
        .map(|s| usize::from(!closed_by(s, deadline)))
        .sum();
    let grown = std::fs::metadata(&proc.log).unwrap().len() - log_before;
    eprintln!(
        "4,100 attacking connections opened in {opened:?}, accepted after {accepted:?}; health \
         at most {slowest:?}, CONNACK \
         after {connack_after:?}; {open} still open after the header timeout; log grew {grown} bytes"
    );
    assert!(
        slowest < Duration::from_millis(100),
        "health took {slowest:?} under the flood"
    );
    assert_eq!(open, 0, "connections the manager never closed");
    assert!(grown < 1 << 20, "the log grew {grown} bytes");
}
