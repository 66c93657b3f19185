//! Agents at run time with real processes: `verge agents add` enrols one whose secret then
//! connects (also after a manager restart, from the database); `verge agents revoke` tells a
//! running agent, which stops, clears what it had retained, and refuses its secret from then
//! on, a restart included.

use std::process::{Command, Output};
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions};
use verge_testkit::{Proc, bin, get, listener, reserve_port, wait_for};

const PATIENCE: Duration = Duration::from_secs(20);

fn verge(manager: std::net::SocketAddr, args: &[&str]) -> Output {
    Command::new(bin("verge"))
        .args(args)
        .args(["--manager", &format!("http://{manager}")])
        .env_remove("VERGE_TOKEN")
        .output()
        .expect("run verge")
}

/// `alias → online` of `/api/nodes/`.
fn nodes(b: &Edge) -> Vec<(String, bool)> {
    let r = get(b.manager_http, "/api/nodes/").expect("GET /api/nodes/");
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["alias"].as_str().unwrap_or_default().to_string(),
                n["online"] == true,
            )
        })
        .collect()
}

fn start_agent(b: &Edge, id: &str, secret: &str) -> Proc {
    let mqtt = listener(&b.manager_listeners, "mqtt");
    let config = b.dir.write(
        &format!("{id}.toml"),
        &format!(
            "id = \"{id}\"\nsecret = \"{secret}\"\n[mqtt]\nurl = \"mqtt://{mqtt}\"\n\
             keepalive_secs = 3\nmax_backoff_secs = 1\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [hls]\nlisten = \"127.0.0.1:0\"\n[record]\ndir = \"{}/rec-{id}\"\n",
            b.dir.path().display()
        ),
    );
    Proc::spawn(
        id,
        &bin("verge-agent"),
        &["--config", config.to_str().unwrap()],
        b.dir.path(),
    )
}

#[test]
fn agents_enrolled_at_run_time_connect_and_revoked_ones_are_cut_off() {
    let broker = reserve_port();
    let mut b = Edge::start("agents", &EdgeOptions::noauth().broker(broker.addr()));

    let added = verge(b.manager_http, &["agents", "add", "edge-7", "--json"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let enrolled: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(enrolled["id"], "edge-7");
    let secret = enrolled["secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32, "{secret}");

    // The same id again, or a bad one: refused with the reason.
    let again = verge(b.manager_http, &["agents", "add", "edge-7"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
    let bad = verge(b.manager_http, &["agents", "add", "bad/id"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400"));
    let plain = verge(b.manager_http, &["agents", "add"]);
    assert!(plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stdout).contains("secret = \""));

    // Its secret connects, now and after a manager restart (the database keeps it).
    let mut edge7 = start_agent(&b, "edge-7", &secret);
    let online = |b: &Edge, id: &str| nodes(b).iter().any(|(a, on)| a == id && *on);
    assert!(
        wait_for(PATIENCE, || online(&b, "edge-7").then_some(())).is_some(),
        "edge-7 never came online:\n{}",
        edge7.log_text()
    );
    b.stop_manager();
    b.start_manager("manager-2");
    assert!(
        wait_for(PATIENCE, || online(&b, "edge-7").then_some(())).is_some(),
        "edge-7 did not come back after the manager restarted:\n{}",
        edge7.log_text()
    );

    // Revoked: the running agent is told and stops with the reason; the manager forgets it.
    let revoked = verge(b.manager_http, &["agents", "revoke", "edge-7"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(
        wait_for(PATIENCE, || edge7.exited().then_some(())).is_some(),
        "the revoked agent kept running:\n{}",
        edge7.log_text()
    );
    assert!(edge7.log_text().contains("revoked"), "{}", edge7.log_text());
    assert!(
        wait_for(PATIENCE, || (!nodes(&b).iter().any(|(a, _)| a == "edge-7"))
            .then_some(()))
        .is_some(),
        "edge-7 is still listed: {:?}",
        nodes(&b)
    );
    let twice = verge(b.manager_http, &["agents", "revoke", "edge-7"]);
    assert_eq!(twice.status.code(), Some(1));
    let reused = verge(b.manager_http, &["agents", "add", "edge-7"]);
    assert_eq!(reused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&reused.stderr).contains("revoked"));

    // Its secret no longer connects, not even after a restart; nothing of it was retained.
    b.stop_manager();
    b.start_manager("manager-3");
    let mut retry = start_agent(&b, "edge-7", &secret);
    assert!(
        wait_for(PATIENCE, || retry
            .log_text()
            .contains("wrong id or secret")
            .then_some(()))
        .is_some(),
        "the broker did not refuse the revoked secret:\n{}",
        retry.log_text()
    );
    assert!(
        wait_for(PATIENCE, || online(&b, "edge-1").then_some(())).is_some(),
        "the other agent is unaffected: {:?}",
        nodes(&b)
    );
    assert!(
        !nodes(&b).iter().any(|(a, _)| a == "edge-7"),
        "a revoked agent is listed again: {:?}\n{}",
        nodes(&b),
        retry.log_text()
    );
    let _ = retry.exited();

    // An agent listed in manager.toml can be revoked as well.
    let revoked = verge(b.manager_http, &["agents", "revoke", "edge-1"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(
        wait_for(PATIENCE, || b.agent.exited().then_some(())).is_some(),
        "edge-1 kept running after its revocation"
    );
}
