//! The agent's own HTTP server, for viewers on its LAN and as the baseline the manager's
//! proxied paths are measured against.
//!
//! - [`flv`]: HTTP-FLV, `GET /{app}/{name}.flv`.
//! - [`whep`]: WHEP, `POST /whep/{stream}`, `PATCH|DELETE /session/{stream}/{session}`.
//! - [`whip`]: WHIP publishers, `POST /whip/{stream}`, `PATCH|DELETE /whip-session/{stream}/{session}`.
//! - [`metrics`]: `GET /metrics`, the agent's numbers in Prometheus' text format.
//! - `GET /recordings/{*path}`: recorded files (see [`crate::record::files`]).

mod flv;
mod metrics;
mod whep;
mod whip;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use verge_media::hub::Hub;
use verge_serve::webrtc;

use crate::webrtc::Whep;

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    whep: Option<Whep>,
    stall_timeout: Duration,
    /// `[record] dir`, when this agent records.
    record_dir: Option<Arc<std::path::PathBuf>>,
    recorder: Option<crate::record::Recorder>,
    agent_id: Arc<str>,
    /// With `[rtmp] noauth = false`: a WHIP publisher must bring the stream's channel key.
    keys: Option<crate::keys::KeyTable>,
}

/// What the agent's HTTP port serves from.
pub struct Parts {
    pub agent_id: String,
    pub hub: Arc<Hub>,
    pub whep: Option<Whep>,
    pub record_dir: Option<std::path::PathBuf>,
    pub recorder: Option<crate::record::Recorder>,
    pub keys: Option<crate::keys::KeyTable>,
}

pub fn router(parts: Parts) -> Router {
    let Parts {
        agent_id,
        hub,
        whep,
        record_dir,
        recorder,
        keys,
    } = parts;
    let router = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route("/recordings/{*path}", get(recording));
    webrtc::routes(
        router,
        webrtc::Handlers {
            whep_offer: post(whep::offer).options(whep::preflight),
            whip_offer: post(whip::offer).options(whep::preflight),
            session: patch(whep::patch)
                .delete(whep::delete)
                .options(whep::preflight),
        },
    )
    .route("/{app}/{file}", get(flv::flv))
    .with_state(AppState {
        hub,
        whep,
        stall_timeout: Duration::from_secs(10),
        record_dir: record_dir.map(Arc::new),
        recorder,
        agent_id: agent_id.into(),
        keys,
    })
}

/// `GET /recordings/{*path}`: a recorded manifest or segment, with ranges.
async fn recording(
    axum::extract::State(app): axum::extract::State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    crate::record::files::serve(
        app.record_dir.as_deref().map(|p| p.as_path()),
        &path,
        &headers,
    )
    .await
}

/// A status with a one-line plain-text reason, readable from any origin.
fn plain(status: StatusCode, reason: String) -> Response {
    (
        status,
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        format!("{reason}\n"),
    )
        .into_response()
}
