//! A tunnel link carried by MQTT: an [`Endpoint`] whose sealed packets are published on the
//! peer's tunnel topic by a task of their own (so whoever drains the MQTT link never waits on a
//! publish), and whose incoming packets the session hands over without waiting.
//!
//! QoS 0, as QUIC rides UDP: the tunnel numbers, acknowledges and resends its bytes itself
//! (fast retransmit on repeated acks, resume when the link returns), and caps what it has in
//! flight far below the brokers' queue limits. QoS 1 would add nothing the tunnel needs and
//! cost latency: measured with this benchmark's round trip (examples/tunnel_bench, debug
//! build), 64 bytes took 52 ms p50 at QoS 1 against 1.7 ms at QoS 0, with rumqttd and with
//! mosquitto alike.

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};

use crate::endpoint::{DirectOut, Endpoint, EndpointConfig, Incoming};
use crate::seal::SealError;

/// Hands a sealed packet on without waiting, or gives it back when there is no room.
pub type SharedPublish = std::sync::Arc<dyn Fn(Vec<u8>) -> Result<(), Vec<u8>> + Send + Sync>;

/// One end of a tunnel link over MQTT.
pub struct MqttTunnel {
    pub endpoint: Endpoint,
    packets_in: mpsc::Sender<Vec<u8>>,
}

impl MqttTunnel {
    /// Starts the endpoint and its publisher; packets go to `topic`.
    pub fn spawn(
        cfg: EndpointConfig,
        client: AsyncClient,
        topic: String,
        link_up: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), SealError> {
        let (packets_in, in_rx) = mpsc::channel(cfg.limits.packets_in);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(cfg.limits.packets_out);
        // Straight into the MQTT client's queue while it has room; through the publisher task
        // (which waits for room) otherwise.
        let direct: DirectOut = {
            let (client, topic) = (client.clone(), topic.clone());
            Box::new(move |packet| {
                client
                    .try_publish(topic.as_str(), QoS::AtMostOnce, false, packet)
                    .map_err(|e| match e {
                        rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))
                        | rumqttc::ClientError::Request(rumqttc::Request::Publish(p)) => {
                            p.payload.to_vec()
                        }
                        _ => Vec::new(),
                    })
            })
        };
        let (endpoint, incoming) = Endpoint::spawn_with(cfg, in_rx, out_tx, Some(direct), link_up)?;
        tokio::spawn(async move {
            while let Some(packet) = out_rx.recv().await {
                if let Err(e) = client.publish(&topic, QoS::AtMostOnce, false, packet).await {
                    tracing::warn!(%topic, error = %e, "tunnel publisher stopped");
                    return;
                }
            }
        });
        Ok((
            Self {
                endpoint,
                packets_in,
            },
            incoming,
        ))
    }

    /// Starts the endpoint on a publisher of the caller's: `publish` hands a sealed packet on
    /// without waiting, or gives it back when it has no room (then it is tried again, 1 ms
    /// later, by a task of its own). For an in-process link to the broker.
    pub fn spawn_on(
        cfg: EndpointConfig,
        publish: SharedPublish,
        link_up: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), SealError> {
        let (packets_in, in_rx) = mpsc::channel(cfg.limits.packets_in);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(cfg.limits.packets_out);
        let direct: DirectOut = {
            let publish = publish.clone();
            Box::new(move |packet| publish(packet))
        };
        let (endpoint, incoming) = Endpoint::spawn_with(cfg, in_rx, out_tx, Some(direct), link_up)?;
        tokio::spawn(async move {
            while let Some(mut packet) = out_rx.recv().await {
                loop {
                    match publish(packet) {
                        Ok(()) => break,
                        Err(back) => packet = back,
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        });
        Ok((
            Self {
                endpoint,
                packets_in,
            },
            incoming,
        ))
    }

    /// Hands a packet from the peer to the endpoint without waiting; false when it had to be
    /// dropped (the endpoint is far behind or gone; the peer resends what is not acked).
    pub fn deliver(&self, packet: Vec<u8>) -> bool {
        self.packets_in.try_send(packet).is_ok()
    }

    /// False once the endpoint task has stopped.
    pub fn is_running(&self) -> bool {
        !self.packets_in.is_closed()
    }
}
