//! Our presence and state on their retained topics: announced after every (re)connect and on
//! every state change, and put back when someone replaces them. The healers that decide when a
//! topic was damaged and when to repair it are sans-IO ([`crate::heal`]); this file feeds them
//! what we published and what the broker shows, and publishes their repairs.

use std::sync::Arc;

use rumqttc::{QoS, SubscribeFilter};
use tokio::sync::watch;
use verge_protocol::envelope::{self, Message};
use verge_protocol::presence::{ANNOUNCE_AT_MOST_EVERY_MS, AnnounceRequest, Presence, Status};
use verge_protocol::state::State;

use super::Shared;
use crate::heal::{Healer, Seen};

/// One healer per retained topic of ours.
#[derive(Default)]
pub(super) struct Healers {
    pub(super) presence: Healer,
    pub(super) state: Healer,
}

/// After every (re)connect: subscribe and announce; on every state change: republish the
/// state; when a manager asks (`asked` changes, see [`on_ask`]): both again, at most once per
/// [`ANNOUNCE_AT_MOST_EVERY_MS`]. What it publishes is what the healers compare their topics
/// with.
pub(super) async fn announce(
    shared: Arc<Shared>,
    mut connected: watch::Receiver<u64>,
    mut asked: watch::Receiver<u64>,
) {
    let mut state_rx = shared.state.subscribe();
    let mut announced_generation = 0u64;
    let mut published: Option<(u64, u64)> = None;
    let mut last_asked: Option<tokio::time::Instant> = None;
    loop {
        let mut again = false;
        tokio::select! {
            changed = connected.changed() => if changed.is_err() { return },
            changed = state_rx.changed() => if changed.is_err() { return },
            changed = asked.changed() => {
                if changed.is_err() {
                    return;
                }
                // Several managers asking at once (or someone replaying a request) cost one
                // announcement per interval.
                let every = std::time::Duration::from_millis(ANNOUNCE_AT_MOST_EVERY_MS);
                if let Some(last) = last_asked {
                    tokio::time::sleep_until(last + every).await;
                }
                asked.borrow_and_update();
                last_asked = Some(tokio::time::Instant::now());
                again = true;
            }
        }
        let generation = *connected.borrow_and_update();
        if generation == 0 {
            continue;
        }
        if again {
            tracing::debug!(agent = %shared.id, "a manager asked: announcing again");
            published = None;
        }
        if announced_generation != generation {
            // One filter for everything addressed to this agent (requests, keys, our own
            // presence and state, to heal them): rumqttd matches every new topic against every
            // filter, so filters per agent multiply its work across a fleet (measured with
            // examples/agent_swarm). Subscribed before we announce, so the manager's first
            // ping (~1 ms after our presence) finds us listening.
            // The fleet's ask topic rides the same SUBSCRIBE: one filter shared by every agent.
            let filters = [
                SubscribeFilter::new(shared.topics.agent_all(&shared.id), QoS::AtLeastOnce),
                SubscribeFilter::new(shared.topics.ask(), QoS::AtMostOnce),
            ];
            if let Err(e) = shared.client.subscribe_many(filters).await {
                tracing::warn!(agent = %shared.id, error = %e, "subscribe failed");
            }
            // The tunnel filter only once the tunnel was used: a filter per agent costs the
            // embedded broker work for every new topic, and its log memory.
            if shared
                .tunnel_filter
                .load(std::sync::atomic::Ordering::Acquire)
            {
                let filter = shared.topics.agent_tunnel(&shared.id);
                if let Err(e) = shared.client.subscribe(filter, QoS::AtLeastOnce).await {
                    tracing::warn!(agent = %shared.id, error = %e, "subscribe failed");
                }
            }
        }
        if announced_generation != generation || again {
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

/// A manager's request that the fleet announce itself again (`{p}/v1/ask`). Unsigned (one
/// message for the whole fleet), so [`announce`] answers at most one per interval.
pub(super) fn on_ask(shared: &Shared, asked: &watch::Sender<u64>, payload: &[u8]) {
    match AnnounceRequest::parse(payload) {
        Some(request) => {
            tracing::debug!(agent = %shared.id, manager = %request.from, "asked to announce");
            asked.send_modify(|n| *n += 1);
        }
        None => tracing::debug!(agent = %shared.id, "ignoring an ask that is not one"),
    }
}

/// What a message on our retained presence topic is to its healer: ours (its body), someone
/// else's, or the presence of a newer process with our id (a higher session), not ours to
/// overwrite.
pub(super) fn seen_presence(shared: &Shared, payload: &[u8], session: u64) -> Seen {
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
pub(super) fn seen_as<M: Message + serde::de::DeserializeOwned + serde::Serialize>(
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
pub(super) fn repair(shared: &Shared) {
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
