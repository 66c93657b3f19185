//! `POST /api/agents` `{"id": "edge-7"}` (the id optional) → 201 `{"id", "secret"}`, the
//! secret shown this once; `DELETE /api/agents/{id}` → 204 (see [`crate::agents`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::agents::EnrolError;

use super::AppState;
use super::error::ApiError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolBody {
    id: Option<String>,
}

fn refused(e: EnrolError) -> ApiError {
    let status = match &e {
        EnrolError::BadId(_) => StatusCode::BAD_REQUEST,
        EnrolError::Exists(_) | EnrolError::Revoked(_) => StatusCode::CONFLICT,
        EnrolError::Unknown(_) => StatusCode::NOT_FOUND,
        EnrolError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

pub async fn enrol(State(app): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: EnrolBody = super::error::optional_json(&body, r#"{"id": "<agent id>"}"#)?;
    let enrolled = app.enrolment.enrol(body.id).await.map_err(refused)?;
    Ok((StatusCode::CREATED, Json(enrolled)).into_response())
}

pub async fn revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.enrolment.revoke(&id).await.map_err(refused)?;
    Ok(StatusCode::NO_CONTENT)
}
