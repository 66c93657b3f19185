//! The manager's HTTP API as the CLI calls it: one request, a deadline, JSON back.

use std::time::Duration;

use serde_json::Value;

use crate::whep::http::{HttpUrl, request_with};

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub enum CallError {
    /// The manager answered with an error status.
    Refused { status: u16, reason: String },
    /// No answer: connection refused, timeout, not HTTP.
    Unreachable(String),
}

pub struct Api {
    base: HttpUrl,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    pub fn new(manager: &str, token: Option<String>) -> Result<Self, String> {
        let base = HttpUrl::parse(manager.trim_end_matches('/')).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            base,
            token,
            runtime,
        })
    }

    /// The manager's host, for the URLs printed.
    pub fn host(&self) -> &str {
        &self.base.host
    }

    /// `method path` with an optional JSON body; the JSON answer (null for an empty body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Value, CallError> {
        let url = self
            .base
            .with_path(path)
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let content_type = body.map(|_| "application/json");
        let response = self
            .runtime
            .block_on(request_with(
                method,
                &url,
                &headers,
                content_type,
                body.unwrap_or_default(),
                TIMEOUT,
            ))
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if !(200..300).contains(&response.status) {
            return Err(CallError::Refused {
                status: response.status,
                reason: response.text().trim().to_string(),
            });
        }
        if response.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&response.body).map_err(|e| CallError::Refused {
            status: response.status,
            reason: format!("not JSON: {e}"),
        })
    }
}
