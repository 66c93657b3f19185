//! Verge's wire contract, shared by the agent and the manager. Pure code: no sockets, no tasks.
//!
//! - [`id`]: the names of agents and managers, which become MQTT topic levels.
//! - [`topic`]: the MQTT layout (`{prefix}/v1/a/{agent}/presence`, …), built and parsed.
//! - [`secret`]: agent secrets (random, or derived per agent from one enrollment secret), the
//!   HMAC keys made from them ([`secret::MacKey`]), and comparing secrets in constant time.
//! - [`envelope`]: every MQTT payload: a version, a kind, the sender, a body and a MAC. Decoding
//!   checks the version first, then the MAC, then the body.
//! - [`sealed`]: RPC params and results sealed (ChaCha20-Poly1305) under a key derived from the
//!   agent's secret.
//! - [`presence`], [`state`]: what an agent announces (retained).
//! - [`rpc`]: requests from a manager to an agent, their replies, error codes, and the
//!   correlation table a caller keeps.
//! - [`call`]: calls the other way, from an agent to the managers (LiveGo's control API on a
//!   box's port).
//! - [`whep`]: WHEP and WHIP signaling carried over RPC, and session ids that name their agent.
//! - [`relay`]: the cluster: node roles, and the RPC that makes a cloud node relay a stream.
//! - [`channel_keys`]: the channel-key table (publishers' stream keys) the manager keeps
//!   retained for each agent, sealed for it.
//! - [`index`]: the recording index, agent to manager (rows, acknowledgements).
//! - [`livestat`]: LiveGo's `/stat/livestat` list of publishers and players, and the RPC
//!   that asks a box for it.
//! - [`time`]: UTC calendar dates from Unix time, for recordings and index rows.
//! - [`metrics`]: Prometheus' text format, and the counters and histograms behind it.
//! - [`ready`]: the ready file every process writes with `--ready-file`: the addresses its
//!   listeners really bound (port 0 allowed everywhere).
//!
//! The tunnel's packets ride the topics named here but are not envelopes: their format and
//! state machines are the `verge-tunnel` crate's.
//!
//! A message's path: the agent builds a [`presence::Presence`], seals it with
//! [`envelope::seal`] under its secret and publishes it retained on [`topic::Topics::presence`];
//! the manager parses the topic with [`topic::Topics::parse`], looks up that agent's key and
//! opens the payload with [`envelope::open`], which refuses garbage, unknown versions, a sender
//! that does not match the topic and a wrong MAC, each with its own [`envelope::EnvelopeError`].

pub mod call;
pub mod channel_keys;
pub mod envelope;
pub mod id;
pub mod index;
pub mod livestat;
pub mod metrics;
pub mod presence;
pub mod ready;
pub mod relay;
pub mod rpc;
pub mod sealed;
pub mod secret;
pub mod state;
pub mod time;
pub mod topic;
pub mod whep;

/// The version of every message this crate writes. A reader refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, the one clock format on the wire.
pub fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// [`unix_ms`] of now.
pub fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}
