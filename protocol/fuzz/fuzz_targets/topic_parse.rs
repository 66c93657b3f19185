//! Fuzzes the MQTT topic parser (`Topics::parse`), which reads the topic of every message the
//! manager and the agents receive; a topic names the agent a message is checked against.
//!
//! Run from `protocol/`: `cargo +nightly fuzz run topic_parse` (needs `cargo install
//! cargo-fuzz`).
//!
//! The input (UTF-8, as MQTT topics are) is parsed under the default prefix `verge`, and, cut
//! at its first NUL into a prefix and a topic, under that prefix when `Topics::new` accepts
//! it. Besides not panicking, a parsed topic names only valid ids, and building the topic it
//! parsed to with the matching `Topics` method gives back exactly the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_protocol::id;
use verge_protocol::topic::{Topic, Topics};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let default = Topics::new("verge").expect("the default prefix is valid");
    check(&default, text);
    if let Some((prefix, topic)) = text.split_once('\0')
        && let Ok(topics) = Topics::new(prefix)
    {
        assert!(!topics.prefix().is_empty());
        check(&topics, topic);
    }
});

fn check(topics: &Topics, topic: &str) {
    let Ok(parsed) = topics.parse(topic) else {
        return;
    };
    let (ids, built) = match &parsed {
        Topic::Presence { agent } => (vec![agent], topics.presence(agent)),
        Topic::State { agent } => (vec![agent], topics.state(agent)),
        Topic::Request { agent } => (vec![agent], topics.request(agent)),
        Topic::Reply { manager } => (vec![manager], topics.reply(manager)),
        Topic::Keys { agent } => (vec![agent], topics.keys(agent)),
        Topic::TunnelDown { agent, manager } => {
            (vec![agent, manager], topics.tunnel_down(agent, manager))
        }
        Topic::TunnelUp { manager, agent } => {
            (vec![manager, agent], topics.tunnel_up(manager, agent))
        }
        Topic::Index { agent } => (vec![agent], topics.index(agent)),
        Topic::IndexAck { agent, manager } => {
            (vec![agent, manager], topics.index_ack(agent, manager))
        }
    };
    for name in ids {
        assert!(id::validate(name).is_ok(), "{parsed:?} names {name:?}");
    }
    assert_eq!(built, topic, "{parsed:?}");
}
