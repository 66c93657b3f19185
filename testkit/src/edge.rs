//! A manager and one agent as real processes on loopback, and ffmpeg publishing to it: the
//! fixture the RTMP, WHEP and browser tests share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ANY_PORT, Listeners, Proc, READY_TIMEOUT, TempDir, bin, get, listener, wait_for};

/// Extra TOML for the fixture's config files.
#[derive(Debug, Clone, Default)]
pub struct EdgeOptions {
    /// false: the agent requires channel keys.
    pub noauth: bool,
    /// Appended to `manager.toml` (top-level keys must come first there, so use sections).
    pub manager_toml: String,
    /// Appended to `agent.toml`. In both, `{dir}` stands for the fixture's temporary folder.
    pub agent_toml: String,
    /// `[mqtt] rpc_timeout_ms` of the manager.
    pub rpc_timeout_ms: Option<u64>,
    /// A folder (under the fixture's) that the agent sees as a tmpfs of this size, e.g.
    /// `("small", "400k")`: the agent runs in a mount namespace of its own (`unshare -rm`), so
    /// a test can fill a disk without touching the machine's.
    pub agent_tmpfs: Option<(&'static str, &'static str)>,
    /// The manager's `DATABASE_URL` (default: SQLite in the fixture's folder, kept across
    /// [`Edge::start_manager`]).
    pub database_url: Option<String>,
    /// The embedded broker's address (default: any port). A test that restarts the manager
    /// passes a reserved port, so the agent finds the broker again.
    pub broker_listen: Option<SocketAddr>,
    /// A token of the manager's `[auth] tokens`: the fixture's own API calls carry it.
    pub api_token: Option<String>,
    /// `RUST_LOG` of the manager and the agent (default: the testkit's), e.g. `debug` for a
    /// test that reads their logs for what must never be there.
    pub rust_log: Option<String>,
}

impl EdgeOptions {
    /// The defaults with `noauth = true`: the agent takes any publisher.
    pub fn noauth() -> Self {
        Self {
            noauth: true,
            ..Self::default()
        }
    }

    /// `toml` appended to `manager.toml`.
    pub fn manager(mut self, toml: &str) -> Self {
        self.manager_toml.push_str(toml);
        self
    }

    /// `toml` appended to `agent.toml`.
    pub fn agent(mut self, toml: &str) -> Self {
        self.agent_toml.push_str(toml);
        self
    }

    /// The embedded broker on `addr` (a reserved port, so a restarted manager keeps it).
    pub fn broker(mut self, addr: SocketAddr) -> Self {
        self.broker_listen = Some(addr);
        self
    }

    /// The fixture's own API calls carry `token` (one of the manager's `[auth] tokens`).
    pub fn token(mut self, token: &str) -> Self {
        self.api_token = Some(token.to_string());
        self
    }
}

pub struct Edge {
    pub manager_http: SocketAddr,
    /// Everything the manager bound (its ready file).
    pub manager_listeners: Listeners,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    /// The agent's live HLS listener.
    pub hls: SocketAddr,
    pub manager: Proc,
    pub agent: Proc,
    pub agent_cfg: PathBuf,
    pub manager_cfg: PathBuf,
    /// The manager's `DATABASE_URL`.
    pub database_url: String,
    pub api_token: Option<String>,
    /// Last: fields drop in order, and a failing test's processes print their logs from here.
    pub dir: TempDir,
}

