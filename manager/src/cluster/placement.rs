//! Where a stream's next WebRTC viewer goes: a pure function of what the nodes report and
//! what this manager placed since ([`Pending`]), so it is tested without a fleet.
//!
//! The node where the stream is published (its *origin*, usually a box on a thin uplink)
//! serves the first `edge_viewers` viewers while it has room; then a cloud node already
//! relaying the stream, the one with the most room; then a cloud node that starts a relay,
//! again the one with the most room, pulling from the origin while the origin's uplink takes one
//! more copy, or else from a relay (never making a loop). With no cloud node to go to, the
//! origin serves whoever it has room for, as without a cluster. Room is the smaller of what is
//! left of `sub_max` (viewers) and of `egress_kbps` (in viewers of this stream's bitrate).

use std::collections::BTreeMap;

use verge_protocol::relay::{NodeRole, RelayOf};

use crate::registry::AgentRecord;

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub role: NodeRole,
    /// Most viewers (0: no limit).
    pub sub_max: u32,
    /// Most egress, kbit/s (0: no limit).
    pub egress_max_kbps: u32,
    /// Readers of all its streams (viewers, players, relays pulling from it).
    pub viewers: u32,
    /// What those readers take, kbit/s (readers × bitrate, or the measured egress if larger).
    pub load_kbps: u32,
    /// Its streams, by `{app}/{name}`.
    pub streams: BTreeMap<String, Stream>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stream {
    /// Set on a relay's copy.
    pub relay: Option<RelayOf>,
    pub readers: u32,
    pub bitrate_kbps: u32,
}

impl Node {
    /// Builds the view of an online agent from its presence and state.
    pub fn from_record(r: &AgentRecord) -> Option<Self> {
        let presence = r.presence.as_ref()?;
        let mut node = Self {
            id: r.id.clone(),
            role: presence.role,
            sub_max: u32::from(presence.sub_max),
            egress_max_kbps: presence.egress_max_kbps,
            viewers: 0,
            load_kbps: 0,
            streams: BTreeMap::new(),
        };
        let measured = r.state.as_ref().and_then(|s| s.egress_kbps).unwrap_or(0);
        for s in r.state.iter().flat_map(|s| s.streams.iter()) {
            let stream = Stream {
                relay: s.relay.clone(),
                readers: s.readers,
                bitrate_kbps: s.bitrate_kbps.unwrap_or(0),
            };
            node.viewers += stream.readers;
            node.load_kbps += stream.readers * stream.bitrate_kbps;
            node.streams.insert(s.id(), stream);
        }
        node.load_kbps = node.load_kbps.max(measured);
        Some(node)
    }

    /// One more reader of a `kbps` stream, placed but not reported yet.
    pub fn add_reader(&mut self, stream: &str, kbps: u32) {
        self.viewers += 1;
        self.load_kbps += kbps;
        if let Some(s) = self.streams.get_mut(stream) {
            s.readers += 1;
        }
    }

    /// How many more readers of a `kbps` stream this node takes.
    pub fn room(&self, kbps: u32) -> u32 {
        let by_count = match self.sub_max {
            0 => u32::MAX,
            max => max.saturating_sub(self.viewers),
        };
        let by_egress = match (self.egress_max_kbps, kbps) {
            (0, _) | (_, 0) => u32::MAX,
            (max, kbps) => max.saturating_sub(self.load_kbps) / kbps,
        };
        by_count.min(by_egress)
    }

    /// The chain a relay pulling from this node's copy of `stream` reports: `(source, via)`.
    fn as_source(&self, stream: &str) -> (String, Vec<String>) {
        let via = self
            .streams
            .get(stream)
            .and_then(|s| s.relay.as_ref())
            .map(|r| {
                let mut chain = r.via.clone();
                chain.push(r.source.clone());
                chain
            })
            .unwrap_or_default();
        (self.id.clone(), via)
    }
}

/// Where the viewer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The origin serves it (`over`: past `edge_viewers`, because no cloud node has room).
    Origin { node: String, over: bool },
    /// A cloud node already relaying the stream serves it.
    Relay { node: String },
    /// Start a relay on `node` pulling from `source` (whose own chain is `via`), then serve it
    /// there.
    NewRelay {
        node: String,
        source: String,
        via: Vec<String>,
    },
}

