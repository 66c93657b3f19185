//! The envelope around every MQTT payload:
//!
//! ```json
//! {"v":1,"kind":"presence","from":"edge-1","ts":1763000000000,"body":{…},"mac":"…"}
//! ```
//!
//! `mac` is HMAC-SHA256 under the agent's secret over the kind, sender, timestamp and the exact
//! bytes of `body`, so the JSON stays readable with `mosquitto_sub` while a forged or altered
//! message is refused. Readers check in this order, each with its own error: size, JSON shape,
//! version, kind, MAC, body. Unknown fields anywhere are ignored; an unknown version is not.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::PROTOCOL_VERSION;
use crate::secret::{MacKey, hex, unhex};

/// Largest payload a reader looks at; SDP offers and tunnel frames fit with room to spare.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// What a body holds; written as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Presence,
    State,
    Request,
    Reply,
    Keys,
    Index,
    IndexAck,
    Call,
    CallReply,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Presence => "presence",
            Kind::State => "state",
            Kind::Request => "request",
            Kind::Reply => "reply",
            Kind::Keys => "keys",
            Kind::Index => "index",
            Kind::IndexAck => "index_ack",
            Kind::Call => "call",
            Kind::CallReply => "call_reply",
        }
    }
}

/// A body type and the kind it travels as.
pub trait Message: Serialize + DeserializeOwned {
    const KIND: Kind;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("payload is not a Verge envelope: {0}")]
    Malformed(String),
    #[error("envelope version {0} is not supported (this build speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion(u64),
    #[error("expected a {expected} message, got {found:?}")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
    #[error("message MAC does not verify: wrong secret or altered message")]
    BadMac,
    #[error("{kind} body is invalid: {reason}")]
    BadBody { kind: &'static str, reason: String },
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened<M> {
    pub from: String,
    pub ts: u64,
    pub body: M,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    v: u32,
    kind: &'static str,
    from: &'a str,
    ts: u64,
    body: &'a RawValue,
    mac: String,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    kind: &'a str,
    from: String,
    ts: u64,
    #[serde(borrow)]
    body: &'a RawValue,
    mac: &'a str,
}

fn mac_parts<'a>(kind: &'a str, from: &'a str, ts: &'a [u8], body: &'a str) -> [&'a [u8]; 5] {
    [
        b"verge/v1",
        kind.as_bytes(),
        from.as_bytes(),
        ts,
        body.as_bytes(),
    ]
}

/// Serializes `body` into a signed envelope from `from` at `ts` (Unix ms).
pub fn seal<M: Message>(key: &MacKey, from: &str, ts: u64, body: &M) -> Vec<u8> {
    let body = serde_json::value::to_raw_value(body).expect("message bodies serialize to JSON");
    let ts_text = ts.to_string();
    let tag = key.sign(&mac_parts(
        M::KIND.as_str(),
        from,
        ts_text.as_bytes(),
        body.get(),
    ));
    let out = Outgoing {
        v: PROTOCOL_VERSION,
        kind: M::KIND.as_str(),
        from,
        ts,
        body: &body,
        mac: hex(tag.as_ref()),
    };
    serde_json::to_vec(&out).expect("envelopes serialize to JSON")
}

/// Reads the sender without checking anything else, to pick the key for [`open`].
pub fn sender(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct From {
        from: String,
    }
    serde_json::from_slice::<From>(payload).ok().map(|f| f.from)
}

