//! The last hour of the numbers the manager already has, per stream and per node, at
//! [`STEP`] resolution, for "what happened in the last hour" (`GET /api/streams/{stream}/history`,
//! `GET /api/nodes/{id}/history`), and the fleet's events (publishers started and stopped,
//! nodes online and offline).
//!
//! A sampler reads the registry (the agents' retained reports), the tunnel links and the
//! liveion nodes every [`STEP`]; nothing new is measured, and nothing is stored: the history
//! starts again at a restart. Bounded: [`SAMPLES`] points per series (a ring), a series whose
//! subject has been gone for an hour is dropped, at most [`MAX_SERIES`] series of each kind
//! and [`MAX_EVENTS`] events. A point is packed (no `Option`s, 4-byte numbers): 24 bytes a
//! stream and 28 a node, so an hour costs 8.4 KiB per stream and 9.8 KiB per node (see
//! `docs/architecture.md`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::liveion::Liveion;
use crate::registry::Registry;
use crate::tunnel::Tunnels;

/// One sample every this long.
pub const STEP: Duration = Duration::from_secs(10);
/// Points kept per series: an hour.
pub const SAMPLES: usize = 360;
/// Series kept of each kind (streams, nodes).
pub const MAX_SERIES: usize = 20_000;
/// Events kept.
pub const MAX_EVENTS: usize = 2_000;
/// "No value" in a packed field.
const NONE: u32 = u32::MAX;

/// One sample of a stream (packed; see [`StreamPoint`] for what the API shows).
#[derive(Debug, Clone, Copy, PartialEq)]
struct StreamSample {
    /// Unix seconds.
    t: u32,
    bitrate_kbps: u32,
    /// Frames per second × 100.
    fps_centi: u32,
    /// Viewers, players, recorders of the published copy.
    readers: u32,
    /// Readers of the relays' copies (cloud nodes, liveion cascades).
    relay_readers: u32,
    relays: u32,
}

/// One sample of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
struct NodeSample {
    t: u32,
    online: bool,
    streams: u16,
    viewers: u32,
    egress_kbps: u32,
    /// Round trip of the last RPC, tenths of a millisecond.
    rtt_deci_ms: u32,
    /// Sealed tunnel bytes per second over the step, kbit/s, to and from the node.
    tunnel_down_kbps: u32,
    tunnel_up_kbps: u32,
}

/// A point of `GET /api/streams/{stream}/history`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamPoint {
    /// Unix ms.
    pub t: u64,
    pub bitrate_kbps: Option<u32>,
    pub fps: Option<f64>,
    pub readers: u32,
    pub relay_readers: u32,
    pub relays: u32,
}

/// A point of `GET /api/nodes/{id}/history`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePoint {
    pub t: u64,
    pub online: bool,
    pub streams: u32,
    pub viewers: u32,
    pub egress_kbps: Option<u32>,
    pub rtt_ms: Option<f64>,
    pub tunnel_down_kbps: Option<u32>,
    pub tunnel_up_kbps: Option<u32>,
}

/// Something that happened, as the event strip shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// Unix ms.
    pub t: u64,
    /// `publish_start`, `publish_stop`, `online`, `offline`.
    pub kind: &'static str,
    /// The stream (`app/name`) or the node.
    pub subject: String,
    /// Where: the stream's node (empty for a node's own event).
    pub node: String,
}

/// What a history answer holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Series<P> {
    pub id: String,
    pub step_ms: u64,
    pub points: Vec<P>,
    pub events: Vec<Event>,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, VecDeque<StreamSample>>,
    nodes: HashMap<String, VecDeque<NodeSample>>,
    events: VecDeque<Event>,
    /// Last sample's live streams (with their node) and online nodes, for events.
    live: HashMap<String, String>,
    online: HashMap<String, bool>,
    /// Cumulative tunnel bytes (down, up) per node at the last sample.
    tunnel_bytes: HashMap<String, (u64, u64)>,
}

/// What the sampler saw at one instant (built by [`History::observe`]'s caller or the
/// sampler; pure input, so tests need no fleet).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Unix ms.
    pub at: u64,
    /// Per stream: its node, bitrate, fps, readers; relays' copies and readers.
    pub streams: Vec<StreamObs>,
    pub nodes: Vec<NodeObs>,
}