impl Placement {
    /// The node the viewer's offer goes to.
    pub fn node(&self) -> &str {
        match self {
            Placement::Origin { node, .. }
            | Placement::Relay { node }
            | Placement::NewRelay { node, .. } => node,
        }
    }

    /// The label of `verge_placements_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Placement::Origin { over: false, .. } => "origin",
            Placement::Origin { over: true, .. } => "origin_over",
            Placement::Relay { .. } => "relay",
            Placement::NewRelay { .. } => "new_relay",
        }
    }
}

/// Why no node takes the viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPlace {
    /// No online node publishes the stream.
    NotLive,
    /// Every node that could serve it is full.
    Full(String),
}

/// Places one viewer of `stream` among the online `nodes`.
pub fn place<'a>(nodes: &'a [Node], stream: &str, edge_viewers: u32) -> Result<Placement, NoPlace> {
    let Some(origin) = nodes
        .iter()
        .find(|n| n.streams.get(stream).is_some_and(|s| s.relay.is_none()))
    else {
        return Err(NoPlace::NotLive);
    };
    let kbps = origin.streams[stream].bitrate_kbps;
    // Copies leaving the origin for relays are readers of it, not its viewers.
    let relays_from_origin = nodes
        .iter()
        .filter(|n| relays(n, stream).is_some_and(|r| r.source == origin.id))
        .count() as u32;
    let direct = origin.streams[stream]
        .readers
        .saturating_sub(relays_from_origin);
    let origin_room = origin.room(kbps);
    if direct < edge_viewers && origin_room > 0 {
        return Ok(Placement::Origin {
            node: origin.id.clone(),
            over: false,
        });
    }
    let clouds: Vec<&Node> = nodes.iter().filter(|n| n.role == NodeRole::Cloud).collect();
    let roomiest = |candidates: &[&'a Node], least: u32| roomiest(candidates, kbps, least);
    let relaying: Vec<&Node> = clouds
        .iter()
        .copied()
        .filter(|n| relays(n, stream).is_some())
        .collect();
    // When the origin cannot send another copy, relays keep a reader's room to feed the next
    // relay from.
    let reserve = if origin_room > 0 { 1 } else { 2 };
    if let Some(node) = roomiest(&relaying, reserve) {
        return Ok(Placement::Relay {
            node: node.id.clone(),
        });
    }
    let fresh: Vec<&Node> = clouds
        .iter()
        .copied()
        .filter(|n| !n.streams.contains_key(stream))
        .collect();
    if let Some(node) = roomiest(&fresh, 1) {
        // The origin sends one more copy while its uplink takes it; else a relay with room
        // does (the target holds no copy, so it is in no relay's chain: no loop).
        let source = if origin_room > 0 {
            origin
        } else {
            let chains = relaying
                .iter()
                .copied()
                .filter(|r| r.as_source(stream).1.len() + 1 < verge_protocol::relay::MAX_CHAIN)
                .collect::<Vec<_>>();
            roomiest(&chains, 1).unwrap_or(origin)
        };
        let (source, via) = source.as_source(stream);
        return Ok(Placement::NewRelay {
            node: node.id.clone(),
            source,
            via,
        });
    }
    if let Some(node) = roomiest(&relaying, 1) {
        return Ok(Placement::Relay {
            node: node.id.clone(),
        });
    }
    if origin_room > 0 {
        return Ok(Placement::Origin {
            node: origin.id.clone(),
            over: !clouds.is_empty(),
        });
    }
    // Without a cloud node, the origin decides for itself (and answers busy when full).
    if clouds.is_empty() {
        return Ok(Placement::Origin {
            node: origin.id.clone(),
            over: false,
        });
    }
    Err(NoPlace::Full(format!(
        "no node has room for another viewer of {}: its origin {} and {} cloud node(s) are full",
        verge_protocol::whep::stream_path(stream),
        origin.id,
        clouds.len()
    )))
}

/// Whether the next viewer of `stream` is past what Verge's own nodes should carry: the
/// origin has served its `edge_viewers` (or is full) and no cloud node takes the viewer. Then
/// a node outside Verge (a liveion node, `crate::liveion`) may take it instead.
pub fn overflows(nodes: &[Node], stream: &str, edge_viewers: u32) -> bool {
    match place(nodes, stream, edge_viewers) {
        Ok(Placement::Relay { .. } | Placement::NewRelay { .. }) | Err(NoPlace::NotLive) => false,
        Ok(Placement::Origin { over: true, .. }) | Err(NoPlace::Full(_)) => true,
        Ok(Placement::Origin { node, over: false }) => {
            let Some(origin) = nodes.iter().find(|n| n.id == node) else {
                return false;
            };
            let relays_from_origin = nodes
                .iter()
                .filter(|n| relays(n, stream).is_some_and(|r| r.source == origin.id))
                .count() as u32;
            let direct = origin
                .streams
                .get(stream)
                .map_or(0, |s| s.readers.saturating_sub(relays_from_origin));
            direct >= edge_viewers
        }
    }
}

/// The node with the most room for a `kbps` reader (at least `least`); the first by id among
/// equals.
fn roomiest<'a>(candidates: &[&'a Node], kbps: u32, least: u32) -> Option<&'a Node> {
    candidates
        .iter()
        .map(|n| (n.room(kbps), *n))
        .filter(|(room, _)| *room >= least)
        .max_by(|(a, na), (b, nb)| a.cmp(b).then(nb.id.cmp(&na.id)))
        .map(|(_, n)| n)
}

