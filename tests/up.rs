//! The README's main command: `verge up` runs a manager and a local agent, says where, takes a
//! publish by name (no keys on a laptop), and stops cleanly on Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use verge::testkit::rtmp::RtmpClient;
use verge::testkit::{Proc, TempDir, bin, free_port, get, wait_for};

#[test]
fn verge_up_runs_a_manager_and_an_agent_and_stops_on_ctrl_c() {
    let dir = TempDir::new("up");
    let (http, mqtt, rtmp, agent_http) = (free_port(), free_port(), free_port(), free_port());
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let args = [
        "up",
        "--http",
        &addr(http),
        "--mqtt",
        &addr(mqtt),
        "--rtmp",
        &addr(rtmp),
        "--agent-http",
        &addr(agent_http),
    ];
    let mut up = Proc::spawn("verge-up", &bin("verge"), &args, dir.path());
    let summary = wait_for(Duration::from_secs(15), || {
        let log = up.log_text();
        log.contains("Press Ctrl-C").then_some(log)
    });
    let summary = summary.unwrap_or_else(|| panic!("no summary:\n{}", up.log_text()));
    assert!(summary.contains("local online"), "{summary}");
    assert!(
        summary.contains(&format!("rtmp://127.0.0.1:{rtmp}/live/")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("http://127.0.0.1:{agent_http}/live/")),
        "{summary}"
    );

    let manager = SocketAddr::from(([127, 0, 0, 1], http));
    let nodes = get(manager, "/api/nodes/").unwrap().json();
    assert_eq!(nodes[0]["alias"], "local");
    assert_eq!(nodes[0]["status"], "running");

    let mut publisher = RtmpClient::connect(SocketAddr::from(([127, 0, 0, 1], rtmp))).unwrap();
    assert_eq!(
        publisher.publish("live", "demo").unwrap(),
        "NetStream.Publish.Start"
    );
    let listed = wait_for(Duration::from_secs(5), || {
        let streams = get(manager, "/api/streams/").ok()?.json();
        (streams[0]["id"] == "demo").then_some(())
    });
    assert!(listed.is_some(), "the published stream is not listed");

    up.signal("INT");
    let stopped = wait_for(Duration::from_secs(10), || up.exited().then_some(()));
    assert!(
        stopped.is_some(),
        "verge up did not stop on SIGINT:\n{}",
        up.log_text()
    );
    assert!(up.log_text().contains("stopping"));
}
