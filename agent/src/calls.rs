//! Calls from this agent to the managers ([`verge_protocol::call`]): what a box is asked on
//! its own port that only the manager can do (LiveGo's `/control/get` issues a channel key).
//!
//! [`ManagerCalls`] is made before the MQTT session and handed to the HTTP server; the session
//! attaches its client once the link exists and passes replies on (`{p}/v1/a/{id}/ret`). A
//! call waits for the first reply of any manager, at most its timeout; replies to calls no
//! longer waited for are dropped.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use tokio::sync::oneshot;
use verge_protocol::call::{Call, CallReply};
use verge_protocol::envelope;
use verge_protocol::rpc::{Calls, Outcome, RpcError};
use verge_protocol::sealed::{PrivateKey, Way};
use verge_protocol::secret::MacKey;

/// Calls in flight at once; more are refused at once.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("not connected to the broker yet")]
    NotAttached,
    #[error("too many calls to the manager in flight")]
    Overloaded,
    #[error("no manager answered {method} within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    #[error("the manager refused {method}: {error}")]
    Refused { method: String, error: RpcError },
    #[error("the MQTT link: {0}")]
    Link(String),
    #[error("the manager's answer does not open: {0}")]
    Sealed(String),
}

struct Attached {
    id: String,
    key: MacKey,
    private: PrivateKey,
    client: AsyncClient,
    topic: String,
}

#[derive(Default)]
struct Inner {
    link: OnceLock<Attached>,
    calls: OnceLock<Mutex<Calls<oneshot::Sender<Outcome>>>>,
}

/// The handle the HTTP server calls through.
#[derive(Clone, Default)]
pub struct ManagerCalls(Arc<Inner>);

impl ManagerCalls {
    /// The session's link: calls go out on `topic` signed and sealed with `secret`.
    pub(crate) fn attach(&self, id: &str, secret: &str, client: AsyncClient, topic: String) {
        let _ = self.0.link.set(Attached {
            id: id.to_string(),
            key: MacKey::new(secret),
            private: PrivateKey::new(secret),
            client,
            topic,
        });
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls<oneshot::Sender<Outcome>>> {
        self.0
            .calls
            .get_or_init(|| {
                // A random first id, as the manager's RPC client does.
                let first = u64::from_str_radix(&verge_protocol::secret::random_secret()[..13], 16)
                    .unwrap_or(1);
                Mutex::new(Calls::new(first, MAX_IN_FLIGHT))
            })
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `method` on the managers and returns the first answer's result.
    pub async fn call(
        &self,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let link = self.0.link.get().ok_or(CallError::NotAttached)?;
        let (tx, rx) = oneshot::channel();
        let id = self
            .calls()
            .start(tx, Instant::now(), timeout)
            .map_err(|_| CallError::Overloaded)?;
        let result = self.exchange(link, id, method, params, timeout, rx).await;
        self.calls().finish(id);
        result
    }

    async fn exchange(
        &self,
        link: &Attached,
        id: u64,
        method: &str,
        params: &Value,
        timeout: Duration,
        rx: oneshot::Receiver<Outcome>,
    ) -> Result<Value, CallError> {
        let params = link
            .private
            .seal(Way::Call, params)
            .map_err(|e| CallError::Sealed(e.to_string()))?;
        let call = Call {
            id: id.into(),
            method: method.to_string(),
            params,
            timeout_ms: timeout.as_millis() as u64,
        };
        let payload = envelope::seal(&link.key, &link.id, verge_protocol::now_ms(), &call);
        let outcome = tokio::time::timeout(timeout, async {
            link.client
                .publish(link.topic.clone(), QoS::AtMostOnce, false, payload)
                .await
                .map_err(|e| CallError::Link(e.to_string()))?;
            rx.await
                .map_err(|_| CallError::Link("the call was dropped".into()))
        })
        .await
        .map_err(|_| CallError::Timeout {
            method: method.to_string(),
            timeout,
        })??;
        match outcome {
            Outcome::Ok(sealed) => link
                .private
                .open(Way::CallReply, &sealed)
                .map_err(|e| CallError::Sealed(e.to_string())),
            Outcome::Err(error) => Err(CallError::Refused {
                method: method.to_string(),
                error,
            }),
        }
    }

    /// A reply on the agent's `ret` topic: signed with our secret by a manager.
    pub(crate) fn on_reply(&self, payload: &[u8]) {
        let Some(link) = self.0.link.get() else {
            return;
        };
        let reply = match envelope::open::<CallReply>(payload, &link.key) {
            Ok(opened) => opened.body,
            Err(e) => {
                tracing::warn!(agent = %link.id, error = %e, "a call reply that does not open");
                return;
            }
        };
        match self.calls().finish(reply.id.value()) {
            Some(waiter) => {
                let _ = waiter.send(reply.result);
            }
            None => {
                tracing::debug!(agent = %link.id, id = %reply.id, "a reply to a call no longer waited for")
            }
        }
    }
}
