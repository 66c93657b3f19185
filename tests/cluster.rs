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
use verge_testkit::whep::runtime;
use verge_testkit::{Proc, bin, get, listener, wait_for};

/// One test at a time: each runs a fleet and dozens of viewers, and frame counts mean nothing
/// on a starved CPU.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
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
    let _one = exclusive();
    let edge = Edge::start(
        "cluster",
        &EdgeOptions::noauth().manager(
            "[[agents]]\nid = \"cloud-a\"\nsecret = \"sa\"\n\
                           [[agents]]\nid = \"cloud-b\"\nsecret = \"sb\"\n\
                           [cluster]\nedge_viewers = 2\n[cascade]\nmaximum_idle_time = 3000\n",
        ),
    );
    let manager = edge.manager_http;
    let cloud_a = edge.start_cloud_node("cloud-a", "sa");
    let _cloud_b = edge.start_cloud_node("cloud-b", "sb");
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

    let publisher = edge.on_air("ffmpeg", "cam", &Synthetic::keyframe_every_second(300));
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
            assert!(
                v.stats.frames >= before + 25,
                "{} on {}",
                v.stats,
                served_by(v)
            );
        }
        let audio: Vec<u64> = viewers
            .iter()
            .map(|v| v.audio.packets.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert!(
            audio.iter().all(|n| *n > 0),
            "audio through the relay: {audio:?}"
        );

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
        // The manager learns that cloud-a is gone from its will, or from an offer it no
        // longer answers (then it places the viewer again without it).
        let again = playing(&url, 1).await;
        let back = killed.elapsed();
        println!(
            "a dead cloud node's viewer plays again on {} after {back:?}",
            served_by(&again)
        );
        assert_eq!(served_by(&again), "cloud-b");
        let mut moved = vec![again];
        for _ in 0..3 {
            moved.push(playing(&url, 1).await);
        }
        assert!(moved.iter().all(|v| served_by(v) == "cloud-b"));

        // Nobody watches: the relay closes after `maximum_idle_time`, the manager ends its
        // session at the box at once, and the box's egress falls to zero.
        for v in moved.iter().chain(&viewers) {
            assert_eq!(v.delete().await.expect("DELETE"), 200);
        }
        drop(moved);
        drop(viewers);
        let gone = wait_for(Duration::from_secs(30), || {
            let b = node(manager, "cloud-b")?;
            (b["relays"].as_array()?.is_empty()).then_some(())
        });
        assert!(
            gone.is_some(),
            "idle relay still open: {:?}",
            node(manager, "cloud-b")
        );
        let idle = wait_for(Duration::from_secs(30), || {
            let s = edge.listed_stream("cam")?;
            let egress = node(manager, "edge-1")?["egress_kbps"].as_u64()?;
            (s["readers"] == 0 && s["relays"].as_array()?.is_empty() && egress == 0).then_some(())
        });
        assert!(
            idle.is_some(),
            "{:?} {:?}",
            edge.listed_stream("cam"),
            node(manager, "edge-1")
        );

        // The stream ends at the box: the relay of it ends, and so does its viewer. (Two
        // viewers on the box again, then one on a new relay.)
        let mut relayed = None;
        let mut on_box = Vec::new();
        for _ in 0..3 {
            let v = playing(&url, 1).await;
            if served_by(&v) == "cloud-b" {
                relayed = Some(v);
            } else {
                on_box.push(v);
            }
        }
        let mut relayed = relayed.expect("a viewer past the box's share goes to cloud-b");
        assert_eq!(on_box.len(), 2);
        publisher.signal("KILL");
        let ended = wait_for(Duration::from_secs(30), || {
            let b = node(manager, "cloud-b")?;
            (b["relays"].as_array()?.is_empty()).then_some(())
        });
        assert!(
            ended.is_some(),
            "relay outlived its stream: {:?}",
            node(manager, "cloud-b")
        );
        assert!(
            relayed.watch(Duration::from_secs(20)).await.expect("watch"),
            "the relayed viewer's session ends"
        );
    });
}

const CLOUD: &str = "198.18.0.1";
const BOX: &str = "198.18.0.2";
/// The box's uplink, and the stream it carries.
const UPLINK_MBIT: u32 = 8;
const STREAM_KBPS: u32 = 1500;
const VIEWERS: usize = 24;
const FPS: u64 = 25;
const WINDOW: Duration = Duration::from_secs(20);

