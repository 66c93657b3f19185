//! An axum [`Router`] served over HTTP/1.1 within [`Limits`].
//!
//! - At most `max_connections` connections are served at once. The accept loop takes a permit
//!   before it accepts, so more connections wait in the kernel's listen queue, where they
//!   hold no descriptor of this process: a flood of idle connections cannot use up the
//!   process's descriptors and stop the other listeners (issue #27).
//! - At the cap, the connection that has been quiet longest — no request in progress, no byte
//!   moved for at least [`EVICT_AFTER_QUIET`] — is closed to make room: slowloris and idle
//!   connections go first, a client whose request is being served or whose stream is flowing
//!   never. So a flood that fills every slot delays a new client by an accept, not by the
//!   header timeout.
//! - `header_timeout`: from the moment a connection is accepted, or has answered a request
//!   and waits for the next one (keep-alive), its next request's headers must be complete
//!   within this time (hyper's header-read timeout), or it is closed. Slowloris holds a slot
//!   for this long, no longer.
//! - `idle_timeout`: a connection on which no byte moves either way for this long is closed,
//!   in whatever state (see [`crate::idle`]).
//!
//! Each request carries the peer's address as axum's `ConnectInfo<SocketAddr>`. When
//! `shutdown` completes, the listener closes, each connection finishes the request it is
//! serving and closes, and [`serve`] returns once every connection has.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::accept::{self, AcceptBackoff};
use crate::idle::{Progress, Watched};

/// How long a connection with no request in progress must have moved no byte before it may be
/// closed to make room for a new one: a stream flowing, or a client between two requests of a
/// page, is never that quiet.
pub const EVICT_AFTER_QUIET: Duration = Duration::from_secs(1);

/// One connection as the accept loop sees it, to choose whom to close at the cap.
struct Tracked {
    progress: Arc<Progress>,
    /// Requests whose handler is running.
    active: std::sync::atomic::AtomicUsize,
    close: CancellationToken,
}

/// The connections being served, by a number of their own.
#[derive(Default)]
struct Connections {
    next: u64,
    all: std::collections::HashMap<u64, Arc<Tracked>>,
}

impl Connections {
    fn add(&mut self, tracked: Arc<Tracked>) -> u64 {
        self.next += 1;
        self.all.insert(self.next, tracked);
        self.next
    }

    /// Closes the connection that has been quiet longest, if one has been quiet for at least
    /// [`EVICT_AFTER_QUIET`] with no request in progress. Whether one was closed.
    fn evict_quietest(&mut self, now: tokio::time::Instant) -> bool {
        let quietest = self
            .all
            .iter()
            .filter(|(_, c)| c.active.load(std::sync::atomic::Ordering::Relaxed) == 0)
            .map(|(id, c)| (c.progress.last(), *id))
            .filter(|(last, _)| now.saturating_duration_since(*last) >= EVICT_AFTER_QUIET)
            .min();
        let Some((_, id)) = quietest else {
            return false;
        };
        if let Some(tracked) = self.all.remove(&id) {
            tracked.close.cancel();
        }
        true
    }
}

/// What one HTTP listener allows its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// For a request's headers, counted from the accept or the previous response.
    pub header_timeout: Duration,
    /// With no byte moving either way.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The limits of an `[http]` section (agent.toml, manager.toml, which keep the keys in
    /// their own `HttpConfig` so that a bad key is reported with the section's list): each at
    /// least 1.
    pub fn from_config(
        max_connections: usize,
        header_timeout_secs: u64,
        idle_timeout_secs: u64,
    ) -> Self {
        Self {
            max_connections: max_connections.max(1),
            header_timeout: Duration::from_secs(header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(idle_timeout_secs.max(1)),
        }
    }
}

