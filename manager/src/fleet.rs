//! The fleet as the manager hears it: its MQTT session ([`FleetSession`]) subscribes to every
//! agent's presence and state and to its own reply topic after each (re)connect, and turns
//! what arrives into registry updates and RPC completions (and hands index rows and tunnel
//! packets on). The loop never waits on a publish, so it can always drain the link.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rumqttc::{QoS, SubscribeFilter};
use std::time::Duration;
use tokio::sync::mpsc;
use verge_mqtt::LinkEvent;
use verge_protocol::envelope::{self, Message};
use verge_protocol::presence::{AnnounceRequest, Presence};
use verge_protocol::rpc;
use verge_protocol::secret::MacKey;
use verge_protocol::state::State;
use verge_protocol::topic::Topic;

use crate::registry::Registry;
use crate::rpc::RpcClient;

/// Unknown senders are logged once each, up to this many, so a noisy broker cannot flood logs.
const MAX_WARNED: usize = 1024;

pub struct FleetSession {
    /// QoS of the presence and state subscriptions, chosen for the broker's retained delivery.
    pub retained_qos: QoS,
    pub wire: crate::wire::Wire,
    pub registry: Arc<Registry>,
    pub rpc: Arc<RpcClient>,
    pub connected: Arc<AtomicBool>,
    /// The same, for the tunnel links: streams resume when it comes back.
    pub link_up: tokio::sync::watch::Sender<bool>,
    pub tunnels: crate::tunnel::Tunnels,
    pub keys: crate::keys::KeyDistributor,
    pub index: crate::db::index::Index,
    /// Calls from agents.
    pub calls: Arc<crate::calls::CallServer>,
    /// Tunnel packets come over this session (an external broker); false when they use the
    /// embedded broker's local link (subscribing here too would deliver each twice).
    pub tunnel_over_session: bool,
    /// Agents being asked to prove that they are online.
    pub verifying: Arc<std::sync::Mutex<HashSet<String>>>,
    /// Ask the fleet to announce itself after every (re)connect: an external broker, whose
    /// cluster may keep retained messages per node (the embedded one keeps them all).
    pub ask_fleet: bool,
    /// When an agent's unannounced return last made this manager ask (for
    /// [`ASK_AT_MOST_EVERY`]).
    pub last_ask: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Asks prompted by agents that came back without having said goodbye are at most this
/// frequent (those after this manager's own reconnects always go out): a node's whole fleet
/// moving costs one.
const ASK_AT_MOST_EVERY: Duration = Duration::from_secs(30);

/// How long after asking the fleet to announce itself an agent not heard from since loses
/// its proof of life: the agents answer within
/// [`verge_protocol::presence::ANNOUNCE_AT_MOST_EVERY_MS`], their proofs
/// take a few round trips more.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Asks every agent to announce itself again (`{p}/v1/ask`); on a task, as the publish may
/// wait for the link.
pub fn ask_fleet(wire: &crate::wire::Wire) {
    let payload = serde_json::to_vec(&AnnounceRequest {
        from: wire.manager_id.clone(),
    })
    .unwrap_or_default();
    let (client, topic) = (wire.client.clone(), wire.topics.ask());
    tokio::spawn(async move {
        if let Err(e) = client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(error = %e, "could not ask the fleet to announce itself");
        }
    });
}

impl FleetSession {
    pub async fn run(self, mut events: mpsc::Receiver<LinkEvent>) {
        let mut warned = HashSet::new();
        while let Some(event) = events.recv().await {
            match event {
                LinkEvent::Connected { .. } => {
                    self.connected.store(true, Ordering::Relaxed);
                    self.link_up.send_replace(true);
                    self.subscribe();
                    if self.ask_fleet {
                        self.ask();
                    }
                }
                LinkEvent::Disconnected { .. } => {
                    self.connected.store(false, Ordering::Relaxed);
                    self.link_up.send_replace(false);
                }
                LinkEvent::Message { topic, payload } => {
                    self.on_message(&topic, &payload, &mut warned)
                }
            }
        }
    }

