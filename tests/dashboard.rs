//! The dashboard in headless Chromium (in a network namespace of the test's own), with
//! `[auth]` on: the login page, the fleet with a live agent, a stream whose player decodes
//! frames, a key issued in the page that ffmpeg then publishes with through the RTMP router, a
//! recording played in the page, an agent that turns offline without a reload, and a read-only
//! token that is shown no key controls and whose revoke the API refuses.
//!
//! Screenshots of every page at desktop and phone width go to the test's folder, or to
//! `$VERGE_SCREENSHOTS` (the ones in `docs/screenshots/` were made so).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use verge_testkit::chromium::{Chromium, in_private_netns, is_private_netns};
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::{ANY_PORT, bin, wait_for};

const STATIC: &str = "dashboard-test-token";
const PATIENCE: Duration = Duration::from_secs(30);

/// Evaluates `expr` until it is truthy; its last value otherwise, in the panic.
fn until(chromium: &mut Chromium, what: &str, expr: &str) -> Value {
    until_within(PATIENCE, chromium, what, expr)
}

fn until_within(patience: Duration, chromium: &mut Chromium, what: &str, expr: &str) -> Value {
    let mut last = Value::Null;
    let found = wait_for(patience, || {
        last = chromium.eval(expr);
        let truthy = !matches!(&last, Value::Null | Value::Bool(false)) && last != 0 && last != "";
        truthy.then(|| last.clone())
    });
    found.unwrap_or_else(|| {
        let page = chromium.eval("document.body.innerText");
        panic!("{what}: never true ({expr} = {last})\npage:\n{page}")
    })
}

struct Shots {
    dir: PathBuf,
}

impl Shots {
    fn take(&self, chromium: &mut Chromium, name: &str) {
        chromium.screenshot(
            &self.dir.join(format!("{name}-desktop.png")),
            1280,
            800,
            false,
        );
        // A 390 px window (no mobile emulation, whose automatic zoom crops the picture).
        chromium.screenshot(&self.dir.join(format!("{name}-phone.png")), 390, 844, false);
        chromium.viewport(1280, 800, false);
    }
}

