//! The tunnel over an in-process link to the embedded broker (rumqttd's local link): no
//! loopback socket, no MQTT encoding and no client event loop between the manager and its own
//! broker. A tunnel round trip crossed each of these twice; the agent's side is unchanged.
//!
//! Sending pushes the packet into the link's buffer and wakes the router; when the router's
//! queue is full the packet stays in the buffer and goes with the next wake-up (the tunnel
//! retransmits on its own timer if no next one comes), so a send never waits. Receiving is a
//! task that reads the link and hands each packet to its agent's endpoint, never waiting either.

use std::sync::{Arc, Mutex};

use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use tokio::sync::watch;
use verge_protocol::topic::{Topic, Topics};

use super::Tunnels;

/// Publishes on the local link; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<Mutex<LinkTx>>,
    /// Always up: the broker lives in this process.
    up: watch::Receiver<bool>,
    _up_tx: Arc<watch::Sender<bool>>,
}

impl Publisher {
    pub fn new(tx: LinkTx) -> Self {
        let (up_tx, up) = watch::channel(true);
        Self {
            tx: Arc::new(Mutex::new(tx)),
            up,
            _up_tx: Arc::new(up_tx),
        }
    }

    pub fn link_up(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    /// A sender of packets to `topic`.
    pub fn for_topic(&self, topic: String) -> verge_tunnel::SharedPublish {
        let tx = self.tx.clone();
        let topic = bytes::Bytes::from(topic);
        Arc::new(move |packet: Vec<u8>| {
            let mut tx = tx.lock().unwrap_or_else(|p| p.into_inner());
            // An error means the router's queue was full: the packet is in the link's buffer
            // already and leaves with the next wake-up.
            if let Err(e) = tx.try_publish(topic.clone(), packet) {
                tracing::trace!(error = %e, "tunnel: local link busy; the packet waits in its buffer");
            }
            Ok(())
        })
    }
}

/// Reads the local link until it closes: tunnel packets from agents to their endpoints.
pub async fn receive(mut rx: LinkRx, topics: Topics, manager_id: String, tunnels: Tunnels) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(forward))) => {
                let Ok(topic) = std::str::from_utf8(&forward.publish.topic) else {
                    continue;
                };
                if let Ok(Topic::TunnelUp { manager, agent }) = topics.parse(topic)
                    && manager == manager_id
                {
                    tunnels.deliver(&agent, &forward.publish.payload);
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                // The router paused this link when its buffer filled; it is drained now.
                if let Err(e) = rx.wake().await {
                    tracing::error!(error = %e, "tunnel local link stopped");
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "tunnel local link stopped");
                return;
            }
        }
    }
}
