//! The MQTT backbone with real processes on loopback: `verge-manager` (embedded rumqttd, or
//! an external mosquitto) and `verge-agent`s register, go offline, survive a manager restart,
//! and a wrong secret is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use verge::testkit::{Proc, TempDir, bin, free_port, get, wait_for};

const KEEPALIVE_SECS: u64 = 2;

struct ManagerSetup {
    http: SocketAddr,
    config: std::path::PathBuf,
}

fn agent_toml(id: &str, secret: &str, broker: &str) -> String {
    format!(
        "id = \"{id}\"\nsecret = \"{secret}\"\n[mqtt]\nurl = \"{broker}\"\nkeepalive_secs = {KEEPALIVE_SECS}\nmax_backoff_secs = 1\n\
         [rtmp]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n",
        free_port(),
        free_port()
    )
}

fn start_agent(dir: &TempDir, id: &str, secret: &str, broker: &str) -> Proc {
    let config = dir.write(&format!("{id}.toml"), &agent_toml(id, secret, broker));
    Proc::spawn(
        id,
        &bin("verge-agent"),
        &["--config", config.to_str().unwrap()],
        dir.path(),
    )
}

fn start_manager(dir: &TempDir, setup: &ManagerSetup, label: &str) -> Proc {
    let proc = Proc::spawn(
        label,
        &bin("verge-manager"),
        &["--config", setup.config.to_str().unwrap()],
        dir.path(),
    );
    let up = wait_for(Duration::from_secs(15), || {
        get(setup.http, "/api/health")
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    });
    assert!(
        up.is_some(),
        "manager did not answer /api/health:\n{}",
        proc.log_text()
    );
    proc
}

