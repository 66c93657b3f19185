//! The agent's MQTT session: announce presence and state, answer RPCs, take the channel keys
//! and the index's acknowledgements, say goodbye.
//!
//! Three kinds of task share one [`Link`]: the event loop here that reads [`LinkEvent`]s (it
//! never waits on a publish, so it can never block the link it drains), an announcer that
//! publishes presence and state after every (re)connect and on every state change, and one
//! short task per RPC call, bounded by a semaphore; a call over the bound is answered `busy` at
//! once. The loop hands each message to the file that knows its topic:
//!
//! - `announce`: our retained presence and state: announced, watched and repaired (the
//!   healing itself is [`crate::heal`]'s).
//! - `rpc_server`: requests: opened, checked against replays and stale times, run
//!   ([`crate::rpc`]), answered sealed.
//! - `key_table`: the retained channel key table, opened into the [`KeyTable`].
//! - `index`: the recording index's outbox delivery and the managers' acknowledgements.
//! - replies to this agent's own calls go to [`crate::calls`].
//!
//! Tunnel packets do not pass through the loop: the link's own task hands them to
//! [`crate::tunnel`].

mod announce;
mod index;
mod key_table;
mod rpc_server;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, LastWill, QoS};
use tokio::sync::watch;
use verge_mqtt::link::{LinkError, LinkOptions, WillFn};
use verge_mqtt::{Link, LinkEvent};
use verge_protocol::envelope::{self, Message};
use verge_protocol::presence::{Presence, Status};
use verge_protocol::sealed::PrivateKey;
use verge_protocol::secret::MacKey;
use verge_protocol::state::State;
use verge_protocol::topic::Topics;

use crate::config::{AgentConfig, ConfigError};
use crate::keys::KeyTable;
use crate::state::StateHandle;
use crate::tunnel::Tunnels;
use crate::webrtc::Whep;
use announce::Healers;
pub use index::IndexInputs;
use rpc_server::RpcServer;

