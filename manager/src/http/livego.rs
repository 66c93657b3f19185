//! LiveGo's control API (`gwuhaolin/livego`, `protocol/api/api.go`), for the scripts, OBS
//! guides and panels written against it: channel keys by room, issued centrally by the manager.
//!
//! - `/control/get?room={name}`: the key of `live/{name}`, issued if it has none (`&agent=`
//!   binds it to a box, as `POST /api/keys` does);
//! - `/control/reset?room={name}`: a new key; unlike LiveGo, the old one stops working at once
//!   (LiveGo keeps accepting it);
//! - `/control/delete?room={name}`: no key any more (`"Ok"`, or 404 `"room not found"`);
//! - `/stat/livestat[?room=live/{name}]`: the publishers and players of the fleet's live
//!   streams, each box's own answer (RPC `livestat`) merged and marked with its `agent`.
//!
//! Every answer is LiveGo's envelope, `{"status": N, "data": …}` with HTTP status N, any method
//! accepted, `room` from the query or a form body. LiveGo's rooms are in app `live`; publishers
//! push to `rtmp://{box or router}/live/{key}` and players read `live/{room}`, as with LiveGo.
//! Rights: `[auth]` wants a token that may write `live/{room}` (see `auth::policy::need_of`);
//! LiveGo's own JWT answers 403 where Verge answers 401/403 as for the rest of its API.

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use verge_serve::form::{FormParams, pairs};

use super::AppState;
use crate::keys::{Issued, KeyDistributor};
use crate::registry::Registry;

/// LiveGo's envelope.
fn answer(status: StatusCode, data: Value) -> Response {
    let body = json!({ "status": status.as_u16(), "data": data }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A refusal, answered in LiveGo's envelope.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        answer(self.0, json!(self.1))
    }
}

/// The room, or LiveGo's 400 with the usage line.
fn room<'a>(all: &'a FormParams, path: &str) -> Result<&'a str, Refusal> {
    let usage = || {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("url: {path}?room=<ROOM_NAME>"),
        )
    };
    let room = all.get("room").ok_or_else(usage)?;
    verge_protocol::id::validate_stream_part("room", room)
        .map_err(|why| Refusal(StatusCode::BAD_REQUEST, why))?;
    Ok(room)
}

/// The agent `&agent=` names, checked as `POST /api/keys` checks it.
fn agent<'a>(app: &AppState, all: &'a FormParams) -> Result<Option<&'a str>, Refusal> {
    let Some(agent) = all.get("agent") else {
        return Ok(None);
    };
    let enrolled = verge_protocol::id::validate(agent).is_ok()
        && app.keys.wire.credentials.secret_of(agent).is_some();
    if !enrolled {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("agent {agent:?} is not enrolled"),
        ));
    }
    Ok(Some(agent))
}

/// The room and the optional agent of a `get` or `reset` at `path`.
fn room_and_agent<'a>(
    app: &AppState,
    all: &'a FormParams,
    path: &str,
) -> Result<(&'a str, Option<&'a str>), Refusal> {
    Ok((room(all, path)?, agent(app, all)?))
}

/// What `get` and `reset` do to a room, for an optional agent.
#[derive(Clone, Copy)]
enum KeyOp {
    Get,
    Reset,
}

async fn keyed(op: KeyOp, path: &str, app: &AppState, all: &FormParams) -> Response {
    let (room, agent) = match room_and_agent(app, all, path) {
        Ok(found) => found,
        Err(r) => return r.into_response(),
    };
    reply(match op {
        KeyOp::Get => get_key(&app.keys, &app.registry, room, agent).await,
        KeyOp::Reset => reset_key(&app.keys, &app.registry, room, agent).await,
    })
}

pub async fn get(State(app): State<AppState>, all: FormParams) -> Response {
    keyed(KeyOp::Get, "/control/get", &app, &all).await
}

pub async fn reset(State(app): State<AppState>, all: FormParams) -> Response {
    keyed(KeyOp::Reset, "/control/reset", &app, &all).await
}

pub async fn delete(State(app): State<AppState>, all: FormParams) -> Response {
    match room(&all, "/control/delete") {
        Ok(room) => reply(delete_key(&app.keys, &app.registry, room).await),
        Err(r) => r.into_response(),
    }
}

fn reply((status, data): (StatusCode, Value)) -> Response {
    answer(status, data)
}

/// Keys live in the database: while it cannot be used they cannot change (503, retry).
fn storage_error(e: crate::keys::KeyStoreError) -> (StatusCode, Value) {
    tracing::warn!(error = %e, "channel keys");
    (StatusCode::SERVICE_UNAVAILABLE, json!(e.to_string()))
}

