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
use verge_protocol::rpc::{ErrorCode, NotRun, Outcome, ReplayGuard, Reply, Request, RpcError};
use verge_protocol::state::State;
use verge_protocol::topic::Topics;

use crate::config::{AgentConfig, ConfigError};
use crate::heal::{Healer, Seen};
use crate::keys::KeyTable;
use crate::rpc;
use crate::state::StateHandle;
use crate::tunnel::Tunnels;
use crate::webrtc::Whep;

/// How long a goodbye may take before the process exits anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests the replay guard remembers at most. It only has to remember those signed within
/// [`verge_protocol::rpc::REQUEST_WINDOW`] (older ones are refused as stale): this is 136 a
/// second for the two minutes, far more than a manager sends one agent; past it requests are
/// refused `busy` rather than any forgotten early.
const REPLAY_MEMORY: usize = 16 * 1024;

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
    /// Healing of the retained presence and state (see [`crate::heal`]).
    heal: Mutex<Healers>,
}

/// One healer per retained topic of ours.
#[derive(Default)]
struct Healers {
    presence: Healer,
    state: Healer,
}

impl Shared {
    fn healers(&self) -> std::sync::MutexGuard<'_, Healers> {
        self.heal.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        heal: Mutex::default(),
    });
    // The current session number; 0 until the first CONNACK.
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let announcer = tokio::spawn(announce(shared.clone(), connected_rx));
    let permits = Arc::new(Semaphore::new(cfg.limits.rpc_concurrency.max(1)));
    let replays = Mutex::new(ReplayGuard::new(REPLAY_MEMORY));
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
                if repair_at.is_some() => repair(&shared),
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
                    if on_request(&shared, &payload, &permits, &replays) {
                        break Err(AgentError::Revoked(shared.id.clone()));
                    }
                }
                Some(LinkEvent::Message { topic, payload }) if topic == keys_topic => {
                    on_keys(&shared, &keys, &payload);
                }
                Some(LinkEvent::Message { topic, payload }) if topic == presence_topic => {
                    let seen = seen_presence(&shared, &payload, *connected_tx.borrow());
                    shared.healers().presence.seen(seen, std::time::Instant::now());
                }
                Some(LinkEvent::Message { topic, payload }) if topic == state_topic => {
                    let seen = seen_as::<State>(&shared, &payload);
                    shared.healers().state.seen(seen, std::time::Instant::now());
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
/// state. What it publishes is what the healers compare their topics with.
async fn announce(shared: Arc<Shared>, mut connected: watch::Receiver<u64>) {
    let mut state_rx = shared.state.subscribe();
    let mut announced_generation = 0u64;
    let mut published: Option<(u64, u64)> = None;
    loop {
        tokio::select! {
            changed = connected.changed() => if changed.is_err() { return },
            changed = state_rx.changed() => if changed.is_err() { return },
        }
        let generation = *connected.borrow_and_update();
        if generation == 0 {
            continue;
        }
        if announced_generation != generation {
            // One filter for everything addressed to this agent (requests, keys, our own
            // presence and state, to heal them): rumqttd matches every new topic against every
            // filter, so filters per agent multiply its work across a fleet (measured with
            // examples/agent_swarm). Subscribed before we announce, so the manager's first
            // ping (~1 ms after our presence) finds us listening.
            let filter = shared.topics.agent_all(&shared.id);
            if let Err(e) = shared.client.subscribe(filter, QoS::AtLeastOnce).await {
                tracing::warn!(agent = %shared.id, error = %e, "subscribe failed");
            }
            let presence = shared.presence(Status::Online, generation);
            let topic = shared.topics.presence(&shared.id);
            let payload = shared.seal(&presence);
            if let Ok(body) = serde_json::to_value(&presence) {
                shared.healers().presence.published(body);
            }
            if let Err(e) = shared
                .client
                .publish(topic, QoS::AtLeastOnce, true, payload)
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
            if let Ok(body) = serde_json::to_value(&state) {
                shared.healers().state.published(body);
            }
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

/// What a message on our retained presence topic is to its healer: ours (its body), someone
/// else's, or the presence of a newer process with our id (a higher session), not ours to
/// overwrite.
fn seen_presence(shared: &Shared, payload: &[u8], session: u64) -> Seen {
    match envelope::open::<Presence>(payload, &shared.key) {
        Ok(opened) if opened.from == shared.id && opened.body.session > session => {
            tracing::warn!(agent = %shared.id, session, newer = opened.body.session,
                "a newer process with this agent's id announced itself; leaving its presence");
            Seen::Newer
        }
        _ => seen_as::<Presence>(shared, payload),
    }
}

/// A retained message of ours as its body (the JSON value: what it means, not the bytes of a
/// signature made at another time), or [`Seen::Other`].
fn seen_as<M: Message + serde::de::DeserializeOwned + serde::Serialize>(
    shared: &Shared,
    payload: &[u8],
) -> Seen {
    match envelope::open::<M>(payload, &shared.key) {
        Ok(opened) if opened.from == shared.id => serde_json::to_value(&opened.body)
            .map(Seen::Ours)
            .unwrap_or(Seen::Other),
        _ => Seen::Other,
    }
}

/// Publishes again, sealed afresh, what a healer says was damaged and is due for repair.
fn repair(shared: &Shared) {
    let now = std::time::Instant::now();
    let (presence, state, held_back) = {
        let mut healers = shared.healers();
        let held_back = healers.presence.held_back() + healers.state.held_back();
        (
            healers.presence.poll(now),
            healers.state.poll(now),
            held_back,
        )
    };
    let republish = |topic: String, what: &str, payload: Option<Vec<u8>>| {
        let Some(payload) = payload else { return };
        tracing::info!(agent = %shared.id, held_back, "our retained {what} was replaced; publishing it again");
        if let Err(e) = shared
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
        {
            tracing::warn!(agent = %shared.id, error = %e, "could not queue the repair of our {what}");
        }
    };
    // The bodies were made from these types when they were published.
    let presence = presence.and_then(|body| serde_json::from_value::<Presence>(body).ok());
    let state = state.and_then(|body| serde_json::from_value::<State>(body).ok());
    republish(
        shared.topics.presence(&shared.id),
        "presence",
        presence.map(|p| shared.seal(&p)),
    );
    republish(
        shared.topics.state(&shared.id),
        "state",
        state.map(|st| shared.seal(&st)),
    );
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

/// What becomes of a request payload, decided before anything runs.
#[derive(Debug)]
enum Admission {
    Run(Request),
    /// Answered with this error, not run: signed outside the window (the caller learns its
    /// clock or its delivery is off), or too many to remember.
    Refuse(Request, RpcError),
    /// Dropped without a word: it does not open, names no valid reply topic, or was run
    /// already.
    Drop,
}

/// Opens a request and checks its signed time and its id ([`ReplayGuard`]) at `now` (Unix
/// ms). Each refusal is logged once, here.
fn admit(
    agent: &str,
    key: &MacKey,
    payload: &[u8],
    replays: &Mutex<ReplayGuard>,
    now: u64,
) -> Admission {
    let opened = match envelope::open::<Request>(payload, key) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%agent, error = %e, "dropping a request that does not open");
            return Admission::Drop;
        }
    };
    let (sender, request) = (opened.from, opened.body);
    if verge_protocol::id::validate(&request.reply_to).is_err() {
        tracing::warn!(%agent, %sender, reply_to = %request.reply_to, "dropping a request with an invalid reply_to");
        return Admission::Drop;
    }
    let verdict = replays.lock().unwrap_or_else(|p| p.into_inner()).admit(
        &request.reply_to,
        request.id.value(),
        opened.ts,
        now,
    );
    match verdict {
        Ok(()) => Admission::Run(request),
        Err(NotRun::Replayed { .. }) => {
            tracing::warn!(%agent, %sender, id = %request.id, method = %request.method, "dropping a replayed request");
            Admission::Drop
        }
        Err(stale @ NotRun::Stale { skew_ms }) => {
            tracing::warn!(%agent, %sender, id = %request.id, method = %request.method, skew_ms, "refusing a stale request");
            let error = RpcError::new(ErrorCode::Stale, format!("request {stale}"));
            Admission::Refuse(request, error)
        }
        Err(full @ NotRun::Full(_)) => {
            tracing::warn!(%agent, %sender, id = %request.id, method = %request.method, "refusing a request: {full}");
            let error = RpcError::new(ErrorCode::Busy, full.to_string());
            Admission::Refuse(request, error)
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
    let now = verge_protocol::now_ms();
    let request = match admit(&shared.id, &shared.key, payload, replays, now) {
        Admission::Run(request) => request,
        Admission::Refuse(request, error) => {
            let reply = shared.seal(&Reply {
                id: request.id,
                result: Outcome::Err(error),
            });
            let topic = shared.topics.reply(&request.reply_to);
            let _ = shared
                .client
                .try_publish(topic, QoS::AtMostOnce, false, reply);
            return false;
        }
        Admission::Drop => return false,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> Request {
        Request {
            id: id.into(),
            method: verge_protocol::rpc::METHOD_PING.into(),
            params: serde_json::Value::Null,
            timeout_ms: 2000,
            reply_to: "manager-1".into(),
        }
    }

    #[test]
    fn stale_requests_are_refused_and_replays_within_the_window_dropped() {
        let key = MacKey::new("s1");
        let replays = Mutex::new(ReplayGuard::new(REPLAY_MEMORY));
        let now = verge_protocol::now_ms();
        let admit = |payload: &[u8], at: u64| admit("edge-1", &key, payload, &replays, at);

        // Correctly signed, ten minutes ago: what a replay of a captured request looks like.
        let old = envelope::seal(&key, "manager-1", now - 600_000, &request(1));
        match admit(&old, now) {
            Admission::Refuse(refused, error) => {
                assert_eq!((refused.id.value(), error.code), (1, ErrorCode::Stale));
                assert!(error.message.contains("-600000 ms"), "{}", error.message);
            }
            other => panic!("a request ten minutes old was not refused as stale: {other:?}"),
        }
        // As far in the future: refused the same way.
        let ahead = envelope::seal(&key, "manager-1", now + 600_000, &request(2));
        assert!(
            matches!(admit(&ahead, now), Admission::Refuse(_, e) if e.code == ErrorCode::Stale)
        );

        // Within the window: run, once; its replay a minute later is dropped.
        let fresh = envelope::seal(&key, "manager-1", now - 5_000, &request(3));
        assert!(matches!(admit(&fresh, now), Admission::Run(r) if r.id.value() == 3));
        assert!(matches!(admit(&fresh, now + 60_000), Admission::Drop));
        // Past the window the same bytes are stale, not run again.
        assert!(matches!(
            admit(&fresh, now + 180_000),
            Admission::Refuse(_, e) if e.code == ErrorCode::Stale
        ));
        // Another's signature opens nothing.
        let forged = envelope::seal(&MacKey::new("other"), "manager-1", now, &request(4));
        assert!(matches!(admit(&forged, now), Admission::Drop));
    }
}