/// Checks and decodes a payload that must hold an `M`, signed with `key`.
pub fn open<M: Message>(payload: &[u8], key: &MacKey) -> Result<Opened<M>, EnvelopeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EnvelopeError::TooLarge(payload.len()));
    }
    let version: VersionOnly =
        serde_json::from_slice(payload).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if version.v != u64::from(PROTOCOL_VERSION) {
        return Err(EnvelopeError::UnsupportedVersion(version.v));
    }
    let env: Incoming<'_> =
        serde_json::from_slice(payload).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let expected = M::KIND.as_str();
    if env.kind != expected {
        return Err(EnvelopeError::WrongKind {
            expected,
            found: env.kind.to_string(),
        });
    }
    let ts_text = env.ts.to_string();
    let given = unhex(env.mac).ok_or(EnvelopeError::BadMac)?;
    if !key.verify(
        &mac_parts(env.kind, &env.from, ts_text.as_bytes(), env.body.get()),
        &given,
    ) {
        return Err(EnvelopeError::BadMac);
    }
    let body = serde_json::from_str(env.body.get()).map_err(|e| EnvelopeError::BadBody {
        kind: expected,
        reason: e.to_string(),
    })?;
    Ok(Opened {
        from: env.from,
        ts: env.ts,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
    }
    impl Message for Note {
        const KIND: Kind = Kind::State;
    }

    fn note(text: &str) -> Note {
        Note { text: text.into() }
    }

    #[test]
    fn sealed_message_opens_with_the_same_key() {
        let key = MacKey::new("s");
        let wire = seal(&key, "edge-1", 42, &note("hi"));
        let opened: Opened<Note> = open(&wire, &key).unwrap();
        assert_eq!(
            opened,
            Opened {
                from: "edge-1".into(),
                ts: 42,
                body: note("hi")
            }
        );
        assert_eq!(sender(&wire).as_deref(), Some("edge-1"));
    }

    #[test]
    fn wrong_key_or_tampering_is_refused() {
        let wire = seal(&MacKey::new("s"), "edge-1", 42, &note("hi"));
        assert_eq!(
            open::<Note>(&wire, &MacKey::new("t")),
            Err(EnvelopeError::BadMac)
        );
        let text = String::from_utf8(wire).unwrap();
        for (from, to) in [("\"hi\"", "\"ho\""), ("edge-1", "edge-2"), (":42", ":43")] {
            let forged = text.replacen(from, to, 1);
            assert_eq!(
                open::<Note>(forged.as_bytes(), &MacKey::new("s")),
                Err(EnvelopeError::BadMac)
            );
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let key = MacKey::new("s");
        let wire = String::from_utf8(seal(&key, "a", 1, &note("x"))).unwrap();
        let extended = wire.replacen("{\"v\":1,", "{\"v\":1,\"future\":[1,2],", 1);
        assert_eq!(
            open::<Note>(extended.as_bytes(), &key).unwrap().body,
            note("x")
        );
    }

    #[test]
    fn version_is_checked_before_anything_else() {
        let key = MacKey::new("s");
        let payload = br#"{"v":2,"something":"entirely different"}"#;
        assert_eq!(
            open::<Note>(payload, &key),
            Err(EnvelopeError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let key = MacKey::new("s");
        for garbage in [
            &b""[..],
            b"\xff\xfe",
            b"null",
            b"[1,2]",
            b"{\"v\":\"1\"}",
            b"{\"v\":1}",
            b"{\"v\":1,",
        ] {
            assert!(
                matches!(
                    open::<Note>(garbage, &key),
                    Err(EnvelopeError::Malformed(_))
                ),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn kind_body_and_size_are_checked() {
        let key = MacKey::new("s");
        #[derive(Debug, Serialize, Deserialize)]
        struct Other {
            n: u32,
        }
        impl Message for Other {
            const KIND: Kind = Kind::Presence;
        }
        let wire = seal(&key, "a", 1, &Other { n: 1 });
        assert!(matches!(
            open::<Note>(&wire, &key),
            Err(EnvelopeError::WrongKind { .. })
        ));

        #[derive(Debug, Serialize, Deserialize)]
        struct LooksLikeNote {
            text: u32,
        }
        impl Message for LooksLikeNote {
            const KIND: Kind = Kind::State;
        }
        let wire = seal(&key, "a", 1, &LooksLikeNote { text: 5 });
        assert!(matches!(
            open::<Note>(&wire, &key),
            Err(EnvelopeError::BadBody { .. })
        ));

        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert_eq!(
            open::<Note>(&big, &key),
            Err(EnvelopeError::TooLarge(MAX_PAYLOAD + 1))
        );
        let bad_mac = String::from_utf8(seal(&key, "a", 1, &note("x"))).unwrap();
        let bad_mac = &bad_mac[..bad_mac.len() - 3];
        assert!(open::<Note>(format!("{bad_mac}\"}}").as_bytes(), &key).is_err());
    }
}
