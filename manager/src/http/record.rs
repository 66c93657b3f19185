//! Run-time recording control, carried to the agent by RPC (liveman's routes):
//! `POST /api/record/{stream}` starts, `DELETE` stops, `GET` tells the state
//! (`{stream, agent, wanted, state, error, segments, bytes}`). `{stream}` is `{name}` (app
//! `live`) or `{app}/{name}`.
//!
//! The agent: the one holding the stream if it is live; else `?agent={id}`; else the agent its
//! channel key is bound to; else the only online agent. Otherwise 400 asks for `?agent=`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde_json::Value;
use verge_protocol::index::{
    METHOD_RECORD_START, METHOD_RECORD_STATE, METHOD_RECORD_STOP, RecordParams,
};
use verge_serve::path::StreamPath;

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
    let bound = app.keys.store.bound_agent(app_name, name);
    if let Some(agent) = bound {
        return Ok(agent);
    }
    let online = app.registry.online_ids();
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

async fn handle(
    app: &AppState,
    stream: &StreamPath,
    query: &HashMap<String, String>,
    method: &str,
) -> Result<Json<Value>, ApiError> {
    call(app, &stream_of(&stream.app, &stream.name)?, query, method).await
}

pub async fn start(
    State(app): State<AppState>,
    stream: StreamPath,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    handle(&app, &stream, &query, METHOD_RECORD_START).await
}

pub async fn stop(
    State(app): State<AppState>,
    stream: StreamPath,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    handle(&app, &stream, &query, METHOD_RECORD_STOP).await
}

pub async fn state(
    State(app): State<AppState>,
    stream: StreamPath,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    handle(&app, &stream, &query, METHOD_RECORD_STATE).await
}