/// How long a goodbye may take before the process exits anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the MQTT link task ended unexpectedly")]
    LinkEnded,
    #[error(
        "the manager revoked agent {0:?}: its secret no longer connects; enrol it again under a new id"
    )]
    Revoked(String),
    #[error(transparent)]
    ReadyFile(#[from] verge_protocol::ready::ReadyFileError),
    #[error("{what} listener {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// What every task of one session needs, built once.
struct Shared {
    id: String,
    key: MacKey,
    /// Seals RPC params and results (SDP, TURN credentials) for this agent and its manager.
    private: PrivateKey,
    topics: Topics,
    client: AsyncClient,
    online: Presence,
    state: StateHandle,
    whep: Option<Whep>,
    recorder: Option<crate::record::Recorder>,
    hub: Arc<verge_media::hub::Hub>,
    /// Healing of the retained presence and state (see [`crate::heal`]).
    heal: Mutex<Healers>,
    /// Set once the tunnel was used: the tunnel filter is subscribed on every connection.
    tunnel_filter: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    fn healers(&self) -> std::sync::MutexGuard<'_, Healers> {
        self.heal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seal<M: Message>(&self, body: &M) -> Vec<u8> {
        envelope::seal(&self.key, &self.id, verge_protocol::now_ms(), body)
    }

    fn presence(&self, status: Status, session: u64) -> Presence {
        Presence {
            status,
            session,
            ..self.online.clone()
        }
    }
}

/// What the session serves from and feeds.
pub struct Inputs {
    pub state: StateHandle,
    pub keys: KeyTable,
    pub whep: Option<Whep>,
    pub index: Option<IndexInputs>,
    pub hub: Arc<verge_media::hub::Hub>,
    /// Calls to the managers, attached to this session's link.
    pub calls: crate::calls::ManagerCalls,
}

/// Runs the agent's MQTT session until `shutdown` completes, then publishes `offline`.
pub async fn run(
    cfg: &AgentConfig,
    inputs: Inputs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let Inputs {
        state,
        keys,
        whep,
        index,
        hub,
        calls,
    } = inputs;
    cfg.validate()?;
    let mut capabilities = vec!["rpc", "rtmp", "http-flv"];
    if whep.is_some() {
        capabilities.push("whep");
    }
    let topics = cfg.topics()?;
    let key = MacKey::new(&cfg.secret);
    let online = Presence {
        status: Status::Online,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: verge_protocol::now_ms(),
        session: 0,
        capabilities: capabilities.into_iter().map(String::from).collect(),
        rtmp_url: Some(cfg.rtmp_url()),
        http_url: Some(cfg.http_url()),
        keepalive_secs: cfg.mqtt.keepalive_secs,
        pub_max: cfg.limits.pub_max,
        sub_max: cfg.limits.sub_max,
        role: cfg.node.role,
        egress_max_kbps: cfg.limits.egress_kbps,
    };

    let mut opts = LinkOptions::new(cfg.broker_url()?, &cfg.id);
    opts.fallbacks = cfg.fallback_urls()?;
    opts.username = Some(cfg.id.clone());
    opts.password = Some(cfg.secret.clone());
    opts.keepalive = cfg.keepalive();
    opts.ca_file = cfg.mqtt.ca_file.clone();
    opts.max_backoff = Duration::from_secs(cfg.mqtt.max_backoff_secs.max(1));
    opts.session_client_ids = true;
    let will: WillFn = {
        let (key, id, topic) = (key.clone(), cfg.id.clone(), topics.presence(&cfg.id));
        let offline = Presence {
            status: Status::Offline,
            ..online.clone()
        };
        Box::new(move |session| {
            let offline = Presence {
                session,
                ..offline.clone()
            };
            let payload = envelope::seal(&key, &id, verge_protocol::now_ms(), &offline);
            LastWill::new(topic.clone(), payload, QoS::AtLeastOnce, true)
        })
    };
    // Tunnel packets are delivered by the MQTT link's own task (see `verge_mqtt::link::Tap`);
    // the links exist once the client does, hence the cell.
    let tunnel_cell = Arc::new(std::sync::OnceLock::<Mutex<Tunnels>>::new());
    // `{p}/v1/a/{id}/tun:` (the agent filter) or `{p}/v1/a/{id}/tun/` (the tunnel filter),
    // then the manager's id.
    let tunnel_prefixes = [
        topics.tunnel_down(&cfg.id, ""),
        topics.tunnel_down_wide(&cfg.id, ""),
    ];
    let tap: verge_mqtt::link::Tap = {
        let cell = tunnel_cell.clone();
        Box::new(move |topic, payload| {
            let Some(manager) = tunnel_prefixes
                .iter()
                .find_map(|prefix| topic.strip_prefix(prefix.as_str()))
            else {
                return false;
            };
            if verge_protocol::id::validate(manager).is_ok()
                && let Some(tunnels) = cell.get()
            {
                tunnels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_packet(manager, payload);
            }
            true
        })
    };
    let Link {
        client,
        mut events,
        task,
    } = Link::spawn_tapped(&opts, Some(will), Some(tap))?;

    let shared = Arc::new(Shared {
        id: cfg.id.clone(),
        key,
        private: PrivateKey::new(&cfg.secret),
        topics,
        client,
        online,
        state,
        whep,
        recorder: index.as_ref().map(|i| i.recorder.clone()),
        hub,
        heal: Mutex::default(),
        tunnel_filter: Arc::default(),
    });
    calls.attach(
        &shared.id,
        &cfg.secret,
        shared.client.clone(),
        shared.topics.call(&shared.id),
    );
    let call_reply_topic = shared.topics.call_reply(&shared.id);
    // The current session number; 0 until the first CONNACK.
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let (asked_tx, asked_rx) = watch::channel(0u64);
    let announcer = tokio::spawn(announce::announce(shared.clone(), connected_rx, asked_rx));
    let rpc_server = RpcServer::new(cfg.limits.rpc_concurrency);
    let (link_up, link_up_rx) = watch::channel(false);
    let _ = tunnel_cell.set(Mutex::new(Tunnels::new(
        cfg,
        shared.client.clone(),
        shared.topics.clone(),
        link_up_rx,
        shared.tunnel_filter.clone(),
    )));
    // The recording index: rows go out from their on-disk outbox until a manager acks them.
    let (acks_tx, acks_rx) = tokio::sync::mpsc::channel(64);
    let indexer =
        index.map(|inputs| index::start(&shared, inputs, acks_rx, connected_tx.subscribe()));
    // `{p}/v1/a/{id}/ack:` then the manager's id.
    let ack_prefix = shared.topics.index_ack(&shared.id, "");
    let request_topic = shared.topics.request(&shared.id);
    let keys_topic = shared.topics.keys(&shared.id);
    let ask_topic = shared.topics.ask();
    let presence_topic = shared.topics.presence(&shared.id);
    let state_topic = shared.topics.state(&shared.id);

    tokio::pin!(shutdown);
    let result = loop {
        let repair_at = {
            let healers = shared.healers();
            [healers.presence.deadline(), healers.state.deadline()]
                .into_iter()
                .flatten()
                .min()
        };
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep_until(repair_at.map_or_else(tokio::time::Instant::now, Into::into)),
                if repair_at.is_some() => announce::repair(&shared),
            event = events.recv() => match event {
                None => break Err(AgentError::LinkEnded),
                Some(LinkEvent::Connected { session }) => {
                    {
                        let mut healers = shared.healers();
                        healers.presence.connected();
                        healers.state.connected();
                    }
                    connected_tx.send_replace(session);
                    link_up.send_replace(true);
                }
                Some(LinkEvent::Message { topic, payload }) if topic == request_topic => {
                    if rpc_server.on_request(&shared, &payload) {
                        break Err(AgentError::Revoked(shared.id.clone()));
                    }
                }
                Some(LinkEvent::Message { topic, payload }) if topic == keys_topic => {
                    key_table::on_keys(&shared, &keys, &payload);
                }
                Some(LinkEvent::Message { topic, payload }) if topic == ask_topic => {
                    announce::on_ask(&shared, &asked_tx, &payload);
                }
                Some(LinkEvent::Message { topic, payload }) if topic == presence_topic => {
                    let seen = announce::seen_presence(&shared, &payload, *connected_tx.borrow());
                    shared.healers().presence.seen(seen, std::time::Instant::now());
                }
                Some(LinkEvent::Message { topic, payload }) if topic == state_topic => {
                    let seen = announce::seen_as::<State>(&shared, &payload);
                    shared.healers().state.seen(seen, std::time::Instant::now());
                }
                Some(LinkEvent::Message { topic, payload }) if topic.starts_with(&ack_prefix) => {
                    index::on_ack(&shared, &acks_tx, &payload);
                }
                Some(LinkEvent::Message { topic, payload }) if topic == call_reply_topic => {
                    calls.on_reply(&payload);
                }
                Some(LinkEvent::Message { topic, .. }) => {
                    tracing::trace!(agent = %shared.id, %topic, "ignoring our own echo or an unknown topic");
                }
                Some(LinkEvent::Disconnected { .. }) => {
                    link_up.send_replace(false);
                }
            },
        }
    };

    announcer.abort();
    if let Some(indexer) = indexer {
        indexer.abort();
    }
    let session = *connected_tx.borrow();
    // A revoked agent leaves without a presence: the manager has cleared its topics.
    let announce = !matches!(result, Err(AgentError::Revoked(_)));
    goodbye(&shared, session, announce, events, task).await;
    result
}

/// Publishes `offline` (retained), disconnects, and lets the link flush both.
async fn goodbye(
    shared: &Shared,
    session: u64,
    announce: bool,
    mut events: tokio::sync::mpsc::Receiver<LinkEvent>,
    task: tokio::task::JoinHandle<()>,
) {
    let offline = shared.seal(&shared.presence(Status::Offline, session));
    let topic = shared.topics.presence(&shared.id);
    let client = shared.client.clone();
    let send = async move {
        if announce {
            client
                .publish(topic, QoS::AtLeastOnce, true, offline)
                .await?;
        }
        client.disconnect().await
    };
    let drain = async move {
        while events.recv().await.is_some() {}
        let _ = task.await;
    };
    let flushed = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        let sent = send.await;
        drain.await;
        sent
    })
    .await;
    match flushed {
        Ok(Ok(())) => tracing::info!(agent = %shared.id, "published offline and disconnected"),
        Ok(Err(e)) => {
            tracing::warn!(agent = %shared.id, error = %e, "could not queue the offline presence")
        }
        Err(_) => {
            tracing::warn!(agent = %shared.id, "broker unreachable at shutdown; the last will reports offline")
        }
    }
}
