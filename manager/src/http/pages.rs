//! The pages the manager serves to a browser, built in from `assets/`:
//!
//! - `GET /`: the dashboard (`assets/dashboard.html`).
//! - `GET /play/{stream}`: a minimal player page. It plays the stream through this manager's
//!   WHEP endpoint and shows the browser's own numbers (`getStats()`), so it doubles as the
//!   quickest check that a stream reaches a browser; the dashboard's player embeds it.
//! - `GET /publish/{stream}`: the browser's camera and microphone published over WHIP.
//! - `GET /assets/webrtc.js`: what the player and publisher pages share.
//!
//! The player and the publisher are one shell (`assets/page.html`) each with its own script
//! (`assets/play.js`, `assets/publish.js`) inline.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use verge_serve::path::StreamPath;

/// The dashboard: one page, its views chosen by the URL's hash, everything it shows from this
/// API (`assets/dashboard.html`; no build step, no library).
pub async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../assets/dashboard.html"))
}

/// The player's and the publisher's page: one shell (`assets/page.html`) around each one's
/// script, filled in once.
const SHELL: &str = include_str!("../../assets/page.html");
const SCRIPT: &str = include_str!("../../assets/webrtc.js");

static PLAYER: LazyLock<String> = LazyLock::new(|| {
    fill(
        "Verge player",
        "autoplay muted playsinline controls",
        "connecting…",
        include_str!("../../assets/play.js"),
    )
});
static PUBLISHER: LazyLock<String> = LazyLock::new(|| {
    fill(
        "Verge publisher",
        "autoplay muted playsinline",
        "asking for the camera…",
        include_str!("../../assets/publish.js"),
    )
});

fn fill(title: &str, video: &str, status: &str, script: &str) -> String {
    SHELL
        .replace("%TITLE%", title)
        .replace("%VIDEO%", video)
        .replace("%STATUS%", status)
        .replace("%SCRIPT%", script)
}

/// `GET /assets/webrtc.js`: what the player and publisher pages share.
pub async fn script() -> Response {
    served("text/javascript; charset=utf-8", SCRIPT)
}

/// The page reads its stream from its own URL, so every stream is served the same bytes.
pub async fn page(_: StreamPath) -> Response {
    served("text/html; charset=utf-8", PLAYER.as_str())
}

/// `GET /publish/{stream}`: publishes the browser's camera and microphone over WHIP.
pub async fn publish_page(_: StreamPath) -> Response {
    served("text/html; charset=utf-8", PUBLISHER.as_str())
}

fn served(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mark_of_the_shell_is_filled() {
        for page in [PLAYER.as_str(), PUBLISHER.as_str()] {
            assert!(
                !page.contains("%TITLE%") && !page.contains("%SCRIPT%"),
                "{page}"
            );
            assert!(
                !page.contains("%VIDEO%") && !page.contains("%STATUS%"),
                "{page}"
            );
            assert!(page.contains("<script>\n// The "), "its script is inline");
        }
        assert!(PLAYER.contains("<video id=\"video\" autoplay muted playsinline controls>"));
        assert!(PUBLISHER.contains("run(whipUrl, auth, \"WHIP\""));
    }
}
