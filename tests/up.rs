//! The README's main command: `verge up` runs a manager and a local agent, says where, takes a
//! publish by name (no keys on a laptop), and stops cleanly on Ctrl-C.

use std::time::Duration;

use verge_testkit::rtmp::RtmpClient;
use verge_testkit::{ANY_PORT, Proc, TempDir, bin, get, listener, wait_for};

/// `verge up` with its HTTP on `http` and every other listener on a free loopback port.
fn up_args(http: &str) -> [&str; 11] {
    [
        "up",
        "--http",
        http,
        "--mqtt",
        ANY_PORT,
        "--rtmp",
        ANY_PORT,
        "--agent-http",
        ANY_PORT,
        "--hls",
        ANY_PORT,
    ]
}

#[test]
fn verge_up_runs_a_manager_and_an_agent_and_stops_on_ctrl_c() {
    let dir = TempDir::new("up");
    let args = up_args(ANY_PORT);
    // The ready file comes after the summary, so the summary is complete once it exists.
    let (mut up, bound) = Proc::spawn_ready("verge-up", &bin("verge"), &args, dir.path());
    let keys: Vec<&str> = bound.iter().map(|(name, _)| name).collect();
    assert_eq!(
        keys,
        ["agent_http", "hls", "http", "mqtt", "rtmp"],
        "{}",
        bound.summary()
    );
    let (manager, rtmp, agent_http) = (
        listener(&bound, "http"),
        listener(&bound, "rtmp"),
        listener(&bound, "agent_http"),
    );
    let summary = up.log_text();
    assert!(summary.contains("Press Ctrl-C"), "{summary}");
    assert!(summary.contains("local online"), "{summary}");
    assert!(
        summary.contains(&format!("rtmp://{rtmp}/live/")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("http://{agent_http}/live/")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("http://{manager}/play/")),
        "{summary}"
    );

    let nodes = get(manager, "/api/nodes/").unwrap().json();
    assert_eq!(nodes[0]["alias"], "local");
    assert_eq!(nodes[0]["status"], "running");
    // What the agent announces is where it really listens.
    assert_eq!(nodes[0]["url"], format!("http://{agent_http}"), "{nodes}");

    let mut publisher = RtmpClient::connect(rtmp).unwrap();
    assert_eq!(
        publisher.publish("live", "demo").unwrap(),
        "NetStream.Publish.Start"
    );
    let listed = wait_for(Duration::from_secs(20), || {
        let streams = get(manager, "/api/streams/").ok()?.json();
        (streams[0]["id"] == "demo").then_some(())
    });
    assert!(listed.is_some(), "the published stream is not listed");

    up.signal("INT");
    let stopped = wait_for(Duration::from_secs(20), || up.exited().then_some(()));
    assert!(
        stopped.is_some(),
        "verge up did not stop on SIGINT:\n{}",
        up.log_text()
    );
    assert!(up.log_text().contains("stopping"));
}

/// `verge up` beyond loopback (here its HTTP on every interface) makes a token at start and
/// prints it: without it the API refuses, with it the API answers. The default stays loopback
/// (a unit test of the options checks the addresses).
#[test]
fn verge_up_beyond_loopback_needs_the_printed_token() {
    let dir = TempDir::new("up-open");
    let args = up_args("0.0.0.0:0");
    let (mut up, bound) = Proc::spawn_ready("verge-up", &bin("verge"), &args, dir.path());
    let manager = verge_manager::loopback_for(listener(&bound, "http"));
    let summary = up.log_text();
    let token = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("token"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no token printed:\n{summary}"))
        .to_string();
    assert!(token.len() >= 32, "{summary}");
    let keys = |headers: &[(&str, &str)]| {
        verge_testkit::request(
            "GET",
            manager,
            "/api/keys",
            headers,
            b"",
            Duration::from_secs(5),
        )
        .expect("HTTP exchange")
        .status
    };
    assert_eq!(keys(&[]), 401);
    assert_eq!(keys(&[("Authorization", "Bearer wrong")]), 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(keys(&[("Authorization", &bearer)]), 200);
    // The box's own ports stay as on any box, and the agent is online behind the auth.
    assert!(summary.contains("local online"), "{summary}");
    up.signal("INT");
    let stopped = wait_for(Duration::from_secs(20), || up.exited().then_some(()));
    assert!(
        stopped.is_some(),
        "verge up did not stop:\n{}",
        up.log_text()
    );
    assert!(!up.log_text().contains(&format!("token={token}")));
}