/// The relay of `stream` on `node`, if it holds one.
fn relays<'a>(node: &'a Node, stream: &str) -> Option<&'a RelayOf> {
    node.streams.get(stream).and_then(|s| s.relay.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAM: &str = "live/cam";

    fn node(id: &str, role: NodeRole, sub_max: u32, egress: u32) -> Node {
        Node {
            id: id.into(),
            role,
            sub_max,
            egress_max_kbps: egress,
            viewers: 0,
            load_kbps: 0,
            streams: BTreeMap::new(),
        }
    }

    fn with_stream(mut n: Node, relay: Option<&str>, readers: u32) -> Node {
        n.streams.insert(
            CAM.into(),
            Stream {
                relay: relay.map(|source| RelayOf {
                    source: source.into(),
                    via: vec![],
                    session: None,
                }),
                readers,
                bitrate_kbps: 1500,
            },
        );
        n.viewers += readers;
        n.load_kbps += readers * 1500;
        n
    }

    fn place_many(nodes: &mut [Node], n: usize) -> Vec<Placement> {
        let mut out = Vec::new();
        for _ in 0..n {
            let p = place(nodes, CAM, 2).unwrap();
            // What the manager records as pending: the viewer, and a new relay's copy.
            if let Placement::NewRelay { node, source, via } = &p {
                let kbps = 1500;
                let target = nodes.iter_mut().find(|x| x.id == *node).unwrap();
                target.streams.insert(
                    CAM.into(),
                    Stream {
                        relay: Some(RelayOf {
                            source: source.clone(),
                            via: via.clone(),
                            session: None,
                        }),
                        readers: 0,
                        bitrate_kbps: kbps,
                    },
                );
                nodes
                    .iter_mut()
                    .find(|x| x.id == *source)
                    .unwrap()
                    .add_reader(CAM, kbps);
            }
            let id = p.node().to_string();
            nodes
                .iter_mut()
                .find(|x| x.id == id)
                .unwrap()
                .add_reader(CAM, 1500);
            out.push(p);
        }
        out
    }

    #[test]
    fn a_stream_overflows_only_past_the_boxs_share_with_no_cloud_room() {
        // Alone, the box's first two viewers are its own; the third overflows.
        let mut alone = vec![with_stream(node("edge-1", NodeRole::Edge, 64, 0), None, 0)];
        assert!(!overflows(&alone, CAM, 2));
        alone[0].add_reader(CAM, 1500);
        alone[0].add_reader(CAM, 1500);
        assert!(overflows(&alone, CAM, 2));
        // A cloud node with room takes it instead; a full one does not.
        let mut with_cloud = alone.clone();
        with_cloud.push(node("cloud-a", NodeRole::Cloud, 1, 0));
        assert!(!overflows(&with_cloud, CAM, 2));
        with_cloud[1].viewers = 1;
        assert!(overflows(&with_cloud, CAM, 2));
        assert!(
            !overflows(&alone, "live/other", 2),
            "not live: nothing overflows"
        );
    }

    #[test]
    fn the_box_serves_its_share_then_relays_take_the_rest_one_node_at_a_time() {
        let mut nodes = vec![
            with_stream(node("edge-1", NodeRole::Edge, 64, 8000), None, 0),
            node("cloud-a", NodeRole::Cloud, 12, 0),
            node("cloud-b", NodeRole::Cloud, 12, 0),
        ];
        let placed = place_many(&mut nodes, 24);
        let on = |id: &str| placed.iter().filter(|p| p.node() == id).count();
        assert_eq!(on("edge-1"), 2, "{placed:?}");
        // A relay's node fills before another relay starts (one copy from the box per node).
        assert_eq!((on("cloud-a"), on("cloud-b")), (12, 10), "{placed:?}");
        let new_relays: Vec<_> = placed
            .iter()
            .filter(|p| matches!(p, Placement::NewRelay { .. }))
            .collect();
        assert_eq!(new_relays.len(), 2, "{placed:?}");
        // The box's uplink carries its two viewers and the relays' copies only.
        assert!(nodes[0].load_kbps <= 4 * 1500, "{}", nodes[0].load_kbps);
    }

    #[test]
    fn a_second_relay_starts_only_when_the_first_node_is_full() {
        let mut nodes = vec![
            with_stream(node("edge-1", NodeRole::Edge, 64, 0), None, 0),
            node("cloud-a", NodeRole::Cloud, 5, 0),
            node("cloud-b", NodeRole::Cloud, 5, 0),
        ];
        let placed = place_many(&mut nodes, 13);
        let starts: Vec<_> = placed
            .iter()
            .filter_map(|p| match p {
                Placement::NewRelay { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(starts, ["cloud-a", "cloud-b"], "{placed:?}");
        // 2 on the box, 5 and 5 in the cloud; then the box again, past its share.
        assert_eq!(
            placed[12],
            Placement::Origin {
                node: "edge-1".into(),
                over: true
            }
        );
    }

    #[test]
    fn an_uplink_with_no_room_for_another_copy_feeds_the_new_relay_from_a_relay() {
        // The box takes 2 viewers and one copy (3 × 1500 = 4500 kbit/s).
        let mut nodes = vec![
            with_stream(node("edge-1", NodeRole::Edge, 64, 4500), None, 0),
            node("cloud-a", NodeRole::Cloud, 3, 0),
            node("cloud-b", NodeRole::Cloud, 3, 0),
        ];
        let placed = place_many(&mut nodes, 7);
        let sources: Vec<_> = placed
            .iter()
            .filter_map(|p| match p {
                Placement::NewRelay { source, via, .. } => Some((source.clone(), via.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            sources,
            [
                ("edge-1".to_string(), vec![]),
                ("cloud-a".to_string(), vec!["edge-1".to_string()])
            ],
            "{placed:?}"
        );
    }

    #[test]
    fn without_cloud_nodes_the_origin_serves_and_decides_itself() {
        let nodes = vec![with_stream(node("edge-1", NodeRole::Edge, 2, 0), None, 2)];
        assert_eq!(
            place(&nodes, CAM, 2),
            Ok(Placement::Origin {
                node: "edge-1".into(),
                over: false
            })
        );
        assert_eq!(place(&nodes, "live/other", 2), Err(NoPlace::NotLive));
        // A cloud node holding only a relay is not an origin.
        let only_relay = vec![with_stream(
            node("cloud-a", NodeRole::Cloud, 9, 0),
            Some("x"),
            0,
        )];
        assert_eq!(place(&only_relay, CAM, 2), Err(NoPlace::NotLive));
    }

    #[test]
    fn everything_full_is_a_refusal_with_the_reason() {
        let nodes = vec![
            with_stream(node("edge-1", NodeRole::Edge, 2, 0), None, 2),
            with_stream(node("cloud-a", NodeRole::Cloud, 1, 0), Some("edge-1"), 1),
        ];
        let Err(NoPlace::Full(why)) = place(&nodes, CAM, 2) else {
            panic!("expected full");
        };
        assert!(why.contains("cam") && why.contains("edge-1"), "{why}");
    }

    #[test]
    fn room_counts_viewers_and_egress_and_zero_means_no_limit() {
        let mut n = node("x", NodeRole::Cloud, 10, 4000);
        assert_eq!(n.room(1500), 2);
        assert_eq!(n.room(0), 10);
        n.add_reader(CAM, 1500);
        assert_eq!(n.room(1500), 1);
        let unlimited = node("y", NodeRole::Cloud, 0, 0);
        assert_eq!(unlimited.room(1500), u32::MAX);
    }
}
