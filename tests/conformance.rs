//! Conformance of docs/protocol.md: an agent written in Python from the document alone
//! (`tests/conformance/agent.py`, paho-mqtt) joins a real `verge-manager` (embedded broker),
//! is proven online, answers the manager's pings, and refuses what a client holding another
//! agent's valid credentials sends it: forged, replayed and stale requests.
//!
//! The test's own side of the protocol (envelopes, sealed bodies, the enrollment derivation)
//! is also written here from the document, with ring, not with `verge-protocol`: both ends of
//! every exchange the test checks are independent of the reference implementation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{aead, hkdf, hmac, rand::SecureRandom};
use rumqttc::{MqttOptions, QoS};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use verge_testkit::{ANY_PORT, Proc, TempDir, get, listener, wait_for};

/// How long a change may take on a loaded machine (conditions are polled, not slept on).
const PATIENCE: Duration = Duration::from_secs(20);

const AGENT: &str = "py-1";
const SECRET: &str = "py-1 secret: any non-empty text, ünïcode too";
const ENROLLMENT: &str = "conformance enrollment secret";
/// The spy: an agent admitted by enrollment (its secret derived as in section 6.2).
const SPY: &str = "spy";
const MANAGER_ID: &str = "conformance-mgr";
/// The `from` and `reply_to` of the requests the test signs itself.
const TESTER: &str = "conformance";
const MAX_REQUEST_SKEW_MS: u64 = 120_000;

// --- the protocol, from docs/protocol.md --------------------------------------------------------

/// 5.2: HMAC-SHA256 over the length-prefixed parts.
fn mac_hex(secret: &str, kind: &str, from: &str, ts: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    let ts = ts.to_string();
    for part in [
        b"verge/v1".as_slice(),
        kind.as_bytes(),
        from.as_bytes(),
        ts.as_bytes(),
        body,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    hex(ctx.sign().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 5.3: the payload is built around the exact body text that was signed.
fn seal_envelope(secret: &str, kind: &str, from: &str, ts: u64, body: &str) -> Vec<u8> {
    let mac = mac_hex(secret, kind, from, ts, body.as_bytes());
    format!(r#"{{"v":1,"kind":"{kind}","from":"{from}","ts":{ts},"body":{body},"mac":"{mac}"}}"#)
        .into_bytes()
}

/// An envelope that opened (5.4) with the agent's secret.
#[derive(Debug)]
struct Opened {
    kind: String,
    from: String,
    ts: u64,
    body: Value,
}

fn open_envelope(payload: &[u8], secret: &str) -> Result<Opened, String> {
    let members: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(payload).map_err(|e| format!("malformed: {e}"))?;
    let field = |name: &str| -> Result<Value, String> {
        let raw = members.get(name).ok_or(format!("no {name}"))?;
        serde_json::from_str(raw.get()).map_err(|e| e.to_string())
    };
    if field("v")? != json!(1) {
        return Err("not version 1".into());
    }
    let kind = field("kind")?.as_str().ok_or("kind")?.to_string();
    let from = field("from")?.as_str().ok_or("from")?.to_string();
    let ts = field("ts")?.as_u64().ok_or("ts")?;
    let mac = field("mac")?.as_str().ok_or("mac")?.to_string();
    let body_raw = members.get("body").ok_or("no body")?.get();
    if mac_hex(secret, &kind, &from, ts, body_raw.as_bytes()) != mac {
        return Err("bad mac".into());
    }
    let body = serde_json::from_str(body_raw).map_err(|e| e.to_string())?;
    Ok(Opened {
        kind,
        from,
        ts,
        body,
    })
}

/// 6.2: an enrolled agent's secret.
fn derive_agent_secret(enrollment: &str, id: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, enrollment.as_bytes());
    hex(hmac::sign(&key, format!("verge-agent-secret/v1/{id}").as_bytes()).as_ref())
}

const AAD_REQUEST: &[u8] = b"verge/rpc/request";
const AAD_REPLY: &[u8] = b"verge/rpc/reply";

/// 6.3: the private key, HKDF-SHA256(salt "verge/private/v1", secret, info "rpc").
fn private_key(secret: &str) -> aead::LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"verge/private/v1").extract(secret.as_bytes());
    let okm = prk
        .expand(&[b"rpc"], &aead::CHACHA20_POLY1305)
        .expect("HKDF expand");
    aead::LessSafeKey::new(aead::UnboundKey::from(okm))
}

/// 7: `{"sealed": base64(nonce ‖ ciphertext ‖ tag)}`.
fn seal_value(secret: &str, aad: &[u8], value: &Value) -> Value {
    let mut nonce = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut nonce).unwrap();
    let mut data = serde_json::to_vec(value).unwrap();
    private_key(secret)
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut data,
        )
        .unwrap();
    let mut out = nonce.to_vec();
    out.extend(data);
    json!({ "sealed": BASE64.encode(out) })
}

