//! The embedded broker's listen backlog, sized for a fleet.
//!
//! rumqttd binds its listeners itself, through tokio and mio, which listen with std's backlog
//! of 128. A burst of connecting agents (a fleet reconnecting after a manager restart) overflows
//! that queue, the kernel drops SYNs, and clients retry only after a second: 300 agents
//! connecting at once took 2.47 s instead of 0.46 s. Linux lets `listen()` be called again on a
//! listening socket to change its backlog, and the broker runs in this process, so its socket
//! is ours to find: the one listening on the broker's address. The kernel caps the backlog at
//! `net.core.somaxconn` (4096 on current kernels).

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Sets the backlog of this process's socket listening on `addr` to `backlog`. `Ok(false)`
/// when no such socket is found (the listener is not up yet, or not in this process).
pub fn raise(addr: SocketAddr, backlog: u32) -> std::io::Result<bool> {
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        if is_listening_on(fd, addr) {
            // SAFETY: `fd` is open in this process (listed just now) and a listening TCP
            // socket; `listen` on it changes only its queue length.
            if unsafe { libc::listen(fd, backlog) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `fd` is a socket listening on `addr`.
fn is_listening_on(fd: RawFd, addr: SocketAddr) -> bool {
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the out-pointers point at locals of the sizes given; a descriptor that is not a
    // socket (or was closed meanwhile) makes the call fail, which is handled.
    let is_socket = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0;
    if !is_socket || listening == 0 {
        return false;
    }
    local_addr(fd) == Some(addr)
}

/// The address `fd` is bound to, if it is an IPv4 or IPv6 socket.
fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: `storage` is large enough for any socket address and `len` says so; the kernel
    // writes at most `len` bytes and the family tells which layout it wrote.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                let v4 = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
            }
            libc::AF_INET6 => {
                let v6 = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
                Some(SocketAddr::from((ip, u16::from_be(v6.sin6_port))))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length of a listening socket's accept queue, as the kernel reports it: `ss -ltn`'s
    /// Send-Q for a listener (iproute2, which scripts/setup installs).
    fn queue_limit(addr: SocketAddr) -> Option<u32> {
        let filter = format!("sport = :{}", addr.port());
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &filter])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // State, Recv-Q, Send-Q, local address, peer address.
        text.lines()
            .find(|line| line.contains(&addr.to_string()))?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }

    #[test]
    fn a_listening_socket_of_this_process_gets_the_backlog_asked_for() {
        // std listens with a backlog of 128, as rumqttd's listener does.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(queue_limit(addr), Some(128));
        assert!(raise(addr, 1000).unwrap());
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        assert_eq!(queue_limit(addr), Some(1000.min(somaxconn)));
        // A bound socket that does not listen (a port reservation) is not taken for it.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let elsewhere = other.local_addr().unwrap();
        drop(other);
        assert!(!raise(elsewhere, 1000).unwrap());
    }
}
