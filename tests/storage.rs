//! Recordings that outlive their box: a box records, uploads each finished segment and then
//! the day's manifest to the manager's `[storage]` through URLs the manager presigns, and
//! once the box is gone the day still plays through the manager, from storage.
//!
//! Against a real S3 server (s3s-fs, which checks SigV4 and presigned URLs; `scripts/setup`
//! builds it) and against the `fs` backend (a folder on the manager's machine).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic, tool};
use verge_testkit::{Proc, get, request, reserve_port, wait_for};

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A box records 8 s of `live/cam` with `[storage]` set by `storage_toml`; `stored` is the
/// folder its objects end up in. Returns the edge (its agent already stopped) and the day.
fn record_upload_and_lose_the_box(
    label: &str,
    storage_toml: &str,
    stored: &Path,
) -> (Edge, String) {
    let mut edge = Edge::start(
        label,
        &EdgeOptions::noauth()
            .manager(storage_toml)
            .agent("[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/cam\"]\nsegment_secs = 1\n"),
    );
    let mut ffmpeg = edge.publish(
        "ffmpeg",
        "cam",
        &Synthetic {
            gop: 25,
            seconds: 8,
            ..Default::default()
        },
    );
    wait_for(Duration::from_secs(20), || edge.listed_stream("cam")).expect("cam live");
    wait_for(Duration::from_secs(30), || ffmpeg.exited().then_some(())).expect("ffmpeg ended");
    // The day is indexed, and then stored: every file the box holds is in storage.
    let m = edge.manager_http;
    let day = wait_for(Duration::from_secs(30), || {
        let days = get(m, "/api/playback/cam").ok()?.json();
        let row = days.as_array()?.first()?.clone();
        (row["location"] == "both").then_some(row)
    });
    let day = day.unwrap_or_else(|| {
        panic!(
            "the day never reached storage: {:?}\n{}",
            get(m, "/api/playback/cam").map(|r| r.text()),
            edge.agent.log_text()
        )
    });
    let mpd = day["mpd_path"].as_str().expect("mpd_path").to_string();
    let day_dir = mpd.trim_end_matches("/manifest.mpd").to_string();
    let local = edge.dir.path().join("rec").join(&day_dir);
    let in_box: Vec<String> = files(&local)
        .into_iter()
        .filter(|f| f.ends_with(".m4s") || f.ends_with(".mp4") || f.ends_with(".mpd"))
        .collect();
    let all_there = wait_for(Duration::from_secs(30), || {
        let in_storage = files(&stored.join(&day_dir));
        in_box
            .iter()
            .all(|f| in_storage.contains(f))
            .then_some(in_storage)
    });
    assert!(
        all_there.is_some(),
        "box {in_box:?}, storage {:?}",
        files(&stored.join(&day_dir))
    );
    // Inits, segments and the manifest (fewer on the second day of a recording that crossed
    // midnight UTC).
    assert!(in_box.len() >= 3, "{in_box:?}");
    // The box goes away.
    edge.agent.signal("KILL");
    wait_for(Duration::from_secs(10), || {
        edge.agent.exited().then_some(())
    })
    .expect("agent gone");
    (edge, mpd)
}

