//! Real NAT, real TURN. Network namespaces made by the test: the "cloud" (manager with its
//! broker, and coturn, started here) on an internet bridge at 198.18.0.1; the "box" (agent and
//! the encoder) behind a symmetric NAT that only lets it connect out (a new port for every
//! peer, as on many 4G uplinks); the "viewer" (headless Chromium) behind a port-preserving one.
//! Nothing on the internet side can reach either LAN and the box's STUN address is no use to
//! anyone, so the only way between box and viewer is through coturn, with the per-session
//! credentials the manager hands to both ends: the box relays too. Chromium plays the box's
//! stream through the manager's WHEP URL, once with any candidates and once relay-only; coturn
//! refuses credentials past their expiry.
//!
//! Needs root (bridges, veths, nftables) and coturn (`scripts/setup` installs it).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use verge_testkit::chromium::{Chromium, in_private_netns, is_private_netns, is_root};
use verge_testkit::edge::{Synthetic, publish_args, tool};
use verge_testkit::netns::{Home, Nat, internet};
use verge_testkit::{Proc, TempDir, bin, get, listener, wait_for};

const CLOUD: &str = "198.18.0.1";
const TURN_SECRET: &str = "nat-test-secret";
const PATIENCE: Duration = Duration::from_secs(40);

fn frames(chromium: &mut Chromium) -> (u64, String) {
    let text = chromium
        .eval("document.getElementById('stats').textContent")
        .as_str()
        .unwrap_or_default()
        .to_string();
    let n = text
        .lines()
        .find_map(|l| l.strip_prefix("framesDecoded="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (n, text)
}

/// Candidate types gathered, and ICE errors, for TURN credentials `user`/`pass`, relay-only.
fn gather(chromium: &mut Chromium, user: &str, pass: &str) -> Value {
    let js = format!(
        "(async () => {{
          const pc = new RTCPeerConnection({{ iceTransportPolicy: 'relay', iceServers: [
            {{ urls: 'turn:{CLOUD}:3478?transport=udp', username: '{user}', credential: '{pass}' }}] }});
          const types = [], errors = [];
          pc.onicecandidate = (e) => {{ if (e.candidate) types.push(e.candidate.type); }};
          pc.onicecandidateerror = (e) => errors.push(e.errorCode);
          pc.createDataChannel('probe');
          await pc.setLocalDescription(await pc.createOffer());
          await new Promise((done) => {{
            const t = setTimeout(done, 8000);
            pc.onicegatheringstatechange = () => {{
              if (pc.iceGatheringState === 'complete') {{ clearTimeout(t); done(); }}
            }};
          }});
          pc.close();
          return {{ types, errors }};
        }})()"
    );
    chromium.eval(&js)
}

