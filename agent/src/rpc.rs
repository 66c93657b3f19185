//! The agent's RPC methods. Each takes the request's params and returns a JSON result or an
//! [`RpcError`]; the session does the opening, replay check, deadline and reply.

use serde::Serialize;
use serde_json::Value;
use verge_protocol::presence::Presence;
use verge_protocol::rpc::{self, ErrorCode, Pong, RpcError};
use verge_protocol::state::State;

/// What a method may read.
pub struct Context {
    pub presence: Presence,
    pub state: State,
}

/// Result of `info`.
#[derive(Debug, Serialize)]
pub struct Info {
    pub presence: Presence,
    pub state: State,
    pub uptime_ms: u64,
}

pub async fn dispatch(method: &str, _params: Value, ctx: Context) -> Result<Value, RpcError> {
    let now = verge_protocol::now_ms();
    let result = match method {
        rpc::METHOD_PING => to_value(Pong { agent_time: now }),
        rpc::METHOD_INFO => to_value(Info {
            uptime_ms: now.saturating_sub(ctx.presence.started_at),
            presence: ctx.presence,
            state: ctx.state,
        }),
        other => {
            return Err(RpcError::new(
                ErrorCode::UnknownMethod,
                format!("this agent has no method {other:?}"),
            ));
        }
    };
    result.map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))
}

fn to_value(v: impl Serialize) -> Result<Value, serde_json::Error> {
    serde_json::to_value(v)
}
