//! An MQTT client that overhears: it subscribes, keeps every message it is sent, and lets a
//! test look for them by topic from a mark on. The spies and rogues of the protocol tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// How long the broker may take to acknowledge the subscriptions.
const SUBSCRIBED_WITHIN: Duration = Duration::from_secs(10);

/// One message as it arrived.
#[derive(Debug, Clone)]
pub struct Heard {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

pub struct Spy {
    /// For publishing as this client (the spy's own credentials).
    pub client: Client,
    heard: Arc<Mutex<Vec<Heard>>>,
    stop: Arc<AtomicBool>,
}

impl Spy {
    /// Connects with `opts` and subscribes to `filters`; returns once the broker has
    /// acknowledged every one (panics if it has not within 10 s).
    pub fn subscribe(opts: MqttOptions, filters: &[&str], qos: QoS) -> Self {
        let (client, mut connection) = Client::new(opts, 256);
        for filter in filters {
            client.subscribe(*filter, qos).expect("queue a SUBSCRIBE");
        }
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (acked_tx, acked) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (heard, stop) = (heard.clone(), stop.clone());
            move || {
                for event in connection.iter() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            heard.lock().unwrap().push(Heard {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = acked_tx.send(());
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        });
        for filter in filters {
            acked
                .recv_timeout(SUBSCRIBED_WITHIN)
                .unwrap_or_else(|_| panic!("the broker did not acknowledge {filter:?}"));
        }
        Self {
            client,
            heard,
            stop,
        }
    }

    /// How many messages were heard so far: a mark to look from.
    pub fn mark(&self) -> usize {
        self.heard.lock().unwrap().len()
    }

    /// The messages heard from mark `from` on.
    pub fn heard(&self, from: usize) -> Vec<Heard> {
        let heard = self.heard.lock().unwrap();
        heard.get(from..).unwrap_or_default().to_vec()
    }

    /// The payloads heard on `topic` from mark `from` on.
    pub fn on(&self, topic: &str, from: usize) -> Vec<Vec<u8>> {
        let heard = self.heard.lock().unwrap();
        let since = heard.get(from..).unwrap_or_default();
        since
            .iter()
            .filter(|h| h.topic == topic)
            .map(|h| h.payload.clone())
            .collect()
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        // The event loop ends at its next event; the disconnect is one.
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect();
    }
}