impl Edge {
    /// A manager with its embedded broker and an agent `edge-1`, both on ports they chose
    /// (reported in their ready files), waited for until the agent is online.
    pub fn start(label: &str, opts: &EdgeOptions) -> Self {
        let dir = TempDir::new(label);
        let rpc_timeout = opts
            .rpc_timeout_ms
            .map(|ms| format!("[mqtt]\nrpc_timeout_ms = {ms}\n"))
            .unwrap_or_default();
        let manager_cfg = dir.write(
            "manager.toml",
            &format!(
                "[http]\nlisten = \"{ANY_PORT}\"\n[broker]\nlisten = \"{}\"\n\
                 [keys]\nfile = \"{}\"\n[[agents]]\nid = \"edge-1\"\nsecret = \"s1\"\n{rpc_timeout}{}",
                opts.broker_listen
                    .map_or(ANY_PORT.to_string(), |a| a.to_string()),
                dir.path().join("keys.json").display(),
                opts.manager_toml.replace("{dir}", &dir.path().display().to_string())
            ),
        );
        let database_url = opts
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/manager.db?mode=rwc", dir.path().display()));
        let log_env: Vec<(&str, &str)> = opts
            .rust_log
            .as_deref()
            .map(|filter| ("RUST_LOG", filter))
            .into_iter()
            .collect();
        let (manager, manager_listeners) = Proc::spawn_ready_with_env(
            "manager",
            &bin("verge-manager"),
            &["--config", manager_cfg.to_str().unwrap_or_default()],
            dir.path(),
            &[&[("DATABASE_URL", database_url.as_str())], &log_env[..]].concat(),
        );
        let (manager_http, mqtt) = (
            listener(&manager_listeners, "http"),
            listener(&manager_listeners, "mqtt"),
        );
        let agent_cfg = dir.write(
            "agent.toml",
            &format!(
                "id = \"edge-1\"\nsecret = \"s1\"\n[mqtt]\nurl = \"mqtt://{mqtt}\"\n\
                 [rtmp]\nlisten = \"{ANY_PORT}\"\nnoauth = {}\n[http]\nlisten = \"{ANY_PORT}\"\n[hls]\nlisten = \"{ANY_PORT}\"\n\
                 [webrtc]\nudp_ips = [\"127.0.0.1\"]\n{}",
                opts.noauth,
                opts.agent_toml.replace("{dir}", &dir.path().display().to_string())
            ),
        );
        let agent_bin = bin("verge-agent");
        let (agent, bound) = match opts.agent_tmpfs {
            None => Proc::spawn_ready_with_env(
                "agent",
                &agent_bin,
                &["--config", agent_cfg.to_str().unwrap_or_default()],
                dir.path(),
                &log_env,
            ),
            Some((folder, size)) => {
                let mount_point = dir.path().join(folder);
                std::fs::create_dir_all(&mount_point).expect("tmpfs mount point");
                let script = format!(
                    "mount -t tmpfs -o size={size} tmpfs '{}' && exec \"$0\" \"$@\"",
                    mount_point.display()
                );
                Proc::spawn_ready_with_env(
                    "agent",
                    Path::new("unshare"),
                    &[
                        "-rm",
                        "sh",
                        "-c",
                        &script,
                        agent_bin.to_str().unwrap_or_default(),
                        "--config",
                        agent_cfg.to_str().unwrap_or_default(),
                    ],
                    dir.path(),
                    &log_env,
                )
            }
        };
        // The agent itself: liveion nodes (`[[nodes]]`) are listed with an `online` too.
        let online = wait_for(READY_TIMEOUT, || {
            let nodes = get(manager_http, &with_token("/api/nodes/", &opts.api_token))
                .ok()?
                .json();
            let mut nodes = nodes.as_array()?.iter();
            nodes
                .any(|n| n["alias"] == "edge-1" && n["kind"] == "verge" && n["online"] == true)
                .then_some(())
        });
        assert!(
            online.is_some(),
            "agent did not come online:\n{}",
            agent.log_text()
        );
        wait_for_database(manager_http);
        Self {
            dir,
            manager_http,
            manager_listeners,
            rtmp: listener(&bound, "rtmp"),
            http: listener(&bound, "http"),
            hls: listener(&bound, "hls"),
            manager,
            agent,
            agent_cfg,
            manager_cfg,
            database_url,
            api_token: opts.api_token.clone(),
        }
    }

    /// Stops the manager (SIGTERM) and waits for it to exit; its broker goes with it.
    pub fn stop_manager(&mut self) {
        self.manager.signal("TERM");
        let exited = wait_for(READY_TIMEOUT, || self.manager.exited().then_some(()));
        assert!(exited.is_some(), "the manager did not exit on SIGTERM");
    }

    /// Stops the agent (SIGTERM) and waits for it to exit.
    pub fn stop_agent(&mut self) {
        self.agent.signal("TERM");
        let exited = wait_for(Duration::from_secs(15), || {
            self.agent.exited().then_some(())
        });
        assert!(exited.is_some(), "agent did not exit on SIGTERM");
    }

    /// Stops the agent and starts it again with the same configuration (`label` names its
    /// log); its ports may change.
    pub fn restart_agent(&mut self, label: &str) {
        self.stop_agent();
        let (agent, bound) = Proc::spawn_ready(
            label,
            &bin("verge-agent"),
            &["--config", self.agent_cfg.to_str().unwrap()],
            self.dir.path(),
        );
        self.agent = agent;
        self.rtmp = listener(&bound, "rtmp");
        self.http = listener(&bound, "http");
        self.hls = listener(&bound, "hls");
    }

