//! Calls from agents (`{p}/v1/a/{agent}/call`, [`verge_protocol::call`]): opened with the
//! calling agent's secret, checked against replays and stale times, run on a task of their own
//! (at most [`CONCURRENCY`] at once, over that answered `busy`), answered sealed on the agent's
//! `ret` topic.
//!
//! The one method: `livego.control`, LiveGo's `/control/get|reset|delete` asked on a box's own
//! HTTP port. The token the box's request carried is judged by `[auth]` as if the request had
//! come here, and a box manages only rooms bound to it or to no box: a key it issues is bound
//! to it.

use std::sync::{Arc, Mutex};

use axum::http::Method;
use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use verge_protocol::call::{
    self, Call, CallReply, ControlAnswer, ControlOp, ControlParams, PresignParams, PresignResult,
    StoredParams,
};
use verge_protocol::envelope;
use verge_protocol::rpc::{ErrorCode, NotRun, Outcome, ReplayGuard, RpcError};
use verge_protocol::sealed::{PrivateKey, Way};
use verge_protocol::secret::MacKey;

use crate::http::livego;
use crate::keys::KeyDistributor;
use crate::registry::Registry;

/// What the storage methods need.
pub struct Store {
    pub storage: Option<Arc<crate::storage::Storage>>,
    pub index: crate::db::index::Index,
}

/// Calls run at once across all agents.
pub const CONCURRENCY: usize = 64;
/// Calls the replay guard remembers (those of the last two minutes).
const REPLAY_MEMORY: usize = 64 * 1024;

pub struct CallServer {
    parts: Parts,
    permits: Arc<Semaphore>,
    replays: Mutex<ReplayGuard>,
}

/// What a [`CallServer`] is made of.
pub struct Parts {
    pub wire: crate::wire::Wire,
    pub keys: KeyDistributor,
    pub registry: Arc<Registry>,
    pub auth: Arc<crate::auth::Auth>,
    pub store: Store,
}

impl CallServer {
    pub fn new(parts: Parts) -> Self {
        Self {
            parts,
            permits: Arc::new(Semaphore::new(CONCURRENCY)),
            replays: Mutex::new(ReplayGuard::new(REPLAY_MEMORY)),
        }
    }