fn open_value(secret: &str, aad: &[u8], value: &Value) -> Result<Value, String> {
    let object = value
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or("not sealed")?;
    let text = object
        .get("sealed")
        .and_then(Value::as_str)
        .ok_or("not sealed")?;
    let mut raw = BASE64.decode(text).map_err(|e| e.to_string())?;
    if raw.len() < 28 {
        return Err("too short".into());
    }
    let nonce = aead::Nonce::try_assume_unique_for_key(&raw[..12]).unwrap();
    let mut sealed = raw.split_off(12);
    let plain = private_key(secret)
        .open_in_place(nonce, aead::Aad::from(aad), &mut sealed)
        .map_err(|_| "does not decrypt".to_string())?;
    serde_json::from_slice(plain).map_err(|e| e.to_string())
}

/// A `ping` request (11.1) to the agent, signed with `secret`, its id written as `id`.
fn ping_request(secret: &str, id: &Value, ts: u64) -> Vec<u8> {
    let body = json!({
        "id": id,
        "method": "ping",
        "params": seal_value(SECRET, AAD_REQUEST, &Value::Null),
        "timeout_ms": 2000,
        "reply_to": TESTER,
    });
    seal_envelope(secret, "request", TESTER, ts, &body.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// --- processes ----------------------------------------------------------------------------------

/// A Python 3 with paho-mqtt and cryptography (scripts/setup installs the Debian packages,
/// which the interpreter in /usr/bin sees even when another python3 comes first in PATH).
fn python() -> PathBuf {
    let check = "import paho.mqtt.client, cryptography.hazmat.primitives.ciphers.aead";
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate)
            .args(["-c", check])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "no python3 with paho-mqtt and cryptography: run scripts/setup \
         (apt-get install python3-paho-mqtt python3-cryptography)"
    );
}

fn start_python_agent(dir: &TempDir, python: &Path, mqtt: SocketAddr, label: &str) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/agent.py");
    let ready = dir.path().join(format!("{label}.ready"));
    let _ = std::fs::remove_file(&ready);
    let broker = mqtt.to_string();
    let mut proc = Proc::spawn(
        label,
        python,
        &[
            script.to_str().unwrap(),
            "--broker",
            &broker,
            "--id",
            AGENT,
            "--secret",
            SECRET,
            "--prefix",
            "verge",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
        dir.path(),
    );
    let up = wait_for(PATIENCE, || {
        if ready.exists() {
            return Some(true);
        }
        proc.exited().then_some(false)
    });
    match up {
        Some(true) => proc,
        Some(false) => panic!("the Python agent exited:\n{}", proc.log_text()),
        None => panic!(
            "the Python agent did not announce itself in {PATIENCE:?}:\n{}",
            proc.log_text()
        ),
    }
}

/// `online` of `id` in `GET /api/nodes/` (None: not listed).
fn node_online(http: SocketAddr, id: &str) -> Option<bool> {
    let nodes = get(http, "/api/nodes/").ok()?.json();
    nodes
        .as_array()?
        .iter()
        .find(|n| n["alias"] == id)
        .and_then(|n| n["online"].as_bool())
}

/// The spy: an MQTT client with the enrolled agent `spy`'s valid credentials, subscribed to
/// everything, that also publishes what the test wants the agent to receive.
struct Spy(verge_testkit::mqtt::Spy);

impl Spy {
    fn connect(mqtt: SocketAddr) -> Self {
        let mut opts = MqttOptions::new(format!("{SPY}:conformance"), "127.0.0.1", mqtt.port());
        opts.set_credentials(SPY, derive_agent_secret(ENROLLMENT, SPY))
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(2 << 20, 2 << 20);
        Self(verge_testkit::mqtt::Spy::subscribe(
            opts,
            &["verge/#"],
            QoS::AtMostOnce,
        ))
    }

