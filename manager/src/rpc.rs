//! The manager's RPC client: signs a request with the target agent's secret, publishes it on
//! the agent's `req` topic and waits, under a deadline, for the signed reply on this manager's
//! `res` topic. Errors say which of "unknown", "offline", "timed out" and "the agent said no"
//! happened, because each calls for something different from the caller.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::Value;
use tokio::sync::oneshot;
use verge_protocol::envelope;
use verge_protocol::rpc::{Calls, Outcome, Reply, Request, RpcError};
use verge_protocol::sealed::{PrivateKey, Way};
use verge_protocol::secret::MacKey;

use crate::registry::Registry;
use crate::wire::Wire;

/// Calls in flight at once across all agents.
const MAX_IN_FLIGHT: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("agent {0:?} is not known to this manager")]
    UnknownAgent(String),
    #[error("agent {0:?} is offline")]
    Offline(String),
    #[error("agent {agent:?} did not answer {method} within {timeout:?}")]
    Timeout {
        agent: String,
        method: String,
        timeout: Duration,
    },
    #[error("agent {agent:?} refused {method}: {error}")]
    Agent {
        agent: String,
        method: String,
        error: RpcError,
    },
    #[error("too many calls in flight ({0})")]
    Overloaded(usize),
    #[error("cannot reach the broker: {0}")]
    Link(String),
}

impl CallError {
    /// A short name for metrics: the agent's error code, or what kept the call from it.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::UnknownAgent(_) => "unknown_agent",
            CallError::Offline(_) => "offline",
            CallError::Timeout { .. } => "timeout",
            CallError::Overloaded(_) => "overloaded",
            CallError::Link(_) => "link",
            CallError::Agent { error, .. } => error.code.as_str(),
        }
    }
}

struct Waiter {
    agent: String,
    tx: oneshot::Sender<Outcome>,
}

pub struct RpcClient {
    wire: Wire,
    registry: Arc<Registry>,
    calls: Mutex<Calls<Waiter>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Replies that matched no call, logged sparingly.
    unmatched: LogEvery,
}

impl RpcClient {
    pub fn new(wire: Wire, registry: Arc<Registry>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        // A random first id, so a reply meant for an earlier run of this manager is not taken
        // for a call of this one (`Calls` keeps ids within 2^53 - 1, which every JSON library
        // reads exactly).
        let first_id =
            u64::from_str_radix(&verge_protocol::secret::random_secret()[..13], 16).unwrap_or(1);
        Self {
            wire,
            registry,
            calls: Mutex::new(Calls::new(first_id, MAX_IN_FLIGHT)),
            metrics,
            unmatched: LogEvery::new(UNMATCHED_LOG_INTERVAL),
        }
    }

    /// Calls `method` on `agent` and returns its result, or why there is none, within `timeout`.
    pub async fn call(
        &self,
        agent: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let started = Instant::now();
        let result = match self.secret_for(agent) {
            Ok(secret) => self.exchange(agent, &secret, method, params, timeout).await,
            Err(e) => Err(e),
        };
        self.measure(method, started, &result);
        result
    }

    /// Times answered calls (an agent's refusal is an answer) and counts every failure by code.
    fn measure(&self, method: &str, started: Instant, result: &Result<Value, CallError>) {
        match result {
            Ok(_) | Err(CallError::Agent { .. }) => self
                .metrics
                .rpc_seconds
                .observe(&[method], started.elapsed().as_secs_f64()),
            Err(_) => {}
        }
        if let Err(e) = result {
            self.metrics.rpc_errors.add(&[method, e.code()], 1);
        }
    }

    /// The secret of an agent that may be called now.
    fn secret_for(&self, agent: &str) -> Result<String, CallError> {
        let record = self
            .registry
            .get(agent)
            .ok_or_else(|| CallError::UnknownAgent(agent.to_string()))?;
        // Claimed is enough to ask: the answer is what proves it.
        if !record.claims_online() {
            return Err(CallError::Offline(agent.to_string()));
        }
        self.wire
            .credentials
            .secret_of(agent)
            .ok_or_else(|| CallError::UnknownAgent(agent.to_string()))
    }

