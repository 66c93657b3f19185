//! `[storage]` benchmark, with real processes (release builds) and a real S3 server (s3s-fs)
//! on loopback:
//!
//! 1. **Uploads against the cap**: the box records while the S3 server is down, so a backlog
//!    builds; once the server is back, the rate at which the backlog reaches the bucket, with
//!    `[record.upload] max_kbps` at the cap given, next to one uncapped `PUT` of the same
//!    server (the ceiling of this link).
//! 2. **Playback cost at the manager**: one large recorded segment read through the manager,
//!    once from storage and once from the box through the tunnel: the manager's CPU per MB/s
//!    played, and the throughput of each.
//!
//! ```text
//! cargo run --release --example storage_bench -- [--cap-kbps 4000] [--seconds 30] [--mib 128]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use verge_manager::db::Db;
use verge_protocol::index::IndexRow;
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::measure::{TICKS_PER_SEC, cpu_ticks, numeric_flags};
use verge_testkit::{TempDir, reserve_port, wait_for};

fn args() -> (u32, u32, u64) {
    let [cap, seconds, mib] = numeric_flags(
        "storage_bench",
        [("--cap-kbps", 4000), ("--seconds", 30), ("--mib", 128)],
    );
    (cap.max(100) as u32, seconds.max(10) as u32, mib.max(8))
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// GET `path` over HTTP/1.0: the status and the body's length.
fn fetch(addr: SocketAddr, path: &str) -> (u16, u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").expect("request");
    let mut buf = vec![0u8; 256 * 1024];
    let (mut head, mut body, mut in_body) = (Vec::new(), 0u64, false);
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        if in_body {
            body += n as u64;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body += (head.len() - end - 4) as u64;
            in_body = true;
        }
    }
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body)
}

/// One uncapped PUT of `bytes` to the server through a presigned URL: MB/s.
fn raw_put(storage: &verge_manager::storage::Storage, s3: SocketAddr, bytes: &[u8]) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = rt
        .block_on(storage.upload_url("bench/raw/2026/01/01/raw.m4s"))
        .expect("presign");
    let path = url
        .split_once(&s3.to_string())
        .map(|(_, p)| p.to_string())
        .expect("path");
    let started = Instant::now();
    let answer = verge_testkit::request("PUT", s3, &path, &[], bytes, Duration::from_secs(120))
        .expect("PUT");
    assert_eq!(answer.status, 200, "{}", answer.text());
    bytes.len() as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let (cap, seconds, mib) = args();
    let root = TempDir::new("storage-bench");
    let port = reserve_port();
    let s3_addr = port.addr();
    drop(port);
    let mut s3 = Some(verge_testkit::s3::start(root.path(), s3_addr));
    let edge = Edge::start(
        "storage-bench",
        &EdgeOptions::noauth()
            .manager(&verge_testkit::s3::storage_toml(s3_addr))
            .agent(&format!(
                "[record]\ndir = \"{{dir}}/rec\"\nstreams = [\"live/cam\"]\nsegment_secs = 1\n\
                 [record.upload]\nmax_kbps = {cap}\n"
            )),
    );
    let objects = verge_testkit::s3::objects(root.path());

    // 1. A backlog recorded with the server down, then its upload at the cap.
    drop(s3.take());
    let mut ffmpeg = edge.publish(
        "ffmpeg",
        "cam",
        &Synthetic {
            size: "1280x720",
            gop: 25,
            seconds,
            video_kbps: Some(3000),
            ..Default::default()
        },
    );
    wait_for(Duration::from_secs(u64::from(seconds) + 60), || {
        ffmpeg.exit_status()
    })
    .expect("ffmpeg ended");
    let backlog = bytes_under(&edge.dir.path().join("rec"));
    s3 = Some(verge_testkit::s3::start(root.path(), s3_addr));
    let began = wait_for(Duration::from_secs(60), || {
        (bytes_under(&objects) > 0).then(Instant::now)
    })
    .expect("uploads began");
    let window = Duration::from_secs(10);
    let at_start = bytes_under(&objects);
    std::thread::sleep(window);
    let moved = bytes_under(&objects) - at_start;
    let kbps = moved as f64 * 8.0 / began.elapsed().as_secs_f64() / 1000.0;
    let cfg =
        verge_manager::config::ManagerConfig::parse(&verge_testkit::s3::storage_toml(s3_addr))
            .expect("config")
            .storage
            .expect("[storage]");
    let storage = verge_manager::storage::Storage::new(&cfg, "").expect("storage");
    let chunk: Vec<u8> = (0..(32usize << 20)).map(|i| (i * 7 + 3) as u8).collect();
    let raw = raw_put(&storage, s3_addr, &chunk);

    // 2. A large segment, through the manager from storage and from the box.
    let day = "live/big/2026/12/01";
    let dir = edge.dir.path().join("rec").join(day);
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = std::fs::File::create(dir.join("p1-v-0.m4s")).unwrap();
    let mib_chunk = &chunk[..1 << 20];
    for _ in 0..mib {
        file.write_all(mib_chunk).unwrap();
    }
    drop(file);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(async {
        let url = format!("sqlite://{}/manager.db?mode=rwc", edge.dir.path().display());
        let db = Db::open(&url, 1, Duration::from_secs(10)).unwrap();
        db.migrate().await.unwrap();
        let row = IndexRow {
            id: "bench".into(),
            stream: "live/big".into(),
            year: 2026,
            month: 12,
            day: 1,
            mpd_path: format!("{day}/manifest.mpd"),
        };
        db.upsert(&row, "edge-1").await.unwrap();
        db
    });
    let object = format!("/api/record/object/{day}/p1-v-0.m4s");
    let manager_pid = edge.manager.pid();
    let play = |label: &str| {
        let (ticks, started) = (cpu_ticks(manager_pid).unwrap_or(0), Instant::now());
        let (status, body) = fetch(edge.manager_http, &object);
        assert_eq!((status, body), (200, mib << 20), "{label}");
        let secs = started.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(manager_pid).unwrap_or(0) - ticks) as f64 / TICKS_PER_SEC;
        let mb = body as f64 / 1e6;
        (mb / secs, cpu / mb * 1000.0)
    };
    let (tunnel_rate, tunnel_cpu) = play("from the box");
    // The same file in storage, the day marked stored.
    let dest = objects.join(day);
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(dir.join("p1-v-0.m4s"), dest.join("p1-v-0.m4s")).unwrap();
    rt.block_on(db.mark_stored("live/big", (2026, 12, 1), "edge-1"))
        .unwrap();
    let (storage_rate, storage_cpu) = play("from storage");

    println!(
        "\n{seconds} s of 720p (3 Mbit/s video + AAC) recorded with the S3 server down: {:.1} MB backlog; {mib} MiB segment\n",
        backlog as f64 / 1e6
    );
    println!("| measure | value | baseline |");
    println!("|---|---|---|");
    println!(
        "| uploads once the server is back, kbit/s | {kbps:.0} at `max_kbps = {cap}` ({:.2}× the cap) | {:.0} one uncapped PUT of 32 MiB ({raw:.0} MB/s) |",
        kbps / f64::from(cap),
        raw * 8000.0
    );
    println!(
        "| manager CPU per MB played, ms | {storage_cpu:.2} from storage | {tunnel_cpu:.2} from the box through the tunnel |"
    );
    println!(
        "| playback through the manager, MB/s | {storage_rate:.0} from storage | {tunnel_rate:.0} from the box through the tunnel |"
    );
    drop(s3);
}
