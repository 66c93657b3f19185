//! Recording with real processes: ffmpeg publishes H.264 + AAC, the agent records fMP4 + DASH,
//! ffprobe (a real DASH reader) decodes the manifest from the agent's HTTP port and every frame
//! published is there; a publisher that comes back the same day adds a period, each period
//! decoding to exactly its publisher's frames; files are served with ranges and bad paths are
//! refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::postgres::Postgres;
use verge_testkit::{TempDir, get, listener, request, wait_for};

/// (video frames, audio frames) ffprobe decodes from `input`, to its end, without complaint.
fn count_frames(b: &Edge, label: &str, input: &str) -> (u32, u32) {
    let frames = verge_testkit::ffprobe::count_frames(b.dir.path(), label, input);
    (frames.video, frames.audio)
}

/// The one `yyyy/mm/dd` folder under `stream_dir`.
fn day_dir(stream_dir: &Path) -> PathBuf {
    let mut dir = stream_dir.to_path_buf();
    for _ in 0..3 {
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(entries.len(), 1, "{}", dir.display());
        dir = entries[0].path();
    }
    dir
}

fn publish_and_wait(b: &Edge, label: &str, seconds: u32, recordings: usize) {
    publish_name_and_wait(b, label, "cam", seconds, recordings)
}

fn publish_name_and_wait(b: &Edge, label: &str, name: &str, seconds: u32, recordings: usize) {
    let media = Synthetic {
        fps: 25,
        gop: 25,
        seconds,
        ..Synthetic::default()
    };
    let mut ffmpeg = b.publish(label, name, &media);
    let status = wait_for(Duration::from_secs(60), || ffmpeg.exit_status());
    assert!(status.is_some_and(|s| s.success()), "{}", ffmpeg.log_text());
    let done = wait_for(Duration::from_secs(20), || {
        (b.agent
            .log_text()
            .matches("recording ended with the publisher")
            .count()
            >= recordings)
            .then_some(())
    });
    assert!(done.is_some(), "{}", b.agent.log_text());
}

#[test]
fn every_published_frame_is_recorded_and_a_second_session_is_a_second_period() {
    let b = Edge::start(
        "record",
        &EdgeOptions::noauth()
            .agent("[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/*\"]\nsegment_secs = 2\n"),
    );
    publish_and_wait(&b, "ffmpeg-1", 10, 1);
    let day = day_dir(&b.dir.path().join("rec/live/cam"));
    let rel = day
        .strip_prefix(b.dir.path().join("rec"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let manifest = format!("http://{}/recordings/{rel}/manifest.mpd", b.http);
    // ffmpeg's testsrc at 25 fps for 10 s: 250 frames, and 10 s of 44.1 kHz AAC.
    let (video, audio) = count_frames(&b, "ffprobe-mpd", &manifest);
    assert_eq!(video, 250, "{manifest}");
    assert!((428..=434).contains(&audio), "{audio} audio frames");

    // The day is in the manager's index, and plays through it (objects come from the box
    // through the tunnel).
    let indexed = wait_for(Duration::from_secs(20), || {
        let r = get(b.manager_http, "/api/playback/live/cam").ok()?;
        (r.status == 200).then(|| r.json())
    });
    let rows = indexed.unwrap_or_else(|| {
        panic!(
            "never indexed:\n{}\n{}",
            b.agent.log_text(),
            b.manager.log_text()
        )
    });
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["mpd_path"], format!("{rel}/manifest.mpd"));
    assert_eq!(rows[0]["agent"], "edge-1");
    let streams = get(b.manager_http, "/api/playback").unwrap().json();
    assert_eq!(streams, serde_json::json!(["live/cam"]));
    let through = format!(
        "http://{}/api/record/object/{rel}/manifest.mpd",
        b.manager_http
    );
    let (video, _) = count_frames(&b, "ffprobe-manager", &through);
    assert_eq!(video, 250, "{through}");
    let r = get(
        b.manager_http,
        "/api/record/object/live/cam/2020/01/01/manifest.mpd",
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let r = get(
        b.manager_http,
        "/api/record/object/live/cam/../../etc/passwd",
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let r = get(b.manager_http, "/api/playback/live/nope").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());

    // The publisher comes back: a second period in the same manifest.
    publish_and_wait(&b, "ffmpeg-2", 6, 2);
    let mpd = std::fs::read_to_string(day.join("manifest.mpd")).unwrap();
    assert_eq!(mpd.matches("<Period ").count(), 2, "{mpd}");
    for (period, frames) in [(1, 250), (2, 150)] {
        // A period's video is its init segment and its media segments in time order: one
        // fMP4 file.
        let mut whole = std::fs::read(day.join(format!("p{period}-v-init.mp4"))).unwrap();
        let prefix = format!("p{period}-v-");
        let mut starts: Vec<u64> = std::fs::read_dir(&day)
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)?
                    .strip_suffix(".m4s")?
                    .parse()
                    .ok()
            })
            .collect();
        starts.sort_unstable();
        for t in starts {
            whole.extend(std::fs::read(day.join(format!("{prefix}{t}.m4s"))).unwrap());
        }
        let file = b.dir.path().join(format!("period-{period}.mp4"));
        std::fs::write(&file, whole).unwrap();
        let (video, _) = count_frames(&b, &format!("ffprobe-p{period}"), file.to_str().unwrap());
        assert_eq!(video, frames, "period {period}");
    }
    assert!(
        !std::fs::read_dir(&day).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "temporary files left"
    );

    // Ranges, content types, refusals.
    let path = format!("/recordings/{rel}/p1-v-init.mp4");
    let r = request(
        "GET",
        b.http,
        &path,
        &[("Range", "bytes=0-99")],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), 100);
    assert_eq!(&r.body[4..8], b"ftyp");
    let r = get(b.http, &format!("/recordings/{rel}/manifest.mpd")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/dash+xml"));
    for (bad, status) in [
        ("/recordings/live/cam/%2e%2e/%2e%2e/x.mpd", 400),
        ("/recordings/live/cam/periods.json", 400),
        ("/recordings/live/nope/2026/01/01/manifest.mpd", 404),
    ] {
        let r = get(b.http, bad).unwrap();
        assert_eq!(r.status, status, "{bad}: {}", r.text());
    }
}

