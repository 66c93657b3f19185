//! A WHEP viewer as the tests start one: connected, and past its first picture.

use std::time::Duration;

use verge::whep::{Viewer, ViewerOptions};

/// How long a viewer's first picture may take: ICE, DTLS and the first keyframe, however long
/// a loaded machine takes.
pub const FIRST_PICTURE: Duration = Duration::from_secs(20);

/// The runtime WHEP viewers of a test run on: two workers, as a client machine has cores to
/// spare while the processes under test use the rest.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A viewer of `url` whose first frame has come, and is a keyframe; `what` names the endpoint
/// in the panic when it refuses.
pub async fn watching(url: &str, what: &str) -> Viewer {
    let mut viewer = Viewer::connect(url, &ViewerOptions::for_url(url))
        .await
        .expect(what);
    let first = viewer
        .next_frame(FIRST_PICTURE)
        .await
        .expect("video")
        .expect("open");
    assert!(first.keyframe, "{}", viewer.stats);
    viewer
}

/// Reads `viewer`'s frames until its session ends (the stream closed: `None`), then asserts it
/// ended cleanly; panics, naming `why`, if it has not ended within `within`.
pub async fn ends(viewer: &mut Viewer, within: Duration, why: &str) {
    let end = tokio::time::timeout(within, async {
        loop {
            match viewer.next_frame(Duration::from_secs(10)).await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the session did not end {why}"));
    assert!(matches!(end, Ok(None)), "{end:?}");
}
