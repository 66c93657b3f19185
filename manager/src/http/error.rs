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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, format!("{}\n", self.reason)).into_response()
    }
}