#[derive(Debug, Default, Clone)]
pub struct StreamObs {
    pub id: String,
    pub node: String,
    pub bitrate_kbps: Option<u32>,
    pub fps: Option<f64>,
    pub readers: u32,
    pub relays: u32,
    pub relay_readers: u32,
}

#[derive(Debug, Default, Clone)]
pub struct NodeObs {
    pub id: String,
    pub online: bool,
    pub streams: u32,
    pub viewers: u32,
    pub egress_kbps: Option<u32>,
    pub rtt_ms: Option<f64>,
    /// Cumulative sealed tunnel bytes (to the node, from the node), while a link is up.
    pub tunnel_bytes: Option<(u64, u64)>,
}

#[derive(Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

fn packed(v: Option<u32>) -> u32 {
    v.map_or(NONE, |v| v.min(NONE - 1))
}

fn unpacked(v: u32) -> Option<u32> {
    (v != NONE).then_some(v)
}

fn push<T>(ring: &mut VecDeque<T>, point: T) {
    if ring.len() >= SAMPLES {
        ring.pop_front();
    }
    ring.push_back(point);
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample.
    pub fn observe(&self, snap: &Snapshot) {
        let t = (snap.at / 1000) as u32;
        let step_secs = STEP.as_secs_f64();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let event = |events: &mut VecDeque<Event>, kind, subject: &str, node: &str| {
            if events.len() >= MAX_EVENTS {
                events.pop_front();
            }
            events.push_back(Event {
                t: snap.at,
                kind,
                subject: subject.to_string(),
                node: node.to_string(),
            });
        };
        let live: HashMap<String, String> = snap
            .streams
            .iter()
            .map(|s| (s.id.clone(), s.node.clone()))
            .collect();
        for (id, node) in &live {
            if !inner.live.contains_key(id) {
                event(&mut inner.events, "publish_start", id, node);
            }
        }
        for (id, node) in &inner.live {
            if !live.contains_key(id) {
                event(&mut inner.events, "publish_stop", id, node);
            }
        }
        inner.live = live;
        for s in &snap.streams {
            if !inner.streams.contains_key(&s.id) && inner.streams.len() >= MAX_SERIES {
                continue;
            }
            let ring = inner.streams.entry(s.id.clone()).or_default();
            push(
                ring,
                StreamSample {
                    t,
                    bitrate_kbps: packed(s.bitrate_kbps),
                    fps_centi: packed(s.fps.map(|f| (f * 100.0).round().max(0.0) as u32)),
                    readers: s.readers,
                    relay_readers: s.relay_readers,
                    relays: s.relays,
                },
            );
        }
        for n in &snap.nodes {
            let was = inner.online.insert(n.id.clone(), n.online);
            if was != Some(n.online) && (was.is_some() || n.online) {
                let kind = if n.online { "online" } else { "offline" };
                event(&mut inner.events, kind, &n.id, "");
            }
            let rates = match (n.tunnel_bytes, inner.tunnel_bytes.get(&n.id)) {
                (Some((down, up)), Some(&(d0, u0))) if down >= d0 && up >= u0 => (
                    Some(((down - d0) as f64 * 8.0 / 1000.0 / step_secs).round() as u32),
                    Some(((up - u0) as f64 * 8.0 / 1000.0 / step_secs).round() as u32),
                ),
                _ => (None, None),
            };
            match n.tunnel_bytes {
                Some(bytes) => inner.tunnel_bytes.insert(n.id.clone(), bytes),
                None => inner.tunnel_bytes.remove(&n.id),
            };
            if !inner.nodes.contains_key(&n.id) && inner.nodes.len() >= MAX_SERIES {
                continue;
            }
            let ring = inner.nodes.entry(n.id.clone()).or_default();
            push(
                ring,
                NodeSample {
                    t,
                    online: n.online,
                    streams: n.streams.min(u32::from(u16::MAX)) as u16,
                    viewers: n.viewers,
                    egress_kbps: packed(n.egress_kbps),
                    rtt_deci_ms: packed(n.rtt_ms.map(|ms| (ms * 10.0).round().max(0.0) as u32)),
                    tunnel_down_kbps: packed(rates.0),
                    tunnel_up_kbps: packed(rates.1),
                },
            );
        }
        // Series whose last point is an hour old have nothing left to show.
        let horizon = t.saturating_sub((SAMPLES as u64 * STEP.as_secs()) as u32);
        inner
            .streams
            .retain(|_, r| r.back().is_some_and(|p| p.t > horizon));
        inner
            .nodes
            .retain(|_, r| r.back().is_some_and(|p| p.t > horizon));
    }

    fn events_of(inner: &Inner, subject: &str) -> Vec<Event> {
        inner
            .events
            .iter()
            .filter(|e| e.subject == subject || e.node == subject)
            .cloned()
            .collect()
    }

    /// A stream's last hour, `None` if it has none.
    pub fn stream(&self, id: &str) -> Option<Series<StreamPoint>> {
        let inner = self.lock();
        let ring = inner.streams.get(id)?;
        Some(Series {
            id: id.to_string(),
            step_ms: STEP.as_millis() as u64,
            points: ring
                .iter()
                .map(|p| StreamPoint {
                    t: u64::from(p.t) * 1000,
                    bitrate_kbps: unpacked(p.bitrate_kbps),
                    fps: unpacked(p.fps_centi).map(|c| f64::from(c) / 100.0),
                    readers: p.readers,
                    relay_readers: p.relay_readers,
                    relays: p.relays,
                })
                .collect(),
            events: Self::events_of(&inner, id),
        })
    }

    /// A node's last hour, `None` if it has none.
    pub fn node(&self, id: &str) -> Option<Series<NodePoint>> {
        let inner = self.lock();
        let ring = inner.nodes.get(id)?;
        Some(Series {
            id: id.to_string(),
            step_ms: STEP.as_millis() as u64,
            points: ring
                .iter()
                .map(|p| NodePoint {
                    t: u64::from(p.t) * 1000,
                    online: p.online,
                    streams: u32::from(p.streams),
                    viewers: p.viewers,
                    egress_kbps: unpacked(p.egress_kbps),
                    rtt_ms: unpacked(p.rtt_deci_ms).map(|d| f64::from(d) / 10.0),
                    tunnel_down_kbps: unpacked(p.tunnel_down_kbps),
                    tunnel_up_kbps: unpacked(p.tunnel_up_kbps),
                })
                .collect(),
            events: Self::events_of(&inner, id),
        })
    }

    /// The fleet's events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    /// Samples every [`STEP`] until the task is dropped.
    pub async fn run(self, registry: Arc<Registry>, tunnels: Tunnels, liveion: Liveion) {
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snap = snapshot(&registry, &tunnels, &liveion).await;
            self.observe(&snap);
        }
    }
}

