//! Remote calls from a manager to an agent. Requests and replies travel at MQTT QoS 0: the
//! caller's deadline already covers a lost message, and a QoS 1 PUBACK ahead of a reply on the
//! broker's socket (rumqttd leaves Nagle on) delayed every reply by a delayed-ACK timeout,
//! ~40 ms (measured with `examples/agent_swarm`).
//!
//! The manager publishes a [`Request`] on the agent's
//! `req` topic, signed with that agent's secret; the agent answers with a [`Reply`] on the
//! manager's `res` topic, signed with its own. [`Calls`] is the caller's correlation table and
//! [`ReplayGuard`] the callee's memory of requests it has already run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{Kind, Message};

pub const METHOD_PING: &str = "ping";
pub const METHOD_INFO: &str = "info";
/// The manager revoked this agent: it disconnects and stops (its secret no longer opens the
/// broker, and nothing it signs is accepted).
pub const METHOD_REVOKED: &str = "agent.revoked";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub method: String,
    #[serde(default)]
    pub params: Value,
    /// How long the caller waits; the agent drops a request it could not start in time.
    pub timeout_ms: u64,
    /// The manager id whose `res` topic gets the reply.
    pub reply_to: String,
}

impl Message for Request {
    const KIND: Kind = Kind::Request;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub result: Outcome,
}

impl Message for Reply {
    const KIND: Kind = Kind::Reply;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Value),
    Err(RpcError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnknownMethod,
    InvalidParams,
    NotFound,
    /// The agent runs too many calls already; try again.
    Busy,
    DeadlineExceeded,
    Internal,
    /// The agent understood the call but does not do what it asks (e.g. an ICE restart).
    Unsupported,
    /// What the call would create exists already (a stream that has a publisher).
    Conflict,
    /// A code a newer agent sent that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it is written on the wire (`not_found`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Busy => "busy",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status an API client should see when an agent refuses a call with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidParams => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Unsupported => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::Busy => 503,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::UnknownMethod | ErrorCode::Internal | ErrorCode::Unknown => 502,
        }
    }
}

/// Result of [`METHOD_PING`]: the agent's clock, to see skew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub agent_time: u64,
}

/// The caller's table of calls in flight: ids, deadlines and whatever wakes the waiting task.
#[derive(Debug)]
pub struct Calls<W> {
    next_id: u64,
    limit: usize,
    pending: HashMap<u64, (Instant, W)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} calls are already in flight")]
pub struct TooManyCalls(pub usize);

impl<W> Calls<W> {
    /// `first_id` should differ between caller restarts (a random start), so a late reply to
    /// an earlier incarnation is not taken for a new call.
    pub fn new(first_id: u64, limit: usize) -> Self {
        Self {
            next_id: first_id,
            limit,
            pending: HashMap::new(),
        }
    }

    /// Registers a call and returns its id.
    pub fn start(
        &mut self,
        waiter: W,
        now: Instant,
        timeout: Duration,
    ) -> Result<u64, TooManyCalls> {
        if self.pending.len() >= self.limit {
            return Err(TooManyCalls(self.pending.len()));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.pending.insert(id, (now + timeout, waiter));
        Ok(id)
    }

    /// Takes the waiter of call `id` when its reply arrives or the caller gives up. `None` for
    /// an id that is unknown, already finished or expired.
    pub fn finish(&mut self, id: u64) -> Option<W> {
        self.pending.remove(&id).map(|(_, w)| w)
    }

    /// The waiter of call `id`, left in place.
    pub fn get(&self, id: u64) -> Option<&W> {
        self.pending.get(&id).map(|(_, w)| w)
    }

    /// Removes and returns every call whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, W)> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.pending.remove(&id).map(|(_, w)| (id, w)))
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// The callee's bounded memory of `(caller, id)` pairs it has seen, so a request replayed on the
/// broker is not run twice.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    order: VecDeque<(String, u64)>,
    seen: HashSet<(String, u64)>,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// True the first time a pair is seen.
    pub fn first_time(&mut self, caller: &str, id: u64) -> bool {
        let key = (caller.to_string(), id);
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(key.clone());
        self.seen.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_wire_names() {
        for code in [
            ErrorCode::UnknownMethod,
            ErrorCode::InvalidParams,
            ErrorCode::NotFound,
            ErrorCode::Busy,
            ErrorCode::DeadlineExceeded,
            ErrorCode::Internal,
            ErrorCode::Unsupported,
            ErrorCode::Unknown,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
    }

    #[test]
    fn refusals_map_to_statuses_a_client_can_act_on() {
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
        assert_eq!(ErrorCode::InvalidParams.http_status(), 400);
        assert_eq!(ErrorCode::Busy.http_status(), 503);
        assert_eq!(ErrorCode::Unsupported.http_status(), 405);
        // A code from a newer agent is still an answer from upstream.
        let code: ErrorCode = serde_json::from_str("\"quantum\"").unwrap();
        assert_eq!(code.http_status(), 502);
    }

    #[test]
    fn request_and_reply_wire_shape() {
        let req = Request {
            id: 7,
            method: METHOD_PING.into(),
            params: Value::Null,
            timeout_ms: 2000,
            reply_to: "m1".into(),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let ok: Reply =
            serde_json::from_str(r#"{"id":7,"result":{"ok":{"agent_time":1}}}"#).unwrap();
        assert_eq!(ok.result, Outcome::Ok(serde_json::json!({"agent_time": 1})));
        let err: Reply =
            serde_json::from_str(r#"{"id":7,"result":{"err":{"code":"busy","message":"x"}}}"#)
                .unwrap();
        assert_eq!(
            err.result,
            Outcome::Err(RpcError::new(ErrorCode::Busy, "x"))
        );
    }

    #[test]
    fn unknown_error_codes_survive_and_bad_outcomes_fail() {
        let r: Reply =
            serde_json::from_str(r#"{"id":1,"result":{"err":{"code":"quota","message":"m"}}}"#)
                .unwrap();
        assert_eq!(
            r.result,
            Outcome::Err(RpcError::new(ErrorCode::Unknown, "m"))
        );
        assert!(serde_json::from_str::<Reply>(r#"{"id":1,"result":{"maybe":1}}"#).is_err());
        assert!(serde_json::from_str::<Reply>(r#"{"id":-1,"result":{"ok":1}}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"id":1,"method":"ping"}"#).is_err());
    }

    #[test]
    fn calls_correlate_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut calls = Calls::new(100, 2);
        let a = calls.start("a", t0, Duration::from_millis(10)).unwrap();
        let b = calls.start("b", t0, Duration::from_millis(50)).unwrap();
        assert_ne!(a, b);
        assert_eq!(calls.start("c", t0, Duration::ZERO), Err(TooManyCalls(2)));
        assert_eq!(calls.expire(t0 + Duration::from_millis(20)), vec![(a, "a")]);
        assert_eq!(calls.finish(a), None, "an expired call cannot be finished");
        assert_eq!(calls.finish(b), Some("b"));
        assert_eq!(calls.finish(b), None, "a reply is taken once");
        assert_eq!(calls.in_flight(), 0);
    }

    #[test]
    fn replay_guard_remembers_a_bounded_window() {
        let mut guard = ReplayGuard::new(2);
        assert!(guard.first_time("m", 1));
        assert!(!guard.first_time("m", 1));
        assert!(guard.first_time("other", 1));
        assert!(guard.first_time("m", 2));
        assert!(guard.first_time("m", 1), "the oldest entry was forgotten");
    }
}