    fn mark(&self) -> usize {
        self.0.mark()
    }

    fn on(&self, topic: &str, from: usize) -> Vec<Vec<u8>> {
        self.0.on(topic, from)
    }

    /// Replies on `topic` (opened with the agent's secret) whose body id is exactly `id`
    /// (number or string), from index `from` on.
    fn replies(&self, topic: &str, id: &Value, from: usize) -> Vec<Opened> {
        self.on(topic, from)
            .iter()
            .filter_map(|p| open_envelope(p, SECRET).ok())
            .filter(|o| o.kind == "reply" && &o.body["id"] == id)
            .collect()
    }

    fn send(&self, payload: Vec<u8>) {
        self.0
            .client
            .publish(
                format!("verge/v1/a/{AGENT}/req"),
                QoS::AtMostOnce,
                false,
                payload,
            )
            .unwrap();
    }

    /// Asks the fleet to announce itself (docs/protocol.md 8.1).
    fn ask(&self) {
        self.0
            .client
            .publish(
                "verge/v1/ask",
                QoS::AtLeastOnce,
                false,
                br#"{"from":"tester"}"#.to_vec(),
            )
            .unwrap();
    }

    /// Sends `payload` and waits for the reply with `id` on the tester's `res` topic.
    fn call(&self, payload: Vec<u8>, id: &Value) -> Opened {
        let mark = self.mark();
        self.send(payload);
        let topic = format!("verge/v1/m/{TESTER}/res");
        wait_for(PATIENCE, || self.replies(&topic, id, mark).pop())
            .unwrap_or_else(|| panic!("no reply to request id={id} on {topic}"))
    }

    /// A valid ping with a fresh id, answered: everything the agent received before it has
    /// been handled (one connection's messages arrive in order). How the test waits for "no
    /// reply" without sleeping.
    fn barrier(&self, id: u64) {
        let reply = self.call(ping_request(SECRET, &json!(id), now_ms()), &json!(id));
        assert!(reply.body["result"]["ok"].is_object(), "{:?}", reply.body);
    }
}

fn wait_log(agent: &Proc, needle: &str) {
    let found = wait_for(PATIENCE, || agent.log_text().contains(needle).then_some(()));
    assert!(
        found.is_some(),
        "the agent's log lacks {needle:?}:\n{}",
        agent.log_text()
    );
}

/// Checks an `ok` reply to a ping: signed by the agent, `from` = the agent, result sealed for
/// the reply direction, holding the agent's clock.
fn assert_ping_ok(reply: &Opened) {
    assert_eq!(reply.kind, "reply");
    assert_eq!(reply.from, AGENT);
    let sealed = &reply.body["result"]["ok"];
    let result = open_value(SECRET, AAD_REPLY, sealed)
        .unwrap_or_else(|e| panic!("the ping result does not open ({e}): {:?}", reply.body));
    let agent_time = result["agent_time"].as_u64().expect("agent_time");
    assert!(agent_time.abs_diff(now_ms()) < 60_000, "{result}");
    assert!(
        open_value(SECRET, AAD_REQUEST, sealed).is_err(),
        "a result opens as a request's params"
    );
}

