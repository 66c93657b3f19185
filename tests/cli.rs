//! The `verge` CLI against a real manager and agent: tables and JSON, keys issued and revoked,
//! recordings started and stopped, and exit codes that tell a script what happened.

use std::process::{Command, Output};
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions};
use verge_testkit::{bin, reserve_port, wait_for};

fn verge(manager: &str, args: &[&str]) -> Output {
    Command::new(bin("verge"))
        .args(args)
        .args(["--manager", manager])
        .env_remove("VERGE_MANAGER")
        .env_remove("VERGE_TOKEN")
        .output()
        .expect("run verge")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_cli_reads_and_changes_the_fleet_and_its_exit_codes_mean_something() {
    let b = Edge::start(
        "cli",
        &EdgeOptions::default().agent("[record]\ndir = \"{dir}/rec\"\n"),
    );
    let manager = format!("http://{}", b.manager_http);

    let nodes = verge(&manager, &["nodes"]);
    assert!(nodes.status.success(), "{}", stderr(&nodes));
    let table = stdout(&nodes);
    assert!(table.starts_with("AGENT"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("edge-1") && l.contains("online")),
        "{table}"
    );
    let json = verge(&manager, &["nodes", "--json"]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(parsed[0]["alias"], "edge-1");

    // A key, bound to edge-1: printed with the URL to publish to; listed; revoked.
    let issued = verge(
        &manager,
        &["keys", "issue", "live/cam", "--agent", "edge-1"],
    );
    assert!(issued.status.success(), "{}", stderr(&issued));
    let text = stdout(&issued);
    let key = text.lines().next().unwrap().to_string();
    assert!(text.contains(&format!("/live/{key}")), "{text}");
    let listed = stdout(&verge(&manager, &["keys"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("live/cam") && l.contains("edge-1") && l.contains(&key)),
        "{listed}"
    );
    let revoked = verge(&manager, &["keys", "revoke", "live/cam"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let again = verge(&manager, &["keys", "revoke", "live/cam"]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("404"), "{}", stderr(&again));

    // Recording at run time.
    let started = verge(
        &manager,
        &["record", "start", "live/door", "--agent", "edge-1"],
    );
    assert!(started.status.success(), "{}", stderr(&started));
    assert!(
        stdout(&started).contains("live/door on edge-1: waiting (wanted)"),
        "{}",
        stdout(&started)
    );
    let state = verge(&manager, &["record", "state", "live/door", "--json"]);
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["wanted"], true);
    let stopped = verge(
        &manager,
        &["record", "stop", "live/door", "--agent", "edge-1"],
    );
    assert!(stdout(&stopped).contains("stopped"), "{}", stdout(&stopped));

    // Refusals, usage, and a manager that is not there.
    let ghost = verge(&manager, &["keys", "issue", "live/x", "--agent", "ghost"]);
    assert_eq!(ghost.status.code(), Some(1));
    assert!(stderr(&ghost).contains("ghost"), "{}", stderr(&ghost));
    let bad = verge(&manager, &["keys", "issue", "live/../x"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let unknown = verge(&manager, &["nodes", "--frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    let nobody = reserve_port();
    let gone = verge(&format!("http://{}", nobody.addr()), &["nodes"]);
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
    assert!(
        stderr(&gone).contains("cannot reach the manager"),
        "{}",
        stderr(&gone)
    );

    // Streams: empty but a table.
    let streams = wait_for(Duration::from_secs(5), || {
        let o = verge(&manager, &["streams"]);
        o.status.success().then(|| stdout(&o))
    });
    assert!(streams.unwrap().starts_with("STREAM"));
}
