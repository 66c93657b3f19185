//! Fuzzes `envelope::open`, which checks and decodes every MQTT payload a manager or an agent
//! receives, for each message type it is called with.
//!
//! Run from `protocol/`: `cargo +nightly fuzz run envelope_open` (needs `cargo install
//! cargo-fuzz`).
//!
//! A random payload never carries a valid MAC, so the input is used twice:
//! - as a payload, opened as every message type with a fixed key (and read by `sender`);
//! - if it is JSON, as the body of an envelope sealed with that key for every kind, then opened
//!   as every message type: this reaches the bodies' deserializers past the MAC.
//!
//! Besides not panicking: a body sealed for one kind is refused as any other kind
//! (`WrongKind`) and is never a MAC or shape error; whatever opens seals again and opens
//! again with the same sender and time, and the same body where a type holds no floating
//! point numbers (serde_json's default float parsing is not exact, so a float may move by one
//! unit in the last place through text).

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use verge_protocol::channel_keys::SealedKeys;
use verge_protocol::envelope::{self, EnvelopeError, Kind, Message};
use verge_protocol::index::{IndexAck, IndexEvent};
use verge_protocol::presence::Presence;
use verge_protocol::rpc::{Reply, Request};
use verge_protocol::secret::MacKey;
use verge_protocol::state::State;

const FROM: &str = "edge-1";
const TS: u64 = 1_763_000_000_000;

/// A body of any JSON, sent as the given kind.
macro_rules! raw {
    ($name:ident, $kind:expr) => {
        #[derive(Serialize, Deserialize)]
        #[serde(transparent)]
        struct $name(Box<RawValue>);
        impl Message for $name {
            const KIND: Kind = $kind;
        }
    };
}
raw!(RawPresence, Kind::Presence);
raw!(RawState, Kind::State);
raw!(RawRequest, Kind::Request);
raw!(RawReply, Kind::Reply);
raw!(RawKeys, Kind::Keys);
raw!(RawIndex, Kind::Index);
raw!(RawIndexAck, Kind::IndexAck);

fuzz_target!(|data: &[u8]| {
    let key = MacKey::new("fuzz-secret");
    open_as_every_type(data, &key, None);
    let _ = envelope::sender(data);

    let Ok(body) = serde_json::from_slice::<Box<RawValue>>(data) else {
        return;
    };
    let sealed = [
        (Kind::Presence, seal(&key, RawPresence(body.clone()))),
        (Kind::State, seal(&key, RawState(body.clone()))),
        (Kind::Request, seal(&key, RawRequest(body.clone()))),
        (Kind::Reply, seal(&key, RawReply(body.clone()))),
        (Kind::Keys, seal(&key, RawKeys(body.clone()))),
        (Kind::Index, seal(&key, RawIndex(body.clone()))),
        (Kind::IndexAck, seal(&key, RawIndexAck(body))),
    ];
    for (kind, payload) in &sealed {
        open_as_every_type(payload, &key, Some(*kind));
    }
});

fn seal<M: Message>(key: &MacKey, body: M) -> Vec<u8> {
    envelope::seal(key, FROM, TS, &body)
}

/// Opens `payload` as each message type; `sealed_as` is the kind it was sealed for by this
/// target, if it was.
fn open_as_every_type(payload: &[u8], key: &MacKey, sealed_as: Option<Kind>) {
    check::<Presence>(payload, key, sealed_as, true);
    check::<State>(payload, key, sealed_as, false);
    check::<Request>(payload, key, sealed_as, false);
    check::<Reply>(payload, key, sealed_as, false);
    check::<SealedKeys>(payload, key, sealed_as, false);
    check::<IndexEvent>(payload, key, sealed_as, true);
    check::<IndexAck>(payload, key, sealed_as, true);
}

/// `exact`: `M` holds no floats, so its body must survive sealing and opening unchanged.
fn check<M: Message + PartialEq + Debug>(
    payload: &[u8],
    key: &MacKey,
    sealed_as: Option<Kind>,
    exact: bool,
) {
    let opened = envelope::open::<M>(payload, key);
    if let Some(kind) = sealed_as {
        match &opened {
            Ok(_) | Err(EnvelopeError::BadBody { .. }) => assert_eq!(kind, M::KIND),
            Err(EnvelopeError::WrongKind { .. }) => assert_ne!(kind, M::KIND),
            Err(other) => panic!("a sealed {kind:?} opened as {:?}: {other}", M::KIND),
        }
    }
    let Ok(opened) = opened else {
        return;
    };
    let again = envelope::seal(key, &opened.from, opened.ts, &opened.body);
    let reopened = envelope::open::<M>(&again, key).expect("what opened seals and opens again");
    assert_eq!((&reopened.from, reopened.ts), (&opened.from, opened.ts));
    if exact {
        assert_eq!(reopened.body, opened.body);
    }
}
