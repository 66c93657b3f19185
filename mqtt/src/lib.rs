//! The MQTT client link shared by the agent and the manager.
//!
//! - [`url`]: `mqtt://` and `mqtts://` broker addresses, with optional credentials.
//! - [`tls`]: the rustls client configuration (ring, system roots plus an optional CA file).
//! - [`backoff`]: jittered exponential backoff between reconnects.
//! - [`link`]: the task that owns rumqttc's `EventLoop`.
//! - [`process`]: the command line, logging, runtime and signals of both binaries.
//!
//! The tunnel rides this link (its packets reach it through [`link::Link::spawn_tapped`]) but
//! lives in the `verge-tunnel` crate.
//!
//! Measured with rumqttc and live777's net4mqtt: awaiting `client.publish()` in the same
//! `select!` that polls the event loop deadlocks once the request channel fills, and a
//! cancelled `poll()` can drop a request it had taken. So [`link::Link`] polls the event loop in
//! a task of its own, never cancels a poll, and hands incoming messages over a bounded channel.
//! Whoever reads that channel must not wait on a publish while doing so (spawn the work, or use
//! `try_publish`), or the two waits close a cycle.

pub mod backoff;
pub mod link;
pub mod process;
pub mod tls;
pub mod url;

pub use link::{Link, LinkEvent, LinkOptions};
pub use url::BrokerUrl;

/// Largest MQTT packet either side sends or accepts: room for a 1 MiB envelope plus headers.
pub const MAX_PACKET: usize = 1024 * 1024 + 64 * 1024;
