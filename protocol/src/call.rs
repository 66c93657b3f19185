//! Calls the other way: an agent asks the managers ([`crate::rpc`] is the manager asking an
//! agent). For what only the manager can do but a box is asked for on its own port, such as
//! LiveGo's `/control/get` on a LiveGo-style single box: keys are issued centrally.
//!
//! - Call: topic `{p}/v1/a/{agent}/call`, kind `call`, QoS 0, `from` = the agent, signed with
//!   the agent's secret; params sealed ([`crate::sealed::Way::Call`]).
//! - Reply: topic `{p}/v1/a/{agent}/ret`, kind `call_reply`, QoS 0, `from` = the manager,
//!   signed with the agent's secret; an `ok` result sealed ([`crate::sealed::Way::CallReply`]).
//!
//! Ids, the reply's `result`, the error codes, freshness and replay rules are those of
//! [`crate::rpc`], with the roles swapped: the manager keeps a replay guard per agent and
//! answers `stale` outside the window; the agent takes the first reply to a call in flight.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{Kind, Message};
use crate::rpc::{Outcome, RequestId};

/// LiveGo's `/control/get|reset|delete` on the agent's port, done by the manager.
pub const METHOD_LIVEGO_CONTROL: &str = "livego.control";
/// URLs to upload recorded files to the manager's `[storage]` with.
pub const METHOD_STORAGE_PRESIGN: &str = "storage.presign";
/// A day's manifest is in storage: playback may read the day from there.
pub const METHOD_STORAGE_STORED: &str = "storage.stored";

/// Most files one `storage.presign` names.
pub const MAX_PRESIGN: usize = 64;

/// Params of `storage.presign`: recorded files, `{app}/{name}/{yyyy}/{mm}/{dd}/{file}`, of
/// stream-days indexed for the calling agent. `unsupported` when the manager has no storage,
/// `not_found` for a day not indexed (yet) for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignParams {
    pub paths: Vec<String>,
}

/// Result of `storage.presign`: one `PUT` URL per path, in order, valid `expires_ms` more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignResult {
    pub urls: Vec<String>,
    pub expires_ms: u64,
}

/// Params of `storage.stored`: the day whose manifest (and every segment it names) was
/// uploaded, `{app}/{name}/{yyyy}/{mm}/{dd}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredParams {
    pub day: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: RequestId,
    pub method: String,
    #[serde(default)]
    pub params: Value,
    /// How long the agent waits.
    pub timeout_ms: u64,
}

impl Message for Call {
    const KIND: Kind = Kind::Call;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallReply {
    pub id: RequestId,
    pub result: Outcome,
}

impl Message for CallReply {
    const KIND: Kind = Kind::CallReply;
}

/// What `livego.control` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlOp {
    Get,
    Reset,
    Delete,
}

impl ControlOp {
    pub fn path(self) -> &'static str {
        match self {
            ControlOp::Get => "/control/get",
            ControlOp::Reset => "/control/reset",
            ControlOp::Delete => "/control/delete",
        }
    }
}

/// Params of `livego.control`: the room (`live/{room}`), and the bearer token the box's HTTP
/// request carried, judged by the manager's `[auth]` as if the request had come to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlParams {
    pub op: ControlOp,
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Result of `livego.control`: LiveGo's envelope, which the box answers as is (HTTP status
/// `status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlAnswer {
    pub status: u16,
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope;
    use crate::secret::MacKey;

    #[test]
    fn a_call_is_not_a_request() {
        let key = MacKey::new("s3cret-of-edge-1");
        let call = Call {
            id: RequestId::from(7),
            method: METHOD_LIVEGO_CONTROL.into(),
            params: serde_json::json!({"sealed": "AA"}),
            timeout_ms: 3000,
        };
        let payload = envelope::seal(&key, "edge-1", 1, &call);
        assert_eq!(envelope::open::<Call>(&payload, &key).unwrap().body, call);
        // The kind is signed: a call cannot pass for a manager's request, nor a reply for a
        // call's reply.
        assert!(envelope::open::<crate::rpc::Request>(&payload, &key).is_err());
        let reply = CallReply {
            id: RequestId::from(7),
            result: Outcome::Ok(Value::Null),
        };
        let payload = envelope::seal(&key, "m1", 1, &reply);
        assert!(envelope::open::<crate::rpc::Reply>(&payload, &key).is_err());
        let params: ControlParams =
            serde_json::from_value(serde_json::json!({"op": "reset", "room": "cam"})).unwrap();
        assert_eq!((params.op, params.token), (ControlOp::Reset, None));
        assert!(
            serde_json::from_value::<ControlParams>(serde_json::json!({"op": "drop", "room": "x"}))
                .is_err()
        );
    }
}
