//! `/metrics` of the manager and of the agent, read by a real Prometheus parser, with values
//! that move as a stream, a WHEP viewer, a recording and the agent itself come and go.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::whep::watching;
use verge_testkit::{get, prometheus, wait_for};

struct Page {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Page {
    fn value(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(f64::NAN)
    }
}

fn scrape(addr: SocketAddr) -> Page {
    let r = get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    let (samples, types) = prometheus::parse(&r.text());
    Page { samples, types }
}

/// Scrapes `addr` until `check` holds; the last page otherwise, for the message.
fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&Page) -> bool) -> Page {
    let mut last = None;
    let found = wait_for(Duration::from_secs(20), || {
        let page = scrape(addr);
        if check(&page) {
            return Some(page);
        }
        last = Some(page);
        None
    });
    found.unwrap_or_else(|| panic!("{what}: never seen in {:#?}", last.map(|p| p.samples)))
}

#[test]
fn metrics_of_manager_and_agent_parse_and_follow_the_fleet() {
    let b = Edge::start(
        "metrics",
        &EdgeOptions::noauth()
            .agent("[record]\ndir = \"{dir}/rec\"\nstreams = [\"live/*\"]\nsegment_secs = 1\n"),
    );
    let m = b.manager_http;
    let page = scrape(m);
    assert_eq!(page.value("verge_agents{state=\"online\"}"), 1.0);
    assert_eq!(page.value("verge_agents{state=\"offline\"}"), 0.0);
    assert_eq!(page.value("verge_agent_up{agent=\"edge-1\"}"), 1.0);
    assert_eq!(page.value("verge_streams"), 0.0);
    assert_eq!(page.value("verge_broker_connected"), 1.0);
    assert_eq!(page.types["verge_agents"], "gauge");
    assert_eq!(page.types["verge_whep_signaling_seconds"], "histogram");
    let agent = scrape(b.http);
    assert_eq!(agent.value("verge_agent_streams"), 0.0);
    assert_eq!(agent.value("verge_agent_readers{kind=\"webrtc\"}"), 0.0);

    let _publisher = b.on_air("cam", "cam", &Synthetic::lasting(120));

    let url = format!("http://{m}/whep/cam");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let viewer = runtime.block_on(async {
        // The first picture; then a while of watching.
        let mut viewer = watching(&url, "WHEP").await;
        viewer.watch(Duration::from_secs(2)).await.unwrap();
        viewer
    });
    assert!(viewer.stats.frames > 0);

    let agent = scrape_until(b.http, "a WHEP viewer and a recording", |p| {
        p.value("verge_agent_readers{kind=\"webrtc\"}") == 1.0
            && p.value("verge_agent_recordings") == 1.0
            && p.value("verge_agent_recorder_bytes_total") > 0.0
    });
    assert_eq!(agent.value("verge_agent_streams"), 1.0);
    assert_eq!(agent.value("verge_agent_readers{kind=\"recorder\"}"), 1.0);
    assert_eq!(agent.value("verge_agent_publishes_total"), 1.0);
    assert!(agent.value("verge_agent_ingest_bytes_total") > 0.0);
    assert!(agent.value("verge_agent_reader_bytes_total{kind=\"webrtc\"}") > 0.0);
    assert_eq!(
        agent.value("verge_agent_stream_readers{stream=\"live/cam\"}"),
        2.0
    );
    assert_eq!(agent.types["verge_agent_reader_bytes"], "counter");

    // The manager learns readers from the agent's state reports (every 10 s at most).
    let page = scrape_until(m, "the stream, its readers and bitrate", |p| {
        p.value("verge_streams") == 1.0
            && p.value("verge_readers") == 2.0
            && p.value("verge_stream_bitrate_bits_per_second{agent=\"edge-1\",stream=\"live/cam\"}")
                > 0.0
    });
    assert_eq!(page.value("verge_whep_offers_total{status=\"201\"}"), 1.0);
    assert_eq!(page.value("verge_whep_signaling_seconds_count"), 1.0);
    assert!(page.value("verge_whep_signaling_seconds_sum") > 0.0);
    assert!(page.value("verge_rpc_duration_seconds_count{method=\"whep.offer\"}") >= 1.0);
    // What edge-1 sent its viewer shows as its egress at its next state report.
    scrape_until(m, "edge-1's egress", |p| {
        p.value("verge_agent_egress_bits_per_second{agent=\"edge-1\"}") > 0.0
    });
    // The recording's day reached the index.
    let page = scrape_until(m, "the indexed day", |p| {
        p.value("verge_index_rows_total{result=\"stored\"}") >= 1.0
    });
    assert!(page.value("verge_database_duration_seconds_count{op=\"upsert\"}") >= 1.0);

    // The viewer leaves; an offer for a stream nobody publishes is counted by its status.
    runtime.block_on(async {
        viewer.close().await;
    });
    scrape_until(b.http, "the viewer gone", |p| {
        p.value("verge_agent_readers{kind=\"webrtc\"}") == 0.0
    });
    let missing = verge_testkit::request(
        "POST",
        m,
        "/whep/nobody",
        &[("Content-Type", "application/sdp")],
        b"v=0\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(missing.status, 404, "{}", missing.text());
    let page = scrape(m);
    assert_eq!(page.value("verge_whep_offers_total{status=\"404\"}"), 1.0);

    // The agent goes away: offline at once (its last will), and its gauges go with it.
    b.agent.signal("KILL");
    let page = scrape_until(m, "the agent offline", |p| {
        p.value("verge_agents{state=\"offline\"}") == 1.0
    });
    assert_eq!(page.value("verge_agent_up{agent=\"edge-1\"}"), 0.0);
    assert_eq!(page.value("verge_streams"), 0.0);
}
