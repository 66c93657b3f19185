//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ending in NUL on fds 3 and 4), so a test can read what a page computed
//! without a WebSocket client or a debugging port.
//!
//! Run it only inside a network namespace of the test's own (see [`in_private_netns`]):
//! Chromium talks to the LAN otherwise (mDNS, service discovery).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::edge::tool;

pub struct Chromium {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
}

impl Chromium {
    /// Starts Chromium on `url` with a fresh profile in `profile` and attaches to its page.
    pub fn open(url: &str, profile: &Path, log: &Path) -> Self {
        Self::open_in(&[], url, profile, log)
    }

    /// [`Chromium::open`] run through `wrapper` (e.g. `nsenter -t {pid} -n`, to browse from
    /// another network namespace).
    pub fn open_in(wrapper: &[String], url: &str, profile: &Path, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("chromium log file");
        // fd 3: commands to Chromium (our stdin pipe); fd 4: its replies (our stdout pipe).
        let script = format!(
            "exec {} {} \"$@\" 3<&0 4>&1 1>&2",
            wrapper.join(" "),
            tool("chromium").display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-loopback-in-peer-connection",
                // A camera (a moving test pattern) and a microphone (a beep every second),
                // granted without a prompt: what a WHIP publisher page gets.
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                // Host candidates as plain addresses, not mDNS names: the namespace has no
                // multicast, and the agent ignores .local candidates.
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            // For a diagnosis, e.g. `--enable-logging=stderr --vmodule=h264_decoder_impl=1`:
            // what Chromium logs lands in the test's chromium.log.
            .args(
                std::env::var("VERGE_CHROMIUM_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start chromium");
        let stdin = child.stdin.take().expect("chromium stdin");
        let stdout = child.stdout.take().expect("chromium stdout");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    break;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            stdin,
            replies,
            next_id: 0,
            session: String::new(),
        };
        let page = (0..100)
            .find_map(|_| {
                let targets = browser.call(None, "Target.getTargets", json!({}));
                let id = targets["targetInfos"]
                    .as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")?["targetId"]
                    .as_str()?
                    .to_string();
                Some(id)
            })
            .expect("chromium opened no page");
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a DevTools session")
            .to_string();
        browser
    }

    /// Sends one command and waits (up to 10 s) for its reply's `result`.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        self.stdin.write_all(&bytes).expect("write to chromium");
        self.stdin.flush().expect("flush to chromium");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let reply = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    panic!("chromium refused {method}: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// A PNG of the page as it looks `width` × `height` CSS pixels wide (a phone's width makes
    /// the page lay itself out as on a phone), written to `path`.
    pub fn screenshot(&mut self, path: &Path, width: u32, height: u32, mobile: bool) {
        use base64::Engine;
        self.viewport(width, height, mobile);
        let session = self.session.clone();
        let shot = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Renders the page as for a user who prefers `scheme` (`light` or `dark`).
    pub fn color_scheme(&mut self, scheme: &str) {
        let session = self.session.clone();
        self.call(
            Some(&session),
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        );
    }

    /// Lays the page out as in a window `width` × `height` CSS pixels wide.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        let session = self.session.clone();
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
        // Two frames for the new layout.
        self.eval("new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)))");
    }

    /// Evaluates a JavaScript expression in the page; its value, as JSON.
    pub fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let result = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        result["result"]["value"].clone()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this process runs in the private network namespace [`in_private_netns`] made.
pub fn is_private_netns() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

const NETNS_ENV: &str = "VERGE_TEST_NETNS";

/// Runs the test `name` of the current test binary again, inside a new network namespace that
/// has only a loopback interface (`unshare -n`, then `ip link set lo up`), and returns its
/// combined output. Panics if that run fails. Everything the test starts (manager, agent,
/// ffmpeg, Chromium) lives in that namespace and cannot send a packet off this machine.
pub fn in_private_netns(name: &str) -> String {
    let exe = std::env::current_exe().expect("test executable");
    // Root can make a namespace directly; others map themselves to root in a user namespace.
    let unshare_args: &[&str] = if is_root() { &["-n"] } else { &["-r", "-n"] };
    let output = Command::new("unshare")
        .args(unshare_args)
        .args(["--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        .args([
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(NETNS_ENV, "1")
        .output()
        .expect("run unshare (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the test failed inside its network namespace:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "the test did not run inside its namespace:\n{text}"
    );
    text
}

/// For a benchmark (an example binary): runs this program again with `args` inside a new
/// network namespace with only loopback, its output going to ours, and returns its status.
pub fn rerun_in_private_netns(args: &[String]) -> std::process::ExitStatus {
    let exe = std::env::current_exe().expect("own executable");
    let unshare_args: &[&str] = if is_root() { &["-n"] } else { &["-r", "-n"] };
    Command::new("unshare")
        .args(unshare_args)
        .args(["--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        .args(args)
        .env(NETNS_ENV, "1")
        .status()
        .expect("run unshare (util-linux)")
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
