//! Requests from managers, on `{p}/v1/a/{id}/req`: admitted (the envelope opens, the reply
//! topic is valid, the signed time is within the window and the id was not run yet: the
//! [`ReplayGuard`]), then run on a task of their own with their sealed params opened, bounded
//! by a semaphore, and answered with a sealed result on the caller's reply topic. The methods
//! themselves are [`crate::rpc`]'s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::Semaphore;
use verge_protocol::envelope;
use verge_protocol::rpc::{ErrorCode, NotRun, Outcome, ReplayGuard, Reply, Request, RpcError};
use verge_protocol::sealed::Way;
use verge_protocol::secret::MacKey;

use super::Shared;
use crate::rpc;

/// Requests the replay guard remembers at most. It only has to remember those signed within
/// [`verge_protocol::rpc::REQUEST_WINDOW`] (older ones are refused as stale): this is 136 a
/// second for the two minutes, far more than a manager sends one agent; past it requests are
/// refused `busy` rather than any forgotten early.
const REPLAY_MEMORY: usize = 16 * 1024;

/// What the session's loop holds to admit and run requests: the calls in flight (at most
/// `[limits] rpc_concurrency`, over it a call is answered `busy` at once) and the requests
/// already run.
pub(super) struct RpcServer {
    permits: Arc<Semaphore>,
    replays: Mutex<ReplayGuard>,
}

impl RpcServer {
    pub(super) fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            replays: Mutex::new(ReplayGuard::new(REPLAY_MEMORY)),
        }
    }

    /// Checks a request and starts it on its own task; never waits. `true`: the manager
    /// revoked this agent (answered here, before the session ends).
    pub(super) fn on_request(&self, shared: &Arc<Shared>, payload: &[u8]) -> bool {
        let now = verge_protocol::now_ms();
        let request = match admit(&shared.id, &shared.key, payload, &self.replays, now) {
            Admission::Run(request) => request,
            Admission::Refuse(request, error) => {
                let reply = shared.seal(&Reply {
                    id: request.id,
                    result: Outcome::Err(error),
                });
                let topic = shared.topics.reply(&request.reply_to);
                let _ = shared
                    .client
                    .try_publish(topic, QoS::AtMostOnce, false, reply);
                return false;
            }
            Admission::Drop => return false,
        };
        let reply_topic = shared.topics.reply(&request.reply_to);
        if request.method == verge_protocol::rpc::METHOD_REVOKED {
            tracing::error!(agent = %shared.id, manager = %request.reply_to, "revoked by the manager: disconnecting");
            let answer = shared
                .private
                .seal(Way::Reply, &serde_json::Value::Null)
                .unwrap_or_default();
            let reply = shared.seal(&Reply {
                id: request.id,
                result: Outcome::Ok(answer),
            });
            let _ = shared
                .client
                .try_publish(reply_topic, QoS::AtMostOnce, false, reply);
            return true;
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let outcome = match shared.private.open(Way::Request, &request.params) {
                        Ok(params) => {
                            serve(&shared, request.method.clone(), params, request.timeout_ms).await
                        }
                        Err(e) => {
                            Outcome::Err(RpcError::new(ErrorCode::InvalidParams, e.to_string()))
                        }
                    };
                    let outcome = match outcome {
                        Outcome::Ok(value) => match shared.private.seal(Way::Reply, &value) {
                            Ok(sealed) => Outcome::Ok(sealed),
                            Err(e) => {
                                Outcome::Err(RpcError::new(ErrorCode::Internal, e.to_string()))
                            }
                        },
                        err => err,
                    };
                    let reply = shared.seal(&Reply {
                        id: request.id,
                        result: outcome,
                    });
                    if let Err(e) = shared
                        .client
                        .publish(reply_topic, QoS::AtMostOnce, false, reply)
                        .await
                    {
                        tracing::warn!(agent = %shared.id, method = %request.method, error = %e, "reply publish failed");
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                let busy = RpcError::new(ErrorCode::Busy, "too many calls in flight on this agent");
                let reply = shared.seal(&Reply {
                    id: request.id,
                    result: Outcome::Err(busy),
                });
                if shared
                    .client
                    .try_publish(reply_topic, QoS::AtMostOnce, false, reply)
                    .is_err()
                {
                    tracing::warn!(agent = %shared.id, "overloaded: dropped a request without reply");
                }
            }
        }
        false
    }
}

/// What becomes of a request payload, decided before anything runs.
#[derive(Debug)]
enum Admission {
    Run(Request),
    /// Answered with this error, not run: signed outside the window (the caller learns its
    /// clock or its delivery is off), or too many to remember.
    Refuse(Request, RpcError),
    /// Dropped without a word: it does not open, names no valid reply topic, or was run
    /// already.
    Drop,
}