#[test]
fn a_full_disk_stops_the_recording_and_keeps_what_was_written_playable() {
    let b = Edge::start(
        "record-full",
        &EdgeOptions {
            noauth: true,
            // About 300 kbit/s of video and audio: 400 KiB fill in roughly ten seconds.
            agent_tmpfs: Some(("small", "400k")),
            agent_toml:
                "[record]\ndir = \"{dir}/small\"\nstreams = [\"live/*\"]\nsegment_secs = 1\n".into(),
            ..EdgeOptions::default()
        },
    );
    let media = Synthetic::keyframe_every_second(30);
    let mut ffmpeg = b.publish("ffmpeg", "cam", &media);
    let stopped = wait_for(Duration::from_secs(40), || {
        b.agent
            .log_text()
            .lines()
            .find(|l| l.contains("recording stopped"))
            .map(str::to_string)
    });
    let line =
        stopped.unwrap_or_else(|| panic!("the recording never stopped:\n{}", b.agent.log_text()));
    assert!(line.contains("No space left on device"), "{line}");
    // The stream itself goes on, and the agent says what happened to its recording.
    assert!(!ffmpeg.exited(), "{}", ffmpeg.log_text());
    assert!(b.listed_stream("cam").is_some());
    let state = verge_testkit::send("GET", b.manager_http, "/api/record/live/cam").json();
    assert_eq!(state["state"], "failed", "{state}");
    assert!(
        state["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "{state}"
    );

    // What was written before the disk filled plays to its end. The tmpfs is the agent's
    // own: read it through the agent's HTTP port, as a player would.
    let day = verge_agent::record::day::Day::of_unix_ms(verge_protocol::now_ms()).path();
    let manifest = format!("http://{}/recordings/live/cam/{day}/manifest.mpd", b.http);
    let (video, _) = count_frames(&b, "ffprobe-kept", &manifest);
    assert!(video >= 25, "{video} frames kept");
    assert_eq!(video % 25, 0, "whole one-second segments only: {video}");
}

#[test]
fn the_postgresql_index_ends_with_exactly_its_rows_after_the_database_and_the_agent_went_down() {
    let pg_dir = TempDir::new("record-pg-data");
    let mut pg = Postgres::start(pg_dir.path());
    let mut b = Edge::start(
        "record-pg",
        &EdgeOptions {
            noauth: true,
            agent_toml: "[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/*\"]\nsegment_secs = 2\n"
                .into(),
            database_url: Some(pg.url.clone()),
            ..EdgeOptions::default()
        },
    );
    let indexed = |b: &Edge, stream: &str| {
        let r = get(b.manager_http, &format!("/api/playback/{stream}")).ok()?;
        (r.status == 200).then(|| r.json())
    };
    publish_name_and_wait(&b, "ffmpeg-cam", "cam", 4, 1);
    let cam = wait_for(Duration::from_secs(20), || indexed(&b, "live/cam"));
    assert!(cam.is_some(), "{}", b.manager.log_text());

    // The database goes down: the API says so, and a day recorded now waits on the box.
    pg.stop();
    let down = wait_for(Duration::from_secs(20), || {
        let r = get(b.manager_http, "/api/playback").ok()?;
        (r.status == 503).then(|| r.text())
    });
    let reason =
        down.unwrap_or_else(|| panic!("the API never said 503:\n{}", b.manager.log_text()));
    assert!(reason.contains("database"), "{reason}");
    publish_name_and_wait(&b, "ffmpeg-door", "door", 4, 2);

    // The agent restarts before the row could be stored: it is in its outbox on disk.
    b.restart_agent("agent-2");

    // The database comes back: the row arrives (the agent resends every 15 s), once.
    pg.resume();
    let door = wait_for(Duration::from_secs(60), || indexed(&b, "live/door"));
    assert!(
        door.is_some(),
        "{}\n{}",
        b.agent.log_text(),
        b.manager.log_text()
    );
    assert_eq!(
        get(b.manager_http, "/api/playback").unwrap().json(),
        serde_json::json!(["live/cam", "live/door"])
    );
    // Resends after the ack change nothing: still exactly two rows.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pg.query("SELECT stream || ' ' || agent FROM recordings ORDER BY stream"),
        "live/cam edge-1\nlive/door edge-1"
    );
    // And the recording plays through the manager from the PostgreSQL index.
    let path = door.unwrap()[0]["mpd_path"].as_str().unwrap().to_string();
    let url = format!("http://{}/api/record/object/{path}", b.manager_http);
    let (video, _) = count_frames(&b, "ffprobe-door", &url);
    assert_eq!(video, 100);
}

