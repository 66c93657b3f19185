//! Run-time recording control, carried to the agent by RPC (liveman's routes):
//! `POST /api/record/{stream}` starts, `DELETE` stops, `GET` tells the state
//! (`{stream, agent, wanted, state, error, segments, bytes}`). `{stream}` is `{name}` (app
//! `live`) or `{app}/{name}`.
//!
//! The agent: the one holding the stream if it is live; else `?agent={id}`; else the agent its
//! channel key is bound to; else the only online agent. Otherwise 400 asks for `?agent=`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::Value;
use verge_protocol::index::{
    METHOD_RECORD_START, METHOD_RECORD_STATE, METHOD_RECORD_STOP, RecordParams,
};

use super::AppState;
use super::error::ApiError;

type Params = Query<HashMap<String, String>>;

fn agent_for(
    app: &AppState,
    stream: &str,
    query: &HashMap<String, String>,
) -> Result<String, ApiError> {
    if let Ok(agent) = super::streams::locate(app, stream) {
        return Ok(agent);
    }
    if let Some(agent) = query.get("agent") {
        verge_protocol::id::validate(agent)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("agent {agent:?}: {e}")))?;
        return Ok(agent.clone());
    }
    let (app_name, name) = stream.split_once('/').unwrap_or(("live", stream));
    let bound = app
        .keys
        .store
        .snapshot()
        .keys
        .into_iter()
        .find(|k| k.app == app_name && k.name == name)
        .and_then(|k| k.agent);
    if let Some(agent) = bound {
        return Ok(agent);
    }
    let online: Vec<String> = app
        .registry
        .list()
        .into_iter()
        .filter(|r| r.online())
        .map(|r| r.id)
        .collect();
    match online.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{stream} is not live and {} agents are online: name one with ?agent={{id}}",
                online.len()
            ),
        )),
    }
}

fn stream_of(stream_app: &str, name: &str) -> Result<String, ApiError> {
    for (what, part) in [("app", stream_app), ("name", name)] {
        verge_protocol::id::validate_stream_part(what, part)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    Ok(format!("{stream_app}/{name}"))
}

async fn call(
    app: &AppState,
    stream: &str,
    query: &HashMap<String, String>,
    method: &str,
) -> Result<Json<Value>, ApiError> {
    let agent = agent_for(app, stream, query)?;
    let params = serde_json::to_value(RecordParams {
        stream: stream.to_string(),
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut value = app
        .rpc
        .call(&agent, method, params, app.rpc_timeout)
        .await?;
    if let Some(object) = value.as_object_mut() {
        object.insert("agent".into(), Value::String(agent));
    }
    Ok(Json(value))
}

macro_rules! handlers {
    ($method:expr, $in_live:ident, $in_app:ident) => {
        pub async fn $in_live(
            State(app): State<AppState>,
            Path(name): Path<String>,
            Query(query): Params,
        ) -> Result<Json<Value>, ApiError> {
            call(&app, &stream_of("live", &name)?, &query, $method).await
        }

        pub async fn $in_app(
            State(app): State<AppState>,
            Path((stream_app, name)): Path<(String, String)>,
            Query(query): Params,
        ) -> Result<Json<Value>, ApiError> {
            call(&app, &stream_of(&stream_app, &name)?, &query, $method).await
        }
    };
}

handlers!(METHOD_RECORD_START, start_in_live, start);
handlers!(METHOD_RECORD_STOP, stop_in_live, stop);
handlers!(METHOD_RECORD_STATE, state_in_live, state);
