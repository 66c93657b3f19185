//! Channel keys (LiveGo's): `POST /api/keys/{app}/{name}` returns the stream's key (issuing one
//! if needed; a body `{"agent": "edge-1"}` binds it to that agent, which alone is given it),
//! `DELETE` revokes it, `GET /api/keys` lists them. Every change reaches the agents at once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use verge_protocol::channel_keys::ChannelKey;

use crate::keys::Issued;

use super::AppState;
use super::error::ApiError;

fn checked(app: &str, name: &str) -> Result<(), ApiError> {
    for (what, part) in [("app", app), ("stream name", name)] {
        verge_protocol::id::validate_stream_part(what, part).map_err(|reason| ApiError {
            status: StatusCode::BAD_REQUEST,
            reason,
        })?;
    }
    Ok(())
}

/// Keys live in the database: while it cannot be used they cannot change (503, retry).
fn storage(e: crate::keys::KeyStoreError) -> ApiError {
    tracing::warn!(error = %e, "channel keys");
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: e.to_string(),
    }
}

/// The optional body of `POST /api/keys/{app}/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    /// The agent the key publishes into (the RTMP router sends the publisher there); only
    /// that agent is given the key.
    pub agent: Option<String>,
}

pub async fn issue(
    State(app): State<AppState>,
    Path((app_name, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    checked(&app_name, &name)?;
    let body: IssueBody = super::error::optional_json(&body, r#"{"agent": "<agent id>"}"#)?;
    if let Some(agent) = &body.agent {
        verge_protocol::id::validate(agent)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("agent {agent:?}: {e}")))?;
        if app.keys.wire.credentials.secret_of(agent).is_none() {
            return Err(ApiError::not_found(format!(
                "agent {agent:?} is not enrolled"
            )));
        }
    }
    let (key, issued) = app
        .keys
        .store
        .issue(&app_name, &name, body.agent.as_deref())
        .await
        .map_err(storage)?;
    if issued != Issued::Existing {
        tracing::info!(stream = %format!("{app_name}/{name}"), agent = ?key.agent, ?issued, "channel key issued");
        app.keys.send_to_all(&app.registry);
    }
    let status = if issued == Issued::New {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(key)).into_response())
}

pub async fn revoke(
    State(app): State<AppState>,
    Path((app_name, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    checked(&app_name, &name)?;
    if !app
        .keys
        .store
        .revoke(&app_name, &name)
        .await
        .map_err(storage)?
    {
        return Err(ApiError::not_found(format!(
            "stream {app_name}/{name} has no key"
        )));
    }
    tracing::info!(stream = %format!("{app_name}/{name}"), "channel key revoked");
    app.keys.send_to_all(&app.registry);
    Ok(StatusCode::NO_CONTENT)
}

/// The table as the database has it now (another manager may have changed it); this
/// manager's copy while the database is down.
pub async fn list(State(app): State<AppState>) -> Json<Vec<ChannelKey>> {
    if let Err(e) = app.keys.store.refresh().await {
        tracing::debug!(error = %e, "listing the keys this manager holds");
    }
    Json(app.keys.store.snapshot().keys)
}
