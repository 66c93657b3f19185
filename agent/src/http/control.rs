//! LiveGo's `/control/get|reset|delete?room={name}` on the box's own port, as LiveGo serves
//! them next to its players: keys are issued centrally, so the box asks the manager
//! ([`crate::calls`], method `livego.control`) and answers what it says, in LiveGo's envelope
//! `{"status": N, "data": …}`. The request's bearer token goes along and the manager's
//! `[auth]` judges it; a box manages only rooms that are bound to it (or to no box), and a key
//! it issues is bound to it.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verge_protocol::call::{self, ControlAnswer, ControlOp, ControlParams};

use super::AppState;

/// How long the manager may take: one MQTT round trip and a key-store write.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn get(
    state: State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    control(ControlOp::Get, state, query, headers, body).await
}

pub(super) async fn reset(
    state: State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    control(ControlOp::Reset, state, query, headers, body).await
}

pub(super) async fn delete(
    state: State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    control(ControlOp::Delete, state, query, headers, body).await
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

/// The room from the query, or from a form body (LiveGo reads both), `+` and `%XX` decoded.
fn room(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = form.then(|| std::str::from_utf8(body).ok()).flatten();
    [query, body].into_iter().flatten().find_map(|text| {
        text.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, v)| *k == "room" && !v.is_empty())
            .map(|(_, v)| decode(&v.replace('+', " ")))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn control(
    op: ControlOp,
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(room) = room(query.as_deref(), &headers, &body) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_comes_from_the_query_or_a_form() {
        let none = HeaderMap::new();
        assert_eq!(room(Some("x=1&room=c%61m"), &none, b""), Some("cam".into()));
        assert_eq!(room(Some("room="), &none, b""), None);
        assert_eq!(
            room(None, &none, b"room=cam"),
            None,
            "a body is read only as a form"
        );
        let form = HeaderMap::from_iter([(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        )]);
        assert_eq!(room(None, &form, b"room=door+1"), Some("door 1".into()));
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