#[test]
fn a_box_behind_nat_reaches_a_viewer_behind_nat_through_turn() {
    if !is_root() {
        println!("skipped: building NATs needs root");
        return;
    }
    if !is_private_netns() {
        bin("verge-manager");
        bin("verge-agent");
        println!(
            "{}",
            in_private_netns("a_box_behind_nat_reaches_a_viewer_behind_nat_through_turn")
        );
        return;
    }
    let dir = TempDir::new("nat");
    internet(CLOUD);
    // The box on a symmetric NAT, as on many 4G uplinks: only its own relay reaches it.
    let box_net = Home::new("box", "198.18.0.2", "10.1.0", Nat::Symmetric);
    let viewer_net = Home::new("viewer", "198.18.0.3", "10.2.0", Nat::PortPreserving);

    let mut coturn = Proc::spawn(
        "coturn",
        Path::new("/usr/bin/turnserver"),
        &[
            "-n",
            "--listening-ip",
            CLOUD,
            "--relay-ip",
            CLOUD,
            "--listening-port",
            "3478",
            "--min-port",
            "49152",
            "--max-port",
            "49999",
            "--use-auth-secret",
            "--static-auth-secret",
            TURN_SECRET,
            "--realm",
            "verge.test",
            "--fingerprint",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            // Both ends relay through this one server: its relays are each other's peers.
            "--allowed-peer-ip",
            CLOUD,
            // Private ranges are no peers, as on any TURN server facing the internet (coturn's
            // own advice): a permission for a box's LAN address is refused (403), the viewer
            // drops that pair. Without this coturn sends to 10.1.0.2, gets "network is
            // unreachable" and closes the whole allocation, and relay-only viewers never
            // connect.
            "--denied-peer-ip",
            "10.0.0.0-10.255.255.255",
            "--denied-peer-ip",
            "172.16.0.0-172.31.255.255",
            "--denied-peer-ip",
            "192.168.0.0-192.168.255.255",
            "--log-file",
            "stdout",
            "--simple-log",
            // Sessions, permissions and their errors: what a failure here is read from.
            "--verbose",
        ],
        dir.path(),
    );
    assert!(
        wait_for(PATIENCE, || coturn
            .log_text()
            .contains("Total General servers")
            .then_some(()))
        .is_some()
            || !coturn.exited(),
        "coturn did not start:\n{}",
        coturn.log_text()
    );

    // First the network itself: coturn's own client, from inside the box's NAT, relays between
    // two allocations of its own with nothing lost (so a failure below is WebRTC's, not this).
    // UDP on a loaded machine may lose a packet now and then: three tries, one must be clean.
    let coturn_cfg = verge_manager::config::Coturn {
        secret: TURN_SECRET.into(),
        urls: vec![format!("turn:{CLOUD}:3478?transport=udp")],
        ttl: 600,
    };
    let probe =
        verge_manager::ice::coturn_server(&coturn_cfg, "probe", verge_protocol::now_ms() / 1000);
    let clean = |report: &str| {
        report.contains("tot_send_msgs=80, tot_recv_msgs=80")
            && report.contains("Total lost packets 0 ")
    };
    let mut reports: Vec<String> = Vec::new();
    while reports.len() < 3 && !reports.last().is_some_and(|r| clean(r)) {
        let uclient = box_net
            .host
            .command(
                Path::new("/usr/bin/turnutils_uclient"),
                &[
                    "-y",
                    "-n",
                    "20",
                    "-m",
                    "1",
                    "-l",
                    "100",
                    "-u",
                    &probe.username,
                    "-w",
                    &probe.credential,
                    CLOUD,
                ],
            )
            .output()
            .expect("turnutils_uclient (coturn)");
        reports.push(String::from_utf8_lossy(&uclient.stdout).to_string());
    }
    assert!(
        reports.last().is_some_and(|r| clean(r)),
        "coturn does not relay between two allocations from behind the NAT:\n{}",
        reports.join("\n----\n")
    );

    let manager_cfg = dir.write(
        "manager.toml",
        &format!(
            "[http]\nlisten = \"0.0.0.0:0\"\n[broker]\nlisten = \"0.0.0.0:0\"\n\
             [[agents]]\nid = \"edge-1\"\nsecret = \"s1\"\n\
             [extra_ice.coturn]\nsecret = \"{TURN_SECRET}\"\nurls = [\"stun:{CLOUD}:3478\", \"turn:{CLOUD}:3478?transport=udp\"]\nttl = 600\n"
        ),
    );
    let (_manager, bound) = Proc::manager(&manager_cfg, dir.path());
    let http = listener(&bound, "http");
    let mqtt = listener(&bound, "mqtt");

    // The agent in the box: it dials the broker out through its NAT.
    let agent_cfg = dir.write(
        "agent.toml",
        &format!(
            "id = \"edge-1\"\nsecret = \"s1\"\n[mqtt]\nurl = \"mqtt://{CLOUD}:{}\"\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\nnoauth = true\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [hls]\nlisten = \"127.0.0.1:0\"\n[record]\ndir = \"{}/rec\"\n\
             [webrtc]\nudp_ips = [\"{}\"]\n",
            mqtt.port(),
            dir.path().display(),
            box_net.host_ip
        ),
    );
    let mut wrapper = box_net.host.wrapper();
    let agent_bin = bin("verge-agent");
    wrapper.extend([
        agent_bin.display().to_string(),
        "--config".into(),
        agent_cfg.display().to_string(),
    ]);
    let args: Vec<&str> = wrapper[1..].iter().map(String::as_str).collect();
    let (_agent, agent_bound) = Proc::spawn_ready_with_env(
        "agent",
        Path::new("nsenter"),
        &args,
        dir.path(),
        &[(
            "RUST_LOG",
            // The TURN relayer logs under webrtc's own target.
            "info,webrtc::peer_connection=debug,rtc_turn=debug,rtc_ice=debug",
        )],
    );
    let rtmp = listener(&agent_bound, "rtmp");

    let publish = publish_args(
        &format!("rtmp://{rtmp}/live/cam"),
        &Synthetic {
            size: "640x360",
            fps: 25,
            gop: 25,
            seconds: 120,
            profile: Some("main"),
            b_frames: None,
            ..Default::default()
        },
    );
    let mut ffmpeg_args = box_net.host.wrapper();
    ffmpeg_args.push(tool("ffmpeg").display().to_string());
    ffmpeg_args.extend(publish);
    let args: Vec<&str> = ffmpeg_args[1..].iter().map(String::as_str).collect();
    let _ffmpeg = Proc::spawn("ffmpeg", Path::new("nsenter"), &args, dir.path());
    let live = wait_for(PATIENCE, || {
        let streams = get(http, "/api/streams/").ok()?.json();
        streams
            .as_array()?
            .iter()
            .any(|s| s["id"] == "cam" && s["width"].is_u64())
            .then_some(())
    });
    assert!(
        live.is_some(),
        "the box's stream never showed in the manager"
    );

    // The viewer, behind its own NAT, with any candidates and then relay only.
    for policy in ["all", "relay"] {
        let mut chromium = Chromium::open_in(
            &viewer_net.host.wrapper(),
            &format!("http://{CLOUD}:{}/play/cam?policy={policy}", http.port()),
            &dir.path().join(format!("chromium-{policy}")),
            &dir.path().join(format!("chromium-{policy}.log")),
        );
        std::thread::sleep(Duration::from_secs(4));
        let early = chromium.eval(
            "pc.getStats().then((r) => { const out = []; r.forEach((s) => { if (s.type === 'candidate-pair') { \
               const l = r.get(s.localCandidateId), m = r.get(s.remoteCandidateId); \
               out.push(`${l.candidateType} ${l.address}:${l.port} -> ${m.candidateType} ${m.address}:${m.port} ${s.state} sent=${s.requestsSent} recv=${s.responsesReceived} reqIn=${s.requestsReceived}`); } }); return out.join('\\n'); })",
        );
        // What Chromium tried, for when it fails (requests sent and answered per pair).
        println!(
            "candidate pairs after 4 s:\n{}",
            early.as_str().unwrap_or_default()
        );
        let mut last = String::new();
        let played = wait_for(PATIENCE, || {
            let (n, text) = frames(&mut chromium);
            last = text;
            (n >= 50).then_some(n)
        });
        if played.is_none() {
            let sdp = chromium.eval(
                "(pc && pc.localDescription ? pc.localDescription.sdp : 'no offer') + '\\n---\\n' + \
                 (pc && pc.remoteDescription ? pc.remoteDescription.sdp : 'no answer')",
            );
            let candidates: Vec<&str> = sdp
                .as_str()
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.starts_with("a=candidate")
                        || l.starts_with("---")
                        || l.starts_with("a=group")
                        || l.starts_with("m=")
                        || l.starts_with("a=rtcp-mux")
                        || l.starts_with("a=ice-ufrag")
                })
                .collect();
            let pairs = chromium.eval(
                "pc.getStats().then((r) => { const out = []; r.forEach((s) => { if (s.type === 'candidate-pair') { \
                   const l = r.get(s.localCandidateId), m = r.get(s.remoteCandidateId); \
                   out.push(`${l.candidateType} ${l.address}:${l.port} -> ${m.candidateType} ${m.address}:${m.port} ${s.state} sent=${s.requestsSent} recv=${s.responsesReceived} reqIn=${s.requestsReceived}`); } }); return out.join('\\n'); })",
            );
            println!("PAIRS:\n{}", pairs.as_str().unwrap_or_default());
            let agent_log = _agent.log_text();
            let turn_lines: Vec<&str> = agent_log
                .lines()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains("turn")
                        || l.contains("relay")
                        || l.contains("permission")
                        || l.contains("channel")
                })
                .take(60)
                .collect();
            panic!(
                "policy {policy}: the viewer decoded too little:\n{last}\ncandidates:\n{}\n--- agent turn ---\n{}\n--- coturn ---\n{}",
                candidates.join("\n"),
                turn_lines.join("\n"),
                coturn
                    .log_text()
                    .lines()
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        l.contains("error")
                            || l.contains("allocate")
                            || l.contains("relay")
                            || l.contains("new,")
                            || l.contains("403")
                            || l.contains("forbidden")
                            || l.contains("permission")
                            || l.contains("401")
                            || l.contains("unreachable")
                            || l.contains("peer")
                    })
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        assert!(
            last.contains("candidateType=relay"),
            "policy {policy}: not through TURN (there is no other way):\n{last}"
        );
        // The box got the session's TURN credentials in the WHEP RPC and offers its own relay.
        let answer = chromium.eval("pc.remoteDescription.sdp");
        assert!(
            answer.as_str().is_some_and(|sdp| sdp.contains("typ relay")),
            "policy {policy}: the box's answer has no relay candidate:\n{answer}"
        );
        println!(
            "policy {policy}: {} frames through coturn",
            played.unwrap_or(0)
        );

        if policy == "relay" {
            // Credentials past their expiry are refused by coturn; fresh ones are not.
            let coturn_cfg = verge_manager::config::Coturn {
                secret: TURN_SECRET.into(),
                urls: vec![format!("turn:{CLOUD}:3478?transport=udp")],
                ttl: 600,
            };
            let now = verge_protocol::now_ms() / 1000;
            let fresh = verge_manager::ice::coturn_server(&coturn_cfg, "probe", now);
            let expired = verge_manager::ice::coturn_server(&coturn_cfg, "probe", now - 700);
            let ok = gather(&mut chromium, &fresh.username, &fresh.credential);
            assert!(
                ok["types"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "relay")),
                "fresh credentials gave no relay: {ok}"
            );
            let refused = gather(&mut chromium, &expired.username, &expired.credential);
            assert!(
                !refused["types"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "relay")),
                "expired credentials were accepted: {refused}"
            );
            assert!(
                refused["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|c| c == 401)),
                "coturn did not refuse the expired credentials with 401: {refused}"
            );
        }
    }
}
