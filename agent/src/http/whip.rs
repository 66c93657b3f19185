//! WHIP (RFC 9725) on the agent's own port: a publisher on the box's LAN sends straight to it.
//! With `[rtmp] noauth = false` it must bring the stream's channel key as a bearer token, as
//! an RTMP publisher brings it in the stream name. Sessions are patched and deleted under
//! `/whip-session/{stream}/{session}` by the WHEP handlers (one session table).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use verge_protocol::whep;

use super::whep::{Offer, created, refused};
use super::{AppState, plain};
use crate::webrtc::IncomingOffer;

pub(super) async fn offer(State(app): State<AppState>, offer: Offer) -> Response {
    let Offer {
        service,
        stream,
        headers,
        sdp,
    } = offer;
    if let Some(keys) = &app.keys {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(key) = bearer else {
            return plain(
                StatusCode::UNAUTHORIZED,
                "publishing needs the stream's channel key: Authorization: Bearer {key}".into(),
            );
        };
        let owns = keys
            .lookup(key)
            .is_some_and(|k| k.app == stream.app && k.name == stream.name);
        if !owns {
            return plain(
                StatusCode::FORBIDDEN,
                format!("that is not the channel key of {}", stream.id()),
            );
        }
    }
    let id = stream.id();
    match service.publish(IncomingOffer::direct(&id, sdp)).await {
        Ok(answer) => {
            let location = whep::whip_location(&id, &answer.session);
            let links = whep::link_headers(service.ice_servers());
            created(answer.sdp, &location, &links)
        }
        Err(e) => refused(e),
    }
}
