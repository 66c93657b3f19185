//! How Verge's servers take connections, shared by the agent and the manager.
//!
//! - [`client`]: HTTP/1.1 requests to other servers (over TLS with ring), bounded in time and
//!   size.
//! - [`accept`]: accepting when accept fails (out of descriptors, out of memory): a pause that
//!   doubles, and a log line when an episode begins and one when it ends, never one per
//!   failure. [`accept::AcceptBackoff`] is the state, [`accept::next`] the loop around it.
//! - [`idle`]: a socket that notes when bytes last moved, and the wait for it to go quiet.
//! - [`listen`]: a listener whose accept queue is sized for a burst ([`BACKLOG`]).
//! - [`http`]: an axum [`Router`](axum::Router) served over HTTP/1.1 with [`http::Limits`]:
//!   a cap on connections (more wait in the kernel's queue, holding no descriptor), a
//!   header-read timeout (also the keep-alive wait for the next request) and an idle timeout
//!   (no byte either way); graceful shutdown.
//! - [`form`]: form values of a query or an urlencoded body, `%XX` decoded, and
//!   [`form::FormParams`], both of a request as an axum extractor.
//! - [`path`]: the stream a path names, `{name}` (app `live`) or `{app}/{name}`, as an axum
//!   extractor ([`path::StreamPath`], [`path::SessionPath`]).
//! - [`range`]: single HTTP byte ranges (`bytes=a-b`), for recorded files.
//! - [`webrtc`]: the WHEP and WHIP route table, each path in both forms.
//!
//! A request's path: [`http::serve`] takes a permit for the connection, then
//! [`accept::next`] a socket; the connection's task serves it with hyper, the peer's address
//! going into each request as axum's `ConnectInfo<SocketAddr>`, until the peer closes, a
//! timeout closes it, or shutdown lets its last request finish; the permit then goes back.

pub mod accept;
pub mod client;
pub mod form;
pub mod http;
pub mod idle;
pub mod path;
pub mod range;
pub mod webrtc;

/// The accept queue of Verge's listeners. `TcpListener::bind` listens with std's 128: a burst
/// (a fleet's players after a restart, a flood the connection cap holds back) overflows it,
/// and a dropped SYN is retried only after a second. The kernel caps it at
/// `net.core.somaxconn` (4096 on current kernels).
pub const BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with a [`BACKLOG`]-deep accept queue (`SO_REUSEADDR`, as
/// `TcpListener::bind` sets it).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