/// What the registry, the tunnel links and the liveion nodes say now.
async fn snapshot(registry: &Registry, tunnels: &Tunnels, liveion: &Liveion) -> Snapshot {
    let records = registry.list();
    let mut streams: HashMap<String, StreamObs> = HashMap::new();
    let mut nodes = Vec::with_capacity(records.len());
    // Relays' copies add to their stream's numbers.
    let mut relayed: Vec<(String, u32)> = Vec::new();
    for r in &records {
        let online = r.online();
        let mut obs = NodeObs {
            id: r.id.clone(),
            online,
            rtt_ms: r.last_rtt_ms,
            ..NodeObs::default()
        };
        if online && let Some(state) = &r.state {
            obs.streams = state.streams.len() as u32;
            obs.viewers = state.streams.iter().map(|s| s.readers).sum();
            obs.egress_kbps = state.egress_kbps;
            for s in &state.streams {
                if s.relay.is_some() {
                    relayed.push((s.id(), s.readers));
                    continue;
                }
                streams.insert(
                    s.id(),
                    StreamObs {
                        id: s.id(),
                        node: r.id.clone(),
                        bitrate_kbps: s.bitrate_kbps,
                        fps: s.fps,
                        readers: s.readers,
                        ..StreamObs::default()
                    },
                );
            }
        }
        if online {
            obs.tunnel_bytes = tunnels
                .stats(&r.id)
                .await
                .map(|s| (s.bytes_out, s.bytes_in));
        }
        nodes.push(obs);
    }
    for (alias, s) in liveion.streams() {
        let id = format!("live/{}", s.id);
        let readers = s.subscribers() as u32;
        let bitrate = s
            .rest
            .get("stats")
            .and_then(|st| st.get("publish"))
            .and_then(|p| p.get("bitrate"))
            .and_then(serde_json::Value::as_u64)
            .map(|bps| (bps / 1000) as u32);
        if s.pulled_from().is_some() && streams.contains_key(&id) {
            relayed.push((id, readers));
        } else if s.has_publisher() {
            streams.entry(id.clone()).or_insert(StreamObs {
                id,
                node: alias,
                bitrate_kbps: bitrate,
                readers,
                ..StreamObs::default()
            });
        }
    }
    for (id, readers) in relayed {
        if let Some(s) = streams.get_mut(&id) {
            s.relays += 1;
            s.relay_readers += readers;
        }
    }
    Snapshot {
        at: verge_protocol::now_ms(),
        streams: streams.into_values().collect(),
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: &str, kbps: u32, readers: u32) -> StreamObs {
        StreamObs {
            id: id.into(),
            node: "edge-1".into(),
            bitrate_kbps: Some(kbps),
            fps: Some(25.0),
            readers,
            ..StreamObs::default()
        }
    }

    fn node(id: &str, online: bool, tunnel: Option<(u64, u64)>) -> NodeObs {
        NodeObs {
            id: id.into(),
            online,
            streams: 1,
            viewers: 2,
            egress_kbps: Some(3000),
            rtt_ms: Some(12.34),
            tunnel_bytes: tunnel,
        }
    }

    #[test]
    fn an_hour_is_kept_with_events_and_rates() {
        let h = History::default();
        let t0 = 1_796_500_000_000u64;
        for i in 0..(SAMPLES as u64 + 40) {
            let streams = if (100..110).contains(&i) {
                vec![]
            } else {
                vec![stream("live/cam", 1500 + i as u32, i as u32 % 3)]
            };
            let online = !(200..203).contains(&i);
            h.observe(&Snapshot {
                at: t0 + i * 10_000,
                streams,
                nodes: vec![node("edge-1", online, Some((i * 125_000, i * 12_500)))],
            });
        }
        let s = h.stream("live/cam").unwrap();
        assert_eq!(s.points.len(), SAMPLES, "a ring of an hour");
        let last = s.points.last().unwrap();
        assert_eq!(last.bitrate_kbps, Some(1500 + SAMPLES as u32 + 39));
        assert_eq!(last.fps, Some(25.0));
        assert!(s.points.windows(2).all(|w| w[1].t > w[0].t));
        let n = h.node("edge-1").unwrap();
        let p = n.points.last().unwrap();
        // 125 kB more every 10 s to the node: 100 kbit/s; 12.5 kB from it: 10 kbit/s.
        assert_eq!(
            (p.tunnel_down_kbps, p.tunnel_up_kbps),
            (Some(100), Some(10))
        );
        assert_eq!(p.rtt_ms, Some(12.3));
        let kinds: Vec<&str> = h.events().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "publish_start",
                "online",
                "publish_stop",
                "publish_start",
                "offline",
                "online"
            ]
        );
        assert!(h.stream("live/other").is_none());
    }

    #[test]
    fn gone_series_are_dropped_and_everything_is_bounded() {
        let h = History::default();
        let t0 = 1_796_500_000_000u64;
        h.observe(&Snapshot {
            at: t0,
            streams: vec![stream("live/old", 1, 0)],
            nodes: vec![],
        });
        for i in 1..=(SAMPLES as u64) {
            h.observe(&Snapshot {
                at: t0 + i * 10_000,
                streams: vec![],
                nodes: vec![],
            });
        }
        assert!(h.stream("live/old").is_none(), "an hour after its end");
        let many: Vec<StreamObs> = (0..MAX_SERIES + 5)
            .map(|i| stream(&format!("live/s{i}"), 1, 0))
            .collect();
        h.observe(&Snapshot {
            at: t0 + 4_000_000,
            streams: many,
            nodes: vec![],
        });
        assert_eq!(h.lock().streams.len(), MAX_SERIES);
        assert!(h.events().len() <= MAX_EVENTS);
        // A packed point is as small as written down.
        assert_eq!(std::mem::size_of::<StreamSample>(), 24);
        assert_eq!(std::mem::size_of::<NodeSample>(), 28);
    }
}
