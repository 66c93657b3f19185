//! LiveGo's `/control/get|reset|delete?room={name}` on the box's own port, as LiveGo serves
//! them next to its players: keys are issued centrally, so the box asks the manager
//! ([`crate::calls`], method `livego.control`) and answers what it says, in LiveGo's envelope
//! `{"status": N, "data": …}`. The request's bearer token goes along and the manager's
//! `[auth]` judges it; a box manages only rooms that are bound to it (or to no box), and a key
//! it issues is bound to it.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verge_protocol::call::{self, ControlAnswer, ControlOp, ControlParams};
use verge_serve::form::FormParams;

use super::AppState;

/// How long the manager may take: one MQTT round trip and a key-store write.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn get(app: State<AppState>, headers: HeaderMap, form: FormParams) -> Response {
    control(ControlOp::Get, app, headers, form).await
}

pub(super) async fn reset(app: State<AppState>, headers: HeaderMap, form: FormParams) -> Response {
    control(ControlOp::Reset, app, headers, form).await
}

pub(super) async fn delete(app: State<AppState>, headers: HeaderMap, form: FormParams) -> Response {
    control(ControlOp::Delete, app, headers, form).await
}

fn answer(status: u16, data: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = json!({ "status": code.as_u16(), "data": data }).to_string();
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

async fn control(
    op: ControlOp,
    State(app): State<AppState>,
    headers: HeaderMap,
    form: FormParams,
) -> Response {
    let Some(room) = form.get("room").map(str::to_string) else {
        return answer(400, json!(format!("url: {}?room=<ROOM_NAME>", op.path())));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let params = ControlParams { op, room, token };
    let params = match serde_json::to_value(&params) {
        Ok(v) => v,
        Err(e) => return answer(500, json!(e.to_string())),
    };
    match app
        .calls
        .call(call::METHOD_LIVEGO_CONTROL, &params, TIMEOUT)
        .await
        .map(serde_json::from_value::<ControlAnswer>)
    {
        Ok(Ok(a)) => answer(a.status, a.data),
        Ok(Err(e)) => answer(
            502,
            json!(format!("the manager's answer does not read: {e}")),
        ),
        Err(e) => {
            tracing::warn!(agent = %app.agent_id, op = ?op, error = %e, "LiveGo control: no answer from the manager");
            answer(503, json!(e.to_string()))
        }
    }
}