/// Serves `router` on `listener` (named `what` in the log) until `shutdown` completes, then
/// lets the requests in progress finish and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
) {
    // acquire_many takes a u32.
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let (stop, stopping) = watch::channel(false);
    let mut backoff = AcceptBackoff::default();
    let mut full = false;
    let connections = Arc::new(std::sync::Mutex::new(Connections::default()));
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                full = false;
                permit
            }
            Err(_) => {
                if !full {
                    full = true;
                    tracing::warn!(
                        listener = what,
                        max_connections = max,
                        "connection cap reached; the quietest connections make room, or new \
                         ones wait until one closes"
                    );
                }
                // Room from the quietest connection, if one is quiet enough; its permit comes
                // back as its task ends.
                connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .evict_quietest(tokio::time::Instant::now());
                tokio::select! {
                    _ = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                    // Connections grow quiet while we wait: look again.
                    _ = tokio::time::sleep(EVICT_AFTER_QUIET / 4) => continue,
                }
            }
        };
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept::next(&listener, &mut backoff, what) => accepted,
        };
        let tracked = Arc::new(Tracked {
            progress: Progress::new(),
            active: Default::default(),
            close: CancellationToken::new(),
        });
        let id = connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(tracked.clone());
        let connections = connections.clone();
        let (router, stopping) = (router.clone(), stopping.clone());
        tokio::spawn(async move {
            connection(socket, peer, router, limits, stopping, tracked, permit).await;
            connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .all
                .remove(&id);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every permit back: every connection closed.
    let _ = permits.acquire_many(max as u32).await;
}

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    tracked: Arc<Tracked>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = socket.set_nodelay(true);
    let progress = tracked.progress.clone();
    let io = TokioIo::new(Watched::new(socket, progress.clone()));
    let in_service = tracked.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        let tracked = in_service.clone();
        async move {
            // Not to be closed for room while its handler runs (a stream's body then keeps
            // its bytes moving).
            tracked
                .active
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let response = router.call(request).await.unwrap_or_else(|n| match n {});
            tracked
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = http1.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = *stopping.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = progress.quiet_for(limits.idle_timeout) => {
                tracing::debug!(%peer, timeout = ?limits.idle_timeout, "HTTP connection idle; closed");
                return;
            }
            _ = tracked.close.cancelled() => {
                tracing::debug!(%peer, "quietest HTTP connection closed to make room");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn config_limits_are_at_least_one() {
        let limits = Limits::from_config(0, 0, 5);
        assert_eq!(limits.max_connections, 1);
        assert_eq!(limits.header_timeout, Duration::from_secs(1));
        assert_eq!(limits.idle_timeout, Duration::from_secs(5));
    }

    /// A server under test: its address, and how to stop it.
    struct Running {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Running {
        /// Begins the graceful shutdown.
        fn stop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }

        /// Stops the server; it must be done within `within`.
        async fn stopped_within(mut self, within: Duration) {
            self.stop();
            tokio::time::timeout(within, self.server)
                .await
                .expect("the server stops in time")
                .expect("the server's task");
        }
    }

    async fn start(limits: Limits) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/echo",
                axum::routing::post(|body: String| async move { body }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route(
                "/hold",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    "held"
                }),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, "test", async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            server,
        }
    }

    /// `GET /peer` on a connection of its own, which the server closes after answering.
    async fn get_peer(addr: SocketAddr) -> (TcpStream, String) {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let request = "GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = exchange(&mut client, request).await;
        (client, answer)
    }

    /// Sends `request` and reads until the server closes (or 5 s pass).
    async fn exchange(stream: &mut TcpStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Whether the server closes `stream` within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(within, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slowloris_is_closed_at_the_header_timeout_and_the_cap_holds_the_rest() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(30),
        };
        let running = start(limits).await;
        let addr = running.addr;
        let mut slow = Vec::new();
        for _ in 0..8 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            slow.push(s);
        }
        // Four are served at once and closed at 300 ms, then the other four: all gone in
        // about 600 ms, and a real request behind them is answered.
        let started = Instant::now();
        let (client, answer) = get_peer(addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with(&client.local_addr().unwrap().to_string()),
            "ConnectInfo: {answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        for s in &mut slow {
            assert!(
                closed_within(s, Duration::from_secs(3)).await,
                "slowloris still open"
            );
        }
        running.stopped_within(Duration::from_secs(3)).await;
    }

    /// The probe's flood, in small: every slot held by slowloris and idle connections for
    /// longer than the header timeout allows a newcomer to wait. The quietest make room: a new
    /// client is answered at once, and a client whose request is in progress is not closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_cap_the_quietest_connection_makes_room_for_a_new_one() {
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        };
        let running = start(limits).await;
        let addr = running.addr;
        // A client whose request takes 2 s holds one slot, the quietest of all (no byte moves
        // while its handler runs), yet is not closed.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut flood = Vec::new();
        for n in 0..20 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if n % 2 == 0 {
                s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap();
            }
            flood.push(s);
        }
        tokio::time::sleep(EVICT_AFTER_QUIET + Duration::from_millis(300)).await;
        for round in 0..3 {
            let started = Instant::now();
            let (_client, answer) = get_peer(addr).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            // Well under the 30 s header timeout the slots would otherwise be held for.
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "round {round}: {:?}",
                started.elapsed()
            );
        }
        let mut answer = String::new();
        busy.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.ends_with("held"),
            "the request in progress was cut: {answer}"
        );
        drop(flood);
        running.stopped_within(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_moving_bytes_is_closed_at_the_idle_timeout() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(300),
        };
        let running = start(limits).await;
        let addr = running.addr;
        // Headers done, a body promised and never sent: only the idle timeout ends it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            .await
            .unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        running.stopped_within(Duration::from_secs(3)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_the_request_in_progress_finish() {
        let mut running = start(Limits::default()).await;
        let addr = running.addr;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        running.stop();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );
        running.stopped_within(Duration::from_secs(3)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