/// Opens a request and checks its signed time and its id ([`ReplayGuard`]) at `now` (Unix
/// ms). Each refusal is logged once, here.
fn admit(
    agent: &str,
    key: &MacKey,
    payload: &[u8],
    replays: &Mutex<ReplayGuard>,
    now: u64,
) -> Admission {
    let opened = match envelope::open::<Request>(payload, key) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%agent, error = %e, "dropping a request that does not open");
            return Admission::Drop;
        }
    };
    let (sender, request) = (opened.from, opened.body);
    if verge_protocol::id::validate(&request.reply_to).is_err() {
        tracing::warn!(%agent, %sender, reply_to = %request.reply_to, "dropping a request with an invalid reply_to");
        return Admission::Drop;
    }
    let verdict = replays.lock().unwrap_or_else(|p| p.into_inner()).admit(
        &request.reply_to,
        request.id.value(),
        opened.ts,
        now,
    );
    match verdict {
        Ok(()) => Admission::Run(request),
        Err(NotRun::Replayed { .. }) => {
            tracing::warn!(%agent, %sender, id = %request.id, method = %request.method, "dropping a replayed request");
            Admission::Drop
        }
        Err(stale @ NotRun::Stale { skew_ms }) => {
            tracing::warn!(%agent, %sender, id = %request.id, method = %request.method, skew_ms, "refusing a stale request");
            let error = RpcError::new(ErrorCode::Stale, format!("request {stale}"));
            Admission::Refuse(request, error)
        }
        Err(full @ NotRun::Full(_)) => {
            tracing::warn!(%agent, %sender, id = %request.id, method = %request.method, "refusing a request: {full}");
            let error = RpcError::new(ErrorCode::Busy, full.to_string());
            Admission::Refuse(request, error)
        }
    }
}

async fn serve(
    shared: &Shared,
    method: String,
    params: serde_json::Value,
    timeout_ms: u64,
) -> Outcome {
    let ctx = rpc::Context {
        presence: shared.online.clone(),
        state: shared.state.snapshot(),
        whep: shared.whep.clone(),
        recorder: shared.recorder.clone(),
        hub: shared.hub.clone(),
    };
    let budget = Duration::from_millis(timeout_ms.max(1));
    match tokio::time::timeout(budget, rpc::dispatch(&method, params, ctx)).await {
        Ok(Ok(value)) => Outcome::Ok(value),
        Ok(Err(e)) => Outcome::Err(e),
        Err(_) => Outcome::Err(RpcError::new(
            ErrorCode::DeadlineExceeded,
            format!("{method} took longer than {timeout_ms} ms"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> Request {
        Request {
            id: id.into(),
            method: verge_protocol::rpc::METHOD_PING.into(),
            params: serde_json::Value::Null,
            timeout_ms: 2000,
            reply_to: "manager-1".into(),
        }
    }

    #[test]
    fn stale_requests_are_refused_and_replays_within_the_window_dropped() {
        let key = MacKey::new("s1");
        let replays = Mutex::new(ReplayGuard::new(REPLAY_MEMORY));
        let now = verge_protocol::now_ms();
        let admit = |payload: &[u8], at: u64| admit("edge-1", &key, payload, &replays, at);

        // Correctly signed, ten minutes ago: what a replay of a captured request looks like.
        let old = envelope::seal(&key, "manager-1", now - 600_000, &request(1));
        match admit(&old, now) {
            Admission::Refuse(refused, error) => {
                assert_eq!((refused.id.value(), error.code), (1, ErrorCode::Stale));
                assert!(error.message.contains("-600000 ms"), "{}", error.message);
            }
            other => panic!("a request ten minutes old was not refused as stale: {other:?}"),
        }
        // As far in the future: refused the same way.
        let ahead = envelope::seal(&key, "manager-1", now + 600_000, &request(2));
        assert!(
            matches!(admit(&ahead, now), Admission::Refuse(_, e) if e.code == ErrorCode::Stale)
        );

        // Within the window: run, once; its replay a minute later is dropped.
        let fresh = envelope::seal(&key, "manager-1", now - 5_000, &request(3));
        assert!(matches!(admit(&fresh, now), Admission::Run(r) if r.id.value() == 3));
        assert!(matches!(admit(&fresh, now + 60_000), Admission::Drop));
        // Past the window the same bytes are stale, not run again.
        assert!(matches!(
            admit(&fresh, now + 180_000),
            Admission::Refuse(_, e) if e.code == ErrorCode::Stale
        ));
        // Another's signature opens nothing.
        let forged = envelope::seal(&MacKey::new("other"), "manager-1", now, &request(4));
        assert!(matches!(admit(&forged, now), Admission::Drop));
    }
}