/// `get`: the key of `live/{room}`, issued (bound to `agent` when given) if it has none.
/// Also what a box's `/control/get` does, through [`crate::calls`].
pub(crate) async fn get_key(
    keys: &KeyDistributor,
    registry: &Registry,
    room: &str,
    agent: Option<&str>,
) -> (StatusCode, Value) {
    match keys.store.issue("live", room, agent).await {
        Ok((key, issued)) => {
            if issued != Issued::Existing {
                tracing::info!(stream = %format!("live/{room}"), agent = ?key.agent, ?issued, "channel key issued (LiveGo API)");
                keys.send_to_all(registry);
            }
            (StatusCode::OK, json!(key.key))
        }
        Err(e) => storage_error(e),
    }
}

/// `reset`: a new key for `live/{room}`; the binding stays unless `agent` moves it.
pub(crate) async fn reset_key(
    keys: &KeyDistributor,
    registry: &Registry,
    room: &str,
    agent: Option<&str>,
) -> (StatusCode, Value) {
    let bound = agent
        .map(str::to_string)
        .or_else(|| keys.store.bound_agent("live", room));
    let replaced = match keys.store.revoke("live", room).await {
        Ok(_) => keys.store.issue("live", room, bound.as_deref()).await,
        Err(e) => Err(e),
    };
    match replaced {
        Ok((key, _)) => {
            tracing::info!(stream = %format!("live/{room}"), agent = ?key.agent, "channel key reset (LiveGo API)");
            keys.send_to_all(registry);
            (StatusCode::OK, json!(key.key))
        }
        Err(e) => storage_error(e),
    }
}

/// `delete`: no key for `live/{room}` any more.
pub(crate) async fn delete_key(
    keys: &KeyDistributor,
    registry: &Registry,
    room: &str,
) -> (StatusCode, Value) {
    match keys.store.revoke("live", room).await {
        Ok(true) => {
            tracing::info!(stream = %format!("live/{room}"), "channel key revoked (LiveGo API)");
            keys.send_to_all(registry);
            (StatusCode::OK, json!("Ok"))
        }
        Ok(false) => (StatusCode::NOT_FOUND, json!("room not found")),
        Err(e) => storage_error(e),
    }
}

/// Boxes asked at once by `/stat/livestat`.
const LIVESTAT_FANOUT: usize = 16;
/// How long one box may take to answer it.
const LIVESTAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `/stat/livestat`: asks the online boxes that hold live streams (only the holders of
/// `?room=`'s stream when given), at most [`LIVESTAT_FANOUT`] at once and
/// [`LIVESTAT_TIMEOUT`] each; a box that does not answer is left out and logged.
pub async fn livestat(State(app): State<AppState>, RawQuery(query): RawQuery) -> Response {
    use verge_protocol::livestat::{self, LiveStat};
    let all = FormParams(pairs(query.as_deref().unwrap_or_default()).collect());
    let room = all.get("room").map(str::to_string);
    let holders: Vec<String> = app
        .registry
        .list()
        .into_iter()
        .filter(|r| r.online())
        .filter(|r| {
            r.state.as_ref().is_some_and(|s| {
                s.streams
                    .iter()
                    .any(|i| room.as_deref().is_none_or(|room| i.id() == room))
            })
        })
        .map(|r| r.id)
        .collect();
    if room.is_some() && holders.is_empty() {
        return answer(StatusCode::NOT_FOUND, json!("room not found or inactive"));
    }
    let params = json!(livestat::Params {
        stream: room.clone()
    });
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(LIVESTAT_FANOUT));
    let mut calls = tokio::task::JoinSet::new();
    for agent in holders {
        let (rpc, params, permits) = (app.rpc.clone(), params.clone(), permits.clone());
        calls.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = rpc
                .call(&agent, livestat::METHOD, params, LIVESTAT_TIMEOUT)
                .await;
            (agent, result)
        });
    }
    let answers = calls.join_all().await;
    let mut merged = LiveStat::default();
    for (agent, result) in answers {
        match result.map(serde_json::from_value::<LiveStat>) {
            Ok(Ok(stat)) => merged.merge(&agent, stat),
            Ok(Err(e)) => {
                tracing::warn!(%agent, error = %e, "livestat: an answer that does not read")
            }
            Err(e) => tracing::warn!(%agent, error = %e, "livestat: left out"),
        }
    }
    merged
        .publishers
        .sort_by(|a, b| (&a.key, &a.agent).cmp(&(&b.key, &b.agent)));
    merged
        .players
        .sort_by(|a, b| (&a.key, &a.agent, a.stream_id).cmp(&(&b.key, &b.agent, b.stream_id)));
    answer(StatusCode::OK, json!(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_a_stream_name() {
        let Err(Refusal(status, usage)) = room(&FormParams::default(), "/control/get") else {
            panic!("no room, no usage line")
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(usage, "url: /control/get?room=<ROOM_NAME>");
        let bad = FormParams(vec![("room".to_string(), "a b".to_string())]);
        assert!(matches!(
            room(&bad, "/control/get"),
            Err(Refusal(StatusCode::BAD_REQUEST, _))
        ));
    }
}
