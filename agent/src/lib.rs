//! The Verge edge agent. It connects *out* to the fleet's MQTT broker, so it works behind NAT.
//!
//! - [`config`]: the `agent.toml` keys.
//! - [`session`]: the MQTT session: retained presence with an `offline` last will, retained
//!   state, the RPC server, the goodbye on shutdown.
//! - [`rpc`]: the methods the manager can call.
//! - [`state`]: the live snapshot the session publishes when it changes.
//!
//! A call's path: the manager publishes a signed request on `{p}/v1/a/{id}/req`; the link task
//! hands it to [`session::run`]'s loop, which opens it, checks it is not a replay, and runs
//! [`rpc::dispatch`] on a task of its own; the signed reply goes to the manager's `res` topic.

pub mod config;
pub mod rpc;
pub mod session;
pub mod state;

pub use config::AgentConfig;
pub use session::{AgentError, run};
pub use state::StateHandle;
