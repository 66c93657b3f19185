//! The tunnel's moving parts around the sans-IO core in `verge_protocol::tunnel`: the task
//! that runs one end of a link ([`endpoint`]) and the application's handle on a stream, which
//! bridges it to a socket ([`stream`]), and the two joined to MQTT ([`over_mqtt`]): packets
//! published at QoS 0 by a task of their own, delivered without waiting.

pub mod endpoint;
pub mod over_mqtt;
pub mod stream;

pub use endpoint::{Endpoint, EndpointConfig, EndpointStats, Incoming, LinkLimits, TunnelError};
pub use over_mqtt::{MqttTunnel, SharedPublish};
pub use stream::{Moved, TunnelStream};