#[test]
fn a_python_agent_written_from_the_document_joins_and_refuses_forgeries() {
    let python = python();
    let dir = TempDir::new("conformance");
    let config = dir.write(
        "manager.toml",
        &format!(
            "[http]\nlisten = \"{ANY_PORT}\"\n[broker]\nlisten = \"{ANY_PORT}\"\n\
             [mqtt]\nid = \"{MANAGER_ID}\"\nrpc_timeout_ms = 3000\n\
             [keys]\nfile = \"{}\"\n[enrollment]\nsecret = \"{ENROLLMENT}\"\n\
             [[agents]]\nid = \"{AGENT}\"\nsecret = \"{SECRET}\"\n",
            dir.path().join("keys.json").display()
        ),
    );
    let (_manager, bound) = Proc::manager(&config, dir.path());
    let http = listener(&bound, "http");
    let mqtt = listener(&bound, "mqtt");
    let spy = Spy::connect(mqtt);
    let req_topic = format!("verge/v1/a/{AGENT}/req");
    let mgr_res = format!("verge/v1/m/{MANAGER_ID}/res");
    let presence_topic = format!("verge/v1/a/{AGENT}/presence");

    // (a) The agent announces itself and the manager proves it online with a ping.
    let agent = start_python_agent(&dir, &python, mqtt, "py-1");
    let proven = wait_for(PATIENCE, || {
        (node_online(http, AGENT) == Some(true)).then_some(())
    });
    assert!(
        proven.is_some(),
        "{AGENT} not shown online; nodes: {}\nagent:\n{}",
        get(http, "/api/nodes/")
            .map(|r| r.text())
            .unwrap_or_default(),
        agent.log_text()
    );
    wait_log(&agent, &format!("reply_to={MANAGER_ID}"));
    let presences: Vec<Opened> = spy
        .on(&presence_topic, 0)
        .iter()
        .map(|p| open_envelope(p, SECRET).expect("the agent's presence opens"))
        .collect();
    let online = presences
        .iter()
        .find(|p| p.body["status"] == "online")
        .expect("an online presence");
    assert_eq!(
        (online.kind.as_str(), online.from.as_str()),
        ("presence", AGENT)
    );
    let session = online.body["session"].as_u64().expect("presence.session");
    let state = spy
        .on(&format!("verge/v1/a/{AGENT}/state"), 0)
        .iter()
        .find_map(|p| open_envelope(p, SECRET).ok())
        .expect("the agent's state");
    assert_eq!(state.kind, "state");
    assert!(state.body["seq"].is_u64(), "{:?}", state.body);

    // (b) A live ping through the manager's API; the spy captures the manager's request.
    let mark = spy.mark();
    let detail = get(http, &format!("/api/agents/{AGENT}")).unwrap().json();
    assert!(
        detail["ping"]["rtt_ms"].as_f64().is_some(),
        "no live ping: {detail}"
    );
    let captured = wait_for(PATIENCE, || {
        spy.on(&req_topic, mark).into_iter().find(|p| {
            open_envelope(p, SECRET).is_ok_and(|o| o.kind == "request" && o.from == MANAGER_ID)
        })
    })
    .expect("the spy saw the manager's ping request");
    let request = open_envelope(&captured, SECRET).unwrap();
    assert_eq!(request.body["method"], "ping");
    assert_eq!(request.body["reply_to"], MANAGER_ID);
    assert!(
        request.ts.abs_diff(now_ms()) < 60_000,
        "request ts {}",
        request.ts
    );
    let id = request.body["id"].clone();
    let id_text = id.to_string();
    let original = wait_for(PATIENCE, || spy.replies(&mgr_res, &id, mark).pop())
        .expect("the agent's reply to the manager's ping");
    assert_ping_ok(&original);

    // (d) The captured request published again: refused, not run, not answered.
    spy.send(captured.clone());
    wait_log(&agent, &format!("refused replayed request id={id_text} "));
    spy.barrier(1001);
    assert_eq!(
        spy.replies(&mgr_res, &id, mark).len(),
        1,
        "the replayed request was answered again"
    );
    assert_eq!(
        agent
            .log_text()
            .matches(&format!("answered ping id={id_text} "))
            .count(),
        1,
        "the replayed request ran twice"
    );

    // (c) A request signed with a wrong secret (the spy's own): no reply, logged.
    let forged_id = json!(2002);
    let mark = spy.mark();
    let spy_secret = derive_agent_secret(ENROLLMENT, SPY);
    spy.send(ping_request(&spy_secret, &forged_id, now_ms()));
    wait_log(&agent, "refused forged request");
    spy.barrier(2003);
    assert!(
        spy.replies(&format!("verge/v1/m/{TESTER}/res"), &forged_id, mark)
            .is_empty(),
        "a forged request was answered"
    );
    // A valid MAC over altered bytes does not verify either.
    let mut altered = ping_request(SECRET, &json!(2004), now_ms());
    let at = altered.windows(4).position(|w| w == b"2004").unwrap();
    altered[at + 3] = b'5';
    let mark = spy.mark();
    spy.send(altered);
    spy.barrier(2006);
    assert!(
        spy.replies(&format!("verge/v1/m/{TESTER}/res"), &json!(2005), mark)
            .is_empty(),
        "an altered request was answered"
    );

    // (e) Stale requests, signed with the right secret, 10 minutes off either way: `stale`,
    // signed, the id echoed; not remembered, so the same id fresh is answered.
    for (id, ts) in [
        (3001u64, now_ms() - 5 * MAX_REQUEST_SKEW_MS),
        (3002, now_ms() + 5 * MAX_REQUEST_SKEW_MS),
    ] {
        let reply = spy.call(ping_request(SECRET, &json!(id), ts), &json!(id));
        assert_eq!(reply.from, AGENT);
        assert_eq!(
            reply.body["result"]["err"]["code"], "stale",
            "{:?}",
            reply.body
        );
        assert!(reply.body["result"]["err"]["message"].is_string());
        wait_log(&agent, &format!("refused stale request id={id}:"));
        let again = spy.call(ping_request(SECRET, &json!(id), now_ms()), &json!(id));
        assert_ping_ok(&again);
    }

    // Ids (11.2): a string id is echoed as that string, a number beyond 2^53 exactly, and
    // `7` and `"7"` are one id for replay protection.
    for id in [json!("9007199254740993"), json!(u64::MAX), json!(0)] {
        let reply = spy.call(ping_request(SECRET, &id, now_ms()), &id);
        assert_ping_ok(&reply);
    }
    let seven = spy.call(ping_request(SECRET, &json!(7), now_ms()), &json!(7));
    assert_ping_ok(&seven);
    let mark = spy.mark();
    spy.send(ping_request(SECRET, &json!("7"), now_ms()));
    wait_log(&agent, "refused replayed request id=\"7\" ");
    spy.barrier(4001);
    assert!(
        spy.replies(&format!("verge/v1/m/{TESTER}/res"), &json!("7"), mark)
            .is_empty(),
        "\"7\" answered after 7"
    );

    // Asked to announce (8.1): presence and state again, the same session; three asks at once
    // are answered once now and once 2 s later, not three times.
    let mark = spy.mark();
    for _ in 0..3 {
        spy.ask();
    }
    wait_log(&agent, "asked: announced again");
    let again = wait_for(PATIENCE, || {
        let online: Vec<u64> = spy
            .on(&presence_topic, mark)
            .iter()
            .filter_map(|p| open_envelope(p, SECRET).ok())
            .filter(|p| p.body["status"] == "online")
            .filter_map(|p| p.body["session"].as_u64())
            .collect();
        (online.len() == 2).then_some(online)
    })
    .expect("two announcements for three asks");
    assert_eq!(again, [session, session]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        spy.on(&presence_topic, mark).len(),
        2,
        "more than two announcements for three asks"
    );
    assert_eq!(node_online(http, AGENT), Some(true), "still proven");

    // The last will: SIGKILL, the broker publishes the session's offline presence.
    let mark = spy.mark();
    agent.signal("KILL");
    let will = wait_for(PATIENCE, || {
        spy.on(&presence_topic, mark)
            .iter()
            .filter_map(|p| open_envelope(p, SECRET).ok())
            .find(|p| p.body["status"] == "offline")
    })
    .expect("the broker published no offline will");
    assert_eq!(will.body["session"].as_u64(), Some(session));
    let gone = wait_for(PATIENCE, || {
        (node_online(http, AGENT) == Some(false)).then_some(())
    });
    assert!(gone.is_some(), "{AGENT} still online after SIGKILL");
    drop(agent);

    // A second run: a new, higher session, proven again; SIGTERM says goodbye.
    let agent = start_python_agent(&dir, &python, mqtt, "py-1-again");
    let proven = wait_for(PATIENCE, || {
        (node_online(http, AGENT) == Some(true)).then_some(())
    });
    assert!(proven.is_some(), "{AGENT} not online again");
    let second = spy
        .on(&presence_topic, mark)
        .iter()
        .filter_map(|p| open_envelope(p, SECRET).ok())
        .filter(|p| p.body["status"] == "online")
        .filter_map(|p| p.body["session"].as_u64())
        .max()
        .expect("a second online presence");
    assert!(second > session, "session {second} after {session}");
    let status = agent.terminate(PATIENCE);
    assert!(
        status.is_some_and(|s| s.success()),
        "the Python agent did not exit cleanly on SIGTERM"
    );
    let gone = wait_for(PATIENCE, || {
        (node_online(http, AGENT) == Some(false)).then_some(())
    });
    assert!(gone.is_some(), "{AGENT} still online after SIGTERM");
}
