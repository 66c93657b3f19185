//! A broker that is not trusted: a client holding edge-2's valid credentials subscribes to
//! everything on the embedded broker (rumqttd has no topic ACLs) while edge-1 serves a WHEP
//! viewer, then tries what an attacker would. It reads no SDP, ICE password, DTLS fingerprint
//! or TURN server; its forged state and cleared keys are refused or healed; and edge-1's
//! captured "online", published again after edge-1 died, does not bring it back online, not
//! even for a manager restarted onto that retained message.

use std::time::{Duration, Instant};

use rumqttc::{MqttOptions, QoS};
use verge_protocol::channel_keys::SealedKeys;
use verge_protocol::envelope;
use verge_protocol::sealed::PrivateKey;
use verge_protocol::secret::MacKey;
use verge_protocol::state::{State, StreamInfo};
use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::mqtt::{Heard, Spy};
use verge_testkit::whep::watching;
use verge_testkit::{get, listener, reserve_port, wait_for};

const PATIENCE: Duration = Duration::from_secs(20);

fn edge1_online(b: &Edge) -> bool {
    get(b.manager_http, "/api/nodes/")
        .ok()
        .map(|r| r.json())
        .and_then(|n| {
            n.as_array()?
                .iter()
                .find(|n| n["alias"] == "edge-1")
                .map(|n| n["online"] == true)
        })
        .unwrap_or(false)
}

#[test]
fn a_client_with_another_agents_credentials_reads_and_changes_nothing() {
    let broker = reserve_port();
    let mut b = Edge::start(
        "rogue",
        &EdgeOptions::default().broker(broker.addr()).manager("[[agents]]\nid = \"edge-2\"\nsecret = \"s2\"\n\
                 [extra_ice.coturn]\nsecret = \"turn-secret\"\nurls = [\"turn:127.0.0.1:3478\"]\nttl = 600\n"),
    );
    let (_cam, key) = b.publish_with_key("cam", "cam", &Synthetic::lasting(120));

    // The rogue: edge-2's credentials, subscribed to everything.
    let mqtt = listener(&b.manager_listeners, "mqtt");
    let mut opts = MqttOptions::new("edge-2", "127.0.0.1", mqtt.port());
    opts.set_credentials("edge-2", "s2")
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(2 << 20, 2 << 20);
    let rogue = Spy::subscribe(opts, &["verge/#"], QoS::AtMostOnce);
    let presence_topic = "verge/v1/a/edge-1/presence";
    let captured = wait_for(PATIENCE, || {
        rogue
            .on(presence_topic, 0)
            .into_iter()
            .find(|p| String::from_utf8_lossy(p).contains("\"online\""))
    })
    .expect("edge-1's retained online presence was not seen");

    // A WHEP session through the manager while the rogue listens: nothing secret in clear.
    let url = format!("http://{}/whep/cam", b.manager_http);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The first picture; then a while of watching.
        let mut viewer = watching(&url, "WHEP through the manager").await;
        viewer.watch(Duration::from_secs(2)).await.unwrap();
        assert!(viewer.stats.frames > 0);
        viewer.close().await;
    });
    std::thread::sleep(Duration::from_millis(500));
    {
        let seen = rogue.heard(0);
        assert!(
            seen.iter()
                .any(|h| (h.topic.contains("/req") || h.topic.contains("/res"))
                    && String::from_utf8_lossy(&h.payload).contains("\"sealed\"")),
            "the rogue saw no RPC at all: {:?}",
            seen.iter().map(|h| &h.topic).collect::<Vec<_>>()
        );
        for Heard { topic, payload, .. } in &seen {
            let text = String::from_utf8_lossy(payload);
            for secret in [
                "ice-pwd",
                "fingerprint",
                "a=candidate",
                "turn:127.0.0.1",
                key.as_str(),
            ] {
                assert!(
                    !text.contains(secret),
                    "{secret} in clear on {topic}: {text}"
                );
            }
        }
    }

    // Forged state for edge-1 (signed with edge-2's secret): refused, and edge-1 publishes its
    // own again, so a manager started later does not read the forgery.
    let s1 = MacKey::new("s1");
    let state_topic = "verge/v1/a/edge-1/state";
    let forged = envelope::seal(
        &MacKey::new("s2"),
        "edge-1",
        verge_protocol::now_ms(),
        &State {
            seq: 999,
            streams: vec![StreamInfo {
                app: "live".into(),
                name: "fake".into(),
                ..StreamInfo::default()
            }],
            ..State::default()
        },
    );
    let mark = rogue.mark();
    rogue
        .client
        .publish(state_topic, QoS::AtLeastOnce, true, forged)
        .unwrap();
    let healed = wait_for(PATIENCE, || {
        rogue
            .on(state_topic, mark)
            .into_iter()
            .find(|p| envelope::open::<State>(p, &s1).is_ok())
    });
    assert!(healed.is_some(), "edge-1 did not publish its state again");
    assert!(
        b.listed_stream("fake").is_none(),
        "the forged stream is listed"
    );
    assert!(b.listed_stream("cam").is_some());

    // Cleared keys: the agent keeps its keys and the manager sends the table again.
    let keys_topic = "verge/v1/a/edge-1/keys";
    let mark = rogue.mark();
    rogue
        .client
        .publish(keys_topic, QoS::AtLeastOnce, true, Vec::new())
        .unwrap();
    let resent = wait_for(PATIENCE, || {
        rogue.on(keys_topic, mark).into_iter().find(|p| {
            envelope::open::<SealedKeys>(p, &s1)
                .ok()
                .and_then(|k| k.body.open(&PrivateKey::new("s1")).ok())
                .is_some_and(|k| !k.keys.is_empty())
        })
    });
    assert!(
        resent.is_some(),
        "the manager did not send the key table again"
    );

    // edge-1 dies; its captured "online" published again does not bring it back.
    b.agent.signal("KILL");
    assert!(
        wait_for(PATIENCE, || (!edge1_online(&b)).then_some(())).is_some(),
        "edge-1 never went offline"
    );
    rogue
        .client
        .publish(presence_topic, QoS::AtLeastOnce, true, captured.clone())
        .unwrap();
    let watch = |b: &Edge, what: &str| {
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            assert!(!edge1_online(b), "{what}: edge-1 shown online");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    watch(&b, "after the replay");
    assert!(
        wait_for(PATIENCE, || b
            .manager
            .log_text()
            .contains("does not answer")
            .then_some(()))
        .is_some(),
        "the manager did not say why it ignores the claim"
    );
    assert!(!edge1_online(&b));

    // A manager started now reads the replayed message as retained: still not online.
    b.stop_manager();
    b.start_manager("manager-2");
    watch(&b, "after a manager restart");
    drop(rogue);
}
