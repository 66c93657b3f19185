//! A real clustered MQTT broker for tests: RabbitMQ (Debian's `rabbitmq-server`, 3.10) with its
//! MQTT plugin, several nodes on loopback joined into one cluster, each node in a folder of
//! the test's, on ports of its own, with the users the test names.
//!
//! Why RabbitMQ: it installs from Debian in seconds, and it is the clustered broker that keeps
//! the fewest promises a Verge fleet could meet: retained messages stay on the node they were
//! published on, and a wildcard subscription gets none of them, so a manager that relied on
//! retained presence would see an empty fleet. Its MQTT plugin tracks client ids with Raft,
//! which RabbitMQ's documentation says needs a majority of nodes; measured here, the survivor
//! of a two-node cluster whose other node was killed keeps accepting connections (it
//! registers client ids asynchronously), which is what `tests/managers.rs` relies on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Proc, reserve_port, wait_for};

/// How long a node may take to boot (an Erlang VM on a loaded 2-core machine).
const BOOT: Duration = Duration::from_secs(120);

pub struct RabbitNode {
    /// The Erlang node name (`{label}{n}@localhost`).
    pub name: String,
    /// Its MQTT listener.
    pub mqtt: SocketAddr,
    pid_file: PathBuf,
    server: Option<Proc>,
}

pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
    /// Holds the Erlang cookie the nodes and `rabbitmqctl` share.
    home: PathBuf,
}