#[test]
fn the_dashboard_shows_the_fleet_and_acts_on_it() {
    if !is_private_netns() {
        bin("verge-manager");
        bin("verge-agent");
        println!(
            "{}",
            in_private_netns("the_dashboard_shows_the_fleet_and_acts_on_it")
        );
        return;
    }
    let b = Edge::start(
        "dashboard",
        &EdgeOptions::default()
            .token(STATIC)
            .manager(&format!(
                "[auth]\ntokens = [\"{STATIC}\"]\nsecret = \"dashboard-secret\"\n\
                 [[auth.accounts]]\nusername = \"ops\"\npassword = \"ops-password\"\n\
                 [rtmp]\nlisten = \"{ANY_PORT}\"\n"
            ))
            .agent("[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/cam\"]\nsegment_secs = 1\n"),
    );
    let shots = Shots {
        dir: std::env::var_os("VERGE_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| b.dir.path().to_path_buf()),
    };
    std::fs::create_dir_all(&shots.dir).unwrap();

    // A stream on the agent, published with its key (the agent requires keys).
    let (_cam, _) = b.publish_with_key(
        "cam",
        "cam",
        &Synthetic {
            size: "640x360",
            fps: 25,
            gop: 25,
            seconds: 120,
            profile: Some("high"),
            b_frames: None,
            ..Default::default()
        },
    );

    let mut chromium = Chromium::open(
        &format!("http://{}/", b.manager_http),
        &b.dir.path().join("chromium-profile"),
        &b.dir.path().join("chromium.log"),
    );

    // Login.
    until(
        &mut chromium,
        "the login page",
        "!!document.querySelector('#login input[name=password]')",
    );
    shots.take(&mut chromium, "login");
    chromium.eval(
        "(() => { const f = document.querySelector('#login'); \
          f.username.value = 'ops'; f.password.value = 'wrong'; f.requestSubmit(); })()",
    );
    until(
        &mut chromium,
        "a wrong password refused",
        "!document.querySelector('#login-error').hidden && document.querySelector('#login-error').textContent",
    );
    chromium.eval(
        "(() => { const f = document.querySelector('#login'); \
          f.password.value = 'ops-password'; f.requestSubmit(); })()",
    );

    // Fleet: edge-1 online, with its stream.
    until(
        &mut chromium,
        "edge-1 online in the fleet",
        "!!document.querySelector('tr.online[data-agent=\"edge-1\"]') && \
         document.querySelector('tr[data-agent=\"edge-1\"]').textContent.includes('live/cam')",
    );
    until(
        &mut chromium,
        "the agent's RTT",
        "/\\d ms/.test(document.querySelector('tr[data-agent=\"edge-1\"]').textContent)",
    );
    shots.take(&mut chromium, "fleet");

    // Streams, and the player of one.
    chromium.eval("location.hash = '#streams'");
    until(
        &mut chromium,
        "the stream's card",
        "document.querySelector('[data-stream=\"live/cam\"]')?.textContent.includes('640×360')",
    );
    shots.take(&mut chromium, "streams");
    chromium.color_scheme("dark");
    shots.take(&mut chromium, "streams-dark");
    chromium.color_scheme("light");
    chromium.eval("location.hash = '#stream/live/cam'");
    let frames = until(
        &mut chromium,
        "frames decoded by the page's player",
        "(() => { const t = document.querySelector('#player')?.contentDocument?.title || ''; \
          const n = +(/framesDecoded=(\\d+)/.exec(t) || [])[1]; return n >= 30 ? n : 0; })()",
    );
    println!("the dashboard's player decoded {frames} frames");
    until(
        &mut chromium,
        "the recording state",
        "/recording/.test(document.querySelector('#rec-state')?.textContent)",
    );
    // The last hour's chart (a point every 10 s): the stream's bitrate, and the page's own
    // player among its viewers, read back from the drawn chart's numbers. Two measured
    // bitrates take up to 30 s after the stream's first report.
    let drawn = until_within(
        Duration::from_secs(60),
        &mut chromium,
        "the stream's chart with bitrate and viewers",
        "(() => { const c = document.querySelector('#history svg.chart'); if (!c) return 0; \
          const kbps = c.dataset.bitratekbps.split(',').filter((v) => +v > 0); \
          const readers = c.dataset.readers.split(',').filter((v) => +v >= 1); \
          return kbps.length >= 2 && readers.length >= 1 ? c.dataset.bitratekbps + ' / ' + c.dataset.readers : 0; })()",
    );
    println!("the stream page's chart: kbit/s / readers {drawn}");
    shots.take(&mut chromium, "stream");
    // The node's page: its egress and the stream it holds over the last hour.
    chromium.eval("location.hash = '#node/edge-1'");
    let node = until(
        &mut chromium,
        "the node's charts",
        "(() => { const c = document.querySelectorAll('#node-history svg.chart'); \
          if (c.length < 2) return 0; const e = c[0].dataset.egresskbps.split(',').filter((v) => +v > 0); \
          const s = c[1].dataset.streams.split(',').filter((v) => +v >= 1); \
          return e.length >= 1 && s.length >= 2 ? c[0].dataset.egresskbps : 0; })()",
    );
    println!("the node page's egress (kbit/s): {node}");
    shots.take(&mut chromium, "node");

    // A key issued in the page, bound to edge-1; ffmpeg publishes with the URL it shows.
    chromium.eval("location.hash = '#keys'");
    until(
        &mut chromium,
        "the key form",
        "!!document.querySelector('#key-form select option[value=\"edge-1\"]')",
    );
    chromium.eval(
        "(() => { const f = document.querySelector('#key-form'); \
          f.stream.value = 'live/cam2'; f.agent.value = 'edge-1'; f.requestSubmit(); })()",
    );
    let url = until(
        &mut chromium,
        "the new key's publish URL",
        "(() => { const c = document.querySelector('[data-key-stream=\"live/cam2\"] code'); \
          return c && c.textContent.startsWith('rtmp://') && c.textContent.includes('token=') ? c.textContent : ''; })()",
    );
    let url = url.as_str().unwrap().to_string();
    shots.take(&mut chromium, "keys");
    let _cam2 = b.publish_to(
        "cam2",
        &url,
        &Synthetic {
            size: "320x240",
            fps: 15,
            gop: 15,
            seconds: 60,
            profile: None,
            b_frames: None,
            ..Default::default()
        },
    );
    chromium.eval("location.hash = '#streams'");
    until(
        &mut chromium,
        "the stream published with the page's URL",
        "!!document.querySelector('[data-stream=\"live/cam2\"]')",
    );

    // A recorded day, played in the page (fMP4 through Media Source Extensions).
    chromium.eval("location.hash = '#recordings/live/cam'");
    until(
        &mut chromium,
        "a recorded day",
        "!!document.querySelector('[data-play]')",
    );
    chromium.eval("document.querySelector('[data-play]').click()");
    until(
        &mut chromium,
        "the recording playing",
        "(() => { const v = document.querySelector('#rec-video'); \
          return v && v.getVideoPlaybackQuality().totalVideoFrames > 10 && v.currentTime > 0.5; })()",
    );
    shots.take(&mut chromium, "recordings");

    // The agent stops: offline in the page without a reload.
    chromium.eval("location.hash = '#fleet'");
    until(
        &mut chromium,
        "the fleet again",
        "!!document.querySelector('tr[data-agent=\"edge-1\"]')",
    );
    chromium.eval("window.notReloaded = true");
    b.agent.signal("KILL");
    until(
        &mut chromium,
        "edge-1 offline without a reload",
        "window.notReloaded === true && !!document.querySelector('tr.offline[data-agent=\"edge-1\"]')",
    );
    shots.take(&mut chromium, "fleet-offline");

    // A read-only token: no key page, no revoke button; the API refuses its revoke.
    let reader = verge_testkit::request(
        "POST",
        b.manager_http,
        "/api/token",
        &[("Authorization", &format!("Bearer {STATIC}"))],
        br#"{"id": "*", "mode": 4}"#,
        Duration::from_secs(10),
    )
    .unwrap()
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    chromium.eval(&format!(
        "localStorage.setItem('verge.token', '{reader}'); location.hash = '#streams'; setTimeout(() => location.reload(), 50)"
    ));
    until(
        &mut chromium,
        "the viewer's page",
        "document.querySelector('#who')?.textContent.includes('viewer')",
    );
    let keys_link = chromium.eval("!!document.querySelector('nav a[href=\"#keys\"]') || !!document.querySelector('[data-revoke]')");
    assert_eq!(
        keys_link,
        Value::Bool(false),
        "a read-only token is shown key controls"
    );
    let status = chromium.eval(&format!(
        "fetch('/api/keys/live/cam2', {{method: 'DELETE', headers: {{Authorization: 'Bearer {reader}'}}}}).then(r => r.status)"
    ));
    assert_eq!(status, Value::from(403));
}

/// A minute of one stream on its page's chart: the bitrate quadruples half way (the picture
/// turns to noise) and a viewer (the page's own player) joins after 40 s; both show in the
/// numbers the chart was drawn from, in that order.
#[test]
fn a_minute_of_a_stream_shows_its_bitrate_change_and_its_viewer() {
    if !is_private_netns() {
        bin("verge-manager");
        bin("verge-agent");
        println!(
            "{}",
            in_private_netns("a_minute_of_a_stream_shows_its_bitrate_change_and_its_viewer")
        );
        return;
    }
    let b = Edge::start("dashboard-minute", &EdgeOptions::noauth());
    let started = std::time::Instant::now();
    let _cam = b.publish(
        "ffmpeg",
        "cam",
        &Synthetic {
            size: "320x240",
            gop: 25,
            seconds: 120,
            video_kbps: Some(2000),
            noise_from: Some(30),
            ..Default::default()
        },
    );
    wait_for(PATIENCE, || b.listed_stream("cam")).expect("live/cam listed");
    let mut chromium = Chromium::open(
        &format!("http://{}/#fleet", b.manager_http),
        &b.dir.path().join("chromium-profile"),
        &b.dir.path().join("chromium.log"),
    );
    std::thread::sleep(Duration::from_secs(40).saturating_sub(started.elapsed()));
    chromium.eval("location.hash = '#stream/live/cam'");
    let series =
        |text: &str| -> Vec<Option<f64>> { text.split(',').map(|v| v.parse().ok()).collect() };
    // Both changes are in once a point after the join has been taken (points every 10 s).
    let drawn = until_within(
        Duration::from_secs(60),
        &mut chromium,
        "the chart's last minute",
        "(() => { const c = document.querySelector('#history svg.chart'); if (!c) return 0; \
          const k = c.dataset.bitratekbps.split(',').map(Number); \
          const r = c.dataset.readers.split(',').map(Number); \
          const lowThenHigh = k.some((v, i) => v > 100 && v < 900 && k.slice(i + 1).some((w) => w > 1400)); \
          const zeroThenOne = r.some((v, i) => v === 0 && r.slice(i + 1).some((w) => w >= 1)); \
          return lowThenHigh && zeroThenOne ? c.dataset.bitratekbps + ' / ' + c.dataset.readers : 0; })()",
    );
    let drawn = drawn.as_str().unwrap_or_default().to_string();
    let (kbps, readers) = drawn.split_once(" / ").unwrap_or_default();
    let (kbps, readers) = (series(kbps), series(readers));
    println!("a minute on the chart: kbit/s {kbps:?}, readers {readers:?}");
    // The change comes before the viewer: the high bitrate is measured with nobody watching.
    let first_high = kbps.iter().position(|v| v.is_some_and(|v| v > 1400.0));
    let first_viewer = readers.iter().position(|v| v.is_some_and(|v| v >= 1.0));
    assert!(first_high.is_some() && first_viewer.is_some(), "{drawn}");
    assert!(first_high <= first_viewer, "{drawn}");
}
