//! An axum [`Router`] served over HTTP/1.1 within [`Limits`].
//!
//! - At most `max_connections` connections are served at once. The accept loop takes a permit
//!   before it accepts, so more connections wait in the kernel's listen queue, where they
//!   hold no descriptor of this process: a flood of idle connections cannot use up the
//!   process's descriptors and stop the other listeners (issue #27).
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
use tower_service::Service;

use crate::accept::{self, AcceptBackoff};
use crate::idle::{Progress, Watched};

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
                        "connection cap reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                }
            }
        };
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept::next(&listener, &mut backoff, what) => accepted,
        };
        tokio::spawn(connection(
            socket,
            peer,
            router.clone(),
            limits,
            stopping.clone(),
            permit,
        ));
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
    _permit: OwnedSemaphorePermit,
) {
    let _ = socket.set_nodelay(true);
    let progress = Progress::new();
    let io = TokioIo::new(Watched::new(socket, progress.clone()));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(request).await.unwrap_or_else(|n| match n {})) }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn start(
        limits: Limits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
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
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, "test", async {
            let _ = stopped.await;
        }));
        (addr, stop, server)
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
        let (addr, stop, server) = start(limits).await;
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
        let mut client = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(
            &mut client,
            "GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
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
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_moving_bytes_is_closed_at_the_idle_timeout() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(300),
        };
        let (addr, stop, server) = start(limits).await;
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
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_the_request_in_progress_finish() {
        let (addr, stop, server) = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
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
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
