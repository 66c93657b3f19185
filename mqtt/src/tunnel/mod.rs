//! The tunnel's moving parts around the sans-IO core in `verge_protocol::tunnel`: the task
//! that runs one end of a link ([`endpoint`]) and the application's handle on a stream, which
//! bridges it to a socket ([`stream`]). The MQTT side (topics, the publisher task) belongs to
//! the agent's and the manager's sessions; here packets come and go over bounded channels.

pub mod endpoint;
pub mod stream;

pub use endpoint::{Endpoint, EndpointConfig, EndpointStats, Incoming, TunnelError};
pub use stream::{Moved, TunnelStream};
