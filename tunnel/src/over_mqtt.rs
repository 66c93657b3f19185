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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};

use crate::endpoint::{DirectOut, Endpoint, EndpointConfig, Incoming, WideRoute};
use crate::seal::SealError;

/// Hands a sealed packet on without waiting, or gives it back when there is no room.
pub type SharedPublish = Arc<dyn Fn(Vec<u8>) -> Result<(), Vec<u8>> + Send + Sync>;

/// One end of a tunnel link over MQTT.
pub struct MqttTunnel {
    pub endpoint: Endpoint,
    packets_in: mpsc::Sender<Vec<u8>>,
}

impl MqttTunnel {
    /// Starts the endpoint and its publisher; packets go to `topic`, or to `wide_topic` once
    /// the link has moved to the agent's tunnel filter ([`WideRoute`], manager's end only).
    pub fn spawn(
        cfg: EndpointConfig,
        client: AsyncClient,
        topic: String,
        wide_topic: Option<String>,
        link_up: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), SealError> {
        let switched = Arc::new(AtomicBool::new(false));
        let publish: SharedPublish = {
            let (client, switched, topic) = (client.clone(), switched.clone(), topic.clone());
            let wide_topic = wide_topic.clone().unwrap_or_else(|| topic.clone());
            Arc::new(move |packet| {
                let to = match switched.load(Ordering::Acquire) {
                    true => wide_topic.as_str(),
                    false => topic.as_str(),
                };
                try_publish(&client, to, packet)
            })
        };
        let wide = wide_topic.as_ref().map(|wide_topic| {
            let (client, wide_topic) = (client.clone(), wide_topic.clone());
            WideRoute {
                probe: Box::new(move |packet| try_publish(&client, &wide_topic, packet)),
                switched: switched.clone(),
            }
        });
        let direct: DirectOut = Box::new(move |packet| publish(packet));
        let (link, incoming, mut out_rx) = Self::start(cfg, direct, wide, link_up)?;
        // Packets the client had no room for: this task waits for room.
        tokio::spawn(async move {
            let wide_topic = wide_topic.unwrap_or_else(|| topic.clone());
            while let Some(packet) = out_rx.recv().await {
                let to = match switched.load(Ordering::Acquire) {
                    true => &wide_topic,
                    false => &topic,
                };
                if let Err(e) = client.publish(to, QoS::AtMostOnce, false, packet).await {
                    tracing::warn!(topic = %to, error = %e, "tunnel publisher stopped");
                    return;
                }
            }
        });
        Ok((link, incoming))
    }

    /// Starts the endpoint on publishers of the caller's: `publish` (and `wide`, the agent's
    /// tunnel filter) hand a sealed packet on without waiting, or give it back when they have
    /// no room. For an in-process link to the broker.
    pub fn spawn_on(
        cfg: EndpointConfig,
        publish: SharedPublish,
        wide: Option<SharedPublish>,
        link_up: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), SealError> {
        let switched = Arc::new(AtomicBool::new(false));
        let (routed, wide): (SharedPublish, _) = match wide {
            Some(wide) => {
                let (narrow, to_wide, flag) = (publish, wide.clone(), switched.clone());
                let routed: SharedPublish =
                    Arc::new(move |packet| match flag.load(Ordering::Acquire) {
                        true => to_wide(packet),
                        false => narrow(packet),
                    });
                let route = WideRoute {
                    probe: Box::new(move |packet| wide(packet)),
                    switched,
                };
                (routed, Some(route))
            }
            None => (publish, None),
        };
        let direct: DirectOut = {
            let routed = routed.clone();
            Box::new(move |packet| routed(packet))
        };
        let (link, incoming, mut out_rx) = Self::start(cfg, direct, wide, link_up)?;
        // Packets the publisher had no room for: tried again every millisecond.
        tokio::spawn(async move {
            while let Some(mut packet) = out_rx.recv().await {
                loop {
                    match routed(packet) {
                        Ok(()) => break,
                        // Given back empty: the broker is gone; the tunnel resends.
                        Err(back) if back.is_empty() => break,
                        Err(back) => packet = back,
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        });
        Ok((link, incoming))
    }

    /// The endpoint, publishing through `direct` while it has room; what it has no room for
    /// comes out of the returned receiver, for the caller's publisher task.
    #[allow(clippy::type_complexity)]
    fn start(
        cfg: EndpointConfig,
        direct: DirectOut,
        wide: Option<WideRoute>,
        link_up: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>, mpsc::Receiver<Vec<u8>>), SealError> {
        let (packets_in, in_rx) = mpsc::channel(cfg.limits.packets_in);
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(cfg.limits.packets_out);
        let (endpoint, incoming) =
            Endpoint::spawn_with(cfg, in_rx, out_tx, Some(direct), wide, link_up)?;
        let link = Self {
            endpoint,
            packets_in,
        };
        Ok((link, incoming, out_rx))
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

/// Into the MQTT client's queue if it has room; the packet back if not, or empty if the
/// client is gone.
fn try_publish(client: &AsyncClient, topic: &str, packet: Vec<u8>) -> Result<(), Vec<u8>> {
    client
        .try_publish(topic, QoS::AtMostOnce, false, packet)
        .map_err(|e| match e {
            rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))
            | rumqttc::ClientError::Request(rumqttc::Request::Publish(p)) => p.payload.to_vec(),
            _ => Vec::new(),
        })
}