/// Starts agent `id` with `extra` TOML; in the box's namespace when `netns` is given.
fn agent(
    dir: &verge_testkit::TempDir,
    id: &str,
    mqtt: SocketAddr,
    udp_ip: &str,
    extra: &str,
    netns: Option<&verge_testkit::netns::Node>,
) -> (Proc, verge_testkit::Listeners) {
    let cfg = dir.write(
        &format!("{id}.toml"),
        &format!(
            "id = \"{id}\"\nsecret = \"s-{id}\"\n[mqtt]\nurl = \"mqtt://{mqtt}\"\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\nnoauth = true\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [hls]\nlisten = \"127.0.0.1:0\"\n[webrtc]\nudp_ips = [\"{udp_ip}\"]\n\
             [limits]\nsessions_per_address = 0\n{extra}"
        ),
    );
    let agent_bin = bin("verge-agent");
    let mut args: Vec<String> = netns.map(|n| n.wrapper()).unwrap_or_default();
    args.extend([
        agent_bin.display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ]);
    let program = args.remove(0);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn_ready(id, std::path::Path::new(&program), &args, dir.path())
}

/// `VIEWERS` viewers through the manager; each watches for `WINDOW` at the same time. Returns
/// the node and frame count of each that connected, how many offers were refused (a starved
/// uplink delays the box's answers too), and the bytes the box sent meanwhile.
async fn audience(
    url: &str,
    uplink: &verge_testkit::netns::Uplink,
) -> (Vec<(String, u64)>, usize, u64) {
    let mut viewers = Vec::new();
    let mut refused = 0;
    for _ in 0..VIEWERS {
        let opts = ViewerOptions {
            ice: verge_agent::webrtc::IceSettings {
                udp_ips: vec![CLOUD.parse().unwrap()],
                ..Default::default()
            },
            ..ViewerOptions::for_url(url)
        };
        match Viewer::connect(url, &opts).await {
            Ok(v) => viewers.push(v),
            Err(e) => {
                println!("offer refused: {e}");
                refused += 1;
            }
        }
    }
    // Each settles (and reads what queued while the others joined), then the window everyone
    // is measured over begins.
    let settle = Duration::from_secs(3);
    let watching: Vec<_> = viewers
        .into_iter()
        .map(|mut v| {
            tokio::spawn(async move {
                let _ = v.watch(settle).await;
                let start = v.stats.frames;
                let _ = v.watch(WINDOW).await;
                (served_by(&v), v.stats.frames - start, v)
            })
        })
        .collect();
    tokio::time::sleep(settle).await;
    let before = uplink.sent_bytes();
    let mut out = Vec::new();
    let mut keep = Vec::new();
    for w in watching {
        let (node, frames, v) = w.await.expect("viewer task");
        out.push((node, frames));
        keep.push(v);
    }
    let sent = uplink.sent_bytes() - before;
    for v in &keep {
        let _ = v.delete().await;
    }
    (out, refused, sent)
}

