//! The test vectors of `docs/protocol.md`, checked against this crate's public API (V6, the
//! tunnel packet, is checked by `tunnel/tests/vectors.rs`).
//!
//! The expected values were computed independently by `scripts/protocol_vectors.py` (Python's
//! `hmac`/`hashlib` and the `cryptography` package, following the document, not this code). If
//! one of these fails, either the wire format changed (then the document, the script and every
//! other implementation must change with it) or the code broke.

use serde_json::{Value, json};
use verge_protocol::envelope::{self, EnvelopeError, Kind, Message};
use verge_protocol::presence::{Presence, Status};
use verge_protocol::rpc::{ErrorCode, Outcome, Reply, Request, RpcError};
use verge_protocol::sealed::{PrivateError, PrivateKey, Way};
use verge_protocol::secret::{MacKey, derive_agent_secret};
use verge_protocol::state::State;

// V1: the MAC with a plain secret.
const V1_SECRET: &str = "s3cret";
const V1_MAC: &str = "a87d2244c54441d575cd716077b33d16837246c7f032652f9a744b21997dd785";
const V1_ENVELOPE: &str = r#"{"v":1,"kind":"state","from":"edge-1","ts":42,"body":{"seq":1,"streams":[]},"mac":"a87d2244c54441d575cd716077b33d16837246c7f032652f9a744b21997dd785"}"#;
const V1_SPACED: &str = r#"{"v": 1, "kind": "state", "from": "edge-1", "ts": 42, "body": {"seq": 1, "streams": []}, "mac": "1ab2a0c4a4376567675bd5690883387cdebbb4ea53d1ac4014ecee5aaeaece65"}"#;

// V2: enrollment.
const V2_ENROLLMENT: &str = "correct horse battery staple";
const V2_AGENT: &str = "edge-1";
const V2_SECRET: &str = "3ae0c10a87988cd4ce5e3a2efdec96ada44ade37403612a3e83ccbd33a5d82f0";

// V3: a presence signed with the derived secret's text.
const V3_ENVELOPE: &str = r#"{"v":1,"kind":"presence","from":"edge-1","ts":1763000000125,"body":{"status":"online","version":"0.1.0","started_at":1763000000000,"session":1763000000123,"capabilities":["rpc","rtmp","http-flv"],"rtmp_url":"rtmp://192.168.1.20:1935","http_url":"http://192.168.1.20:7001","keepalive_secs":10,"pub_max":4,"sub_max":64},"mac":"de74965f684b6d964c7d470eaf1ae125b28d5c43b398bcc43aee8499116c38f9"}"#;

// V4: sealed bodies (fixed nonces 00..0b and 0c..17).
const V4_PARAMS: &str = "AAECAwQFBgcICQoLE+3593nwF5ObE3CBRGefkyF/mVg=";
const V4_RESULT: &str =
    "DA0ODxAREhMUFRYXHzVf8dwV91cuCfIQVAROUCnIgn8y7gK6CVY1M80P3ZFeMpdLq0jGDvSknDE=";

// V5: a ping exchange.
const V5_REQUEST: &str = r#"{"v":1,"kind":"request","from":"manager","ts":1763000001000,"body":{"id":123456789,"method":"ping","params":{"sealed":"AAECAwQFBgcICQoLE+3593nwF5ObE3CBRGefkyF/mVg="},"timeout_ms":500,"reply_to":"manager"},"mac":"a57b0b89e981aa1c688dbf92a5703aa72df764cdb39f72e4dbba57f05c632b91"}"#;
const V5_REPLY: &str = r#"{"v":1,"kind":"reply","from":"edge-1","ts":1763000001003,"body":{"id":123456789,"result":{"ok":{"sealed":"DA0ODxAREhMUFRYXHzVf8dwV91cuCfIQVAROUCnIgn8y7gK6CVY1M80P3ZFeMpdLq0jGDvSknDE="}}},"mac":"5b517e47cf7dd54051a85f04102f9173f9ba84cd8f1c216f6d27e21337a836a0"}"#;
const V5_ERROR: &str = r#"{"v":1,"kind":"reply","from":"edge-1","ts":1763000001003,"body":{"id":123456789,"result":{"err":{"code":"busy","message":"too many calls in flight on this agent"}}},"mac":"b27a0716a42671f2aeef0ff6d75251458bc0293152bf47e1c818ad79b140cb40"}"#;

