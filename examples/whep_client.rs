//! Watches a WHEP URL and prints what arrived:
//!
//! ```text
//! cargo run --release --example whep_client -- http://127.0.0.1:8080/whep/cam --seconds 10
//! frames=300 keyframes=5 bytes=1843211 first_frame_ms=118 width=1280 height=720 ...
//! ```
//!
//! It is a real WebRTC viewer (webrtc 0.21) that offers to receive H.264, reassembles access
//! units from RTP and reads the picture size from the SPS. At the end it DELETEs the session.
//! Exit status 1 if no complete frame arrived.

use std::time::Duration;

use verge::whep::{Viewer, ViewerOptions};

fn usage() -> ! {
    eprintln!("usage: whep_client URL [--seconds N]  (URL: http://host:port/whep/{{stream}})");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut seconds = 10u64;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ if url.is_none() => url = Some(arg),
            _ => usage(),
        }
    }
    let Some(url) = url else { usage() };
    let mut viewer = match Viewer::connect(&url, &ViewerOptions::for_url(&url)).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("whep_client: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("whep_client: session {}", viewer.session_url.path);
    let ended = match viewer.watch(Duration::from_secs(seconds)).await {
        Ok(ended) => ended,
        Err(e) => {
            eprintln!("whep_client: {e}");
            false
        }
    };
    if ended {
        eprintln!("whep_client: the server ended the session");
    } else if let Err(e) = viewer.delete().await {
        eprintln!("whep_client: DELETE failed: {e}");
    }
    println!("{}", viewer.stats);
    viewer.close().await;
    if viewer.stats.frames == 0 {
        std::process::exit(1);
    }
}
