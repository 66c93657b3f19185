//! live777's liveion (a WebRTC SFU node) and its WHIP publisher `whipinto`, the third-party
//! peers of the mixed-fleet tests and the cluster benchmark: the binaries in
//! `../shared/bin/` (see its README), or those named by `VERGE_LIVE777` and `VERGE_WHIPINTO`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Proc, get, request, reserve_port, wait_for};

/// Where `scripts/setup` keeps a copy of the third-party peers it found, for clones that do
/// not sit beside `shared/`.
pub const TOOLS_CACHE: &str = "/var/tmp/verge-tools/bin";

/// `var`, else `shared/bin/{name}` beside the repository or any folder above it, else the
/// setup script's copy.
fn shared_bin(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    repo.ancestors()
        .map(|a| a.join("shared/bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new(TOOLS_CACHE).join(name))
}

/// The liveion binary.
pub fn live777_path() -> PathBuf {
    shared_bin("VERGE_LIVE777", "live777")
}

/// live777's liveman, the cluster manager Verge's manager succeeds.
pub fn liveman_path() -> PathBuf {
    shared_bin("VERGE_LIVEMAN", "liveman")
}

/// The whipinto binary.
pub fn whipinto_path() -> PathBuf {
    shared_bin("VERGE_WHIPINTO", "whipinto")
}

/// A liveion node on a loopback port, with ICE on loopback and no STUN server (its default
/// is a public one).
pub struct Liveion {
    pub addr: SocketAddr,
    /// Its `[auth] tokens` entry, when it has one.
    pub token: Option<String>,
    pub proc: Proc,
}

impl Liveion {
    /// Starts liveion `name` in `dir` (its config and log there), waited for until it answers.
    /// `extra_toml` is appended to its config (sections only).
    pub fn start(dir: &Path, name: &str, token: Option<&str>, extra_toml: &str) -> Self {
        let program = live777_path();
        assert!(
            program.exists(),
            "liveion is not at {} (see ../shared/bin/README.md, or set VERGE_LIVE777)",
            program.display()
        );
        let port = reserve_port();
        let addr = port.addr();
        let auth = token.map_or(String::new(), |t| format!("[auth]\ntokens = [\"{t}\"]\n"));
        let cfg = dir.join(format!("{name}.toml"));
        // Its recordings and their index in the test's folder (liveion's defaults are relative
        // to the working directory: the repository).
        let files = dir.join(format!("{name}-files")).display().to_string();
        std::fs::write(
            &cfg,
            format!(
                "ice_servers = []\n[http]\nlisten = \"{addr}\"\n[webrtc]\nice_udp_addrs = [\"127.0.0.1:0\"]\n{auth}\
                 [recorder]\nindex_path = \"{files}/index.json\"\n\
                 [recorder.upload]\nqueue_path = \"{files}/upload_queue.jsonl\"\nlocal_dir = \"{files}\"\n\
                 [recorder.storage]\ntype = \"fs\"\nroot = \"{files}/storage\"\n{extra_toml}"
            ),
        )
        .expect("write liveion's config");
        let proc = Proc::spawn(
            name,
            &program,
            &["-c", cfg.to_str().unwrap_or_default()],
            dir,
        );
        let up = port.wait_listening(Duration::from_secs(10));
        drop(port);
        assert!(
            up && wait_for(Duration::from_secs(10), || get(addr, "/api/strategy/").ok()).is_some(),
            "liveion did not start:\n{}",
            proc.log_text()
        );
        Self {
            addr,
            token: token.map(str::to_string),
            proc,
        }
    }

    /// `GET /api/streams/` with its token: the JSON list.
    pub fn streams(&self) -> Option<serde_json::Value> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        let r = request(
            "GET",
            self.addr,
            "/api/streams/",
            &headers,
            b"",
            Duration::from_secs(5),
        )
        .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Its stream `id`, once it has a connected publisher.
    pub fn live_stream(&self, id: &str) -> Option<serde_json::Value> {
        let streams = self.streams()?;
        let s = streams.as_array()?.iter().find(|s| s["id"] == id)?.clone();
        let connected = s["publish"]["sessions"]
            .as_array()?
            .iter()
            .any(|p| p["state"] == "connected");
        connected.then_some(s)
    }
}

/// A liveman on a loopback port, managing `nodes` (`(alias, address, token)`), its database
/// in `dir`: the reference for liveman's API shapes.
pub struct Liveman {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Liveman {
    pub fn start(dir: &Path, nodes: &[(&str, SocketAddr, &str)]) -> Self {
        let program = liveman_path();
        assert!(program.exists(), "liveman is not at {}", program.display());
        let port = reserve_port();
        let addr = port.addr();
        let mut cfg = format!(
            "[http]\nlisten = \"{addr}\"\n[database]\nurl = \"sqlite://{}/liveman.db?mode=rwc\"\n",
            dir.display()
        );
        for (alias, node, token) in nodes {
            cfg.push_str(&format!(
                "[[nodes]]\nalias = \"{alias}\"\nurl = \"http://{node}\"\ntoken = \"{token}\"\n"
            ));
        }
        let path = dir.join("liveman.toml");
        std::fs::write(&path, cfg).expect("write liveman's config");
        let proc = Proc::spawn(
            "liveman",
            &program,
            &["-c", path.to_str().unwrap_or_default()],
            dir,
        );
        let up = port.wait_listening(Duration::from_secs(10));
        drop(port);
        assert!(
            up && wait_for(Duration::from_secs(10), || get(addr, "/api/nodes/").ok()).is_some(),
            "liveman did not start:\n{}",
            proc.log_text()
        );
        Self { addr, proc }
    }
}

/// whipinto publishing a test pattern: its encoder (ffmpeg, a process of its own so that it is
/// killed with the publisher: whipinto's `--command` child outlives whipinto) and whipinto.
pub struct Publisher {
    pub whipinto: Proc,
    pub ffmpeg: Proc,
}

impl Publisher {
    /// Both logs, for a failure's message.
    pub fn log_text(&self) -> String {
        format!("{}\n{}", self.whipinto.log_text(), self.ffmpeg.log_text())
    }
}

/// whipinto publishing a 640x360 25 fps H.264 test pattern (ffmpeg → RTP on loopback) to
/// `whip_url`, host candidates only.
pub fn publish(dir: &Path, label: &str, whip_url: &str, token: Option<&str>) -> Publisher {
    let program = whipinto_path();
    assert!(program.exists(), "whipinto is not at {}", program.display());
    let rtp_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port");
    let sdp = dir.join(format!("{label}.sdp"));
    let _ = std::fs::remove_file(&sdp);
    let rtp = format!("rtp://127.0.0.1:{rtp_port}?pkt_size=1200");
    let sdp_arg = sdp.display().to_string();
    let mut args = crate::edge::lavfi_inputs(true, &["testsrc=size=640x360:rate=25"]);
    args.extend(
        [
            "-vcodec",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "25",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "baseline",
            "-f",
            "rtp",
            &rtp,
            "-sdp_file",
            &sdp_arg,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ffmpeg = Proc::spawn(
        &format!("{label}-ffmpeg"),
        crate::edge::tool("ffmpeg"),
        &args,
        dir,
    );
    let written = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&sdp)
            .ok()
            .filter(|t| t.contains("m=video"))
    });
    assert!(
        written.is_some(),
        "ffmpeg wrote no SDP:\n{}",
        ffmpeg.log_text()
    );
    let mut args = vec!["-v", "-i", &sdp_arg, "-w", whip_url, "--ice-server", ""];
    if let Some(t) = token {
        args.extend(["-t", t]);
    }
    let whipinto = Proc::spawn(label, &program, &args, dir);
    Publisher { whipinto, ffmpeg }
}
