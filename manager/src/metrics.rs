//! What the manager counts between scrapes (RPC, WHEP signaling, the recording index). Gauges
//! of the fleet (agents, streams, readers, tunnels) are read from their owners at scrape time;
//! `http::metrics` writes both in Prometheus' text format.

use verge_protocol::metrics::{Counters, Histogram, Histograms, LATENCY_BUCKETS};

pub struct Metrics {
    /// RPC round trips that got an answer (result or agent error), by method.
    pub rpc_seconds: Histograms,
    /// RPCs that failed, by method and code (the agent's error code, or `timeout`, `offline`…).
    pub rpc_errors: Counters,
    /// WHEP offers by HTTP status of the answer.
    pub whep_offers: Counters,
    /// From a WHEP offer's arrival to its answer, for offers answered 201.
    pub whep_signaling_seconds: Histogram,
    /// Index events from agents by result (`accepted`, `refused`, `queue_full`, `db_down`).
    pub index_events: Counters,
    /// Index rows by result (`stored`, `refused`, `failed`).
    pub index_rows: Counters,
    /// Database operations by kind (`upsert`, `health`).
    pub database_seconds: Histograms,
    /// WebRTC viewers placed, by outcome (`origin`, `origin_over`, `relay`, `new_relay`,
    /// `relay_failed`, `full`).
    pub placements: Counters,
    /// From asking a cloud node for a relay to the source's answer applied.
    pub relay_start_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rpc_seconds: Histograms::new(LATENCY_BUCKETS),
            rpc_errors: Counters::default(),
            whep_offers: Counters::default(),
            whep_signaling_seconds: Histogram::new(LATENCY_BUCKETS),
            index_events: Counters::default(),
            index_rows: Counters::default(),
            database_seconds: Histograms::new(LATENCY_BUCKETS),
            placements: Counters::default(),
            relay_start_seconds: Histogram::new(LATENCY_BUCKETS),
        }
    }
}