    fn subscribe(&self) {
        let mut filters = vec![
            SubscribeFilter::new(self.wire.topics.all_presence(), self.retained_qos),
            SubscribeFilter::new(self.wire.topics.all_state(), self.retained_qos),
            SubscribeFilter::new(
                self.wire.topics.reply(&self.wire.manager_id),
                QoS::AtMostOnce,
            ),
            SubscribeFilter::new(self.wire.topics.all_index(), QoS::AtLeastOnce),
            SubscribeFilter::new(self.wire.topics.all_calls(), QoS::AtMostOnce),
            // To notice a key table someone else replaced or cleared, and send it again.
            SubscribeFilter::new(self.wire.topics.keys("+"), QoS::AtMostOnce),
        ];
        if self.tunnel_over_session {
            filters.push(SubscribeFilter::new(
                self.wire.topics.tunnel_up_all(&self.wire.manager_id),
                QoS::AtLeastOnce,
            ));
        }
        let client = self.wire.client.clone();
        // On a task: the subscribe waits for room in the request queue that this loop's
        // draining makes.
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::error!(error = %e, "subscribing to the fleet's topics failed");
            }
        });
    }

    /// After subscribing (the request queue keeps the order): asks the fleet to announce
    /// itself, and later takes the proof of life from agents that did not answer.
    fn ask(&self) {
        let asked = std::time::Instant::now();
        ask_fleet(&self.wire);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ANSWER_GRACE).await;
            let silent = registry.unprove_unheard_since(asked);
            if silent > 0 {
                tracing::info!(
                    agents = silent,
                    "agents that did not answer the ask are no longer shown online"
                );
            }
        });
    }

    /// Whether [`ASK_AT_MOST_EVERY`] has passed since the last prompted ask; if so, this one
    /// counts as the last.
    fn may_ask_again(&self) -> bool {
        let mut last = self.last_ask.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < ASK_AT_MOST_EVERY) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }

    /// Asks an agent whose presence says online for a signed answer to a fresh request; only
    /// then is it shown online. A captured "online" published again by someone else (another
    /// agent's credentials suffice with a broker that has no ACLs) gets no answer.
    fn verify(&self, agent: &str) {
        if self.registry.get(agent).is_none_or(|r| r.online()) {
            return;
        }
        let lock = || self.verifying.lock().unwrap_or_else(|p| p.into_inner());
        if !lock().insert(agent.to_string()) {
            return;
        }
        let (rpc, registry, verifying) = (
            self.rpc.clone(),
            self.registry.clone(),
            self.verifying.clone(),
        );
        let agent = agent.to_string();
        tokio::spawn(async move {
            // Quick first (the agent subscribed before it announced), then patient.
            let waits = [0.5, 1.0, 2.0, 2.0, 4.0];
            for (attempt, wait) in waits.iter().enumerate() {
                let Some(record) = registry.get(&agent) else {
                    break;
                };
                if record.online() || !record.claims_online() {
                    break;
                }
                let timeout = Duration::from_secs_f64(*wait);
                match rpc
                    .call(&agent, rpc::METHOD_PING, serde_json::Value::Null, timeout)
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(%agent, attempt, "online: answered a fresh request");
                        break;
                    }
                    Err(e) if attempt + 1 == waits.len() => {
                        tracing::warn!(%agent, error = %e, "presence says online but the agent does not answer: not shown online (a replayed message?)");
                    }
                    Err(_) => tokio::time::sleep(timeout).await,
                }
            }
            verifying
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&agent);
        });
    }

    fn on_message(&self, topic: &str, payload: &[u8], warned: &mut HashSet<String>) {
        match self.wire.topics.parse(topic) {
            Ok(Topic::Presence { agent }) if payload.is_empty() => {
                tracing::info!(%agent, "retained presence cleared: forgetting the agent");
                self.registry.forget(&agent);
            }
            Ok(Topic::Presence { agent }) => {
                if let Some((ts, presence)) = self.open_from::<Presence>(&agent, payload, warned) {
                    tracing::info!(%agent, status = ?presence.status, version = %presence.version, "presence");
                    let online = presence.status == verge_protocol::presence::Status::Online;
                    // A new session of an agent whose last one never said offline: its will
                    // was lost, as when the broker node it was on died. Agents that died with
                    // that node left no will either: ask, and those that do not answer lose
                    // their proof of life.
                    let unannounced_return = online
                        && self.registry.get(&agent).is_some_and(|held| {
                            held.claims_online()
                                && held
                                    .presence
                                    .as_ref()
                                    .is_some_and(|p| p.session < presence.session)
                        });
                    let taken = self.registry.apply_presence(&agent, ts, presence);
                    if !taken {
                        tracing::debug!(%agent, "ignoring a presence of an older session");
                    } else if !online {
                        self.tunnels.agent_offline(&agent);
                    } else {
                        // Retained, so this only matters for agents new since the last change.
                        self.keys.send_to(&agent);
                        self.verify(&agent);
                        if unannounced_return && self.ask_fleet && self.may_ask_again() {
                            tracing::info!(%agent, "an agent came back without a goodbye (a broker node lost?): asking the fleet to announce itself");
                            self.ask();
                        }
                    }
                }
            }
            Ok(Topic::State { .. }) if payload.is_empty() => {}
            Ok(Topic::State { agent }) => {
                if let Some((ts, state)) = self.open_from::<State>(&agent, payload, warned) {
                    tracing::debug!(%agent, seq = state.seq, streams = state.streams.len(), "state");
                    self.registry.apply_state(&agent, ts, state);
                }
            }
            Ok(Topic::Index { agent }) => self.index.deliver(&agent, payload),
            Ok(Topic::Call { agent }) => self.calls.on_call(&agent, payload),
            Ok(Topic::Keys { agent }) => {
                if self.keys.clobbered(&agent, payload) {
                    tracing::warn!(%agent, "the agent's retained key table was replaced or cleared; sending it again");
                    self.keys.send_to(&agent);
                }
            }
            // Ours or another manager's: the answers come on the presence topics.
            Ok(Topic::Ask) => {}
            Ok(Topic::Reply { manager }) if manager == self.wire.manager_id => {
                self.rpc.on_reply(payload)
            }
            Ok(other) => tracing::debug!(
                ?other,
                "ignoring a message on a topic this manager does not read"
            ),
            Err(e) => tracing::debug!(error = %e, "ignoring a message on an unknown topic"),
        }
    }

    /// Opens a message published on `agent`'s topic, which must be signed by that agent.
    fn open_from<M: Message>(
        &self,
        agent: &str,
        payload: &[u8],
        warned: &mut HashSet<String>,
    ) -> Option<(u64, M)> {
        let mut warn_once = |why: String| {
            if warned.len() < MAX_WARNED && warned.insert(format!("{agent}:{why}")) {
                tracing::warn!(%agent, "ignoring a message: {why}");
            }
        };
        let Some(secret) = self.wire.credentials.secret_of(agent) else {
            warn_once("the agent is not enrolled".into());
            return None;
        };
        match envelope::open::<M>(payload, &MacKey::new(&secret)) {
            Ok(opened) if opened.from == agent => Some((opened.ts, opened.body)),
            Ok(opened) => {
                warn_once(format!(
                    "signed by {:?}, not by the topic's agent",
                    opened.from
                ));
                None
            }
            Err(e) => {
                warn_once(e.to_string());
                None
            }
        }
    }
}
