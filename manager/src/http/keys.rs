//! Channel keys (LiveGo's): `POST /api/keys/{app}/{name}` returns the stream's key (issuing one
//! if needed), `DELETE` revokes it, `GET /api/keys` lists them. Every change reaches the agents
//! at once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use verge_protocol::keys::ChannelKey;

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

fn storage(e: crate::keys::KeyStoreError) -> ApiError {
    tracing::error!(error = %e, "key store");
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        reason: e.to_string(),
    }
}

pub async fn issue(
    State(app): State<AppState>,
    Path((app_name, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    checked(&app_name, &name)?;
    let (key, new) = app.keys.store.issue(&app_name, &name).map_err(storage)?;
    if new {
        tracing::info!(stream = %format!("{app_name}/{name}"), "channel key issued");
        app.keys.send_to_all(&app.registry);
    }
    let status = if new {
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
    if !app.keys.store.revoke(&app_name, &name).map_err(storage)? {
        return Err(ApiError::not_found(format!(
            "stream {app_name}/{name} has no key"
        )));
    }
    tracing::info!(stream = %format!("{app_name}/{name}"), "channel key revoked");
    app.keys.send_to_all(&app.registry);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(State(app): State<AppState>) -> Json<Vec<ChannelKey>> {
    Json(app.keys.store.snapshot().keys)
}
