//! Network namespaces for NAT tests, made without names (nothing under `/run/netns` to leak): each
//! [`Node`] is a `sleep` in a namespace of its own (`unshare -n`), reached with `nsenter`, and
//! gone with its process. Links are veth pairs; the namespace the test runs in (itself a private
//! one, see [`super::chromium::in_private_netns`]) is the "internet": a bridge `wan0`.
//!
//! Root only (bridges, veths, nftables).

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Node {
    child: Child,
}

impl Node {
    pub fn new() -> Self {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare -n (util-linux)");
        let node = Self { child };
        // Until unshare has run, the process is still in our namespace.
        let ours = std::fs::read_link("/proc/self/ns/net").ok();
        let theirs = format!("/proc/{}/ns/net", node.pid());
        for _ in 0..200 {
            let link = std::fs::read_link(&theirs).ok();
            if link.is_some() && link != ours {
                node.run(&["ip", "link", "set", "lo", "up"]);
                return node;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the namespace of a new node never came up");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `program args…` inside this namespace, as a command to spawn.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-n"])
            .arg(program)
            .args(args);
        c
    }

    /// The arguments that run a program in here: `nsenter -t {pid} -n`.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            "-t".into(),
            self.pid().to_string(),
            "-n".into(),
        ]
    }

    /// Runs a setup command in here; fails the test with its output if it fails.
    pub fn run(&self, args: &[&str]) {
        let out = self
            .command(Path::new(args[0]), &args[1..])
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{args:?} in namespace {}: {}",
            self.pid(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a setup command here (the "internet").
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair: `outside` on the internet bridge `wan0`, `inside` in the namespace of `pid`.
fn veth_to_wan(outside: &str, inside: &str, pid: u32) {
    run(&[
        "ip",
        "link",
        "add",
        outside,
        "type",
        "veth",
        "peer",
        "name",
        inside,
        "netns",
        &pid.to_string(),
    ]);
    run(&["ip", "link", "set", outside, "master", "wan0", "up"]);
}

/// A home network behind a NAT that lets it connect out only: a router node (its WAN side on
/// the `wan0` bridge at `wan_ip`, masquerading) and a host node at `{lan}.2` behind it (router
/// `{lan}.1`, a /24). Nothing on the internet has a route to the LAN.
///
/// `Nat::PortPreserving` keeps a flow's source port where it can (Linux's masquerade, most home
/// routers): what a STUN server saw is what every peer sees. `Nat::Symmetric` gives each new
/// flow a random port (carrier-grade NATs, many 4G uplinks): an address learnt through STUN
/// is useless to anyone else, so only a TURN relay connects.
pub struct Home {
    pub router: Node,
    pub host: Node,
    pub host_ip: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    PortPreserving,
    Symmetric,
}

impl Home {
    pub fn new(name: &str, wan_ip: &str, lan: &str, nat: Nat) -> Self {
        let router = Node::new();
        let host = Node::new();
        let host_pid = host.pid().to_string();
        veth_to_wan(&format!("{name}-wan"), "wan", router.pid());
        router.run(&["ip", "addr", "add", &format!("{wan_ip}/24"), "dev", "wan"]);
        router.run(&["ip", "link", "set", "wan", "up"]);
        router.run(&[
            "ip", "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &host_pid,
        ]);
        router.run(&["ip", "addr", "add", &format!("{lan}.1/24"), "dev", "lan"]);
        router.run(&["ip", "link", "set", "lan", "up"]);
        router.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        // Out through the masquerade; in, only answers to what the LAN started. Nor does
        // anything new reach the router itself, as on a home router: an unsolicited packet
        // accepted there would leave a connection-tracking entry behind that makes the
        // masquerade give a later outgoing flow to the same peer another port.
        let random = if nat == Nat::Symmetric { "random" } else { "" };
        let rules = format!(
            "table ip nat {{
               chain post {{ type nat hook postrouting priority 100 ; oifname \"wan\" masquerade {random} ; }}
             }}
             table ip filter {{
               chain inbound {{
                 type filter hook forward priority 0 ; policy drop ;
                 iifname \"lan\" accept
                 ct state established,related accept
               }}
               chain to_router {{
                 type filter hook input priority 0 ; policy accept ;
                 iifname \"wan\" ct state new drop
               }}
             }}"
        );
        router.run(&["sh", "-c", "printf '%s\\n' \"$0\" | nft -f -", &rules]);
        let host_ip = format!("{lan}.2");
        host.run(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", "eth0"]);
        host.run(&["ip", "link", "set", "eth0", "up"]);
        host.run(&["ip", "route", "add", "default", "via", &format!("{lan}.1")]);
        Self {
            router,
            host,
            host_ip,
        }
    }
}

/// A host on the internet bridge at `ip` (a /24), whose sending is shaped to `mbit` (tbf on
/// its end of the link, with 200 ms of queue as a cellular modem holds): a box on a thin
/// uplink. This kernel may have no netem, so a delay is not added here.
pub struct Uplink {
    pub node: Node,
    pub ip: String,
}

impl Uplink {
    pub fn new(name: &str, ip: &str, mbit: Option<u32>) -> Self {
        let node = Node::new();
        veth_to_wan(&format!("{name}-up"), "eth0", node.pid());
        node.run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        node.run(&["ip", "link", "set", "eth0", "up"]);
        if let Some(mbit) = mbit {
            let rate = format!("{mbit}mbit");
            node.run(&[
                "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "32kb",
                "latency", "200ms",
            ]);
        }
        Self {
            node,
            ip: ip.to_string(),
        }
    }

    /// Bytes this host has sent up its link so far (its `eth0` in `/proc/{pid}/net/dev`, which
    /// shows the process's own namespace; `/sys/class/net` would show the reader's).
    pub fn sent_bytes(&self) -> u64 {
        let dev = std::fs::read_to_string(format!("/proc/{}/net/dev", self.node.pid()))
            .unwrap_or_default();
        dev.lines()
            .find_map(|l| l.trim_start().strip_prefix("eth0:"))
            .and_then(|counters| counters.split_whitespace().nth(8)?.parse().ok())
            .unwrap_or(0)
    }
}

/// The internet side: the bridge `wan0` with `ip` (a /24) in the test's own namespace.
pub fn internet(ip: &str) {
    run(&["ip", "link", "add", "wan0", "type", "bridge"]);
    run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "wan0"]);
    run(&["ip", "link", "set", "wan0", "up"]);
}
