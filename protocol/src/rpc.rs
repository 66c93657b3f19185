//! Remote calls from a manager to an agent. Requests and replies travel at MQTT QoS 0: the
//! caller's deadline already covers a lost message, and a QoS 1 PUBACK ahead of a reply on the
//! broker's socket (rumqttd leaves Nagle on) delayed every reply by a delayed-ACK timeout,
//! ~40 ms (measured with `examples/agent_swarm`).
//!
//! The manager publishes a [`Request`] on the agent's
//! `req` topic, signed with that agent's secret; the agent answers with a [`Reply`] on the
//! manager's `res` topic, signed with its own. [`Calls`] is the caller's correlation table and
//! [`ReplayGuard`] the callee's check of a request's signed time ([`REQUEST_WINDOW`]) and its
//! memory of the requests it has already run.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{Kind, Message};

pub const METHOD_PING: &str = "ping";
pub const METHOD_INFO: &str = "info";
/// The manager revoked this agent: it disconnects and stops (its secret no longer opens the
/// broker, and nothing it signs is accepted).
pub const METHOD_REVOKED: &str = "agent.revoked";

/// The largest id a caller makes: 2^53 − 1, the largest integer a JSON library that reads
/// numbers as doubles (JavaScript's) still reads exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// A request's id. On the wire a JSON number (any u64 is accepted, callers make at most
/// [`MAX_ID`]) or the same number as a decimal string, for implementations whose JSON numbers
/// are doubles; a reply carries the id in the form its request used. Its identity is its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    value: u64,
    /// Came as a string: goes back as one.
    text: bool,
}

impl RequestId {
    pub fn value(self) -> u64 {
        self.value
    }

    /// The id written as a decimal string.
    pub fn text(value: u64) -> Self {
        Self { value, text: true }
    }
}