    /// Checks a call from `agent` and starts it; never waits.
    pub fn on_call(self: &Arc<Self>, agent: &str, payload: &[u8]) {
        let Some(secret) = self.parts.wire.credentials.secret_of(agent) else {
            tracing::debug!(%agent, "a call from an agent that is not enrolled");
            return;
        };
        let key = MacKey::new(&secret);
        let opened = match envelope::open::<Call>(payload, &key) {
            Ok(opened) if opened.from == agent => opened,
            Ok(opened) => {
                tracing::warn!(%agent, from = %opened.from, "a call signed by another sender");
                return;
            }
            Err(e) => {
                tracing::warn!(%agent, error = %e, "a call that does not open");
                return;
            }
        };
        let call = opened.body;
        let verdict = self
            .replays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(agent, call.id.value(), opened.ts, verge_protocol::now_ms());
        let refusal = match verdict {
            Ok(()) => None,
            Err(NotRun::Replayed { .. }) => {
                tracing::warn!(%agent, id = %call.id, "dropping a replayed call");
                return;
            }
            Err(e @ NotRun::Stale { .. }) => Some(RpcError::new(ErrorCode::Stale, e.to_string())),
            Err(e @ NotRun::Full(_)) => Some(RpcError::new(ErrorCode::Busy, e.to_string())),
        };
        let permit = match refusal {
            Some(e) => return self.answer(agent, &key, call, Outcome::Err(e)),
            None => match self.permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let busy = RpcError::new(ErrorCode::Busy, "too many calls in flight");
                    return self.answer(agent, &key, call, Outcome::Err(busy));
                }
            },
        };
        let (this, agent) = (self.clone(), agent.to_string());
        tokio::spawn(async move {
            let private = PrivateKey::new(&secret);
            let outcome = match private.open(Way::Call, &call.params) {
                Ok(params) => match this.run(&agent, &call.method, params).await {
                    Ok(value) => private
                        .seal(Way::CallReply, &value)
                        .map(Outcome::Ok)
                        .unwrap_or_else(|e| {
                            Outcome::Err(RpcError::new(ErrorCode::Internal, e.to_string()))
                        }),
                    Err(e) => Outcome::Err(e),
                },
                Err(e) => Outcome::Err(RpcError::new(ErrorCode::InvalidParams, e.to_string())),
            };
            this.answer(&agent, &key, call, outcome);
            drop(permit);
        });
    }

    fn answer(&self, agent: &str, key: &MacKey, call: Call, result: Outcome) {
        let reply = CallReply {
            id: call.id,
            result,
        };
        let payload = envelope::seal(
            key,
            &self.parts.wire.manager_id,
            verge_protocol::now_ms(),
            &reply,
        );
        if let Err(e) = self.parts.wire.client.try_publish(
            self.parts.wire.topics.call_reply(agent),
            QoS::AtMostOnce,
            false,
            payload,
        ) {
            tracing::warn!(%agent, method = %call.method, error = %e, "a call's reply was not sent");
        }
    }

    async fn run(&self, agent: &str, method: &str, params: Value) -> Result<Value, RpcError> {
        let invalid = |e: serde_json::Error| RpcError::new(ErrorCode::InvalidParams, e.to_string());
        match method {
            call::METHOD_STORAGE_PRESIGN => {
                let p: PresignParams = serde_json::from_value(params).map_err(invalid)?;
                let result = self.presign(agent, &p).await?;
                serde_json::to_value(result)
                    .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))
            }
            call::METHOD_STORAGE_STORED => {
                let p: StoredParams = serde_json::from_value(params).map_err(invalid)?;
                self.stored(agent, &p.day).await.map(|()| json!({}))
            }
            call::METHOD_LIVEGO_CONTROL => {
                let p: ControlParams = serde_json::from_value(params)
                    .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e.to_string()))?;
                let (status, data) = self.control(agent, &p).await;
                tracing::info!(%agent, op = ?p.op, room = %p.room, status = status.as_u16(), "LiveGo control asked on a box");
                serde_json::to_value(ControlAnswer {
                    status: status.as_u16(),
                    data,
                })
                .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))
            }
            other => Err(RpcError::new(
                ErrorCode::UnknownMethod,
                format!("this manager has no method {other:?}"),
            )),
        }
    }

    /// What the box's `/control/...` answers.
    async fn control(&self, agent: &str, p: &ControlParams) -> (axum::http::StatusCode, Value) {
        use axum::http::StatusCode;
        if let Err(why) = verge_protocol::id::validate_stream_part("room", &p.room) {
            return (StatusCode::BAD_REQUEST, json!(why));
        }
        let need = crate::auth::policy::need_of(
            &Method::GET,
            p.op.path(),
            Some(&format!("room={}", p.room)),
        );
        let now = verge_protocol::now_ms() / 1000;
        if let Err(denied) = self.parts.auth.admit(&need, p.token.as_deref(), now) {
            let status = match denied {
                crate::auth::Denied::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                crate::auth::Denied::Forbidden(_) => StatusCode::FORBIDDEN,
            };
            return (status, json!(denied.to_string()));
        }
        if let Some(other) = self
            .parts
            .keys
            .store
            .bound_agent("live", &p.room)
            .filter(|bound| bound != agent)
        {
            return (
                StatusCode::CONFLICT,
                json!(format!("room {:?} belongs to box {other:?}", p.room)),
            );
        }
        let (keys, registry) = (&self.parts.keys, &self.parts.registry);
        match p.op {
            ControlOp::Get => livego::get_key(keys, registry, &p.room, Some(agent)).await,
            ControlOp::Reset => livego::reset_key(keys, registry, &p.room, Some(agent)).await,
            ControlOp::Delete => livego::delete_key(keys, registry, &p.room).await,
        }
    }

    fn storage(&self) -> Result<&crate::storage::Storage, RpcError> {
        self.parts
            .store
            .storage
            .as_deref()
            .ok_or_else(|| RpcError::new(ErrorCode::Unsupported, "this manager has no [storage]"))
    }

    /// The index's database, or `busy` while it is down.
    fn db(&self) -> Result<&crate::db::Db, RpcError> {
        self.parts
            .store
            .index
            .db()
            .map_err(|e| RpcError::new(ErrorCode::Busy, e))
    }

    /// Checks that the stream-day `day` (`{app}/{name}/{yyyy}/{mm}/{dd}`) is indexed for
    /// `agent`: a box uploads only its own recordings.
    async fn owns(&self, agent: &str, day: &str) -> Result<(String, (i32, u32, u32)), RpcError> {
        let object = format!("{day}/manifest.mpd");
        let (stream, year, month, d) = crate::http::playback::parse_object(&object)
            .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e))?;
        let db = self.db()?;
        let row = db
            .day(&stream, year, month, d)
            .await
            .map_err(|e| RpcError::new(ErrorCode::Busy, e.to_string()))?;
        match row {
            Some(row) if row.agent == agent => Ok((stream, (year, month, d))),
            Some(row) => Err(RpcError::new(
                ErrorCode::Conflict,
                format!("{day} is recorded by {:?}", row.agent),
            )),
            None => Err(RpcError::new(
                ErrorCode::NotFound,
                format!("{day} is not in the index (yet)"),
            )),
        }
    }

    async fn presign(&self, agent: &str, p: &PresignParams) -> Result<PresignResult, RpcError> {
        let storage = self.storage()?;
        if p.paths.is_empty() || p.paths.len() > call::MAX_PRESIGN {
            return Err(RpcError::new(
                ErrorCode::InvalidParams,
                format!("1 to {} paths", call::MAX_PRESIGN),
            ));
        }
        let mut checked = std::collections::HashSet::new();
        let mut urls = Vec::with_capacity(p.paths.len());
        for path in &p.paths {
            crate::http::playback::parse_object(path)
                .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e))?;
            let day = path.rsplit_once('/').map_or(path.as_str(), |(d, _)| d);
            if checked.insert(day.to_string()) {
                self.owns(agent, day).await?;
            }
            let url = storage
                .upload_url(path)
                .await
                .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
            urls.push(url);
        }
        Ok(PresignResult {
            urls,
            expires_ms: storage.presign_for().as_millis() as u64,
        })
    }

    async fn stored(&self, agent: &str, day: &str) -> Result<(), RpcError> {
        self.storage()?;
        let (stream, date) = self.owns(agent, day).await?;
        let db = self.db()?;
        db.mark_stored(&stream, date, agent)
            .await
            .map_err(|e| RpcError::new(ErrorCode::Busy, e.to_string()))?;
        tracing::info!(%agent, %day, "a recorded day is in storage");
        Ok(())
    }
}
