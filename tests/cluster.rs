//! The cluster end to end, on loopback: a box (`edge-1`) with an RTMP publisher, two cloud
//! nodes (`[node] role = "cloud"`, the same agent binary) and real WebRTC viewers through the
//! manager's `/whep/{stream}`. The box serves its `[cluster] edge_viewers`, a cloud node pulls
//! the stream once and serves the rest; a dead cloud node's viewers play again elsewhere; idle
//! relays close; the stream's end ends its relays and their viewers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use verge::whep::{Viewer, ViewerOptions};
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::prometheus;
use verge_testkit::{Proc, bin, get, listener, wait_for};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Starts cloud node `id` against the fixture's broker.
fn cloud_node(edge: &Edge, id: &str, secret: &str) -> Proc {
    let mqtt = listener(&edge.manager_listeners, "mqtt");
    let cfg = edge.dir.write(
        &format!("{id}.toml"),
        &format!(
            "id = \"{id}\"\nsecret = \"{secret}\"\n[node]\nrole = \"cloud\"\n\
             [mqtt]\nurl = \"mqtt://{mqtt}\"\n[rtmp]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[hls]\nlisten = \"127.0.0.1:0\"\n\
             [webrtc]\nudp_ips = [\"127.0.0.1\"]\n"
        ),
    );
    let (node, _) = Proc::spawn_ready(
        id,
        &bin("verge-agent"),
        &["--config", cfg.to_str().unwrap()],
        edge.dir.path(),
    );
    node
}

fn nodes(manager: SocketAddr) -> Vec<serde_json::Value> {
    get(manager, "/api/nodes/")
        .ok()
        .and_then(|r| r.json().as_array().cloned())
        .unwrap_or_default()
}

fn node(manager: SocketAddr, id: &str) -> Option<serde_json::Value> {
    nodes(manager).into_iter().find(|n| n["alias"] == id)
}

/// The agent a viewer's session belongs to (`/session/cam/{agent}~{random}`).
fn served_by(viewer: &Viewer) -> String {
    let path = &viewer.session_url.path;
    let session = path.rsplit('/').next().unwrap_or_default();
    session.split('~').next().unwrap_or_default().to_string()
}

/// A viewer that has shown a keyframe and `frames` frames after it.
async fn playing(url: &str, frames: u64) -> Viewer {
    let opts = ViewerOptions {
        audio: true,
        ..ViewerOptions::for_url(url)
    };
    let mut viewer = Viewer::connect(url, &opts).await.expect("WHEP offer");
    while viewer.stats.frames < frames {
        let unit = viewer
            .next_frame(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("viewer on {}: {e}", served_by(&viewer)));
        assert!(unit.is_some(), "session on {} ended", served_by(&viewer));
    }
    viewer
}