    /// Starts the manager again with the same configuration and database (`label` names its
    /// log); its HTTP port may change, the broker's stays if `broker_listen` was given.
    pub fn start_manager(&mut self, label: &str) {
        let (manager, listeners) = Proc::spawn_ready_with_env(
            label,
            &bin("verge-manager"),
            &["--config", self.manager_cfg.to_str().unwrap_or_default()],
            self.dir.path(),
            &[("DATABASE_URL", &self.database_url)],
        );
        self.manager = manager;
        self.manager_http = listener(&listeners, "http");
        self.manager_listeners = listeners;
        wait_for_database(self.manager_http);
    }

    /// ffmpeg publishing a synthetic H.264 + AAC stream (`size` e.g. `640x360`, `fps`, a
    /// keyframe every `gop` frames) in real time for `seconds` to `live/{name}`.
    pub fn publish(&self, label: &str, name: &str, media: &Synthetic) -> Proc {
        self.publish_to(label, &format!("rtmp://{}/live/{name}", self.rtmp), media)
    }

    /// [`Edge::publish`] to any RTMP URL (a port forward, the manager's router).
    pub fn publish_to(&self, label: &str, url: &str, media: &Synthetic) -> Proc {
        let args = publish_args(url, media);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(label, tool("ffmpeg"), &args, self.dir.path())
    }

    /// [`Edge::publish`], then [`Edge::wait_live`]: the publisher of a stream on air.
    pub fn on_air(&self, label: &str, name: &str, media: &Synthetic) -> Proc {
        let publisher = self.publish(label, name, media);
        self.wait_live(name, &publisher);
        publisher
    }

    /// Waits (30 s at most) until the manager lists `live/{name}` with its picture size, so
    /// the agent has read the codec; panics with `publisher`'s and the agent's logs if not.
    pub fn wait_live(&self, name: &str, publisher: &Proc) -> serde_json::Value {
        wait_for(Duration::from_secs(30), || {
            self.listed_stream(name).filter(|s| s["width"].is_u64())
        })
        .unwrap_or_else(|| {
            panic!(
                "live/{name} never went live:\n{}\n{}",
                publisher.log_text(),
                self.agent.log_text()
            )
        })
    }

    /// ffmpeg reading `url` (RTMP, HTTP-FLV, HLS) and decoding it into nothing: `frames`
    /// video frames, or all until the stream ends.
    pub fn decode(&self, label: &str, url: &str, frames: Option<u32>) -> Proc {
        let mut args = vec!["-nostdin", "-hide_banner", "-loglevel", "error", "-i", url];
        let frames = frames.map(|n| n.to_string());
        if let Some(n) = &frames {
            args.extend(["-frames:v", n]);
        }
        args.extend(["-f", "null", "-"]);
        Proc::spawn(label, tool("ffmpeg"), &args, self.dir.path())
    }

    /// Issues the channel key of `live/{name}` bound to edge-1 (with the fixture's API token)
    /// and publishes with it until the agent, which learns keys over MQTT a moment later,
    /// takes it; returns the publisher (once the manager lists the stream) and the key.
    pub fn publish_with_key(&self, label: &str, name: &str, media: &Synthetic) -> (Proc, String) {
        let bearer = self.api_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("Authorization", b))
            .into_iter()
            .collect();
        let issued = super::request(
            "POST",
            self.manager_http,
            &format!("/api/keys/live/{name}"),
            &headers,
            br#"{"agent": "edge-1"}"#,
            std::time::Duration::from_secs(10),
        )
        .expect("POST /api/keys");
        let key = issued.json()["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no key issued: {}", issued.text()))
            .to_string();
        let url = format!("rtmp://{}/live/{key}", self.rtmp);
        let publisher = wait_for(READY_TIMEOUT, || {
            let publisher = self.publish_to(label, &url, media);
            wait_for(std::time::Duration::from_secs(5), || {
                self.listed_stream(name)
            })
            .map(|_| publisher)
        })
        .unwrap_or_else(|| panic!("{name} never went live with its key"));
        (publisher, key)
    }

    /// Starts a cloud node (`[node] role = "cloud"`, the agent binary) named `id` on the
    /// fixture's broker; the manager's config must enrol it with `secret` (`[[agents]]`).
    pub fn start_cloud_node(&self, id: &str, secret: &str) -> Proc {
        let mqtt = listener(&self.manager_listeners, "mqtt");
        let cfg = self.dir.write(
            &format!("{id}.toml"),
            &format!(
                "id = \"{id}\"\nsecret = \"{secret}\"\n[node]\nrole = \"cloud\"\n\
                 [mqtt]\nurl = \"mqtt://{mqtt}\"\n[rtmp]\nlisten = \"{ANY_PORT}\"\n\
                 [http]\nlisten = \"{ANY_PORT}\"\n[hls]\nlisten = \"{ANY_PORT}\"\n\
                 [webrtc]\nudp_ips = [\"127.0.0.1\"]\n[record]\ndir = \"{}\"\n",
                self.dir.path().join(format!("{id}-recordings")).display()
            ),
        );
        let (node, _) = Proc::spawn_ready(
            id,
            &bin("verge-agent"),
            &["--config", cfg.to_str().unwrap_or_default()],
            self.dir.path(),
        );
        node
    }

    /// The manager's view of stream `id` (`{name}` or `{app}/{name}`), once listed.
    pub fn listed_stream(&self, id: &str) -> Option<serde_json::Value> {
        let streams = get(
            self.manager_http,
            &with_token("/api/streams/", &self.api_token),
        )
        .ok()?
        .json();
        streams.as_array()?.iter().find(|s| s["id"] == id).cloned()
    }
}