#[test]
fn recording_is_started_and_stopped_at_run_time_through_the_manager() {
    use verge_testkit::send;
    let b = Edge::start(
        "record-control",
        &EdgeOptions::noauth().agent("[record]\ndir = \"{dir}/rec\"\nsegment_secs = 1\n"),
    );
    let media = Synthetic::keyframe_every_second(30);
    let _ffmpeg = b.publish("ffmpeg", "cam", &media);
    let live = wait_for(Duration::from_secs(30), || b.listed_stream("cam"));
    assert!(live.is_some());
    let state = |method: &str| {
        let r = send(method, b.manager_http, "/api/record/live/cam");
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        r.json()
    };
    let s = state("GET");
    assert_eq!(
        (s["state"].as_str(), s["wanted"].as_bool()),
        (Some("stopped"), Some(false)),
        "{s}"
    );
    assert_eq!(s["agent"], "edge-1");
    let s = state("POST");
    assert_eq!(s["wanted"], true, "{s}");
    assert_eq!(
        s["state"], "recording",
        "a live stream records at once: {s}"
    );
    let recording = wait_for(Duration::from_secs(10), || {
        let s = state("GET");
        (s["state"] == "recording" && s["segments"].as_u64() >= Some(3)).then_some(s)
    });
    assert!(recording.is_some(), "{}", b.agent.log_text());
    let s = state("DELETE");
    assert_eq!(s["wanted"], false, "{s}");
    let stopped = wait_for(Duration::from_secs(10), || {
        b.agent
            .log_text()
            .contains("recording stopped on request")
            .then_some(())
    });
    assert!(stopped.is_some(), "{}", b.agent.log_text());
    assert_eq!(state("GET")["state"], "stopped");
    // What was recorded plays, and stays.
    let day = day_dir(&b.dir.path().join("rec/live/cam"));
    let (video, _) = count_frames(
        &b,
        "ffprobe-stopped",
        day.join("manifest.mpd").to_str().unwrap(),
    );
    assert!(video >= 75, "{video}");

    // A stream that is not live: recorded from its next publish, on the agent named.
    let r = send("POST", b.manager_http, "/api/record/live/door?agent=edge-1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "waiting");
    let r = send("POST", b.manager_http, "/api/record/live/door?agent=ghost");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = send("POST", b.manager_http, "/api/record/live/..");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn index_events_that_are_forged_malformed_or_not_the_senders_own_are_refused() {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    use verge_protocol::envelope;
    use verge_protocol::index::{IndexAck, IndexEvent};
    use verge_protocol::secret::MacKey;

    let b = Edge::start(
        "record-refusals",
        &EdgeOptions::noauth()
            .manager("[[agents]]\nid = \"edge-2\"\nsecret = \"s2\"\n")
            .agent("[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/*\"]\nsegment_secs = 2\n"),
    );
    publish_and_wait(&b, "ffmpeg", 4, 1);
    let owned = wait_for(Duration::from_secs(20), || {
        let r = get(b.manager_http, "/api/playback/live/cam").ok()?;
        (r.status == 200).then(|| r.json())
    });
    let owned = owned.expect("edge-1's day indexed");
    let day_path = owned[0]["mpd_path"].as_str().unwrap().to_string();

    // edge-2, with its own valid credentials, tries its luck.
    let mqtt = listener(&b.manager_listeners, "mqtt");
    let mut opts = MqttOptions::new("edge-2", "127.0.0.1", mqtt.port());
    opts.set_credentials("edge-2", "s2")
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = Client::new(opts, 64);
    client
        .subscribe("verge/v1/a/edge-2/+", QoS::AtLeastOnce)
        .unwrap();
    let (acks_tx, acks) = std::sync::mpsc::channel::<IndexAck>();
    std::thread::spawn(move || {
        let key = MacKey::new("s2");
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.contains("/ack:") => {
                    if let Ok(opened) = envelope::open::<IndexAck>(&p.payload, &key) {
                        let _ = acks_tx.send(opened.body);
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let row = |id: &str, stream: &str, path: &str| verge_protocol::index::IndexRow {
        id: id.into(),
        stream: stream.into(),
        year: owned[0]["year"].as_i64().unwrap() as i32,
        month: owned[0]["month"].as_u64().unwrap() as u32,
        day: owned[0]["day"].as_u64().unwrap() as u32,
        mpd_path: path.into(),
    };
    let s2 = MacKey::new("s2");
    let event = |rows| {
        envelope::seal(
            &s2,
            "edge-2",
            verge_protocol::now_ms(),
            &IndexEvent { rows },
        )
    };
    // Garbage; a row for edge-1's stream-day; a path outside the row's own manifest.
    let publish = |topic: &str, payload: Vec<u8>| {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap()
    };
    publish("verge/v1/a/edge-2/idx", b"{not an envelope".to_vec());
    publish(
        "verge/v1/a/edge-2/idx",
        event(vec![
            row("theirs", "live/cam", &day_path),
            row("escape", "live/cam", "../../../etc/passwd"),
        ]),
    );
    // On edge-1's topic, signed with edge-2's key: does not open as edge-1.
    publish(
        "verge/v1/a/edge-1/idx",
        event(vec![row("forged", "live/door", "live/door/x/manifest.mpd")]),
    );
    let ack = acks
        .recv_timeout(Duration::from_secs(20))
        .expect("edge-2 gets an answer for its own event");
    assert!(ack.ids.is_empty(), "{ack:?}");
    let reasons: Vec<(&str, &str)> = ack
        .refused
        .iter()
        .map(|r| (r.id.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(id, why)| *id == "theirs" && why.contains("edge-1")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(id, why)| *id == "escape" && why.contains("mpd_path")),
        "{reasons:?}"
    );

    // The index is as it was: edge-1's day, nothing else.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        get(b.manager_http, "/api/playback").unwrap().json(),
        serde_json::json!(["live/cam"])
    );
    let rows = get(b.manager_http, "/api/playback/live/cam")
        .unwrap()
        .json();
    assert_eq!(rows, owned);
    let log = b.manager.log_text();
    assert!(log.contains("index event that does not open"), "{log}");
}

#[test]
fn a_day_recorded_while_the_box_is_cut_off_is_indexed_once_the_manager_is_back() {
    let broker = verge_testkit::reserve_port();
    let mut b = Edge::start(
        "record-cut-off",
        &EdgeOptions::noauth()
            .broker(broker.addr())
            .agent("[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/*\"]\nsegment_secs = 2\n"),
    );
    // The manager, and with it the broker, goes away: the box records on its own.
    b.stop_manager();
    let cut_off = wait_for(Duration::from_secs(20), || {
        b.agent
            .log_text()
            .contains("broker connection lost")
            .then_some(())
    });
    assert!(cut_off.is_some(), "{}", b.agent.log_text());
    publish_and_wait(&b, "ffmpeg", 6, 1);

    // Back: the row waiting in the agent's outbox arrives, once.
    b.start_manager("manager-2");
    let rows = wait_for(Duration::from_secs(60), || {
        let r = get(b.manager_http, "/api/playback/live/cam").ok()?;
        (r.status == 200).then(|| r.json())
    });
    let rows = rows.unwrap_or_else(|| panic!("{}\n{}", b.agent.log_text(), b.manager.log_text()));
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    let url = format!(
        "http://{}/api/record/object/{}",
        b.manager_http,
        rows[0]["mpd_path"].as_str().unwrap()
    );
    let (video, _) = count_frames(&b, "ffprobe-after", &url);
    assert_eq!(video, 150);
}
