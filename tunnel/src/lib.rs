//! The tunnel: reliable, ordered, flow-controlled TCP byte streams between the manager and one
//! agent, carried over MQTT and sealed end to end (docs/protocol.md §16 is the wire format).
//!
//! The sans-IO core (bytes and time in, packets and events out; no sockets, no tasks):
//! - [`frame`]: the frames (open, data, ack, fin, reset, keepalive) and their codec, which tells
//!   "incomplete" from "invalid".
//! - [`stream`]: one stream's state machine: offsets, credit, in-order delivery, resends.
//! - [`mux`]: many streams over one link: ids, opens and refusals, round-robin packets, the
//!   link's cap on bytes in flight, round-trip probes.
//! - [`path`]: the link's round trip and delivery rate, and the in-flight cap sized from them.
//! - [`seal`]: every packet encrypted and authenticated (ChaCha20-Poly1305) under a key of its
//!   direction and sender epoch, derived from the agent's secret; replays refused.
//!
//! Flow control, in one place:
//! - [`limits`]: [`Limits`], every size and time of one end of a link (stream window, streams,
//!   bytes in flight, packet and chunk sizes, queues, resend and resume times) and where each
//!   comes from (config key, broker segments, constant); [`Limits::agent`] and
//!   [`Limits::manager`] make the two ends'.
//!
//! One end of a link, run by tokio:
//! - [`endpoint`]: the task that owns a link's mux, sealer and opener, and the application's
//!   handle on it ([`Endpoint`]: open, accept, refuse, numbers).
//! - [`bridge`]: [`TunnelStream`], the application's end of one stream, bridged to a socket
//!   with backpressure both ways.
//! - [`error`]: [`TunnelError`], why a stream could not be opened or ended early.
//! - [`over_mqtt`]: an endpoint joined to MQTT ([`MqttTunnel`]): packets published at QoS 0
//!   without waiting, packets from the peer delivered without waiting.
//!
//! A packet's path: an application writes into a [`TunnelStream`]; the endpoint's task writes
//! the bytes into its [`stream::Stream`] of the [`mux::Mux`]; [`mux::Mux::poll_packet`] packs
//! frames of several streams into one packet; a [`seal::Sealer`] seals it and [`MqttTunnel`]
//! publishes it on the tunnel topic. At the far end a [`seal::Opener`] opens it (or refuses it:
//! forged, replayed, stale), [`mux::Mux::handle_packet`] hands each frame to its stream, and the
//! endpoint moves the stream's bytes to the [`TunnelStream`] that writes them to the socket it
//! dialled.

pub mod bridge;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod limits;
pub mod mux;
pub mod over_mqtt;
pub mod path;
pub mod seal;
pub mod stream;

pub use bridge::{Moved, TunnelStream};
pub use endpoint::{Endpoint, EndpointConfig, EndpointStats, Incoming};
pub use error::TunnelError;
pub use limits::{Broker, Limits, Sizes};
pub use over_mqtt::{MqttTunnel, SharedPublish};
pub use path::PathStats;
