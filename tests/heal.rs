//! Retained topics heal, and the healing converges (docs/protocol.md §10): an agent started
//! against the retained messages of its earlier run publishes its presence and state once each
//! and repairs nothing, and someone replaying the earlier run's messages over and over gets a
//! bounded number of repairs, after which what the broker retains is the agent's own again.
//! A literal "republish when the bytes differ" rule republished 12,256 times in ~3 s from 150
//! agents: every signing carries a new timestamp, so each repair's echo differs again.

use std::time::Duration;

use rumqttc::{MqttOptions, QoS};
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::mqtt::Spy;
use verge_testkit::{Proc, bin, listener, wait_for};

const PRESENCE: &str = "verge/v1/a/edge-1/presence";
const STATE: &str = "verge/v1/a/edge-1/state";

#[test]
fn healing_converges_against_an_earlier_runs_retained_messages_and_their_replays() {
    let mut b = Edge::start(
        "heal",
        &EdgeOptions::noauth().manager("[[agents]]\nid = \"edge-2\"\nsecret = \"s2\"\n"),
    );
    // A watcher with another agent's credentials (the broker has no topic ACLs) sees every
    // publish on edge-1's retained topics, and later replays what it captured.
    let mqtt = listener(&b.manager_listeners, "mqtt");
    let mut opts = MqttOptions::new("edge-2", "127.0.0.1", mqtt.port());
    opts.set_credentials("edge-2", "s2")
        .set_keep_alive(Duration::from_secs(5));
    let spy = Spy::subscribe(opts, &["verge/v1/a/edge-1/+"], QoS::AtLeastOnce);
    // The earlier run's retained messages: its online presence and its state.
    let t0 = 0;
    let old_online = wait_for(Duration::from_secs(10), || {
        spy.on(PRESENCE, t0)
            .into_iter()
            .find(|p| String::from_utf8_lossy(p).contains("\"online\""))
    })
    .expect("edge-1's retained presence");
    // Its state names a stream, which the next run will not have: a replay of it claims a
    // stream that is gone.
    let publisher = b.publish("cam", "cam", &Synthetic::default());
    let old_state = wait_for(Duration::from_secs(20), || {
        spy.on(STATE, t0)
            .into_iter()
            .rfind(|p| String::from_utf8_lossy(p).contains("\"cam\""))
    })
    .expect("edge-1's retained state with its stream");
    drop(publisher);

    // The earlier run ends (its offline presence stays retained) and a new one starts.
    b.agent.signal("TERM");
    assert!(wait_for(Duration::from_secs(10), || b.agent.exited().then_some(())).is_some());
    let started = spy.mark();
    let (agent, _) = Proc::spawn_ready(
        "agent-2nd-run",
        &bin("verge-agent"),
        &["--config", b.agent_cfg.to_str().unwrap_or_default()],
        b.dir.path(),
    );
    let online = wait_for(Duration::from_secs(20), || {
        let nodes = verge_testkit::get(b.manager_http, "/api/nodes/")
            .ok()?
            .json();
        (nodes[0]["online"] == true).then_some(())
    });
    assert!(online.is_some(), "{}", agent.log_text());
    // Quiet for a few seconds: grace (1 s) and hold-off (5 s) would have shown a loop by now.
    std::thread::sleep(Duration::from_secs(4));
    let presences = spy.on(PRESENCE, started).len();
    let states = spy.on(STATE, started).len();
    println!("second run: {presences} presence and {states} state publishes in its first seconds");
    assert!(presences <= 2, "presence published {presences} times");
    assert!(states <= 3, "state published {states} times");
    assert!(
        !agent.log_text().contains("publishing it again"),
        "{}",
        agent.log_text()
    );

    // Someone replays the earlier run's online presence and state, retained, every 50 ms for
    // 3 s: the agent repairs a few times, not once per replay, and ends up retained itself.
    let attack = spy.mark();
    for _ in 0..60 {
        spy.client
            .publish(PRESENCE, QoS::AtLeastOnce, true, old_online.clone())
            .unwrap();
        spy.client
            .publish(STATE, QoS::AtLeastOnce, true, old_state.clone())
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let ours = |topic: &str, old: &[u8]| {
        spy.on(topic, attack)
            .into_iter()
            .filter(|p| p != old)
            .collect::<Vec<_>>()
    };
    // After the replays stop, what is retained becomes the agent's again (the next repair is
    // due at most 5 s after the last).
    let healed = wait_for(Duration::from_secs(15), || {
        let presence = spy.on(PRESENCE, attack).last().cloned()?;
        let state = spy.on(STATE, attack).last().cloned()?;
        (presence != old_online && state != old_state).then_some(())
    });
    let (presence_repairs, state_repairs) = (
        ours(PRESENCE, &old_online).len(),
        ours(STATE, &old_state).len(),
    );
    println!(
        "120 replays in 3 s: {presence_repairs} presence and {state_repairs} state repairs; healed: {}",
        healed.is_some()
    );
    assert!(
        healed.is_some(),
        "the agent's presence and state were not put back"
    );
    for (what, repairs) in [("presence", presence_repairs), ("state", state_repairs)] {
        assert!(
            (1..=3).contains(&repairs),
            "{what} repaired {repairs} times"
        );
    }
    let log = agent.log_text();
    assert!(log.contains("our retained presence was replaced"), "{log}");
    drop(agent);
}