/// The scene: a box on an 8 Mbit/s uplink (tbf) with a 1.5 Mbit/s stream, 24 viewers
/// through the manager. Without cloud nodes (the control) the uplink starves them; with two
/// cloud nodes every viewer gets ≥ 90 % of the frames and the box sends one copy per relay
/// plus its own viewers'.
#[test]
fn a_thin_uplink_serves_a_crowd_through_cloud_nodes() {
    use verge_testkit::chromium::{in_private_netns, is_private_netns, is_root};
    use verge_testkit::netns::{Uplink, internet};
    if !is_root() {
        println!("skipped: shaping a link needs root");
        return;
    }
    if !is_private_netns() {
        let _one = exclusive();
        bin("verge-manager");
        bin("verge-agent");
        println!(
            "{}",
            in_private_netns("a_thin_uplink_serves_a_crowd_through_cloud_nodes")
        );
        return;
    }
    let dir = verge_testkit::TempDir::new("uplink");
    internet(CLOUD);
    let uplink = Uplink::new("box", BOX, Some(UPLINK_MBIT));
    let manager_cfg = dir.write(
        "manager.toml",
        "[http]\nlisten = \"127.0.0.1:0\"\n[broker]\nlisten = \"0.0.0.0:0\"\n\
         [[agents]]\nid = \"edge-1\"\nsecret = \"s-edge-1\"\n\
         [[agents]]\nid = \"cloud-a\"\nsecret = \"s-cloud-a\"\n\
         [[agents]]\nid = \"cloud-b\"\nsecret = \"s-cloud-b\"\n\
         [cluster]\nedge_viewers = 2\n",
    );
    let (_manager, bound) = Proc::manager(&manager_cfg, dir.path());
    let manager = listener(&bound, "http");
    let mqtt: SocketAddr = format!("{CLOUD}:{}", listener(&bound, "mqtt").port())
        .parse()
        .unwrap();
    let (_edge, edge_bound) = agent(&dir, "edge-1", mqtt, BOX, "", Some(&uplink.node));
    let rtmp = listener(&edge_bound, "rtmp");
    let media = Synthetic {
        size: "1280x720",
        video_kbps: Some(STREAM_KBPS),
        ..Synthetic::keyframe_every_second(600)
    };
    let args = verge_testkit::edge::publish_args(&format!("rtmp://{rtmp}/live/cam"), &media);
    let mut wrapped = uplink.node.wrapper();
    wrapped.push(verge_testkit::edge::tool("ffmpeg").display().to_string());
    wrapped.extend(args);
    let program = wrapped.remove(0);
    let wrapped: Vec<&str> = wrapped.iter().map(String::as_str).collect();
    let _publisher = Proc::spawn(
        "ffmpeg",
        std::path::Path::new(&program),
        &wrapped,
        dir.path(),
    );
    let live = wait_for(Duration::from_secs(40), || {
        let streams = get(manager, "/api/streams/").ok()?.json();
        streams
            .as_array()?
            .iter()
            .find(|s| s["id"] == "cam" && s["bitrateKbps"].as_u64() > Some(0))
            .cloned()
    });
    assert!(
        live.is_some(),
        "cam never went live: {:?}",
        get(manager, "/api/streams/").map(|r| r.text())
    );
    let url = format!("http://{manager}/whep/cam");
    let rt = runtime();
    let source_frames = FPS * WINDOW.as_secs();

    // The control: the box alone. 24 × 1.5 Mbit/s does not fit in 8.
    let (alone, alone_refused, alone_sent) = rt.block_on(audience(&url, &uplink));
    let starved = alone_refused
        + alone
            .iter()
            .filter(|(_, f)| *f * 10 < source_frames * 9)
            .count();
    let alone_mbit = alone_sent as f64 * 8.0 / WINDOW.as_secs_f64() / 1e6;
    println!(
        "box alone: {} of {VIEWERS} viewers below 90 % of {source_frames} frames; frames {:?}; uplink {alone_mbit:.1} Mbit/s",
        starved,
        alone.iter().map(|(_, f)| f).collect::<Vec<_>>()
    );
    assert!(alone.iter().all(|(n, _)| n == "edge-1"));
    assert!(
        starved > VIEWERS / 2,
        "the control did not starve: {alone:?}"
    );

    // With two cloud nodes.
    let (_a, _) = agent(
        &dir,
        "cloud-a",
        mqtt,
        CLOUD,
        "[node]\nrole = \"cloud\"\n",
        None,
    );
    let (_b, _) = agent(
        &dir,
        "cloud-b",
        mqtt,
        CLOUD,
        "[node]\nrole = \"cloud\"\n",
        None,
    );
    let online = wait_for(Duration::from_secs(30), || {
        (nodes(manager)
            .iter()
            .filter(|n| n["online"] == true)
            .count()
            == 3)
            .then_some(())
    });
    assert!(online.is_some(), "{:?}", nodes(manager));
    // The control's viewers are gone from the box (those whose answer came too late end at
    // the box's connect timeout) before the crowd comes back.
    let quiet = wait_for(Duration::from_secs(40), || {
        let s = get(manager, "/api/streams/").ok()?.json();
        (s[0]["readers"] == 0).then_some(())
    });
    assert!(
        quiet.is_some(),
        "the control's viewers are still on the box"
    );
    let (crowd, refused, sent) = rt.block_on(audience(&url, &uplink));
    assert_eq!(refused, 0, "offers refused with cloud nodes: {crowd:?}");
    let stream = get(manager, "/api/streams/").unwrap().json()[0].clone();
    let relays = crowd
        .iter()
        .filter(|(n, _)| n != "edge-1")
        .map(|(n, _)| n.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let on_box = crowd.iter().filter(|(n, _)| n == "edge-1").count() as u64;
    let kbps = u64::from(STREAM_KBPS).max(stream["bitrateKbps"].as_u64().unwrap_or(0));
    let allowed = (on_box + relays) * kbps * 1000 / 8 * WINDOW.as_secs() * 125 / 100;
    let mbit = sent as f64 * 8.0 / WINDOW.as_secs_f64() / 1e6;
    println!(
        "with cloud nodes: {on_box} on the box, {relays} relay(s); frames {:?}; uplink {mbit:.2} Mbit/s (allowed {:.2})",
        crowd
            .iter()
            .map(|(n, f)| format!("{n}:{f}"))
            .collect::<Vec<_>>(),
        allowed as f64 * 8.0 / WINDOW.as_secs_f64() / 1e6
    );
    assert_eq!(on_box, 2, "{crowd:?}");
    for (node, frames) in &crowd {
        assert!(
            *frames * 10 >= source_frames * 9,
            "a viewer on {node} got {frames} of {source_frames} frames: {crowd:?}"
        );
    }
    assert!(
        sent <= allowed,
        "the box sent {sent} bytes, more than {allowed}"
    );
}

/// Relays are the nodes' own: a manager restart (its embedded broker with it) leaves a relayed
/// viewer playing, and the new manager finds the relay in the nodes' state and places the next
/// viewer on it rather than starting another.
#[test]
fn relays_outlive_a_manager_restart() {
    let _one = exclusive();
    let broker = verge_testkit::reserve_port();
    let mut edge = Edge::start(
        "cluster-restart",
        &EdgeOptions::noauth().broker(broker.addr()).manager(
            "[[agents]]\nid = \"cloud-a\"\nsecret = \"sa\"\n\
                           [cluster]\nedge_viewers = 0\n",
        ),
    );
    let _cloud = edge.start_cloud_node("cloud-a", "sa");
    let both_online = |manager: SocketAddr| {
        wait_for(Duration::from_secs(30), || {
            (nodes(manager)
                .iter()
                .filter(|n| n["online"] == true)
                .count()
                == 2)
                .then_some(())
        })
    };
    assert!(
        both_online(edge.manager_http).is_some(),
        "{:?}",
        nodes(edge.manager_http)
    );
    let _publisher = edge.on_air("ffmpeg", "cam", &Synthetic::keyframe_every_second(120));
    let rt = runtime();
    let mut first = rt.block_on(playing(
        &format!("http://{}/whep/cam", edge.manager_http),
        10,
    ));
    assert_eq!(served_by(&first), "cloud-a");

    edge.stop_manager();
    edge.start_manager("manager-2");
    let manager = edge.manager_http;
    rt.block_on(async {
        // It never stopped: 3 s of media after the restart.
        let before = first.stats.frames;
        assert!(!first.watch(Duration::from_secs(3)).await.expect("watch"));
        assert!(first.stats.frames >= before + 50, "{}", first.stats);
    });
    assert!(both_online(manager).is_some(), "{:?}", nodes(manager));
    let relay = wait_for(Duration::from_secs(20), || {
        let s = edge.listed_stream("cam")?;
        (s["relays"][0]["node"] == "cloud-a").then_some(s)
    });
    assert!(
        relay.is_some(),
        "the new manager does not see the relay: {:?}",
        edge.listed_stream("cam")
    );
    let second = rt.block_on(playing(&format!("http://{manager}/whep/cam"), 10));
    assert_eq!(served_by(&second), "cloud-a");
    let (metrics, _) = prometheus::parse(&get(manager, "/metrics").unwrap().text());
    assert_eq!(
        metrics.get("verge_placements_total{outcome=\"relay\"}"),
        Some(&1.0),
        "{metrics:?}"
    );
    assert_eq!(
        metrics.get("verge_placements_total{outcome=\"new_relay\"}"),
        None,
        "{metrics:?}"
    );
    let box_log = edge.agent.log_text();
    assert_eq!(
        box_log.matches("WHEP viewer answered").count(),
        1,
        "one copy from the box: {box_log}"
    );
    drop(first);
}
