//! The agent's RPC methods. Each takes the request's params and returns a JSON result or an
//! [`RpcError`]; the session does the opening, replay check, deadline and reply.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use verge_protocol::index::{self, RecordParams};
use verge_protocol::livestat;
use verge_protocol::presence::Presence;
use verge_protocol::relay::{self, RelayAnswerParams, RelayOfferParams, RelayStopParams};
use verge_protocol::rpc::{self, ErrorCode, Pong, RpcError};
use verge_protocol::state::State;
use verge_protocol::whep::{self, OfferParams, PatchParams, SessionParams};

use crate::streams::StreamName;
use crate::webrtc::{IncomingOffer, Whep, WhepError};

/// What a method may read.
pub struct Context {
    pub presence: Presence,
    pub state: State,
    /// The WHEP service, if this agent serves WebRTC.
    pub whep: Option<Whep>,
    pub recorder: Option<crate::record::Recorder>,
    pub hub: std::sync::Arc<verge_media::hub::Hub>,
}

/// Result of `info`.
#[derive(Debug, Serialize)]
pub struct Info {
    pub presence: Presence,
    pub state: State,
    pub uptime_ms: u64,
}

pub async fn dispatch(method: &str, params: Value, ctx: Context) -> Result<Value, RpcError> {
    let now = verge_protocol::now_ms();
    if method.starts_with("whep.")
        || method.starts_with("relay.")
        || method == whep::METHOD_WHIP_OFFER
    {
        return match ctx.whep {
            Some(whep) => whep_call(&whep, method, params).await,
            None => Err(RpcError::new(
                ErrorCode::Unsupported,
                "this agent does not serve WebRTC",
            )),
        };
    }
    if method.starts_with("record.") {
        let Some(recorder) = ctx.recorder else {
            return Err(RpcError::new(
                ErrorCode::Unsupported,
                "this agent does not record",
            ));
        };
        let p: RecordParams = serde_json::from_value(params)
            .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e.to_string()))?;
        let stream = StreamName::from_id(&p.stream)
            .map_err(|why| RpcError::new(ErrorCode::InvalidParams, why))?
            .id();
        let state = match method {
            index::METHOD_RECORD_START => recorder.start(&stream),
            index::METHOD_RECORD_STOP => recorder.stop(&stream),
            index::METHOD_RECORD_STATE => recorder.state(&stream),
            other => {
                return Err(RpcError::new(
                    ErrorCode::UnknownMethod,
                    format!("this agent has no method {other:?}"),
                ));
            }
        };
        return to_value(state).map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()));
    }
    let result = match method {
        rpc::METHOD_PING => to_value(Pong { agent_time: now }),
        livestat::METHOD => {
            let p: livestat::Params = serde_json::from_value(params)
                .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e.to_string()))?;
            to_value(crate::livestat::collect(&ctx.hub, p.stream.as_deref()))
        }
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

async fn whep_call(whep: &Whep, method: &str, params: Value) -> Result<Value, RpcError> {
    fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
        serde_json::from_value(params)
            .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e.to_string()))
    }
    let refused = |e: WhepError| RpcError::new(e.code(), e.to_string());
    let result = match method {
        whep::METHOD_OFFER | whep::METHOD_WHIP_OFFER => {
            let p: OfferParams = parse(params)?;
            let stream = StreamName::from_id(&p.stream)
                .map_err(|why| RpcError::new(ErrorCode::InvalidParams, why))?
                .id();
            let offer = IncomingOffer {
                stream: &stream,
                sdp: p.sdp,
                ice_servers: &p.ice_servers,
                client: p.client.as_ref(),
            };
            let answered = if method == whep::METHOD_OFFER {
                whep.offer(offer).await
            } else {
                whep.publish(offer).await
            };
            to_value(answered.map_err(refused)?)
        }
        whep::METHOD_PATCH => {
            let p: PatchParams = parse(params)?;
            to_value(
                whep.patch(&p.session, p.stream.as_deref(), p.role, &p.frag)
                    .await
                    .map_err(refused)?,
            )
        }
        whep::METHOD_DELETE => {
            let p: SessionParams = parse(params)?;
            whep.delete(&p.session, p.stream.as_deref(), p.role)
                .map_err(refused)?;
            Ok(Value::Object(Default::default()))
        }
        relay::METHOD_RELAY_OFFER => {
            let mut p: RelayOfferParams = parse(params)?;
            p.stream = StreamName::from_id(&p.stream)
                .map_err(|why| RpcError::new(ErrorCode::InvalidParams, why))?
                .id();
            to_value(whep.relay_offer(p).await.map_err(refused)?)
        }
        relay::METHOD_RELAY_ANSWER => {
            let p: RelayAnswerParams = parse(params)?;
            whep.relay_answer(p).await.map_err(refused)?;
            Ok(Value::Object(Default::default()))
        }
        relay::METHOD_RELAY_STOP => {
            let p: RelayStopParams = parse(params)?;
            let stream = StreamName::from_id(&p.stream)
                .map_err(|why| RpcError::new(ErrorCode::InvalidParams, why))?;
            whep.relay_stop(&stream.id(), &p.reason).map_err(refused)?;
            Ok(Value::Object(Default::default()))
        }
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
