//! No single manager: two managers (`mgr-a`, `mgr-b`) on one PostgreSQL and a RabbitMQ cluster
//! of two nodes, a box on each node. RabbitMQ keeps retained messages on the node they were
//! published on and hands none to a wildcard subscription, so everything here works without
//! them.
//!
//! - an agent enrolled through A is known to B (the agents table, followed);
//! - a channel key issued through A publishes through B's RTMP router;
//! - a WHEP session created through A is deleted through B;
//! - A killed -9: B's API, dashboard and new viewers carry on, the viewer already playing keeps
//!   playing, an encoder that reconnects to B is back on air;
//! - a broker node killed: its box moves to another node and is online again, and a box that
//!   died with the node (its will lost with it) is shown offline;
//! - a manager started later knows the fleet, though the broker hands it no retained presence;
//! - the recording index holds each stream-day once, though both managers stored it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use verge_testkit::edge::{Synthetic, publish_args, tool};
use verge_testkit::postgres::Postgres;
use verge_testkit::rabbitmq::RabbitCluster;
use verge_testkit::whep::{runtime, watching};
use verge_testkit::{ANY_PORT, Listeners, Proc, TempDir, bin, get, http, listener, send, wait_for};

/// How long a fleet change may take on a loaded machine before the test fails; conditions are
/// polled, so a healthy run waits only as long as the change takes.
const PATIENCE: Duration = Duration::from_secs(30);

/// Broker nodes.
const NODES: usize = 2;

struct Manager {
    proc: Proc,
    http: SocketAddr,
    rtmp: SocketAddr,
}

fn start_manager(dir: &TempDir, id: &str, brokers: &[String], database: &str) -> Manager {
    let fallbacks: Vec<String> = brokers[1..].iter().map(|u| format!("\"{u}\"")).collect();
    let config = dir.write(
        &format!("{id}.toml"),
        &format!(
            "[http]\nlisten = \"{ANY_PORT}\"\n[rtmp]\nlisten = \"{ANY_PORT}\"\n\
             [mqtt]\nurl = \"{}\"\nfallback_urls = [{}]\nid = \"{id}\"\n\
             [keys]\nfile = \"{}\"\n[[agents]]\nid = \"edge-1\"\nsecret = \"s1\"\n\
             [[agents]]\nid = \"edge-3\"\nsecret = \"s3\"\n",
            brokers[0],
            fallbacks.join(", "),
            dir.path().join(format!("{id}-keys.json")).display()
        ),
    );
    let (proc, bound): (Proc, Listeners) = Proc::spawn_ready_with_env(
        id,
        &bin("verge-manager"),
        &["--config", config.to_str().unwrap()],
        dir.path(),
        &[("DATABASE_URL", database)],
    );
    Manager {
        proc,
        http: listener(&bound, "http"),
        rtmp: listener(&bound, "rtmp"),
    }
}

fn start_agent(dir: &TempDir, id: &str, secret: &str, brokers: &[String], extra: &str) -> Proc {
    let fallbacks: Vec<String> = brokers[1..].iter().map(|u| format!("\"{u}\"")).collect();
    let config = dir.write(
        &format!("{id}.toml"),
        &format!(
            "id = \"{id}\"\nsecret = \"{secret}\"\n[mqtt]\nurl = \"{}\"\nfallback_urls = [{}]\n\
             [rtmp]\nlisten = \"{ANY_PORT}\"\nnoauth = false\n[http]\nlisten = \"{ANY_PORT}\"\n\
             [hls]\nlisten = \"{ANY_PORT}\"\n[webrtc]\nudp_ips = [\"127.0.0.1\"]\n{extra}",
            brokers[0],
            fallbacks.join(", ")
        ),
    );
    Proc::spawn_ready(
        id,
        &bin("verge-agent"),
        &["--config", config.to_str().unwrap()],
        dir.path(),
    )
    .0
}