impl RabbitCluster {
    /// `count` nodes in `dir`, clustered, with `users` (name, password) allowed everything;
    /// returns once every node's MQTT listener accepts one of them.
    pub fn start(dir: &Path, count: usize, users: &[(&str, &str)]) -> Self {
        assert!(count >= 1 && !users.is_empty());
        let home = dir.join("erlang-home");
        std::fs::create_dir_all(&home).expect("erlang home");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("verge-test-{}", std::process::id())).expect("cookie");
        set_mode(&cookie, 0o400);
        let label = format!("verge{}x", std::process::id());
        let mut nodes = Vec::new();
        for n in 1..=count {
            let folder = dir.join(format!("rabbit{n}"));
            std::fs::create_dir_all(&folder).expect("node folder");
            // Free ports, released just before the node binds them.
            let (amqp, dist, mqtt) = (reserve_port(), reserve_port(), reserve_port());
            std::fs::write(
                folder.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = {}\nmqtt.listeners.tcp.default = {}\n\
                     mqtt.allow_anonymous = false\nloopback_users = none\n\
                     mqtt.tcp_listen_options.nodelay = true\n\
                     disk_free_limit.absolute = 50MB\nlog.console = false\n",
                    amqp.addr(),
                    mqtt.addr()
                ),
            )
            .expect("rabbitmq.conf");
            let name = format!("{label}{n}@localhost");
            let pid_file = folder.join("pid");
            let (amqp_port, dist_port) = (
                amqp.addr().port().to_string(),
                dist.addr().port().to_string(),
            );
            let mqtt_addr = mqtt.addr();
            drop((amqp, dist, mqtt));
            let env = [
                ("HOME", home.display().to_string()),
                ("RABBITMQ_NODENAME", name.clone()),
                ("RABBITMQ_NODE_PORT", amqp_port),
                ("RABBITMQ_DIST_PORT", dist_port),
                (
                    "RABBITMQ_MNESIA_BASE",
                    folder.join("db").display().to_string(),
                ),
                (
                    "RABBITMQ_LOG_BASE",
                    folder.join("log").display().to_string(),
                ),
                (
                    "RABBITMQ_CONFIG_FILE",
                    folder.join("rabbitmq").display().to_string(),
                ),
                ("RABBITMQ_ENABLED_PLUGINS", "rabbitmq_mqtt".to_string()),
                ("RABBITMQ_PID_FILE", pid_file.display().to_string()),
                // A node that dies in its start writes its dump here, not in the test's cwd.
                (
                    "ERL_CRASH_DUMP",
                    folder.join("erl_crash.dump").display().to_string(),
                ),
                // Erlang's port mapper and distribution on loopback only.
                ("ERL_EPMD_ADDRESS", "127.0.0.1".to_string()),
                (
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                    "-kernel inet_dist_use_interface {127,0,0,1}".to_string(),
                ),
            ];
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let server = Proc::spawn_with_env(&format!("rabbit{n}"), &server_bin(), &[], dir, &env);
            nodes.push(RabbitNode {
                name,
                mqtt: mqtt_addr,
                pid_file,
                server: Some(server),
            });
        }
        let cluster = Self { nodes, home };
        // `await_startup` fails at once while the node is not yet known to the port mapper.
        for node in &cluster.nodes {
            let up = wait_for(BOOT, || {
                cluster
                    .try_ctl(&node.name, &["await_startup", "--timeout", "10"])
                    .ok()
            });
            assert!(up.is_some(), "RabbitMQ node {} did not start", node.name);
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            cluster.ctl(&node.name, &["stop_app"]);
            cluster.ctl(&node.name, &["reset"]);
            cluster.ctl(&node.name, &["join_cluster", &first]);
            cluster.ctl(&node.name, &["start_app"]);
        }
        cluster.add_users(users);
        let (user, password) = users[0];
        for node in &cluster.nodes {
            let accepted = wait_for(BOOT, || {
                mqtt_connects(node.mqtt, user, password).then_some(())
            });
            assert!(
                accepted.is_some(),
                "RabbitMQ node {} never accepted MQTT connections",
                node.name
            );
        }
        cluster
    }

    /// Adds a user allowed everything (an agent enrolled during the test).
    pub fn add_user(&self, user: &str, password: &str) {
        self.add_users(&[(user, password)]);
    }

    /// Users are cluster-wide: one call on any live node adds them all.
    fn add_users(&self, users: &[(&str, &str)]) {
        let adds: Vec<String> = users
            .iter()
            .map(|(user, password)| {
                format!(
                    "rabbit_auth_backend_internal:add_user(<<\"{user}\">>, <<\"{password}\">>, \
                     <<\"verge-test\">>), rabbit_auth_backend_internal:set_permissions(\
                     <<\"{user}\">>, <<\"/\">>, <<\".*\">>, <<\".*\">>, <<\".*\">>, \
                     <<\"verge-test\">>)"
                )
            })
            .collect();
        let node = self
            .nodes
            .iter()
            .find(|n| n.server.is_some())
            .expect("a live node");
        self.ctl(&node.name, &["eval", &format!("{}, ok.", adds.join(", "))]);
    }

    /// Kills node `node` (SIGKILL to its Erlang VM): its connections drop without a goodbye.
    pub fn kill(&mut self, node: usize) {
        let node = &mut self.nodes[node];
        if let Some(pid) = read_pid(&node.pid_file) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Before it wrote its pid file, the VM is found by its node name (unique to this test
        // process): the start script does not always run it as its own process.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &node.name])
            .output();
        if let Some(server) = node.server.take() {
            server.signal("KILL");
            let _ = server.terminate(Duration::from_secs(5));
        }
    }

    /// `rabbitmqctl -n {node} args…`, which must succeed.
    fn ctl(&self, node: &str, args: &[&str]) {
        if let Err(why) = self.try_ctl(node, args) {
            panic!("{why}");
        }
    }

    /// `rabbitmqctl -n {node} args…`; why not, when it fails.
    fn try_ctl(&self, node: &str, args: &[&str]) -> Result<(), String> {
        let started = Instant::now();
        let out = Command::new(ctl_bin())
            .args(["-n", node])
            .args(args)
            .current_dir(&self.home)
            .env("ERL_CRASH_DUMP", self.home.join("erl_crash.dump"))
            .env("HOME", &self.home)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .output()
            .map_err(|e| format!("run rabbitmqctl: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "rabbitmqctl -n {node} {args:?} failed after {:?}: {}{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            self.kill(n);
        }
        // The port mapper the first node started (only these tests run Erlang here).
        let _ = Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .output();
    }
}

fn server_bin() -> PathBuf {
    let bin = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    assert!(
        bin.exists(),
        "RabbitMQ is not installed: run scripts/setup (Debian's rabbitmq-server)"
    );
    bin
}

fn ctl_bin() -> PathBuf {
    PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmqctl")
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Whether an MQTT 3.1.1 CONNECT as `user` is accepted (CONNACK return code 0).
pub fn mqtt_connects(addr: SocketAddr, user: &str, password: &str) -> bool {
    let Ok(mut socket) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    let field = |bytes: &[u8]| {
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    };
    let mut body = field(b"MQTT");
    // Level 4, flags: username, password, clean session; keepalive 10 s.
    body.extend_from_slice(&[4, 0b1100_0010, 0, 10]);
    body.extend(field(format!("probe-{}", std::process::id()).as_bytes()));
    body.extend(field(user.as_bytes()));
    body.extend(field(password.as_bytes()));
    assert!(body.len() < 128, "one byte of remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let mut connack = [0u8; 4];
    let accepted = socket.write_all(&packet).is_ok()
        && socket.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20
        && connack[3] == 0;
    let _ = socket.write_all(&[0xe0, 0]);
    accepted
}
