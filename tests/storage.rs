//! Recordings that outlive their box: a box records, uploads each finished segment and then
//! the day's manifest to the manager's `[storage]` through URLs the manager presigns, and
//! once the box is gone the day still plays through the manager, from storage.
//!
//! Against a real S3 server (s3s-fs, which checks SigV4 and presigned URLs; `scripts/setup`
//! builds it) and against the `fs` backend (a folder on the manager's machine).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic, tool};
use verge_testkit::{Proc, get, request, reserve_port, wait_for};

/// s3s-fs, as `scripts/setup` installs it (or `VERGE_S3S_FS`).
fn s3s_fs() -> PathBuf {
    let path = std::env::var_os("VERGE_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(verge_testkit::liveion::TOOLS_CACHE).join("s3s-fs"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (its setup builds s3s-fs)",
        path.display()
    );
    path
}

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
        &EdgeOptions {
            manager_toml: storage_toml.into(),
            agent_toml:
                "[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/cam\"]\nsegment_secs = 1\n".into(),
            ..EdgeOptions::noauth()
        },
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
    assert!(in_box.len() >= 8, "{in_box:?}");
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
    assert!(
        duration >= 6.0,
        "ffprobe read {duration} s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_day_uploaded_to_s3_plays_when_the_box_is_gone() {
    let root = verge_testkit::TempDir::new("s3s");
    std::fs::create_dir_all(root.path().join("verge")).expect("bucket folder");
    let port = reserve_port();
    let addr = port.addr();
    drop(port);
    let _s3 = Proc::spawn(
        "s3s-fs",
        &s3s_fs(),
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--access-key",
            "verge-test",
            "--secret-key",
            "verge-test-secret",
            root.path().to_str().expect("utf-8 path"),
        ],
        root.path(),
    );
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).ok().map(|_| ())
    })
    .expect("s3s-fs listening");
    let storage = format!(
        "[storage]\ntype = \"s3\"\nbucket = \"verge\"\nendpoint = \"http://{addr}\"\n\
         path_style = true\naccess_key_id = \"verge-test\"\nsecret_access_key = \"verge-test-secret\"\n\
         prefix = \"recordings/\"\n"
    );
    let stored = root.path().join("verge/recordings");
    let (edge, mpd) = record_upload_and_lose_the_box("storage-s3", &storage, &stored);
    plays_from_storage(&edge, &mpd);
    // A URL the manager did not sign is refused by the server (real SigV4 checks).
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
