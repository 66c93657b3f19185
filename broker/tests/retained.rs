//! The embedded broker against a real rumqttc client: credentials, and complete retained
//! delivery to a wildcard subscriber that joins late (the manager after a reconnect).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use verge_broker::{BrokerSettings, Credentials};

fn settings(port: u16) -> BrokerSettings {
    BrokerSettings {
        local_link: None,
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        max_connections: 100,
        connect_timeout_ms: 10_000,
        accept_interval_ms: 1,
        backlog: 1024,
        max_payload_size: 1 << 20,
        fleet_filters: vec!["verge/v1/a/+/presence".into()],
        segment_size: 1 << 20,
        segment_count: 2,
        agent_segment_size: 64 * 1024,
        agent_segment_count: 2,
        tunnel_filters: vec!["verge/v1/a/+/tun/+".into()],
        tunnel_segment_size: 1 << 20,
        tunnel_segment_count: 3,
    }
}

/// A client whose session is up; the broker's listener thread may still be binding.
async fn client(port: u16, id: &str, secret: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_credentials(id, secret)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 1024);
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return (client, el),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => panic!("no CONNACK within 5 s"),
        }
    }
    panic!("{id} could not connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_wildcard_subscriber_gets_every_retained_presence() {
    const AGENTS: usize = 600;
    let creds = Credentials::new(
        [
            ("writer".to_string(), "w".to_string()),
            ("reader".to_string(), "r".to_string()),
        ],
        None,
    );
    let broker = verge_broker::start(&settings(0), creds).expect("broker starts");
    let port = broker.listen.port();

    let (writer, mut writer_loop) = client(port, "writer", "w").await;
    let pump = tokio::spawn(async move {
        let mut acked = 0;
        while acked < AGENTS {
            match tokio::time::timeout(Duration::from_secs(10), writer_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("writer connection failed: {e}"),
                Err(_) => panic!("writer stalled after {acked} acks"),
            }
        }
    });
    for i in 0..AGENTS {
        let topic = format!("verge/v1/a/a{i:04}/presence");
        writer
            .publish(topic, QoS::AtLeastOnce, true, vec![b'x'; 300])
            .await
            .unwrap();
    }
    pump.await.unwrap();

    let (reader, mut reader_loop) = client(port, "reader", "r").await;
    reader
        .subscribe("verge/v1/a/+/presence", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < AGENTS && std::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), reader_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                assert!(p.retain, "expected retained deliveries");
                seen.insert(p.topic);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("reader connection failed: {e}"),
            Err(_) => break,
        }
    }
    assert_eq!(
        seen.len(),
        AGENTS,
        "a late subscriber missed retained presences"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_and_mismatched_client_id_are_refused() {
    let creds = Credentials::new([("edge-1".to_string(), "s".to_string())], None);
    let broker = verge_broker::start(&settings(0), creds).expect("broker starts");
    let port = broker.listen.port();
    let (_ok, _ok_loop) = client(port, "edge-1", "s").await;
    for (client_id, user, secret) in [
        ("edge-1", "edge-1", "bad"),
        ("edge-2", "edge-1", "s"),
        ("x", "x", ""),
    ] {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_credentials(user, secret);
        let (_c, mut el) = AsyncClient::new(opts, 10);
        let first = tokio::time::timeout(Duration::from_secs(5), el.poll())
            .await
            .expect("answer in time");
        assert!(first.is_err(), "{client_id}/{user}/{secret:?} was accepted");
    }
}

#[test]
fn a_taken_port_is_an_error_not_a_silent_broker() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = verge_broker::start(&settings(port), Credentials::default())
        .err()
        .expect("refused");
    let err = err.to_string();
    assert!(
        err.contains(&format!("MQTT listener 127.0.0.1:{port}")) && err.contains("in use"),
        "{err}"
    );
}
