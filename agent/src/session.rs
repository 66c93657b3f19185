//! The agent's MQTT session: announce presence and state, answer RPCs, say goodbye.
//!
//! Three kinds of task share one [`Link`]: the event loop that reads [`LinkEvent`]s (it never
//! waits on a publish, so it can never block the link it drains), an announcer that publishes
//! presence and state after every (re)connect and on every state change, and one short task per
//! RPC call, bounded by a semaphore; a call over the bound is answered `busy` at once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, LastWill, QoS};
use tokio::sync::{Semaphore, watch};
use verge_mqtt::link::{LinkError, LinkOptions, WillFn};
use verge_mqtt::{Link, LinkEvent};
use verge_protocol::envelope::{self, Message};
use verge_protocol::index::IndexAck;
use verge_protocol::key::MacKey;
use verge_protocol::keys::SealedKeys;
use verge_protocol::presence::{Presence, Status};
use verge_protocol::private::{PrivateKey, Way};
use verge_protocol::rpc::{ErrorCode, Outcome, ReplayGuard, Reply, Request, RpcError};
use verge_protocol::state::State;
use verge_protocol::topic::Topics;

use crate::config::{AgentConfig, ConfigError};
use crate::keys::KeyTable;
use crate::rpc;
use crate::state::StateHandle;
use crate::tunnel::Tunnels;
use crate::webrtc::Whep;

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
    /// The state payload last published (retained), to notice when someone replaces it.
    last_state: Mutex<Vec<u8>>,
}

impl Shared {
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

/// What the recorder hands the session: itself (for the `record.*` methods), and for the
/// recording index its outbox file and the days recordings begin.
pub struct IndexInputs {
    pub recorder: crate::record::Recorder,
    pub outbox: std::path::PathBuf,
    pub days: tokio::sync::mpsc::Receiver<crate::record::writer::NewDay>,
}

/// Runs the agent's MQTT session until `shutdown` completes, then publishes `offline`.
pub async fn run(
    cfg: &AgentConfig,
    state: StateHandle,
    keys: KeyTable,
    whep: Option<Whep>,
    index: Option<IndexInputs>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
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
    };