#[test]
fn cloud_nodes_carry_the_viewers_the_box_has_no_room_for() {
    let edge = Edge::start(
        "cluster",
        &EdgeOptions {
            manager_toml: "[[agents]]\nid = \"cloud-a\"\nsecret = \"sa\"\n\
                           [[agents]]\nid = \"cloud-b\"\nsecret = \"sb\"\n\
                           [cluster]\nedge_viewers = 2\n[cascade]\nmaximum_idle_time = 3000\n"
                .into(),
            ..EdgeOptions::noauth()
        },
    );
    let manager = edge.manager_http;
    let cloud_a = cloud_node(&edge, "cloud-a", "sa");
    let _cloud_b = cloud_node(&edge, "cloud-b", "sb");
    let roles = wait_for(Duration::from_secs(30), || {
        let all = nodes(manager);
        let online: Vec<(String, String)> = all
            .iter()
            .filter(|n| n["online"] == true)
            .map(|n| {
                (
                    n["alias"].as_str().unwrap_or_default().into(),
                    n["role"].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        (online.len() == 3).then_some(online)
    })
    .unwrap_or_else(|| panic!("cloud nodes not online: {:?}", nodes(manager)));
    assert_eq!(
        roles,
        [
            ("cloud-a".to_string(), "cloud".to_string()),
            ("cloud-b".into(), "cloud".into()),
            ("edge-1".into(), "edge".into())
        ]
    );

    let publisher = edge.publish("ffmpeg", "cam", &Synthetic::keyframe_every_second(300));
    wait_for(Duration::from_secs(30), || edge.listed_stream("cam"))
        .expect("cam never went live");
    let url = format!("http://{manager}/whep/cam");
    let rt = runtime();
    rt.block_on(async {
        // Two on the box, then one relay to a cloud node, which takes the rest.
        let mut viewers = Vec::new();
        for _ in 0..6 {
            viewers.push(playing(&url, 10).await);
        }
        let on: Vec<String> = viewers.iter().map(served_by).collect();
        assert_eq!(&on[..2], ["edge-1", "edge-1"], "{on:?}");
        let relay_node = on[2].clone();
        assert!(relay_node.starts_with("cloud-"), "{on:?}");
        assert!(on[2..].iter().all(|n| *n == relay_node), "{on:?}");
        // Everyone plays on: the relayed viewers as well as the box's.
        for v in &mut viewers {
            let before = v.stats.frames;
            assert!(!v.watch(Duration::from_secs(2)).await.expect("watch"));
            assert!(v.stats.frames >= before + 25, "{} on {}", v.stats, served_by(v));
        }
        let audio: Vec<u64> = viewers
            .iter()
            .map(|v| v.audio.packets.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert!(audio.iter().all(|n| *n > 0), "audio through the relay: {audio:?}");

        // The operator's view: the relay under the stream, the nodes' roles and relays, the
        // gauges. Reports come every few seconds.
        let stream = wait_for(Duration::from_secs(20), || {
            edge.listed_stream("cam")
                .filter(|s| s["relays"][0]["viewers"].as_u64() == Some(4))
        });
        let stream = stream.unwrap_or_else(|| panic!("{:?}", edge.listed_stream("cam")));
        assert_eq!(stream["agent"], "edge-1");
        assert_eq!(stream["relays"][0]["node"], relay_node.as_str());
        assert_eq!(stream["relays"][0]["source"], "edge-1");
        // The box sends three copies: its two viewers and the relay.
        assert_eq!(stream["readers"], 3, "{stream}");
        let relay = node(manager, &relay_node).unwrap();
        assert_eq!(relay["relays"], serde_json::json!(["live/cam"]));
        let (metrics, _) = prometheus::parse(&get(manager, "/metrics").unwrap().text());
        for (sample, value) in [
            ("verge_relay_active", 1.0),
            ("verge_placements_total{outcome=\"origin\"}", 2.0),
            ("verge_placements_total{outcome=\"new_relay\"}", 1.0),
            ("verge_placements_total{outcome=\"relay\"}", 3.0),
            ("verge_viewers{role=\"cloud\"}", 4.0),
        ] {
            assert_eq!(metrics.get(sample), Some(&value), "{sample}: {metrics:?}");
        }

        // The relay's node dies: its viewers offer again, as a player does, and play again
        // from the other cloud node.
        assert_eq!(relay_node, "cloud-a", "the first by id among equals");
        cloud_a.signal("KILL");
        let killed = Instant::now();
        let orphans: Vec<Viewer> = viewers.drain(2..).collect();
        drop(orphans);
        let again = loop {
            // A player retries until it is placed on a live node; the manager learns that
            // cloud-a is gone from its will.
            let v = playing(&url, 1).await;
            if served_by(&v) != "cloud-a" {
                break v;
            }
            assert!(killed.elapsed() < Duration::from_secs(20), "still placed on a dead node");
        };
        let back = killed.elapsed();
        println!("a dead cloud node's viewer plays again on {} after {back:?}", served_by(&again));
        assert_eq!(served_by(&again), "cloud-b");
        let mut moved = vec![again];
        for _ in 0..3 {
            moved.push(playing(&url, 1).await);
        }
        assert!(moved.iter().all(|v| served_by(v) == "cloud-b"));

        // Nobody watches: the relay closes after `maximum_idle_time`, the box's egress falls
        // back to its own viewers.
        for v in &moved {
            assert_eq!(v.delete().await.expect("DELETE"), 200);
        }
        drop(moved);
        let gone = wait_for(Duration::from_secs(30), || {
            let b = node(manager, "cloud-b")?;
            (b["relays"].as_array()?.is_empty()).then_some(())
        });
        assert!(gone.is_some(), "idle relay still open: {:?}", node(manager, "cloud-b"));
        let readers = wait_for(Duration::from_secs(20), || {
            let s = edge.listed_stream("cam")?;
            (s["readers"] == 2 && s["relays"].as_array()?.is_empty()).then_some(())
        });
        assert!(readers.is_some(), "{:?}", edge.listed_stream("cam"));

        // The stream ends at the box: the relay of it ends, and so does its viewer.
        let mut relayed = None;
        for _ in 0..2 {
            let v = playing(&url, 1).await;
            if served_by(&v) == "cloud-b" {
                relayed = Some(v);
            }
        }
        let mut relayed = relayed.expect("a viewer past the box's share goes to cloud-b");
        publisher.signal("KILL");
        let ended = wait_for(Duration::from_secs(30), || {
            let b = node(manager, "cloud-b")?;
            (b["relays"].as_array()?.is_empty()).then_some(())
        });
        assert!(ended.is_some(), "relay outlived its stream: {:?}", node(manager, "cloud-b"));
        assert!(relayed.watch(Duration::from_secs(20)).await.expect("watch"), "the relayed viewer's session ends");
    });
}
