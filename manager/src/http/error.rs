//! API errors: a status and a one-line plain-text reason, as liveman answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::rpc::CallError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// The node did not answer (offline, timed out), was busy, or no longer has the stream
    /// (a relay that just closed): another node may serve.
    pub fn other_node_may_serve(&self) -> bool {
        matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT | StatusCode::NOT_FOUND
        )
    }

    pub fn not_found(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            reason: reason.into(),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let status = match &e {
            CallError::UnknownAgent(_) => StatusCode::NOT_FOUND,
            CallError::Offline(_) | CallError::Overloaded(_) | CallError::Link(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CallError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            CallError::Agent { error, .. } => {
                StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY)
            }
        };
        Self {
            status,
            reason: e.to_string(),
        }
    }
}

/// An optional JSON body: empty (or blank) is `T::default()`; anything else must parse, or
/// the client is told the shape it should have (`shape`, e.g. `{"agent": "<agent id>"}`).
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not {shape}: {e}"),
        )
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, format!("{}\n", self.reason)).into_response()
    }
}