    let mut opts = LinkOptions::new(cfg.broker_url()?, &cfg.id);
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
    // `{p}/v1/a/{id}/tun:` then the manager's id.
    let tunnel_prefix = topics.tunnel_down(&cfg.id, "");
    let tap: verge_mqtt::link::Tap = {
        let cell = tunnel_cell.clone();
        Box::new(move |topic, payload| {
            let Some(manager) = topic.strip_prefix(tunnel_prefix.as_str()) else {
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
        last_state: Mutex::new(Vec::new()),
    });
    // The current session number; 0 until the first CONNACK.
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let reannounce = Arc::new(tokio::sync::Notify::new());
    let announcer = tokio::spawn(announce(shared.clone(), connected_rx, reannounce.clone()));
    let permits = Arc::new(Semaphore::new(cfg.limits.rpc_concurrency.max(1)));
    let replays = Mutex::new(ReplayGuard::new(4096));
    let (link_up, link_up_rx) = watch::channel(false);
    let _ = tunnel_cell.set(Mutex::new(Tunnels::new(
        cfg,
        shared.client.clone(),
        shared.topics.clone(),
        link_up_rx,
    )));
    // The recording index: rows go out from their on-disk outbox until a manager acks them.
    let (acks_tx, acks_rx) = tokio::sync::mpsc::channel(64);
    let indexer = index.map(|inputs| {
        let outbox = match crate::record::outbox::Outbox::open(&inputs.outbox) {
            Ok(outbox) => outbox,
            Err(e) => {
                let aside = inputs.outbox.with_extension("json.corrupt");
                tracing::error!(agent = %shared.id, error = %e, aside = %aside.display(), "index outbox unreadable: set aside, starting empty");
                let _ = std::fs::rename(&inputs.outbox, &aside);
                crate::record::outbox::Outbox::empty(&inputs.outbox)
            }
        };
        tokio::spawn(crate::record::outbox::deliver(
            outbox,
            inputs.days,
            acks_rx,
            crate::record::outbox::Link {
                agent: shared.id.clone(),
                key: shared.key.clone(),
                client: shared.client.clone(),
                topic: shared.topics.index(&shared.id),
                connected: connected_tx.subscribe(),
            },
        ))
    });
    // `{p}/v1/a/{id}/ack:` then the manager's id.
    let ack_prefix = shared.topics.index_ack(&shared.id, "");
    let request_topic = shared.topics.request(&shared.id);
    let keys_topic = shared.topics.keys(&shared.id);
    let presence_topic = shared.topics.presence(&shared.id);
    let state_topic = shared.topics.state(&shared.id);

    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            event = events.recv() => match event {
                None => break Err(AgentError::LinkEnded),
                Some(LinkEvent::Connected { session }) => {
                    connected_tx.send_replace(session);
                    link_up.send_replace(true);
                }
                Some(LinkEvent::Message { topic, payload }) if topic == request_topic => {
                    if on_request(&shared, &payload, &permits, &replays) {
                        break Err(AgentError::Revoked(shared.id.clone()));
                    }
                }
                Some(LinkEvent::Message { topic, payload }) if topic == keys_topic => {
                    on_keys(&shared, &keys, &payload);
                }
                Some(LinkEvent::Message { topic, payload }) if topic == presence_topic => {
                    if stale_presence(&shared, &payload, *connected_tx.borrow()) {
                        reannounce.notify_one();
                    }
                }
                Some(LinkEvent::Message { topic, payload }) if topic == state_topic => {
                    if stale_state(&shared, &payload, *connected_tx.borrow()) {
                        reannounce.notify_one();
                    }
                }
                Some(LinkEvent::Message { topic, payload }) if topic.starts_with(&ack_prefix) => {
                    match envelope::open::<IndexAck>(&payload, &shared.key) {
                        Ok(opened) => {
                            let _ = acks_tx.try_send(opened.body);
                        }
                        Err(e) => tracing::warn!(agent = %shared.id, error = %e, "ignoring an index acknowledgement that does not open"),
                    }
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

/// After every (re)connect: subscribe and announce; on every state change: republish the
/// state; when told (a stale `offline` of ours is retained): announce again.
async fn announce(
    shared: Arc<Shared>,
    mut connected: watch::Receiver<u64>,
    reannounce: Arc<tokio::sync::Notify>,
) {
    let mut state_rx = shared.state.subscribe();
    let mut announced_generation = 0u64;
    let mut published: Option<(u64, u64)> = None;
    loop {
        let mut again = false;
        tokio::select! {
            changed = connected.changed() => if changed.is_err() { return },
            changed = state_rx.changed() => if changed.is_err() { return },
            _ = reannounce.notified() => again = true,
        }
        let generation = *connected.borrow_and_update();
        if generation == 0 {
            continue;
        }
        if again {
            // Someone replaced what we retained: the state goes out again too.
            published = None;
        }
        if announced_generation != generation || again {
            // One filter for everything addressed to this agent (requests, keys, our own
            // presence to notice a late will): rumqttd matches every new topic against every
            // filter, so filters per agent multiply its work across a fleet (measured with
            // examples/agent_swarm). Our own state echoes back too and is ignored.
            let filter = shared.topics.agent_all(&shared.id);
            let presence = shared.seal(&shared.presence(Status::Online, generation));
            let presence_topic = shared.topics.presence(&shared.id);
            if announced_generation != generation
                && let Err(e) = shared.client.subscribe(filter, QoS::AtLeastOnce).await
            {
                tracing::warn!(agent = %shared.id, error = %e, "subscribe failed");
            }
            if let Err(e) = shared
                .client
                .publish(presence_topic, QoS::AtLeastOnce, true, presence)
                .await
            {
                tracing::warn!(agent = %shared.id, error = %e, "presence publish failed");
            }
            announced_generation = generation;
        }
        let state: State = state_rx.borrow_and_update().clone();
        if published != Some((generation, state.seq)) {
            let topic = shared.topics.state(&shared.id);
            let payload = shared.seal(&state);
            *shared.last_state.lock().unwrap_or_else(|p| p.into_inner()) = payload.clone();
            if let Err(e) = shared
                .client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
            {
                tracing::warn!(agent = %shared.id, error = %e, "state publish failed");
            }
            published = Some((generation, state.seq));
        }
    }
}

/// True when the retained presence is not this session's `online`: a late will of an older
/// connection (or anything else) replaced it, and it must be announced again.
fn stale_presence(shared: &Shared, payload: &[u8], session: u64) -> bool {
    if session == 0 {
        return false;
    }
    match envelope::open::<Presence>(payload, &shared.key) {
        Ok(opened) => {
            let p = opened.body;
            let stale = p.session < session || (p.session == session && p.status != Status::Online);
            if stale {
                tracing::info!(agent = %shared.id, old_session = p.session, session, "our retained presence was replaced; announcing again");
            }
            stale
        }
        Err(_) => true,
    }
}

/// True when the retained state is not what we last published: cleared, replaced by
/// something else, or an old message of ours published again. (An echo of an earlier publish
/// arriving late also counts; publishing once more is harmless.)
fn stale_state(shared: &Shared, payload: &[u8], session: u64) -> bool {
    if session == 0 {
        return false;
    }
    let last = shared.last_state.lock().unwrap_or_else(|p| p.into_inner());
    let stale = !last.is_empty() && *last != payload;
    drop(last);
    if stale {
        tracing::info!(agent = %shared.id, "our retained state was replaced; publishing it again");
    }
    stale
}

/// Takes the channel key table the manager keeps for this agent.
fn on_keys(shared: &Shared, keys: &KeyTable, payload: &[u8]) {
    if payload.is_empty() {
        // Anyone the broker lets publish can clear a retained topic; the manager notices and
        // sends the table again, and until then the keys held stay in force.
        tracing::warn!(agent = %shared.id, "our retained key table was cleared; keeping the keys held");
        return;
    }
    let table = envelope::open::<SealedKeys>(payload, &shared.key)
        .map_err(|e| e.to_string())
        .and_then(|opened| opened.body.open(&shared.private).map_err(|e| e.to_string()));
    match table {
        Ok(table) => {
            if keys.replace(table) {
                tracing::info!(agent = %shared.id, keys = keys.len(), "channel keys updated");
            }
        }
        Err(e) => {
            tracing::warn!(agent = %shared.id, error = %e, "ignoring a key table that does not open")
        }
    }
}

/// Checks a request and starts it on its own task; never waits. `true`: the manager revoked
/// this agent (answered here, before the session ends).
fn on_request(
    shared: &Arc<Shared>,
    payload: &[u8],
    permits: &Arc<Semaphore>,
    replays: &Mutex<ReplayGuard>,
) -> bool {
    let request = match envelope::open::<Request>(payload, &shared.key) {
        Ok(opened) => opened.body,
        Err(e) => {
            tracing::warn!(agent = %shared.id, error = %e, "dropping a request that does not open");
            return false;
        }
    };
    if verge_protocol::id::validate(&request.reply_to).is_err() {
        tracing::warn!(agent = %shared.id, reply_to = %request.reply_to, "dropping a request with an invalid reply_to");
        return false;
    }
    let first = replays
        .lock()
        .map(|mut guard| guard.first_time(&request.reply_to, request.id))
        .unwrap_or(false);
    if !first {
        tracing::warn!(agent = %shared.id, id = request.id, "dropping a replayed request");
        return false;
    }
    let reply_topic = shared.topics.reply(&request.reply_to);
    if request.method == verge_protocol::rpc::METHOD_REVOKED {
        tracing::error!(agent = %shared.id, manager = %request.reply_to, "revoked by the manager: disconnecting");
        let answer = shared
            .private
            .seal(Way::Reply, &serde_json::Value::Null)
            .unwrap_or_default();
        let reply = shared.seal(&Reply {
            id: request.id,
            result: Outcome::Ok(answer),
        });
        let _ = shared
            .client
            .try_publish(reply_topic, QoS::AtMostOnce, false, reply);
        return true;
    }
    match permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let outcome = match shared.private.open(Way::Request, &request.params) {
                    Ok(params) => {
                        serve(&shared, request.method.clone(), params, request.timeout_ms).await
                    }
                    Err(e) => Outcome::Err(RpcError::new(ErrorCode::InvalidParams, e.to_string())),
                };
                let outcome = match outcome {
                    Outcome::Ok(value) => match shared.private.seal(Way::Reply, &value) {
                        Ok(sealed) => Outcome::Ok(sealed),
                        Err(e) => Outcome::Err(RpcError::new(ErrorCode::Internal, e.to_string())),
                    },
                    err => err,
                };
                let reply = shared.seal(&Reply {
                    id: request.id,
                    result: outcome,
                });
                if let Err(e) = shared
                    .client
                    .publish(reply_topic, QoS::AtMostOnce, false, reply)
                    .await
                {
                    tracing::warn!(agent = %shared.id, method = %request.method, error = %e, "reply publish failed");
                }
                drop(permit);
            });
        }
        Err(_) => {
            let busy = RpcError::new(ErrorCode::Busy, "too many calls in flight on this agent");
            let reply = shared.seal(&Reply {
                id: request.id,
                result: Outcome::Err(busy),
            });
            if shared
                .client
                .try_publish(reply_topic, QoS::AtMostOnce, false, reply)
                .is_err()
            {
                tracing::warn!(agent = %shared.id, "overloaded: dropped a request without reply");
            }
        }
    }
    false
}

async fn serve(
    shared: &Shared,
    method: String,
    params: serde_json::Value,
    timeout_ms: u64,
) -> Outcome {
    let ctx = rpc::Context {
        presence: shared.online.clone(),
        state: shared.state.snapshot(),
        whep: shared.whep.clone(),
        recorder: shared.recorder.clone(),
    };
    let budget = Duration::from_millis(timeout_ms.max(1));
    match tokio::time::timeout(budget, rpc::dispatch(&method, params, ctx)).await {
        Ok(Ok(value)) => Outcome::Ok(value),
        Ok(Err(e)) => Outcome::Err(e),
        Err(_) => Outcome::Err(RpcError::new(
            ErrorCode::DeadlineExceeded,
            format!("{method} took longer than {timeout_ms} ms"),
        )),
    }
}
