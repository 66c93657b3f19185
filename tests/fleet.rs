//! The MQTT backbone with real processes on loopback: `verge-manager` (embedded rumqttd, or
//! an external mosquitto) and `verge-agent`s register, go offline, survive a manager restart,
//! and a wrong secret is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use verge_testkit::edge::mosquitto_passwd;
use verge_testkit::{ANY_PORT, Proc, TempDir, bin, get, listener, reserve_port, wait_for};

/// The manager's RPC timeout where a test freezes an agent: long enough for any call to a
/// live agent on a loaded machine.
const RPC_TIMEOUT_MS: u64 = 3000;

/// The MQTT keepalive of an agent a test freezes (SIGSTOP), short so that the broker soon notices the freeze. The broker drops a
/// silent client 1.5 × this after the client's last packet, which came at most this long
/// before the freeze: the frozen agent stays online for 0.5 × this at least, time enough for
/// the manager to start a call to it (which then runs into its timeout). The other agents
/// keep the default (10 s): a starved one must not reconnect.
const FROZEN_KEEPALIVE_SECS: u64 = 6;

/// How long a fleet change (online, offline) may take on a loaded machine before a test
/// fails. Conditions are polled, so a healthy run waits only as long as the change takes.
const PATIENCE: Duration = Duration::from_secs(20);

/// An agent's config; `keepalive_secs` overrides the default (10 s).
fn agent_toml(id: &str, secret: &str, broker: &str, keepalive_secs: Option<u64>) -> String {
    let keepalive = keepalive_secs
        .map(|k| format!("keepalive_secs = {k}\n"))
        .unwrap_or_default();
    format!(
        "id = \"{id}\"\nsecret = \"{secret}\"\n[mqtt]\nurl = \"{broker}\"\n{keepalive}max_backoff_secs = 1\n\
         [rtmp]\nlisten = \"{ANY_PORT}\"\n[http]\nlisten = \"{ANY_PORT}\"\n[hls]\nlisten = \"{ANY_PORT}\"\n"
    )
}

fn start_agent(dir: &TempDir, id: &str, secret: &str, broker: &str) -> Proc {
    start_agent_with(dir, id, secret, broker, None)
}

fn start_agent_with(
    dir: &TempDir,
    id: &str,
    secret: &str,
    broker: &str,
    keepalive_secs: Option<u64>,
) -> Proc {
    let config = dir.write(
        &format!("{id}.toml"),
        &agent_toml(id, secret, broker, keepalive_secs),
    );
    Proc::spawn_ready(
        id,
        &bin("verge-agent"),
        &["--config", config.to_str().unwrap()],
        dir.path(),
    )
    .0
}