    /// One sealed request to `agent` and its reply, under `timeout`.
    async fn exchange(
        &self,
        agent: &str,
        secret: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let id = self
            .lock_calls()
            .start(
                Waiter {
                    agent: agent.to_string(),
                    tx,
                },
                started,
                timeout,
            )
            .map_err(|e| CallError::Overloaded(e.0))?;
        // SDP and TURN credentials ride in params and results: sealed for this agent alone.
        let private = PrivateKey::new(secret);
        let params = match private.seal(Way::Request, &params) {
            Ok(sealed) => sealed,
            Err(e) => {
                self.lock_calls().finish(id);
                return Err(CallError::Link(e.to_string()));
            }
        };
        let request = Request {
            id: id.into(),
            method: method.to_string(),
            params,
            timeout_ms: timeout.as_millis() as u64,
            reply_to: self.wire.manager_id.clone(),
        };
        let payload = envelope::seal(
            &MacKey::new(secret),
            &self.wire.manager_id,
            verge_protocol::now_ms(),
            &request,
        );
        let timed_out = || CallError::Timeout {
            agent: agent.to_string(),
            method: method.to_string(),
            timeout,
        };
        let publish = self.wire.client.publish(
            self.wire.topics.request(agent),
            QoS::AtMostOnce,
            false,
            payload,
        );
        let outcome = tokio::time::timeout(timeout, async {
            publish.await.map_err(|e| CallError::Link(e.to_string()))?;
            rx.await
                .map_err(|_| CallError::Link("the MQTT session ended".into()))
        })
        .await;
        let outcome = match outcome {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                self.lock_calls().finish(id);
                return Err(e);
            }
            Err(_) => {
                self.lock_calls().finish(id);
                return Err(timed_out());
            }
        };
        let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.registry.heard_from(agent, Some(rtt_ms));
        match outcome {
            Outcome::Ok(value) => private
                .open(Way::Reply, &value)
                .map_err(|e| CallError::Agent {
                    agent: agent.to_string(),
                    method: method.to_string(),
                    error: RpcError::new(verge_protocol::rpc::ErrorCode::Internal, e.to_string()),
                }),
            Outcome::Err(error) => Err(CallError::Agent {
                agent: agent.to_string(),
                method: method.to_string(),
                error,
            }),
        }
    }

    /// Routes a payload from this manager's `res` topic to the call waiting for it.
    pub fn on_reply(&self, payload: &[u8]) {
        let Some(sender) = envelope::sender(payload) else {
            tracing::warn!("dropping an RPC reply that is not an envelope");
            return;
        };
        let Some(secret) = self.wire.credentials.secret_of(&sender) else {
            tracing::warn!(agent = %sender, "dropping an RPC reply from an unknown agent");
            return;
        };
        let reply = match envelope::open::<Reply>(payload, &MacKey::new(&secret)) {
            Ok(opened) => opened.body,
            Err(e) => {
                tracing::warn!(agent = %sender, error = %e, "dropping an RPC reply that does not open");
                return;
            }
        };
        let mut calls = self.lock_calls();
        // Only the agent that was called may answer the call.
        let id = reply.id.value();
        if calls.get(id).is_none_or(|w| w.agent != sender) {
            drop(calls);
            // Signed by the agent, yet no call waits for it: late, or an implementation that
            // changed the id (a JSON library that reads numbers as doubles rounds ids above
            // 2^53). Said at warn, at most every few seconds: the agent's replies would be lost.
            let suppressed = self.unmatched.note(std::time::Instant::now());
            if let Some(suppressed) = suppressed {
                tracing::warn!(agent = %sender, %id, suppressed,
                    "a signed RPC reply matches no call in flight (late, or its id was changed on the way)");
            }
            return;
        }
        if let Some(waiter) = calls.finish(id) {
            let _ = waiter.tx.send(reply.result);
        }
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, Calls<Waiter>> {
        // A panic while holding this lock leaves only plain data behind; keep serving.
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How often at most a reply that matches no call is logged.
const UNMATCHED_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A log line at most once per interval, with how many were held back meanwhile.
struct LogEvery {
    interval: std::time::Duration,
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogEvery {
    fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line is due at `now`.
    fn note(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, held) = &mut *state;
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            *held += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held))
    }
}