/// The day plays through the manager from storage: the manifest, a ranged segment, and
/// ffprobe reading the whole day.
fn plays_from_storage(edge: &Edge, mpd: &str) {
    let m = edge.manager_http;
    let manifest = get(m, &format!("/api/record/object/{mpd}")).expect("manifest");
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    assert!(manifest.text().contains("<MPD"), "{}", manifest.text());
    assert_eq!(manifest.header("x-verge-from"), Some("storage"));
    let segment = manifest
        .text()
        .split('"')
        .find(|s| s.ends_with("-init.mp4"))
        .map(str::to_string)
        .expect("an init segment in the manifest");
    let dir = mpd.trim_end_matches("manifest.mpd");
    let ranged = request(
        "GET",
        m,
        &format!("/api/record/object/{dir}{segment}"),
        &[("Range", "bytes=4-11")],
        b"",
        Duration::from_secs(10),
    )
    .expect("ranged GET");
    assert_eq!(ranged.status, 206, "{}", ranged.text());
    assert_eq!(ranged.body.len(), 8);
    assert_eq!(&ranged.body[..4], b"ftyp");
    let out = Command::new(tool("ffprobe"))
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(format!("http://{m}/api/record/object/{mpd}"))
        .output()
        .expect("run ffprobe");
    let duration: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    println!("the day from storage: {duration:.1} s");
    // A recording that crossed midnight UTC has two days, one of them short.
    assert!(
        duration >= 1.0,
        "ffprobe read {duration} s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// The scene: a minute recorded while the S3 server is down for a minute, the agent
/// killed in the middle of the uploads that follow and started again, uploads capped at
/// 1 Mbit/s; then the box and its recordings are gone, and the day decodes through the
/// manager with every frame published.
#[test]
fn a_minute_recorded_through_an_outage_and_a_restart_plays_from_s3_without_the_box() {
    let root = verge_testkit::TempDir::new("s3s");
    let port = reserve_port();
    let addr = port.addr();
    drop(port);
    let mut s3 = Some(verge_testkit::s3::start(root.path(), addr));
    let mut edge = Edge::start(
        "storage-s3",
        &EdgeOptions::noauth()
            .manager(&verge_testkit::s3::storage_toml(addr))
            .agent(
                "[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/cam\"]\nsegment_secs = 1\n\
                         [record.upload]\nmax_kbps = 1000\n",
            ),
    );
    let m = edge.manager_http;
    let media = Synthetic {
        size: "320x240",
        gop: 25,
        seconds: 60,
        video_kbps: Some(300),
        ..Default::default()
    };
    let mut ffmpeg = edge.publish("ffmpeg", "cam", &media);
    wait_for(Duration::from_secs(20), || edge.listed_stream("cam")).expect("cam live");
    let stored = verge_testkit::s3::objects(root.path());
    // Uploads run while the day records; then the server goes away for a minute.
    wait_for(Duration::from_secs(20), || {
        (bytes_under(&stored) > 0).then_some(())
    })
    .expect("uploads began");
    let outage = std::time::Instant::now();
    drop(s3.take());
    let status = wait_for(Duration::from_secs(90), || ffmpeg.exit_status());
    assert!(status.is_some_and(|s| s.success()), "{}", ffmpeg.log_text());
    let before = bytes_under(&stored);
    // The operator sees the backlog and why it does not move: in the fleet, and in /metrics.
    let backlog = wait_for(Duration::from_secs(20), || {
        let nodes = get(m, "/api/nodes/").ok()?.json();
        let upload = nodes.as_array()?.iter().find(|n| n["alias"] == "edge-1")?["upload"].clone();
        (upload["files"].as_u64() > Some(0) && upload["failing"].is_string()).then_some(upload)
    });
    let backlog = backlog.unwrap_or_else(|| {
        panic!(
            "no backlog shown: {:?}",
            get(m, "/api/nodes/").map(|r| r.text())
        )
    });
    println!("the backlog in the outage: {backlog}");
    let metrics = get(edge.http, "/metrics").expect("metrics").text();
    let put_failures = metrics
        .lines()
        .find(|l| l.starts_with("verge_agent_upload_failures_total{reason=\"put\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(put_failures >= 1.0, "{metrics}");
    std::thread::sleep(Duration::from_secs(60).saturating_sub(outage.elapsed()));
    s3 = Some(verge_testkit::s3::start(root.path(), addr));
    // The backlog goes up at the cap; the agent is killed in the middle of it and started
    // again, and the rest follows.
    let began = wait_for(Duration::from_secs(30), || {
        (bytes_under(&stored) > before).then(std::time::Instant::now)
    })
    .expect("uploads resumed after the outage");
    let at_began = bytes_under(&stored);
    std::thread::sleep(Duration::from_secs(6));
    let sent = bytes_under(&stored) - at_began;
    let kbps = sent as f64 * 8.0 / began.elapsed().as_secs_f64() / 1000.0;
    println!(
        "uploads after the outage: {sent} bytes in {:.1} s = {kbps:.0} kbit/s (cap 1000)",
        began.elapsed().as_secs_f64()
    );
    assert!(
        kbps <= 1100.0,
        "the 1 Mbit/s cap was not held: {kbps:.0} kbit/s"
    );
    assert!(kbps > 100.0, "uploads stalled: {kbps:.0} kbit/s");
    assert!(
        edge.agent.log_text().contains("upload to storage failed"),
        "the outage was not noticed"
    );
    edge.agent.signal("KILL");
    wait_for(Duration::from_secs(10), || {
        edge.agent.exited().then_some(())
    })
    .expect("agent gone");
    let (agent, _) = Proc::spawn_ready(
        "agent-again",
        &verge_testkit::bin("verge-agent"),
        &["--config", edge.agent_cfg.to_str().expect("utf-8 path")],
        edge.dir.path(),
    );
    edge.agent = agent;

    // Everything arrives: for each day the recording touched (two when it crosses midnight
    // UTC), the bucket holds exactly the box's files, the manifest last.
    let arrived = wait_for(Duration::from_secs(120), || {
        let days = get(m, "/api/playback/cam").ok()?.json();
        let mut all = Vec::new();
        for row in days.as_array()? {
            let mpd = row["mpd_path"].as_str()?.to_string();
            let day_dir = mpd.trim_end_matches("/manifest.mpd").to_string();
            let local: Vec<String> = files(&edge.dir.path().join("rec").join(&day_dir))
                .into_iter()
                .filter(|f| !f.starts_with('.') && f != "periods.json")
                .collect();
            let remote = files(&stored.join(&day_dir));
            let same = std::fs::read(edge.dir.path().join("rec").join(&mpd)).ok()
                == std::fs::read(stored.join(&mpd)).ok();
            if row["location"] != "both" || local != remote || !same {
                return None;
            }
            all.push((mpd, day_dir, remote));
        }
        (!all.is_empty()).then_some(all)
    });
    let days = arrived.unwrap_or_else(|| {
        panic!(
            "not everything arrived: {:?}\n{}",
            get(m, "/api/playback/cam").map(|r| r.text()),
            edge.agent.log_text()
        )
    });
    for (_, day_dir, remote) in &days {
        let modified = |f: &str| {
            std::fs::metadata(stored.join(day_dir).join(f))
                .and_then(|m| m.modified())
                .ok()
        };
        let manifest_at = modified("manifest.mpd");
        assert!(
            remote.iter().all(|f| modified(f) <= manifest_at),
            "a segment arrived after the manifest"
        );
        println!(
            "{day_dir}: {} objects in the bucket, as on the box",
            remote.len()
        );
    }

    // The box goes away, with its recordings.
    edge.agent.signal("KILL");
    wait_for(Duration::from_secs(10), || {
        edge.agent.exited().then_some(())
    })
    .expect("agent gone");
    std::fs::remove_dir_all(edge.dir.path().join("rec")).expect("delete the box's recordings");
    let mut frames = 0;
    for (i, (mpd, _, _)) in days.iter().enumerate() {
        plays_from_storage(&edge, mpd);
        let through = format!("http://{m}/api/record/object/{mpd}");
        frames += verge_testkit::ffprobe::count_frames(
            edge.dir.path(),
            &format!("ffprobe-storage-{i}"),
            &through,
        )
        .video;
    }
    assert_eq!(frames, 25 * 60, "{days:?}");

    // With `[storage] redirect = true`, the manager sends players to a presigned GET.
    let cfg = std::fs::read_to_string(&edge.manager_cfg).expect("manager.toml");
    let cfg = cfg.replace(
        "prefix = \"recordings/\"\n",
        "prefix = \"recordings/\"\nredirect = true\n",
    );
    assert!(cfg.contains("redirect = true"), "{cfg}");
    std::fs::write(&edge.manager_cfg, cfg).expect("manager.toml");
    edge.stop_manager();
    edge.start_manager("manager-redirect");
    let (mpd, _, _) = &days[0];
    let moved = get(edge.manager_http, &format!("/api/record/object/{mpd}")).expect("GET");
    assert_eq!(moved.status, 302, "{}", moved.text());
    let location = moved.header("location").expect("Location").to_string();
    let path = location
        .split_once(&addr.to_string())
        .map(|(_, p)| p.to_string())
        .unwrap_or_else(|| panic!("{location} is not the S3 server's"));
    let followed = request("GET", addr, &path, &[], b"", Duration::from_secs(10)).expect("GET");
    assert_eq!(followed.status, 200, "{}", followed.text());
    assert!(followed.text().contains("<MPD"), "{}", followed.text());

    // Presigned URLs expire: one made for a second works now and is refused after.
    let storage = short_lived_storage(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = rt
        .block_on(storage.upload_url("live/cam/2026/01/01/expiry.m4s"))
        .expect("presign");
    let path = url
        .split_once(&addr.to_string())
        .map(|(_, p)| p.to_string())
        .expect("path");
    let put = |label: &str| {
        request("PUT", addr, &path, &[], b"x", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{label}: {e}"))
    };
    assert_eq!(put("fresh").status, 200);
    // A presigned GET (what `[storage] redirect` sends players to) reads it back.
    let read = rt
        .block_on(storage.download_url("live/cam/2026/01/01/expiry.m4s"))
        .expect("presign")
        .expect("s3 presigns GETs");
    let read = read
        .split_once(&addr.to_string())
        .map(|(_, p)| p.to_string())
        .expect("path");
    let got = request("GET", addr, &read, &[], b"", Duration::from_secs(10)).expect("GET");
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, b"x".as_slice()),
        "{}",
        got.text()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let replayed = put("replayed");
    assert_eq!(replayed.status, 403, "{}", replayed.text());
    // And one the manager did not sign at all is refused.
    let unsigned = request(
        "PUT",
        addr,
        "/verge/recordings/x.m4s",
        &[],
        b"x",
        Duration::from_secs(10),
    )
    .expect("PUT");
    assert_eq!(unsigned.status, 403, "{}", unsigned.text());
    drop(s3);
}

/// The manager's storage with URLs valid for one second.
fn short_lived_storage(addr: std::net::SocketAddr) -> verge_manager::storage::Storage {
    let mut cfg = verge_manager::config::ManagerConfig::parse(&format!(
        "{}presign_secs = 1\n",
        verge_testkit::s3::storage_toml(addr)
    ))
    .expect("config");
    let storage = cfg.storage.take().expect("[storage]");
    verge_manager::storage::Storage::new(&storage, "").expect("storage")
}

#[test]
fn a_day_uploaded_to_the_managers_folder_plays_when_the_box_is_gone() {
    let root = verge_testkit::TempDir::new("fs-storage");
    let storage = format!(
        "[storage]\ntype = \"fs\"\nroot = \"{}\"\n",
        root.path().display()
    );
    let (edge, mpd) = record_upload_and_lose_the_box("storage-fs", &storage, root.path());
    plays_from_storage(&edge, &mpd);
    // The upload route takes only what the manager signed.
    let m = edge.manager_http;
    let forged = request(
        "PUT",
        m,
        &format!("/api/storage/put/{mpd}?expires=99999999999&sig=00"),
        &[],
        b"<MPD/>",
        Duration::from_secs(10),
    )
    .expect("PUT");
    assert_eq!(forged.status, 403, "{}", forged.text());
}
