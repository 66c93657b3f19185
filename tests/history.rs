//! The manager's last hour of numbers: a stream's and a node's history and the fleet's events,
//! sampled every 10 s from what the agents report.

use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::{get, wait_for};

#[test]
fn a_streams_and_a_nodes_last_hour_and_the_fleets_events() {
    let edge = Edge::start("history", &EdgeOptions::noauth());
    let m = edge.manager_http;
    let publisher = edge.on_air("ffmpeg", "cam", &Synthetic::lasting(60));
    // Two samples with the stream's measured bitrate (a sample every 10 s).
    let stream = wait_for(Duration::from_secs(35), || {
        let r = get(m, "/api/streams/cam/history").ok()?;
        if r.status != 200 {
            return None;
        }
        let h = r.json();
        let measured = h["points"]
            .as_array()?
            .iter()
            .filter(|p| p["bitrateKbps"].as_u64().is_some_and(|k| k > 0))
            .count();
        (measured >= 2).then_some(h)
    });
    let stream = stream
        .unwrap_or_else(|| panic!("{:?}", get(m, "/api/streams/cam/history").map(|r| r.text())));
    assert_eq!(stream["id"], "live/cam");
    assert_eq!(stream["stepMs"], 10_000);
    let points = stream["points"].as_array().expect("points");
    let times: Vec<u64> = points.iter().filter_map(|p| p["t"].as_u64()).collect();
    assert!(times.windows(2).all(|w| w[1] >= w[0] + 9_000), "{times:?}");
    assert!(
        points
            .iter()
            .any(|p| p["fps"].as_f64().is_some_and(|f| f > 20.0)),
        "{stream}"
    );
    // The same for the app's two-segment path.
    assert_eq!(
        get(m, "/api/streams/live/cam/history")
            .expect("history")
            .json()["id"],
        "live/cam"
    );

    let node = get(m, "/api/nodes/edge-1/history")
        .expect("node history")
        .json();
    let last = node["points"]
        .as_array()
        .and_then(|p| p.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["online"], true, "{node}");
    assert!(last["streams"].as_u64() >= Some(1), "{node}");
    let events = get(m, "/api/events").expect("events").json();
    let seen = |kind: &str, subject: &str| {
        events.as_array().is_some_and(|e| {
            e.iter()
                .any(|x| x["kind"] == kind && x["subject"] == subject)
        })
    };
    assert!(
        seen("online", "edge-1") && seen("publish_start", "live/cam"),
        "{events}"
    );

    // The publisher gone: its stop is an event; the history stays for the hour.
    drop(publisher);
    let stopped = wait_for(Duration::from_secs(30), || {
        let e = get(m, "/api/events").ok()?.json();
        e.as_array()?
            .iter()
            .any(|x| x["kind"] == "publish_stop" && x["subject"] == "live/cam")
            .then_some(())
    });
    assert!(
        stopped.is_some(),
        "{}",
        get(m, "/api/events").expect("events").text()
    );
    assert_eq!(
        get(m, "/api/streams/cam/history").expect("history").status,
        200
    );
    assert_eq!(
        get(m, "/api/streams/nope/history").expect("history").status,
        404
    );
}
