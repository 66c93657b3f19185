//! The tunnel: reliable, ordered, flow-controlled TCP byte streams between the manager and one
//! agent, carried over MQTT and sealed end to end. Sans-IO: bytes and time in, packets and
//! events out; the agent's and the manager's tasks own the sockets and the MQTT link.
//!
//! - [`frame`]: the frames (open, data, ack, fin, reset, keepalive) and their codec.
//! - [`stream`]: one stream's state machine: offsets, credit, in-order delivery, resends.
//! - [`mux`]: many streams over one link: ids, opens and refusals, round-robin packets.
//! - [`seal`]: every packet encrypted and authenticated (ChaCha20-Poly1305) under a key of its
//!   direction and sender epoch, derived from the agent's secret; replays refused.
//!
//! A packet's path: an application writes into a [`stream::Stream`] of a [`mux::Mux`];
//! [`mux::Mux::poll_packet`] packs frames of several streams into one packet; a
//! [`seal::Sealer`] seals it and the task publishes it on the tunnel topic. At the far end a
//! [`seal::Opener`] opens it (or refuses it: forged, replayed, stale) and
//! [`mux::Mux::handle_packet`] hands each frame to its stream, whose bytes the task writes to
//! the socket it dialled.

pub mod frame;
pub mod mux;
pub mod seal;
pub mod stream;
