//! The pages the manager serves to a browser, each one file under `assets/` built in:
//!
//! - `GET /`: the dashboard (`assets/dashboard.html`).
//! - `GET /play/{stream}`: a minimal player page. It plays the stream through this manager's
//!   WHEP endpoint and shows the browser's own numbers (`getStats()`), so it doubles as the
//!   quickest check that a stream reaches a browser; the dashboard's player embeds it.
//! - `GET /publish/{stream}`: the browser's camera and microphone published over WHIP.
//! - `GET /assets/webrtc.js`: what the player and publisher pages share.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use verge_serve::path::StreamPath;

/// The dashboard: one page, its views chosen by the URL's hash, everything it shows from this
/// API (`assets/dashboard.html`; no build step, no library).
pub async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../assets/dashboard.html"))
}

const PAGE: &str = include_str!("../../assets/play.html");
const PUBLISH_PAGE: &str = include_str!("../../assets/publish.html");
const SCRIPT: &str = include_str!("../../assets/webrtc.js");

/// `GET /assets/webrtc.js`: what the player and publisher pages share.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// The page reads its stream from its own URL, so every stream is served the same bytes.
pub async fn page(_: StreamPath) -> Response {
    html()
}

/// `GET /publish/{stream}`: publishes the browser's camera and microphone over WHIP.
pub async fn publish_page(_: StreamPath) -> Response {
    page_of(PUBLISH_PAGE)
}

fn html() -> Response {
    page_of(PAGE)
}

fn page_of(page: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page,
    )
        .into_response()
}
