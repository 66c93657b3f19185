//! The agent's own HTTP server, for viewers on its LAN and as the baseline the manager's
//! proxied paths are measured against.
//!
//! - [`flv`]: HTTP-FLV, `GET /{app}/{name}.flv`.
//! - [`whep`]: WHEP, `POST /whep/{stream}`, `PATCH|DELETE /session/{stream}/{session}`.
//! - [`whip`]: WHIP publishers, `POST /whip/{stream}`, `PATCH|DELETE /whip-session/{stream}/{session}`.
//! - [`metrics`]: `GET /metrics`, the agent's numbers in Prometheus' text format.
//! - [`control`]: LiveGo's `/control/get|reset|delete?room=`, asked of the manager.
//! - `GET /stat/livestat[?room=live/cam]`: LiveGo's list of publishers and players
//!   ([`crate::livestat`]), in LiveGo's envelope `{"status": 200, "data": …}`.
//! - `GET /recordings/{*path}`: recorded files (see [`crate::record::files`]).

mod control;
mod flv;
mod metrics;
mod whep;
mod whip;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
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
    calls: crate::calls::ManagerCalls,
    uploads: std::sync::Arc<crate::record::upload::UploadStats>,
}

/// What the agent's HTTP port serves from.
pub struct Parts {
    pub agent_id: String,
    pub hub: Arc<Hub>,
    pub whep: Option<Whep>,
    pub record_dir: Option<std::path::PathBuf>,
    pub recorder: Option<crate::record::Recorder>,
    pub keys: Option<crate::keys::KeyTable>,
    /// For LiveGo's `/control/*`, which the manager answers.
    pub calls: crate::calls::ManagerCalls,
    /// The uploads to storage, for `/metrics`.
    pub uploads: std::sync::Arc<crate::record::upload::UploadStats>,
}

pub fn router(parts: Parts) -> Router {
    let Parts {
        agent_id,
        hub,
        whep,
        record_dir,
        recorder,
        keys,
        calls,
        uploads,
    } = parts;
    let router = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route("/stat/livestat", get(livestat))
        .route("/control/get", any(control::get))
        .route("/control/reset", any(control::reset))
        .route("/control/delete", any(control::delete))
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
        calls,
        uploads,
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

/// `GET /stat/livestat`: as LiveGo, every stream, or the one `?room=` names in LiveGo's
/// `live/{name}` form (404 `"room not found or inactive"` when it is not live).
async fn livestat(
    axum::extract::State(app): axum::extract::State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let room = query.as_deref().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, v)| *k == "room" && !v.is_empty())
            .map(|(_, v)| v.replace("%2F", "/").replace("%2f", "/"))
    });
    let (status, data) = match room {
        Some(room) if !app.hub.is_live(&room) => (
            StatusCode::NOT_FOUND,
            serde_json::json!("room not found or inactive"),
        ),
        room => (
            StatusCode::OK,
            serde_json::to_value(crate::livestat::collect(&app.hub, room.as_deref()))
                .unwrap_or_default(),
        ),
    };
    let body = serde_json::json!({ "status": status.as_u16(), "data": data }).to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
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
