//! A long, shaped link between the test (the "cloud") and a box in a network namespace of its
//! own, for the tunnel's tests and `tunnel_bench --link`: what a box on a real uplink has and
//! loopback does not, a round trip and a rate.
//!
//! - **Rate**: a veth pair, `tbf` on each end's egress (cloud → box on the outer end, box →
//!   cloud on the box's `eth0`).
//! - **Delay**: this kernel may have no `netem`, so the delay is added in user space:
//!   [`DelayProxy`] relays TCP between the box and a server in the cloud and holds each
//!   direction's bytes for half the round trip. The box dials the proxy's address on the link;
//!   its bytes cross the shaped veth, wait in the proxy, and reach the server on loopback.
//!   Every TCP flow through the link (MQTT, or a direct transfer as the baseline) is thereby
//!   split at the proxy, which is what a path's baseline should be: TCP on the link reaches
//!   its rate whatever the delay, so "direct TCP" is the link's own rate.
//!
//! Sockets inside the box's namespace ([`LinkedBox::bind`], [`LinkedBox::connect`]) are made
//! by a thread that enters it for the call: a socket stays in the namespace it was made in.
//!
//! Root only (veths, tc). Everything is gone with the box's namespace.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::netns::{self, Node};
use crate::{Listeners, Proc};

/// A box at the end of a shaped link.
pub struct LinkedBox {
    pub node: Node,
    /// The cloud's address on the link (this namespace's end).
    pub cloud_ip: Ipv4Addr,
    /// The box's address on the link.
    pub box_ip: Ipv4Addr,
    pub rtt: Duration,
    pub mbit: u32,
}

/// Links made by this process: each gets its own /30 and veth name.
static LINKS: AtomicU32 = AtomicU32::new(0);

impl LinkedBox {
    /// A box whose link to here carries `mbit` Mbit/s each way; `rtt` is added by the
    /// [`DelayProxy`]s the caller starts with [`LinkedBox::delay_to`].
    pub fn new(rtt: Duration, mbit: u32) -> Self {
        let n = LINKS.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 4000) * 16 + n % 16;
        let (a, b) = ((tag >> 6) as u8, ((tag & 63) << 2) as u8);
        let cloud_ip = Ipv4Addr::new(10, 231, a, b + 1);
        let box_ip = Ipv4Addr::new(10, 231, a, b + 2);
        let outside = format!("vlk{tag}");
        let node = Node::new();
        netns::run(&[
            "ip",
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &node.pid().to_string(),
        ]);
        netns::run(&[
            "ip",
            "addr",
            "add",
            &format!("{cloud_ip}/30"),
            "dev",
            &outside,
        ]);
        netns::run(&["ip", "link", "set", &outside, "up"]);
        node.run(&["ip", "addr", "add", &format!("{box_ip}/30"), "dev", "eth0"]);
        node.run(&["ip", "link", "set", "eth0", "up"]);
        let shape = tbf(mbit);
        let shape: Vec<&str> = shape.iter().map(String::as_str).collect();
        netns::run(&[&["tc", "qdisc", "add", "dev", &outside, "root"], &shape[..]].concat());
        node.run(&[&["tc", "qdisc", "add", "dev", "eth0", "root"], &shape[..]].concat());
        Self {
            node,
            cloud_ip,
            box_ip,
            rtt,
            mbit,
        }
    }

    /// A [`DelayProxy`] on the cloud's end of the link to `upstream` (a server here): the box
    /// reaches `upstream` by dialling the returned address, half the round trip each way.
    pub async fn delay_to(&self, upstream: SocketAddr) -> SocketAddr {
        let listen = SocketAddr::V4(SocketAddrV4::new(self.cloud_ip, 0));
        // Each direction holds what the path holds (rate × one-way delay) and a little more:
        // a proxy that buffered without bound would hide a queue in the link.
        let rate = u64::from(self.mbit) * 1_000_000 / 8;
        let line = (rate as f64 * self.rtt.as_secs_f64() / 2.0) as usize + 256 * 1024;
        DelayProxy::start(listen, upstream, self.rtt / 2, line).await
    }

    /// Starts a Verge process inside the box, as [`Proc::spawn_ready`] does here.
    pub fn spawn_ready(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        log_dir: &Path,
    ) -> (Proc, Listeners) {
        let wrapper = self.node.wrapper();
        let program = program.to_str().expect("a UTF-8 binary path");
        let mut all: Vec<&str> = wrapper[1..].iter().map(String::as_str).collect();
        all.push(program);
        all.extend(args);
        Proc::spawn_ready(name, Path::new(&wrapper[0]), &all, log_dir)
    }

    /// A listener inside the box, at `addr` (its loopback or its link address).
    pub fn bind(&self, addr: SocketAddr) -> std::net::TcpListener {
        self.inside(move || std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in the box: {e}"))
    }

    /// A connection from inside the box to `addr`.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        self.inside(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
    }

    /// Runs `f` on a thread that entered the box's network namespace.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.node.pid()))
            .expect("the box's namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: `ns` is an open namespace file; setns changes only this
                    // thread's network namespace, and the thread ends after `f`.
                    let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("the namespace thread")
        })
    }
}

/// tbf's arguments for `mbit`: a bucket of a hundredth of a second's bytes (at least 32 KiB,
/// what tbf needs at this kernel's timer rate) and up to 50 ms of queue.
fn tbf(mbit: u32) -> Vec<String> {
    let burst = (u64::from(mbit) * 1_000_000 / 8 / 100).max(32 * 1024);
    vec![
        "tbf".into(),
        "rate".into(),
        format!("{mbit}mbit"),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "50ms".into(),
    ]
}

/// A TCP relay that delays each direction by `one_way`, holding at most `line` bytes per
/// direction (then it stops reading, and the sender's TCP waits).
pub struct DelayProxy;

impl DelayProxy {
    /// Listens on `listen` (port 0 picks one) and relays each connection to `upstream`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        one_way: Duration,
        line: usize,
    ) -> SocketAddr {
        let server = TcpListener::bind(listen).await.expect("delay proxy bind");
        let addr = server.local_addr().expect("delay proxy address");
        tokio::spawn(async move {
            while let Ok((inbound, _)) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(Ok(outbound)) =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream))
                            .await
                    else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::spawn(delay_line(in_read, out_write, one_way, line));
                    tokio::spawn(delay_line(out_read, in_write, one_way, line));
                });
            }
        });
        addr
    }
}

/// Bytes read from `from`, written to `to` `delay` later, at most `line` bytes waiting.
async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    line: usize,
) {
    let room = Arc::new(Semaphore::new(line));
    // Bounded in bytes by the permits, and in chunks (small ones: MQTT packets) by this.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(line / 1024 + 1);
    let writer = {
        let room = room.clone();
        tokio::spawn(async move {
            while let Some((due, bytes)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
                room.add_permits(bytes.len());
            }
            let _ = to.shutdown().await;
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(permit) = room.clone().acquire_many_owned(n as u32).await else {
            break;
        };
        permit.forget();
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