/// The agents `manager` shows online.
fn online(manager: SocketAddr) -> Vec<String> {
    let Ok(nodes) = get(manager, "/api/nodes/") else {
        return Vec::new();
    };
    let mut ids: Vec<String> = nodes
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["online"] == true)
        .filter_map(|n| n["alias"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

fn wait_online(manager: &Manager, expected: &[&str], what: &str) -> Duration {
    let started = Instant::now();
    wait_for(PATIENCE, || {
        (online(manager.http) == expected).then(|| started.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: expected {expected:?} online, got {:?}\n{}",
            online(manager.http),
            manager.proc.log_text()
        )
    })
}

/// Whether `manager` lists stream `id` live.
fn live(manager: SocketAddr, id: &str) -> bool {
    get(manager, "/api/streams/").is_ok_and(|r| {
        r.json()
            .as_array()
            .is_some_and(|all| all.iter().any(|s| s["id"] == id))
    })
}

/// POSTs `body` to `path`, which must answer 201; the answer's string field `field`.
fn created(manager: SocketAddr, path: &str, body: &str, field: &str) -> String {
    let r = http(
        "POST",
        manager,
        path,
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 201, "POST {path}: {}", r.text());
    r.json()[field].as_str().unwrap().to_string()
}

fn publish(dir: &TempDir, label: &str, url: &str) -> Proc {
    let media = Synthetic::lasting(600);
    let args = publish_args(url, &media);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(label, tool("ffmpeg"), &args, dir.path())
}

#[test]
fn two_managers_on_one_database_and_a_broker_cluster_serve_one_fleet() {
    let dir = TempDir::new("managers");
    let pg = Postgres::start(dir.path());
    let mut rabbit = RabbitCluster::start(
        dir.path(),
        NODES,
        &[("verge-manager", "mgr"), ("edge-1", "s1"), ("edge-3", "s3")],
    );
    // Each process starts on its own node and knows the others.
    let nodes: Vec<SocketAddr> = rabbit.nodes.iter().map(|n| n.mqtt).collect();
    let urls = |user: &str, password: &str, first: usize| -> Vec<String> {
        (0..NODES)
            .map(|i| format!("mqtt://{user}:{password}@{}", nodes[(first + i) % NODES]))
            .collect()
    };
    let a = start_manager(&dir, "mgr-a", &urls("verge-manager", "mgr", 0), &pg.url);
    let b = start_manager(&dir, "mgr-b", &urls("verge-manager", "mgr", 1), &pg.url);
    let recordings = dir.path().join("recordings");
    let _edge1 = start_agent(
        &dir,
        "edge-1",
        "s1",
        &urls("edge-1", "s1", 0),
        &format!(
            "[record]\ndir = \"{}\"\nstreams = [\"live/*\"]\nsegment_secs = 2\n",
            recordings.display()
        ),
    );
    // edge-3 will die with its broker node: its will dies with it.
    let edge3 = start_agent(&dir, "edge-3", "s3", &urls("edge-3", "s3", 0)[..1], "");
    wait_online(&a, &["edge-1", "edge-3"], "A");
    wait_online(&b, &["edge-1", "edge-3"], "B");

    // An agent enrolled through A: B learns its secret from the database, and both show it.
    let secret = created(a.http, "/api/agents", r#"{"id": "edge-2"}"#, "secret");
    rabbit.add_user("edge-2", &secret);
    let _edge2 = start_agent(&dir, "edge-2", &secret, &urls("edge-2", &secret, 1), "");
    let all = ["edge-1", "edge-2", "edge-3"];
    wait_online(&a, &all, "A after enrolling edge-2");
    wait_online(&b, &all, "B after edge-2 was enrolled through A");

    // A key issued through A publishes through B's router (to edge-1, behind B's tunnel).
    let key = created(
        a.http,
        "/api/keys/live/cam",
        r#"{"agent": "edge-1"}"#,
        "key",
    );
    let via_b = format!("rtmp://{}/live/{key}", b.rtmp);
    let mut encoder = wait_for(PATIENCE, || {
        let encoder = publish(&dir, "ffmpeg-b", &via_b);
        wait_for(Duration::from_secs(5), || live(b.http, "cam").then_some(())).map(|_| encoder)
    })
    .unwrap_or_else(|| panic!("never live through B's router:\n{}", b.proc.log_text()));
    assert!(live(a.http, "cam"), "A lists the stream too");

    let rt = runtime();
    let (mut playing, b_http) = rt.block_on(async {
        // A WHEP session created through A, deleted through B.
        let first = watching(&format!("http://{}/whep/cam", a.http), "WHEP through A").await;
        let deleted = send("DELETE", b.http, &first.session_url.path);
        assert_eq!(deleted.status, 200, "{}", deleted.text());
        let mut first = first;
        verge_testkit::whep::ends(&mut first, PATIENCE, "when deleted through B").await;

        // The viewer that will outlive manager A.
        let playing = watching(&format!("http://{}/whep/cam", a.http), "WHEP through A").await;
        (playing, b.http)
    });

    // Manager A dies without a goodbye.
    let mut a = a;
    a.proc.signal("KILL");
    assert!(wait_for(PATIENCE, || a.proc.exited().then_some(())).is_some());
    rt.block_on(async {
        // The viewer already playing keeps playing: its media never touched a manager.
        let before = playing.stats.frames;
        while playing.stats.frames < before + 50 {
            let frame = playing.next_frame(Duration::from_secs(10)).await;
            assert!(
                matches!(frame, Ok(Some(_))),
                "the viewer stopped after manager A died: {frame:?}"
            );
        }
        // New viewers through B.
        let mut newcomer = watching(&format!("http://{b_http}/whep/cam"), "WHEP through B").await;
        assert!(newcomer.next_frame(Duration::from_secs(10)).await.is_ok());
    });
    assert_eq!(get(b.http, "/").unwrap().status, 200, "B's dashboard");
    assert_eq!(online(b.http), all, "B's API");

    // The encoder reconnects to B (as OBS does after a drop): back on air.
    encoder.signal("KILL");
    let _ = wait_for(PATIENCE, || encoder.exited().then_some(()));
    assert!(
        wait_for(PATIENCE, || (!live(b.http, "cam")).then_some(())).is_some(),
        "the stream did not end with its encoder"
    );
    let reconnected_at = Instant::now();
    encoder = publish(&dir, "ffmpeg-b-2", &via_b);
    let on_air = wait_for(PATIENCE, || {
        live(b.http, "cam").then(|| reconnected_at.elapsed())
    })
    .unwrap_or_else(|| panic!("not back on air through B:\n{}", b.proc.log_text()));
    println!("encoder reconnected to B: on air again after {on_air:?}");

    // Broker node 0 (edge-1's, and the dead A's) is killed: edge-1 moves to another node and
    // is online on its new session.
    let session = |id: &str| {
        let nodes = get(b.http, "/api/nodes/").ok()?.json();
        let node = nodes.as_array()?.iter().find(|n| n["alias"] == id)?.clone();
        (node["online"] == true).then(|| node["session"].as_u64())?
    };
    let before = session("edge-1").expect("edge-1 online with a session");
    edge3.signal("STOP");
    let killed_at = Instant::now();
    rabbit.kill(0);
    edge3.signal("KILL");
    let back = wait_for(PATIENCE, || {
        session("edge-1")
            .filter(|now| *now != before)
            .map(|_| killed_at.elapsed())
    })
    .unwrap_or_else(|| panic!("edge-1 not back on another node:\n{}", b.proc.log_text()));
    println!("broker node killed: edge-1 online again on another node {back:?} after the kill");
    // edge-3 left no will: B learns it is gone by asking when edge-1 came back unannounced.
    wait_online(&b, &["edge-1", "edge-2"], "B, edge-3 gone with its node");
    println!(
        "an agent that died with its broker node: shown offline {:?} after the kill",
        killed_at.elapsed()
    );

    // A manager started now (C, on node 1) gets no retained presence from RabbitMQ, yet knows
    // the fleet: it asks the agents to announce themselves.
    let c = start_manager(&dir, "mgr-c", &urls("verge-manager", "mgr", 1), &pg.url);
    let known = wait_online(&c, &["edge-1", "edge-2"], "C, started last");
    assert_eq!(online(c.http), ["edge-1", "edge-2"]);
    println!("a manager started later knew the fleet {known:?} after it started");

    // The recording index: the day is in it once, for edge-1, though both managers stored it
    // (and edge-1 sent it again after moving).
    let rows = wait_for(PATIENCE, || {
        let rows = pg.query("SELECT stream || ' ' || agent FROM recordings ORDER BY stream");
        (!rows.is_empty()).then_some(rows)
    })
    .unwrap_or_else(|| panic!("never indexed:\n{}", b.proc.log_text()));
    assert_eq!(rows, "live/cam edge-1");
    let days = get(b.http, "/api/playback/live/cam").unwrap();
    assert_eq!(days.status, 200, "{}", days.text());
    assert_eq!(
        days.json().as_array().map(Vec::len),
        Some(1),
        "{}",
        days.text()
    );
    drop(encoder);
}