/// The index's database connects and migrates after the manager is up, and its endpoints
/// answer 503 until then: tests go on once it is ready (or down, for those that want that).
fn wait_for_database(manager_http: SocketAddr) {
    wait_for(READY_TIMEOUT, || {
        let health = get(manager_http, "/api/health").ok()?.json();
        (health["database"] != "starting").then_some(())
    });
}

/// `path` with `?token=` when the manager wants one.
fn with_token(path: &str, token: &Option<String>) -> String {
    match token {
        Some(t) => format!("{path}?token={t}"),
        None => path.to_string(),
    }
}

/// ffmpeg's opening arguments for synthetic media: quiet, read in real time (`-re`) or as
/// fast as it encodes, and each of `sources` a lavfi input (`testsrc=…`, `sine=…`).
pub fn lavfi_inputs(realtime: bool, sources: &[&str]) -> Vec<String> {
    let mut args = vec!["-hide_banner", "-loglevel", "error"];
    args.push(if realtime { "-re" } else { "-y" });
    for source in sources {
        args.extend(["-f", "lavfi", "-i", source]);
    }
    args.into_iter().map(String::from).collect()
}

/// ffmpeg's arguments for publishing `media` to `url` in real time (H.264 + AAC over RTMP).
pub fn publish_args(url: &str, media: &Synthetic) -> Vec<String> {
    let mut video = format!("testsrc=size={}:rate={}", media.size, media.fps);
    if let Some(from) = media.noise_from {
        video = format!("{video},noise=alls=100:allf=t+u:enable='gte(t\\,{from})'");
    }
    if media.frame_counter {
        video = format!(
            "{video}[pattern];color=size=64x64:rate={},format=yuv420p,\
             geq=lum=16+mod(6*N\\,216):cb=128:cr=128[counter];[pattern][counter]overlay",
            media.fps
        );
    }
    let mut args = lavfi_inputs(true, &[&video, "sine=frequency=440:sample_rate=44100"]);
    args.extend(
        [
            "-t",
            &media.seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            media.preset,
            "-g",
            &media.gop.to_string(),
            "-pix_fmt",
            "yuv420p",
        ]
        .map(String::from),
    );
    match media.b_frames {
        // ultrafast alone turns B-frames off: ask for them.
        Some(n) => args.extend(["-bf".to_string(), n.to_string()]),
        None => args.extend(["-tune".to_string(), "zerolatency".to_string()]),
    }
    if let Some(kbps) = media.video_kbps {
        let rate = format!("{kbps}k");
        let buffer = format!("{}k", kbps / 2);
        args.extend(["-b:v", &rate, "-maxrate", &rate, "-bufsize", &buffer].map(String::from));
    }
    if let Some(profile) = media.profile {
        args.extend(["-profile:v".to_string(), profile.to_string()]);
    }
    args.extend(["-c:a", "aac", "-b:a", "64k", "-f", "flv", url].map(String::from));
    args
}

/// What [`Edge::publish`] sends.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub size: &'static str,
    pub fps: u32,
    pub gop: u32,
    pub seconds: u32,
    /// `-profile:v`, e.g. `high`; ffmpeg's default otherwise.
    pub profile: Option<&'static str>,
    /// B-frames between references, as x264 makes them by default (`-bf`); None: none
    /// (`-tune zerolatency`), what a low-latency encoder sends.
    pub b_frames: Option<u32>,
    /// x264's preset; `ultrafast` (the default here) keeps tests light, `medium` is what
    /// ffmpeg and OBS users get unless they choose.
    pub preset: &'static str,
    /// A 64x64 square at the top left whose grey level counts frames (16 + 6 × n, modulo 216,
    /// in limited-range luma): a viewer can tell from it whether pictures are shown in order.
    pub frame_counter: bool,
    /// The video's bitrate cap, kbit/s (`-b:v`, `-maxrate`); x264 decides otherwise.
    pub video_kbps: Option<u32>,
    /// From this second on the picture is covered in moving noise, which costs the encoder
    /// many times the bits: a bitrate change within one publish.
    pub noise_from: Option<u32>,
}