/// alias → (online, status) from `GET /api/nodes/`.
fn nodes(http: SocketAddr) -> BTreeMap<String, (bool, String)> {
    let resp = get(http, "/api/nodes/").expect("GET /api/nodes/");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
        .as_array()
        .expect("nodes is an array")
        .iter()
        .map(|n| {
            (
                n["alias"].as_str().unwrap().to_string(),
                (
                    n["online"].as_bool().unwrap(),
                    n["status"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn online(http: SocketAddr) -> Vec<String> {
    nodes(http)
        .into_iter()
        .filter(|(_, (on, _))| *on)
        .map(|(id, _)| id)
        .collect()
}

fn wait_online(http: SocketAddr, expected: &[&str], timeout: Duration) {
    let ok = wait_for(timeout, || (online(http) == expected).then_some(()));
    assert!(
        ok.is_some(),
        "expected online {expected:?}, got {:?}",
        nodes(http)
    );
}

/// Time from now until `id` is listed as stopped.
fn time_until_offline(http: SocketAddr, id: &str, since: Instant, timeout: Duration) -> Duration {
    wait_for(timeout, || {
        nodes(http)
            .get(id)
            .filter(|(on, status)| !on && status == "stopped")
            .map(|_| since.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "{id} still not offline after {timeout:?}: {:?}",
            nodes(http)
        )
    })
}

/// `[[agents]]` entries for the manager's config.
fn agents_toml(agents: &[(&str, &str)]) -> String {
    agents
        .iter()
        .map(|(id, secret)| format!("[[agents]]\nid = \"{id}\"\nsecret = \"{secret}\"\n"))
        .collect()
}

/// Starts `agents` against the broker on `mqtt_port` and waits until the manager lists them
/// all online.
fn start_fleet(
    dir: &TempDir,
    setup: &ManagerSetup,
    agents: &[(&str, &str)],
    mqtt_port: u16,
) -> Vec<Proc> {
    let broker = format!("mqtt://127.0.0.1:{mqtt_port}");
    let procs = agents
        .iter()
        .map(|(id, s)| start_agent(dir, id, s, &broker))
        .collect();
    let ids: Vec<&str> = agents.iter().map(|(id, _)| *id).collect();
    wait_online(setup.http, &ids, Duration::from_secs(10));
    procs
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn embedded_broker_fleet_registers_goes_offline_and_returns_after_manager_restart() {
    let dir = TempDir::new("embedded");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let agents = [("edge-1", "s1"), ("edge-2", "s2"), ("edge-3", "s3")];
    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[broker]\nlisten = \"127.0.0.1:{mqtt_port}\"\n[mqtt]\nrpc_timeout_ms = 1000\n{}",
        agents_toml(&agents)
    );
    let setup = ManagerSetup {
        http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        config: dir.write("manager.toml", &toml),
    };
    let manager = start_manager(&dir, &setup, "manager");
    let mut procs = start_fleet(&dir, &setup, &agents, mqtt_port);
    let all = get(setup.http, "/api/nodes/").unwrap().json();
    let first = &all[0];
    for key in [
        "alias",
        "url",
        "pub_max",
        "sub_max",
        "status",
        "online",
        "last_seen",
        "version",
        "streams",
    ] {
        assert!(!first[key].is_null(), "node lacks {key}: {first}");
    }

    // A live ping through the manager.
    let detail = get(setup.http, "/api/agents/edge-1").unwrap().json();
    assert!(detail["ping"]["rtt_ms"].as_f64().unwrap() > 0.0, "{detail}");
    assert_eq!(detail["presence"]["status"], "online");

    // SIGKILL: the socket closes, the broker publishes the last will.
    let killed_at = Instant::now();
    procs[2].signal("KILL");
    let limit = Duration::from_millis(KEEPALIVE_SECS * 1500);
    let took = time_until_offline(
        setup.http,
        "edge-3",
        killed_at,
        limit + Duration::from_secs(2),
    );
    println!("edge-3 SIGKILL → offline in {took:?}");
    assert!(
        took <= limit,
        "offline after {took:?}, more than 1.5 × keepalive"
    );

    // SIGSTOP: the socket stays open and silent; only the keepalive can tell.
    let stopped_at = Instant::now();
    procs[1].signal("STOP");
    // Meanwhile the manager still believes edge-2 online: a call to it times out.
    let detail = get(setup.http, "/api/agents/edge-2").unwrap().json();
    let why = detail["ping_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("did not answer"),
        "expected an RPC timeout, got {detail}"
    );
    let took = time_until_offline(
        setup.http,
        "edge-2",
        stopped_at,
        limit + Duration::from_secs(3),
    );
    println!("edge-2 SIGSTOP → offline in {took:?}");
    // The broker counts 1.5 × keepalive from the last packet it read, at most one keepalive
    // before the stop; 500 ms covers this test's polling.
    assert!(
        took <= limit + Duration::from_millis(500),
        "offline after {took:?}"
    );
    let detail = get(setup.http, "/api/agents/edge-2").unwrap().json();
    assert!(
        detail["ping_error"].as_str().unwrap().contains("offline"),
        "{detail}"
    );
    procs[1].signal("CONT");
    wait_online(setup.http, &["edge-1", "edge-2"], Duration::from_secs(10));

    let unknown = get(setup.http, "/api/agents/nobody").unwrap();
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("nobody"));

    // Restart the manager: its embedded broker restarts too, the agents reconnect on their own.
    let status = manager.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "manager did not exit cleanly on SIGTERM"
    );
    let _manager = start_manager(&dir, &setup, "manager-2");
    wait_online(setup.http, &["edge-1", "edge-2"], Duration::from_secs(10));

    // SIGTERM on an agent: it says goodbye itself.
    let agent = procs.remove(0);
    let status = agent.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "agent did not exit cleanly on SIGTERM"
    );
    time_until_offline(setup.http, "edge-1", Instant::now(), Duration::from_secs(2));
}

#[test]
fn agent_with_a_wrong_secret_is_refused_and_says_so() {
    let dir = TempDir::new("wrong-secret");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let setup = ManagerSetup {
        http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        config: dir.write(
            "manager.toml",
            &format!(
                "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[broker]\nlisten = \"127.0.0.1:{mqtt_port}\"\n\
                 [[agents]]\nid = \"edge-1\"\nsecret = \"right\"\n"
            ),
        ),
    };
    let _manager = start_manager(&dir, &setup, "manager");
    let broker = format!("mqtt://127.0.0.1:{mqtt_port}");
    let wrong = start_agent(&dir, "edge-1", "wrong", &broker);
    let said = wait_for(Duration::from_secs(10), || {
        wrong.log_text().contains("refused").then_some(())
    });
    assert!(said.is_some(), "agent log does not say it was refused");
    assert!(online(setup.http).is_empty(), "{:?}", nodes(setup.http));

    // The right secret still works next to the refused one.
    let right = start_agent(&dir, "edge-1", "right", &broker);
    wait_online(setup.http, &["edge-1"], Duration::from_secs(10));
    drop(right);
}

fn mosquitto() -> &'static Path {
    let path = Path::new("/usr/sbin/mosquitto");
    assert!(
        path.exists(),
        "mosquitto is not installed: run scripts/test (it installs what the tests need)"
    );
    path
}

#[test]
fn external_mosquitto_fleet_is_known_at_once_after_a_manager_restart() {
    let mosquitto = mosquitto();
    let dir = TempDir::new("mosquitto");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let agents = [("edge-1", "s1"), ("edge-2", "s2"), ("edge-3", "s3")];
    let passwd = dir.path().join("passwd");
    for (i, (user, pass)) in agents
        .iter()
        .chain(&[("verge-manager", "mgr-secret")])
        .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&passwd)
            .args([user, pass])
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success());
    }
    let acl = dir.write("acl", include_str!("../conf/mosquitto/acl"));
    let conf = dir.write(
        "mosquitto.conf",
        &format!(
            "listener {mqtt_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
            passwd.display(),
            acl.display()
        ),
    );
    let _broker = Proc::spawn(
        "mosquitto",
        mosquitto,
        &["-c", conf.to_str().unwrap()],
        dir.path(),
    );

    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\n\
         username = \"verge-manager\"\npassword = \"mgr-secret\"\n{}",
        agents_toml(&agents)
    );
    let setup = ManagerSetup {
        http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        config: dir.write("manager.toml", &toml),
    };
    let manager = start_manager(&dir, &setup, "manager");
    let procs = start_fleet(&dir, &setup, &agents, mqtt_port);
    let detail = get(setup.http, "/api/agents/edge-2").unwrap().json();
    assert!(detail["ping"]["rtt_ms"].as_f64().is_some(), "{detail}");

    let killed_at = Instant::now();
    procs[2].signal("KILL");
    let took = time_until_offline(setup.http, "edge-3", killed_at, Duration::from_secs(5));
    println!("mosquitto: edge-3 SIGKILL → offline in {took:?}");
    assert!(took <= Duration::from_millis(KEEPALIVE_SECS * 1500));

    // A new manager learns the whole fleet from retained messages, without agents reconnecting.
    manager
        .terminate(Duration::from_secs(10))
        .expect("manager exits on SIGTERM");
    let restarted_at = Instant::now();
    let _manager = start_manager(&dir, &setup, "manager-2");
    let known = wait_for(Duration::from_secs(3), || {
        let n = nodes(setup.http);
        (n.len() == 3 && online(setup.http) == ["edge-1", "edge-2"]).then_some(n)
    });
    assert!(
        known.is_some(),
        "restarted manager does not know the fleet: {:?}",
        nodes(setup.http)
    );
    println!(
        "mosquitto: restarted manager knew the fleet {:?} after start",
        restarted_at.elapsed()
    );
    for agent in &procs[..2] {
        assert_eq!(
            count(&agent.log_text(), "connected to broker"),
            1,
            "{} reconnected",
            agent.name
        );
    }

    // mosquitto refuses a wrong secret with a CONNACK code, and the agent says so.
    let wrong = start_agent(
        &dir,
        "edge-4",
        "nope",
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
    );
    let said = wait_for(Duration::from_secs(10), || {
        wrong.log_text().contains("refused").then_some(())
    });
    assert!(said.is_some(), "agent log does not say it was refused");
}