impl From<u64> for RequestId {
    fn from(value: u64) -> Self {
        Self { value, text: false }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.text {
            s.collect_str(&self.value)
        } else {
            s.serialize_u64(self.value)
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = RequestId;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a request id: an unsigned integer, or one as a decimal string")
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RequestId, E> {
                Ok(RequestId::from(value))
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RequestId, E> {
                u64::try_from(value)
                    .map(RequestId::from)
                    .map_err(|_| E::custom("a request id is not negative"))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RequestId, E> {
                // Decimal digits only, no sign, no leading zero (but "0" itself).
                let canonical = !text.is_empty()
                    && text.bytes().all(|b| b.is_ascii_digit())
                    && (text == "0" || !text.starts_with('0'));
                canonical
                    .then(|| text.parse::<u64>().ok())
                    .flatten()
                    .map(RequestId::text)
                    .ok_or_else(|| E::custom(format!("{text:?} is not a request id")))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
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
    /// The request's id, in the form it came.
    pub id: RequestId,
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
    /// The caller holds as many of what it asks for as it may (sessions of one address or
    /// one token); it may ask again when one has ended.
    TooMany,
    /// The request was signed further from the agent's clock than [`REQUEST_WINDOW`]: an
    /// old request replayed, or the two clocks are apart.
    Stale,
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
            ErrorCode::TooMany => "too_many",
            ErrorCode::Stale => "stale",
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
            ErrorCode::TooMany => 429,
            ErrorCode::Busy => 503,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::UnknownMethod
            | ErrorCode::Internal
            | ErrorCode::Stale
            | ErrorCode::Unknown => 502,
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
    /// an earlier incarnation is not taken for a new call. Ids run from 1 to [`MAX_ID`] and
    /// wrap (any `first_id` is brought into that range).
    pub fn new(first_id: u64, limit: usize) -> Self {
        Self {
            next_id: first_id % MAX_ID + 1,
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
        self.next_id = if id >= MAX_ID { 1 } else { id + 1 };
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

/// How far a request's signed time (the envelope's `ts`) may be from the callee's clock, either
/// way. Outside it a request is refused [`ErrorCode::Stale`]: a captured request replayed
/// later, or a caller whose clock is off (NTP keeps clocks far closer). Callers' deadlines are
/// seconds, well inside it.
pub const REQUEST_WINDOW: Duration = Duration::from_secs(120);

/// Why a callee does not run a request that opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRun {
    #[error(
        "signed {skew_ms} ms from this clock, outside the window of ±{} s",
        REQUEST_WINDOW.as_secs()
    )]
    Stale { skew_ms: i64 },
    #[error("request {id} of {caller} was run already")]
    Replayed { caller: String, id: u64 },
    #[error("{0} requests within the window already")]
    Full(usize),
}

/// The callee's check of a request: signed within [`REQUEST_WINDOW`] of its clock, and a
/// `(caller, id)` pair not seen before, so a request replayed on the broker is never run twice.
///
/// A replay signed outside the window is refused as stale, so the memory of pairs only has to
/// cover the window: a pair is forgotten once its signed time has left it. The memory is
/// bounded all the same: with `capacity` pairs inside the window, further requests are refused
/// ([`NotRun::Full`]) rather than a pair forgotten early, which would let its replay through.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    /// `(ts, caller, id)`: in the order the pairs leave the window.
    by_time: BTreeSet<(u64, String, u64)>,
    seen: HashSet<(String, u64)>,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            by_time: BTreeSet::new(),
            seen: HashSet::new(),
        }
    }

    /// `Ok` for a request of `caller` numbered `id`, signed at `ts`, if it may run at `now`
    /// (both Unix ms); from then on, the same pair is refused as a replay.
    pub fn admit(&mut self, caller: &str, id: u64, ts: u64, now: u64) -> Result<(), NotRun> {
        let window = REQUEST_WINDOW.as_millis() as u64;
        if ts.abs_diff(now) > window {
            let skew_ms = i64::try_from(i128::from(ts) - i128::from(now)).unwrap_or(i64::MIN);
            return Err(NotRun::Stale { skew_ms });
        }
        while let Some(oldest) = self.by_time.first()
            && oldest.0.saturating_add(window) < now
        {
            if let Some((_, caller, id)) = self.by_time.pop_first() {
                self.seen.remove(&(caller, id));
            }
        }
        let pair = (caller.to_string(), id);
        if self.seen.contains(&pair) {
            return Err(NotRun::Replayed { caller: pair.0, id });
        }
        if self.seen.len() >= self.capacity {
            return Err(NotRun::Full(self.seen.len()));
        }
        self.by_time.insert((ts, caller.to_string(), id));
        self.seen.insert(pair);
        Ok(())
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
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
            ErrorCode::Stale,
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
            id: 7.into(),
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
    fn ids_come_as_numbers_or_decimal_strings_and_go_back_as_they_came() {
        let reply = |id: RequestId| {
            serde_json::to_string(&Reply {
                id,
                result: Outcome::Ok(Value::Null),
            })
            .unwrap()
        };
        // Today's agents and managers: a number, any u64 (this one is above 2^53).
        let big: Request = serde_json::from_str(
            r#"{"id":3195546257522360320,"method":"ping","timeout_ms":1,"reply_to":"m"}"#,
        )
        .unwrap();
        assert_eq!(big.id.value(), 3_195_546_257_522_360_320);
        assert_eq!(
            reply(big.id),
            r#"{"id":3195546257522360320,"result":{"ok":null}}"#
        );
        // A JavaScript implementation's: the same number as a string, echoed as a string.
        let text: Request = serde_json::from_str(
            r#"{"id":"3195546257522360320","method":"ping","timeout_ms":1,"reply_to":"m"}"#,
        )
        .unwrap();
        assert_eq!(text.id.value(), big.id.value());
        assert_eq!(
            reply(text.id),
            r#"{"id":"3195546257522360320","result":{"ok":null}}"#
        );
        for bad in [
            r#""""#,
            r#""-1""#,
            r#""007""#,
            r#""1e3""#,
            r#""18446744073709551616""#,
            "-1",
            "1.5",
            "null",
        ] {
            let body = format!(r#"{{"id":{bad},"result":{{"ok":null}}}}"#);
            assert!(serde_json::from_str::<Reply>(&body).is_err(), "{bad}");
        }
    }

    #[test]
    fn callers_make_ids_every_json_library_reads_exactly() {
        // 2^53 + 1 reads back as 2^53 through a double; our ids never go there.
        assert_eq!(((MAX_ID + 2) as f64) as u64, MAX_ID + 1);
        assert_eq!((MAX_ID as f64) as u64, MAX_ID);
        let mut calls = Calls::new(MAX_ID - 1, 8);
        let t0 = Instant::now();
        let ids: Vec<u64> = (0..3)
            .map(|_| calls.start((), t0, Duration::from_secs(1)).unwrap())
            .collect();
        assert_eq!(ids, [MAX_ID, 1, 2], "ids wrap within 1..=2^53-1");
        // Any random start is brought into the range.
        let mut calls = Calls::new(u64::MAX, 1);
        assert!(calls.start((), t0, Duration::ZERO).unwrap() <= MAX_ID);
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
    fn the_replay_guard_refuses_stale_and_replayed_requests_and_forgets_past_the_window() {
        let window = REQUEST_WINDOW.as_millis() as u64;
        let now = 1_800_000_000_000;
        let mut guard = ReplayGuard::new(3);
        assert_eq!(
            guard.admit("m", 1, now - 600_000, now),
            Err(NotRun::Stale { skew_ms: -600_000 })
        );
        assert_eq!(
            guard.admit("m", 1, now + window + 1, now),
            Err(NotRun::Stale {
                skew_ms: window as i64 + 1
            })
        );
        assert_eq!(guard.admit("m", 1, now - window, now), Ok(()));
        assert_eq!(
            guard.admit("m", 1, now - window, now + 1),
            Err(NotRun::Stale {
                skew_ms: -(window as i64) - 1
            }),
            "its replay a moment later is stale"
        );
        assert_eq!(guard.admit("m", 2, now, now), Ok(()));
        assert_eq!(guard.admit("other", 2, now, now), Ok(()));
        assert_eq!(
            guard.admit("m", 2, now, now),
            Err(NotRun::Replayed {
                caller: "m".into(),
                id: 2
            })
        );
        // Full within the window: refused, nothing forgotten early.
        assert_eq!(guard.admit("m", 3, now, now), Err(NotRun::Full(3)));
        // Once a pair's time has left the window, so has the pair.
        assert_eq!(guard.admit("m", 3, now + 1, now + 1), Ok(()));
        assert_eq!(guard.len(), 3, "the pair signed at now - window is gone");
        assert_eq!(
            guard.admit("m", 4, now + window + 1, now + window + 2),
            Ok(())
        );
        assert_eq!(guard.len(), 1);
    }
}