impl Default for Synthetic {
    fn default() -> Self {
        Self {
            size: "640x360",
            fps: 25,
            gop: 100,
            seconds: 6,
            profile: None,
            b_frames: None,
            preset: "ultrafast",
            frame_counter: false,
            noise_from: None,
            video_kbps: None,
        }
    }
}

impl Synthetic {
    /// `seconds` of the default picture at 25 fps with a keyframe every second.
    /// The default stream (a keyframe every 4 s), `seconds` long.
    pub fn lasting(seconds: u32) -> Self {
        Self {
            seconds,
            ..Self::default()
        }
    }

    pub fn keyframe_every_second(seconds: u32) -> Self {
        Self {
            fps: 25,
            gop: 25,
            seconds,
            ..Self::default()
        }
    }
}

/// The benchmarks' clip, encoded once into `dir`: 10 s of 1280x720 30 fps H.264 High at
/// 2 Mbit/s with a keyframe every 2 s and no B-frames (as live encoders are set up), and AAC;
/// published with `-c copy` in a loop, it costs the publisher almost nothing.
pub fn encode_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("clip.flv");
    let inputs = [
        "testsrc2=size=1280x720:rate=30",
        "sine=frequency=440:sample_rate=48000",
    ];
    let status = std::process::Command::new(tool("ffmpeg"))
        .args(lavfi_inputs(false, &inputs))
        .args([
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
            "-b:v",
            "2M",
            "-maxrate",
            "2M",
            "-bufsize",
            "2M",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "flv",
        ])
        .arg(&clip)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "encoding the clip failed");
    clip
}

/// ffmpeg publishing `clip` (from [`encode_clip`]) to `url` in real time, in a loop, without
/// re-encoding; with `pinned`, on core 1 (`taskset -c 1`), away from the server under test.
pub fn publish_loop(dir: &Path, url: &str, clip: &Path, pinned: bool) -> Proc {
    let clip = clip.to_string_lossy().into_owned();
    let ffmpeg = tool("ffmpeg").to_string_lossy().into_owned();
    let mut args: Vec<&str> = Vec::new();
    if pinned {
        args.extend(["-c", "1", &ffmpeg]);
    }
    args.extend([
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        &clip,
        "-c",
        "copy",
        "-f",
        "flv",
        url,
    ]);
    let program = if pinned {
        Path::new("/usr/bin/taskset")
    } else {
        tool("ffmpeg")
    };
    Proc::spawn("publisher", program, &args, dir)
}

/// Writes a mosquitto password file with `users` (name, password).
pub fn mosquitto_passwd(path: &Path, users: &[(&str, &str)]) {
    for (i, (user, pass)) in users.iter().enumerate() {
        let mut cmd = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(path)
            .args([user, pass])
            .status()
            .expect("run mosquitto_passwd (scripts/test installs it)");
        assert!(status.success(), "mosquitto_passwd {user}");
    }
}

/// mosquitto on a free loopback port with no authentication and room for a fleet's bursts
/// (the benchmarks' external broker), once it listens; None where it is not installed.
pub fn open_mosquitto(dir: &TempDir) -> Option<(Proc, SocketAddr)> {
    let mosquitto = Path::new("/usr/sbin/mosquitto");
    if !mosquitto.exists() {
        return None;
    }
    let port = super::reserve_port();
    let conf = dir.write(
        "mosquitto.conf",
        &format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nmax_inflight_messages 100\nset_tcp_nodelay true\n",
            port.addr().port()
        ),
    );
    let broker = Proc::spawn(
        "mosquitto",
        mosquitto,
        &["-c", conf.to_str().unwrap_or_default()],
        dir.path(),
    );
    wait_for(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(port.addr()).ok()
    })
    .expect("mosquitto listens");
    Some((broker, port.addr()))
}

/// A third-party tool the tests drive; a clear message if it is missing.
pub fn tool(name: &str) -> &'static Path {
    let path: &'static Path = match name {
        "ffmpeg" => Path::new("/usr/bin/ffmpeg"),
        "ffprobe" => Path::new("/usr/bin/ffprobe"),
        "chromium" => Path::new("/usr/bin/chromium"),
        "curl" => Path::new("/usr/bin/curl"),
        _ => Path::new("/nonexistent"),
    };
    assert!(
        path.exists(),
        "{name} is not installed: run scripts/test (it installs what the tests need)"
    );
    path
}
