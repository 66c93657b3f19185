//! Recording and playback benchmark, with real processes (release builds) on loopback:
//!
//! 1. **Recorder CPU**: the agent's CPU while ffmpeg publishes 720p30 H.264 + AAC, once for a
//!    stream that is not recorded and once for one that is (`[record] streams`), same length.
//! 2. **Publish → playable**: from starting ffmpeg to the first video bytes of HTTP-FLV, and
//!    to the first live HLS playlist with a segment (both polled every 20 ms).
//! 3. **Playback throughput**: a large recorded segment read from the agent's own HTTP port,
//!    and through the manager (`/api/record/object/…`: index lookup, then the tunnel).
//!
//! ```text
//! cargo run --release --example record_bench -- [--seconds 20] [--mib 256]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use verge_manager::db::Db;
use verge_protocol::index::IndexRow;
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::measure::{TICKS_PER_SEC, cpu_ticks, numeric_flags};
use verge_testkit::wait_for;

/// GET `path` over HTTP/1.0; the body's length and when its first byte came.
fn fetch(addr: SocketAddr, path: &str) -> Option<(u16, u64, Instant)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let (mut body, mut first) = (0u64, None);
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        if first.is_none() {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body += (head.len() - end - 4) as u64;
                first = Some(Instant::now());
            }
        } else {
            body += n as u64;
        }
    }
    let status = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    Some((status, body, first?))
}

fn args() -> (u32, u64) {
    let [seconds, mib] = numeric_flags("record_bench", [("--seconds", 20), ("--mib", 256)]);
    (seconds.max(8) as u32, mib)
}

/// The agent's CPU (percent of one core) over the middle of a publish of `name`.
fn cpu_while_publishing(edge: &Edge, name: &str, seconds: u32) -> f64 {
    let media = Synthetic {
        size: "1280x720",
        fps: 30,
        gop: 60,
        seconds,
        ..Synthetic::default()
    };
    let mut ffmpeg = edge.publish(&format!("ffmpeg-{name}"), name, &media);
    assert!(wait_for(Duration::from_secs(30), || edge.listed_stream(name)).is_some());
    std::thread::sleep(Duration::from_secs(2));
    let pid = edge.agent.pid();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
    std::thread::sleep(Duration::from_secs(u64::from(seconds) - 5));
    let (t1, c1) = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
    wait_for(Duration::from_secs(30), || ffmpeg.exited().then_some(()));
    (c1 - c0) as f64 / TICKS_PER_SEC / (t1 - t0).as_secs_f64() * 100.0
}

fn main() {
    let (seconds, mib) = args();
    let edge = Edge::start(
        "record-bench",
        &EdgeOptions::noauth()
            .agent("[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/rec\"]\nsegment_secs = 2\n"),
    );

    let plain = cpu_while_publishing(&edge, "plain", seconds);
    let recorded = cpu_while_publishing(&edge, "rec", seconds);

    // Publish → playable, both players polling from the moment ffmpeg starts.
    let media = Synthetic {
        size: "1280x720",
        fps: 30,
        gop: 60,
        seconds: 15,
        ..Synthetic::default()
    };
    let started = Instant::now();
    let _ffmpeg = edge.publish("ffmpeg-delay", "delay", &media);
    let (http, hls) = (edge.http, edge.hls);
    let flv = std::thread::spawn(move || {
        let attempt = || {
            let mut s = TcpStream::connect(http).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            write!(s, "GET /live/delay.flv HTTP/1.0\r\n\r\n").ok()?;
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            // Header, FLV header, metadata and sequence headers, then a keyframe: 20 KB is past
            // the first video frame for any 720p picture.
            while got.len() < 20_000 {
                let n = s.read(&mut buf).ok()?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            (got.starts_with(b"HTTP/1.") && got.get(9..12) == Some(b"200") && got.len() >= 20_000)
                .then(Instant::now)
        };
        wait_for(Duration::from_secs(30), || {
            attempt().or_else(|| {
                std::thread::sleep(Duration::from_millis(20));
                None
            })
        })
    });
    let first_playlist = wait_for(Duration::from_secs(30), || {
        let (status, body, at) = fetch(hls, "/live/delay/index.m3u8")?;
        if status == 200 && body > 0 {
            return Some(at);
        }
        std::thread::sleep(Duration::from_millis(20));
        None
    });
    let flv_at = flv.join().ok().flatten();
    let ms = |at: Option<Instant>| at.map_or(f64::NAN, |t| (t - started).as_secs_f64() * 1000.0);

    // Playback: one large recorded file, indexed in the manager's database.
    let path = "live/big/2026/12/01";
    let dir = edge.dir.path().join("rec").join(path);
    std::fs::create_dir_all(&dir).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
    let mut file = std::fs::File::create(dir.join("p1-v-0.m4s")).unwrap();
    for _ in 0..mib {
        file.write_all(&chunk).unwrap();
    }
    drop(file);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}/manager.db?mode=rwc", edge.dir.path().display());
        let db = Db::open(&url, 1, Duration::from_secs(10)).unwrap();
        db.migrate().await.unwrap();
        db.upsert(
            &IndexRow {
                id: "bench".into(),
                stream: "live/big".into(),
                year: 2026,
                month: 12,
                day: 1,
                mpd_path: format!("{path}/manifest.mpd"),
            },
            "edge-1",
        )
        .await
        .unwrap();
    });
    let throughput = |addr: SocketAddr, url: &str| {
        let started = Instant::now();
        let (status, body, _) = fetch(addr, url).expect("fetch");
        assert_eq!((status, body), (200, mib << 20), "{url}");
        body as f64 / started.elapsed().as_secs_f64() / 1e6
    };
    let direct = throughput(edge.http, &format!("/recordings/{path}/p1-v-0.m4s"));
    let manager = throughput(
        edge.manager_http,
        &format!("/api/record/object/{path}/p1-v-0.m4s"),
    );

    println!("\n720p30 H.264 + AAC published with ffmpeg for {seconds} s; {mib} MiB segment\n");
    println!("| measure | value | baseline |");
    println!("|---|---|---|");
    println!("| agent CPU, % of one core | {recorded:.1} recording | {plain:.1} not recording |");
    println!(
        "| publish → playable, ms | {:.0} live HLS (first playlist with a segment) | {:.0} HTTP-FLV (first video bytes) |",
        ms(first_playlist),
        ms(flv_at)
    );
    println!(
        "| recorded file, MB/s | {manager:.0} through the manager (tunnel) | {direct:.0} from the agent's port |"
    );
}