/// A manager started from `config`; returns it and its HTTP address once it serves.
fn start_manager(dir: &TempDir, config: &Path, label: &str) -> (Proc, SocketAddr) {
    let (proc, bound) = Proc::spawn_ready(
        label,
        &bin("verge-manager"),
        &["--config", config.to_str().unwrap()],
        dir.path(),
    );
    let http = listener(&bound, "http");
    let health = get(http, "/api/health").expect("GET /api/health");
    assert_eq!(health.status, 200, "{}", health.text());
    (proc, http)
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

fn wait_online(http: SocketAddr, expected: &[&str]) {
    let ok = wait_for(PATIENCE, || (online(http) == expected).then_some(()));
    assert!(
        ok.is_some(),
        "expected online {expected:?}, got {:?}",
        nodes(http)
    );
}

/// Time from `since` until `id` is listed as stopped (printed by the tests, not asserted: how
/// fast the broker notices is measured on a quiet machine, see docs/benchmarks.md).
fn time_until_offline(http: SocketAddr, id: &str, since: Instant) -> Duration {
    // A frozen agent's keepalive runs out first (at most 1.5 × it).
    let timeout = PATIENCE + Duration::from_secs(FROZEN_KEEPALIVE_SECS * 3 / 2);
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

/// Starts `agents` against the broker at `mqtt` and waits until the manager at `http` lists
/// them all online; the one named `frozen` (which the test will freeze) gets
/// [`FROZEN_KEEPALIVE_SECS`].
fn start_fleet(
    dir: &TempDir,
    http: SocketAddr,
    agents: &[(&str, &str)],
    mqtt: SocketAddr,
    frozen: Option<&str>,
) -> Vec<Proc> {
    let broker = format!("mqtt://{mqtt}");
    let procs = agents
        .iter()
        .map(|(id, s)| {
            let keepalive = (frozen == Some(*id)).then_some(FROZEN_KEEPALIVE_SECS);
            start_agent_with(dir, id, s, &broker, keepalive)
        })
        .collect();
    let ids: Vec<&str> = agents.iter().map(|(id, _)| *id).collect();
    wait_online(http, &ids);
    procs
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn embedded_broker_fleet_registers_goes_offline_and_returns_after_manager_restart() {
    let dir = TempDir::new("embedded");
    // The agents must find the restarted manager's broker where the first one was, so its
    // port is known before the manager starts, and held across the restart.
    let mqtt = reserve_port();
    let agents = [("edge-1", "s1"), ("edge-2", "s2"), ("edge-3", "s3")];
    let toml = format!(
        "[http]\nlisten = \"{ANY_PORT}\"\n[broker]\nlisten = \"{}\"\n[mqtt]\nrpc_timeout_ms = {RPC_TIMEOUT_MS}\n{}",
        mqtt.addr(),
        agents_toml(&agents)
    );
    let config = dir.write("manager.toml", &toml);
    let (manager, http) = start_manager(&dir, &config, "manager");
    let mut procs = start_fleet(&dir, http, &agents, mqtt.addr(), Some("edge-2"));
    let all = get(http, "/api/nodes/").unwrap().json();
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
    let detail = get(http, "/api/agents/edge-1").unwrap().json();
    assert!(detail["ping"]["rtt_ms"].as_f64().unwrap() > 0.0, "{detail}");
    assert_eq!(detail["presence"]["status"], "online");

    // SIGKILL: the socket closes, the broker publishes the last will.
    let killed_at = Instant::now();
    procs[2].signal("KILL");
    let took = time_until_offline(http, "edge-3", killed_at);
    println!("edge-3 SIGKILL → offline in {took:?}");

    // SIGSTOP: the socket stays open and silent; only the keepalive can tell.
    let stopped_at = Instant::now();
    procs[1].signal("STOP");
    // Meanwhile the manager still believes edge-2 online (for 0.5 × 6 s at least): a call to it
    // starts, and times out (3 s).
    let detail = get(http, "/api/agents/edge-2").unwrap().json();
    let why = detail["ping_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("did not answer"),
        "expected an RPC timeout, got {detail}"
    );
    let took = time_until_offline(http, "edge-2", stopped_at);
    println!("edge-2 SIGSTOP → offline in {took:?}");
    let detail = get(http, "/api/agents/edge-2").unwrap().json();
    assert!(
        detail["ping_error"].as_str().unwrap().contains("offline"),
        "{detail}"
    );
    procs[1].signal("CONT");
    wait_online(http, &["edge-1", "edge-2"]);

    let unknown = get(http, "/api/agents/nobody").unwrap();
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("nobody"));

    // Restart the manager: its embedded broker restarts too, the agents reconnect on their own.
    let status = manager.terminate(PATIENCE);
    assert!(
        status.is_some_and(|s| s.success()),
        "manager did not exit cleanly on SIGTERM"
    );
    let (_manager, http) = start_manager(&dir, &config, "manager-2");
    wait_online(http, &["edge-1", "edge-2"]);

    // SIGTERM on an agent: it says goodbye itself.
    let agent = procs.remove(0);
    let status = agent.terminate(PATIENCE);
    assert!(
        status.is_some_and(|s| s.success()),
        "agent did not exit cleanly on SIGTERM"
    );
    time_until_offline(http, "edge-1", Instant::now());
}

#[test]
fn agent_with_a_wrong_secret_is_refused_and_says_so() {
    let dir = TempDir::new("wrong-secret");
    let config = dir.write(
        "manager.toml",
        &format!(
            "[http]\nlisten = \"{ANY_PORT}\"\n[broker]\nlisten = \"{ANY_PORT}\"\n\
             [[agents]]\nid = \"edge-1\"\nsecret = \"right\"\n"
        ),
    );
    let (_manager, bound) = Proc::manager(&config, dir.path());
    let http = listener(&bound, "http");
    let broker = format!("mqtt://{}", listener(&bound, "mqtt"));
    let wrong = start_agent(&dir, "edge-1", "wrong", &broker);
    let said = wait_for(PATIENCE, || {
        wrong.log_text().contains("refused").then_some(())
    });
    assert!(said.is_some(), "agent log does not say it was refused");
    assert!(online(http).is_empty(), "{:?}", nodes(http));

    // The right secret still works next to the refused one.
    let right = start_agent(&dir, "edge-1", "right", &broker);
    wait_online(http, &["edge-1"]);
    drop(right);
}

#[test]
fn a_taken_port_is_named_in_the_error_and_port_0_comes_up() {
    let dir = TempDir::new("taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (listener_name, section) in [("HTTP", "http"), ("MQTT", "broker")] {
        let other = if section == "http" { "broker" } else { "http" };
        let config = dir.write(
            &format!("{section}-taken.toml"),
            &format!(
                "[{section}]\nlisten = \"127.0.0.1:{port}\"\n[{other}]\nlisten = \"{ANY_PORT}\"\n"
            ),
        );
        let mut manager = Proc::spawn(
            &format!("manager-{section}"),
            &bin("verge-manager"),
            &["--config", config.to_str().unwrap()],
            dir.path(),
        );
        let exited = wait_for(PATIENCE, || manager.exited().then_some(()));
        assert!(exited.is_some(), "a manager on a taken port kept running");
        let log = manager.log_text();
        assert!(
            log.contains(&format!("{listener_name} listener 127.0.0.1:{port}"))
                && log.contains("Address already in use"),
            "the error does not name the listener:\n{log}"
        );
    }
    // The same manager asked for port 0 comes up and says where.
    let config = dir.write(
        "any.toml",
        &format!("[http]\nlisten = \"{ANY_PORT}\"\n[broker]\nlisten = \"{ANY_PORT}\"\n"),
    );
    let (manager, http) = start_manager(&dir, &config, "manager-any");
    assert!(manager.log_text().contains(&format!("http={http}")));
    drop(taken);
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
    // mosquitto cannot report a port it chose: it gets one held for it.
    let mqtt = reserve_port();
    let agents = [("edge-1", "s1"), ("edge-2", "s2"), ("edge-3", "s3")];
    let passwd = dir.path().join("passwd");
    let users: Vec<(&str, &str)> = agents
        .iter()
        .copied()
        .chain([("verge-manager", "mgr-secret")])
        .collect();
    mosquitto_passwd(&passwd, &users);
    let acl = dir.write("acl", include_str!("../conf/mosquitto/acl"));
    let conf = dir.write(
        "mosquitto.conf",
        &format!(
            "listener {} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
            mqtt.addr().port(),
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
    let listening = wait_for(PATIENCE, || std::net::TcpStream::connect(mqtt.addr()).ok());
    assert!(
        listening.is_some(),
        "mosquitto does not listen on {}",
        mqtt.addr()
    );

    let toml = format!(
        "[http]\nlisten = \"{ANY_PORT}\"\n[mqtt]\nurl = \"mqtt://{}\"\n\
         username = \"verge-manager\"\npassword = \"mgr-secret\"\n{}",
        mqtt.addr(),
        agents_toml(&agents)
    );
    let config = dir.write("manager.toml", &toml);
    let (manager, http) = start_manager(&dir, &config, "manager");
    let procs = start_fleet(&dir, http, &agents, mqtt.addr(), None);
    let detail = get(http, "/api/agents/edge-2").unwrap().json();
    assert!(detail["ping"]["rtt_ms"].as_f64().is_some(), "{detail}");

    let killed_at = Instant::now();
    procs[2].signal("KILL");
    let took = time_until_offline(http, "edge-3", killed_at);
    println!("mosquitto: edge-3 SIGKILL → offline in {took:?}");

    // A new manager learns the whole fleet from retained messages, without agents reconnecting.
    manager
        .terminate(PATIENCE)
        .expect("manager exits on SIGTERM");
    let restarted_at = Instant::now();
    let (_manager, http) = start_manager(&dir, &config, "manager-2");
    let known = wait_for(PATIENCE, || {
        let n = nodes(http);
        (n.len() == 3 && online(http) == ["edge-1", "edge-2"]).then_some(n)
    });
    assert!(
        known.is_some(),
        "restarted manager does not know the fleet: {:?}",
        nodes(http)
    );
    println!(
        "mosquitto: restarted manager knew the fleet {:?} after start",
        restarted_at.elapsed()
    );
    // Known from retained messages: no agent had to connect again to be listed.
    for agent in &procs[..2] {
        assert_eq!(
            count(&agent.log_text(), "connected to broker"),
            1,
            "{} reconnected",
            agent.name
        );
    }

    // mosquitto refuses a wrong secret with a CONNACK code, and the agent says so.
    let wrong = start_agent(&dir, "edge-4", "nope", &format!("mqtt://{}", mqtt.addr()));
    let said = wait_for(PATIENCE, || {
        wrong.log_text().contains("refused").then_some(())
    });
    assert!(said.is_some(), "agent log does not say it was refused");
}
