//! The cluster's part of the contract: what kind of node an agent is, and the RPC that makes a
//! cloud node *relay* (cascade) a stream from the node that holds it.
//!
//! A relay is set up by the manager in three calls, so that every call still goes from a manager
//! to an agent and the source needs nothing new: [`METHOD_RELAY_OFFER`] asks the cloud node for
//! a WHEP offer (it takes the stream's name in its hub at once, so a second relay of the same
//! stream on the same node is refused), the manager hands that offer to the source as an
//! ordinary viewer's ([`crate::whep::METHOD_OFFER`]), and [`METHOD_RELAY_ANSWER`] gives the
//! source's answer back to the cloud node, whose media then flows from source to node over
//! WebRTC like any viewer's. [`METHOD_RELAY_STOP`] ends it. The node closes a relay by itself
//! after `idle_ms` without viewers, so relays outlive a manager's restart and never need one to
//! end.
//!
//! A relay may pull from another relay (a second region). `via` carries the chain of nodes the
//! stream already passed (the origin first): a node refuses to relay a stream whose chain holds
//! its own id, so no loop can form whatever a manager asks.

use serde::{Deserialize, Serialize};

use crate::whep::IceServer;

/// `RelayOfferParams` → `RelayOfferResult`.
pub const METHOD_RELAY_OFFER: &str = "relay.offer";
/// `RelayAnswerParams` → `{}`.
pub const METHOD_RELAY_ANSWER: &str = "relay.answer";
/// `RelayStopParams` → `{}`.
pub const METHOD_RELAY_STOP: &str = "relay.stop";

/// Longest relay chain (origin included): a second region is two hops; more is a mistake.
pub const MAX_CHAIN: usize = 4;

/// What a node is for (`[node] role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// A box at the edge, usually behind NAT: its own publishers, its first viewers.
    #[default]
    Edge,
    /// A node in the cloud with a public address: relays streams and serves their viewers.
    Cloud,
}

impl NodeRole {
    pub fn is_edge(&self) -> bool {
        *self == Self::Edge
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Cloud => "cloud",
        }
    }
}

/// Where a relayed stream comes from; set on a relay's [`crate::state::StreamInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayOf {
    /// The node this copy pulls from.
    pub source: String,
    /// The nodes the stream passed before `source`, the origin first.
    pub via: Vec<String>,
    /// The relay's viewer session at the source, once answered: a manager that sees the relay
    /// gone ends it there at once, so the source's uplink does not wait for ICE to time out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayOfferParams {
    /// `{app}/{name}`.
    pub stream: String,
    /// The node to pull from.
    pub source: String,
    /// The chain before `source`, origin first (empty when `source` is the origin).
    #[serde(default)]
    pub via: Vec<String>,
    /// Servers for the relay's peer connection (the same the source gets).
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// Close the relay after this long without viewers (`[cascade] maximum_idle_time`).
    pub idle_ms: u64,
}

impl RelayOfferParams {
    /// The chain a node holding this relay reports: `via` then `source`.
    pub fn chain(&self) -> Vec<String> {
        let mut chain = self.via.clone();
        chain.push(self.source.clone());
        chain
    }

    /// Why `node` may not relay this, if it may not: it is in the chain already (a loop), or
    /// the chain is too long.
    pub fn refusal_for(&self, node: &str) -> Option<String> {
        let chain = self.chain();
        if chain.iter().any(|n| n == node) {
            return Some(format!(
                "relaying {} from {} would make a loop: the stream already passed {node}",
                self.stream, self.source
            ));
        }
        (chain.len() >= MAX_CHAIN).then(|| {
            format!(
                "relay chain for {} too long: {} nodes (most {MAX_CHAIN})",
                self.stream,
                chain.len() + 1
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayOfferResult {
    /// The relay's id, `{node}~{random}` like a session id.
    pub relay: String,
    /// The node's WHEP offer (receive only), candidates gathered.
    pub sdp: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayAnswerParams {
    pub relay: String,
    /// The source's answer to the offer.
    pub sdp: String,
    /// The source's session (for the node's logs and its `relay.stop`).
    pub session: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStopParams {
    /// `{app}/{name}`.
    pub stream: String,
    /// Why, for the node's log.
    #[serde(default)]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(source: &str, via: &[&str]) -> RelayOfferParams {
        RelayOfferParams {
            stream: "live/cam".into(),
            source: source.into(),
            via: via.iter().map(|s| s.to_string()).collect(),
            ice_servers: vec![],
            idle_ms: 60_000,
        }
    }

    #[test]
    fn a_node_never_relays_a_stream_that_passed_it() {
        assert_eq!(offer("edge-1", &[]).refusal_for("cloud-a"), None);
        assert_eq!(offer("cloud-a", &["edge-1"]).refusal_for("cloud-b"), None);
        assert_eq!(
            offer("cloud-a", &["edge-1"]).chain(),
            vec!["edge-1", "cloud-a"]
        );
        for node in ["edge-1", "cloud-a"] {
            let why = offer("cloud-a", &["edge-1"]).refusal_for(node).unwrap();
            assert!(why.contains("loop"), "{why}");
        }
        let long = offer("c3", &["edge-1", "c1", "c2"]);
        assert!(long.refusal_for("c4").unwrap().contains("too long"));
    }

    #[test]
    fn roles_default_to_edge_and_read_lowercase() {
        #[derive(Deserialize)]
        struct P {
            #[serde(default)]
            role: NodeRole,
        }
        assert_eq!(
            serde_json::from_str::<P>("{}").unwrap().role,
            NodeRole::Edge
        );
        let cloud: P = serde_json::from_str(r#"{"role":"cloud"}"#).unwrap();
        assert_eq!(cloud.role, NodeRole::Cloud);
        assert!(serde_json::from_str::<P>(r#"{"role":"fog"}"#).is_err());
        let p: RelayOfferParams =
            serde_json::from_str(r#"{"stream":"live/x","source":"e","idle_ms":5}"#).unwrap();
        assert!(p.via.is_empty() && p.ice_servers.is_empty());
    }
}