fn presence() -> Presence {
    Presence {
        status: Status::Online,
        version: "0.1.0".into(),
        started_at: 1_763_000_000_000,
        session: 1_763_000_000_123,
        capabilities: vec!["rpc".into(), "rtmp".into(), "http-flv".into()],
        rtmp_url: Some("rtmp://192.168.1.20:1935".into()),
        http_url: Some("http://192.168.1.20:7001".into()),
        keepalive_secs: 10,
        pub_max: 4,
        sub_max: 64,
        role: Default::default(),
        egress_max_kbps: 0,
    }
}

#[test]
fn v1_mac_with_a_plain_secret() {
    let key = MacKey::new(V1_SECRET);
    let state = State {
        seq: 1,
        streams: vec![],
        egress_kbps: None,
        upload: None,
    };
    let wire = envelope::seal(&key, "edge-1", 42, &state);
    assert_eq!(String::from_utf8(wire).unwrap(), V1_ENVELOPE);
    assert!(V1_ENVELOPE.contains(V1_MAC));
    let opened = envelope::open::<State>(V1_ENVELOPE.as_bytes(), &key).unwrap();
    assert_eq!(
        (opened.from.as_str(), opened.ts, opened.body),
        ("edge-1", 42, state)
    );
}

#[test]
fn v1_the_mac_covers_the_body_bytes_as_sent() {
    // A sender that writes spaces: its MAC is over `{"seq": 1, "streams": []}`, and the
    // receiver checks the bytes it got, not a re-serialization.
    let key = MacKey::new(V1_SECRET);
    let opened = envelope::open::<State>(V1_SPACED.as_bytes(), &key).unwrap();
    assert_eq!(opened.body.seq, 1);
    // The compact body under the spaced envelope's MAC does not verify.
    let mixed = V1_SPACED.replace(r#"{"seq": 1, "streams": []}"#, r#"{"seq":1,"streams":[]}"#);
    assert_eq!(
        envelope::open::<State>(mixed.as_bytes(), &key),
        Err(EnvelopeError::BadMac)
    );
    // Upper-case hex is accepted by this reader (senders write lower case).
    let upper = V1_ENVELOPE.replace(V1_MAC, &V1_MAC.to_uppercase());
    assert!(envelope::open::<State>(upper.as_bytes(), &key).is_ok());
}

#[test]
fn envelope_fields_are_strict_where_the_document_says_so() {
    let key = MacKey::new(V1_SECRET);
    // A duplicated envelope field is refused, whichever copy would verify.
    let doubled = V1_ENVELOPE.replacen(r#","mac":"#, r#","body":{"seq":2},"mac":"#, 1);
    assert!(matches!(
        envelope::open::<State>(doubled.as_bytes(), &key),
        Err(EnvelopeError::Malformed(_))
    ));
    // `ts` is a plain integer: another spelling of the same number is not an envelope.
    let float_ts = V1_ENVELOPE.replacen(r#""ts":42"#, r#""ts":42.0"#, 1);
    assert!(matches!(
        envelope::open::<State>(float_ts.as_bytes(), &key),
        Err(EnvelopeError::Malformed(_))
    ));
    // The version is checked before the other fields are required.
    assert_eq!(
        envelope::open::<State>(br#"{"v":2}"#, &key),
        Err(EnvelopeError::UnsupportedVersion(2))
    );
}

#[test]
fn v2_enrollment_derivation() {
    assert_eq!(derive_agent_secret(V2_ENROLLMENT, V2_AGENT), V2_SECRET);
}

#[test]
fn v3_presence_signed_with_the_derived_secret_text() {
    let key = MacKey::new(V2_SECRET);
    let wire = envelope::seal(&key, V2_AGENT, 1_763_000_000_125, &presence());
    assert_eq!(String::from_utf8(wire).unwrap(), V3_ENVELOPE);
    let opened = envelope::open::<Presence>(V3_ENVELOPE.as_bytes(), &key).unwrap();
    // (The script keys the HMAC with the secret's 64 characters, not the 32 bytes they spell.)
    assert_eq!(opened.body, presence());
}

#[test]
fn v4_sealed_bodies_open_to_the_vector_plaintexts() {
    let private = PrivateKey::new(V2_SECRET);
    let params = json!({ "sealed": V4_PARAMS });
    let result = json!({ "sealed": V4_RESULT });
    assert_eq!(private.open(Way::Request, &params), Ok(Value::Null));
    assert_eq!(
        private.open(Way::Reply, &result),
        Ok(json!({"agent_time": 1_763_000_001_002u64}))
    );
    // The associated data names the direction.
    assert_eq!(
        private.open(Way::Reply, &params),
        Err(PrivateError::Decrypt)
    );
    assert_eq!(
        private.open(Way::Request, &result),
        Err(PrivateError::Decrypt)
    );
    // Another secret, or "sealed" beside another key, does not open.
    assert_eq!(
        PrivateKey::new(V1_SECRET).open(Way::Request, &params),
        Err(PrivateError::Decrypt)
    );
    assert_eq!(
        private.open(Way::Request, &json!({ "sealed": V4_PARAMS, "x": 1 })),
        Err(PrivateError::NotSealed)
    );
}

#[test]
fn v5_ping_exchange() {
    let key = MacKey::new(V2_SECRET);
    let private = PrivateKey::new(V2_SECRET);
    let request = Request {
        id: 123_456_789.into(),
        method: "ping".into(),
        params: json!({ "sealed": V4_PARAMS }),
        timeout_ms: 500,
        reply_to: "manager".into(),
    };
    let wire = envelope::seal(&key, "manager", 1_763_000_001_000, &request);
    assert_eq!(String::from_utf8(wire).unwrap(), V5_REQUEST);
    let opened = envelope::open::<Request>(V5_REQUEST.as_bytes(), &key).unwrap();
    assert_eq!(opened.from, "manager");
    assert_eq!(opened.body, request);
    assert_eq!(
        private.open(Way::Request, &opened.body.params),
        Ok(Value::Null)
    );

    let reply = Reply {
        id: 123_456_789.into(),
        result: Outcome::Ok(json!({ "sealed": V4_RESULT })),
    };
    let wire = envelope::seal(&key, "edge-1", 1_763_000_001_003, &reply);
    assert_eq!(String::from_utf8(wire).unwrap(), V5_REPLY);
    let opened = envelope::open::<Reply>(V5_REPLY.as_bytes(), &key).unwrap();
    assert_eq!(opened.body, reply);

    let busy = Reply {
        id: 123_456_789.into(),
        result: Outcome::Err(RpcError::new(
            ErrorCode::Busy,
            "too many calls in flight on this agent",
        )),
    };
    let wire = envelope::seal(&key, "edge-1", 1_763_000_001_003, &busy);
    assert_eq!(String::from_utf8(wire).unwrap(), V5_ERROR);

    // A request is not a reply: the kind is checked before the MAC.
    assert!(matches!(
        envelope::open::<Reply>(V5_REQUEST.as_bytes(), &key),
        Err(EnvelopeError::WrongKind { .. })
    ));
}

#[test]
fn kinds_are_the_documented_names() {
    for (kind, name) in [
        (Kind::Presence, "presence"),
        (Kind::State, "state"),
        (Kind::Request, "request"),
        (Kind::Reply, "reply"),
        (Kind::Keys, "keys"),
        (Kind::Index, "index"),
        (Kind::IndexAck, "index_ack"),
    ] {
        assert_eq!(kind.as_str(), name);
    }
    assert_eq!(<Presence as Message>::KIND, Kind::Presence);
}
