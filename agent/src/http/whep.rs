//! WHEP on the agent's own port: the same paths and answers as the manager's proxy, without the
//! MQTT hop.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use verge_protocol::whep::{self, SessionRole};
use verge_serve::path::{SessionPath, StreamPath};

use super::{AppState, plain};
use crate::streams::StreamName;
use crate::webrtc::WhepError;

pub(super) async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn delete(
    State(app): State<AppState>,
    Extension(role): Extension<SessionRole>,
    path: SessionPath,
) -> Response {
    delete_session(app, &path.stream.id(), &path.session, role)
}

fn no_webrtc() -> Response {
    plain(
        StatusCode::NOT_FOUND,
        "this agent does not serve WebRTC".into(),
    )
}

pub(super) fn refused(e: WhepError) -> Response {
    let status =
        StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    plain(status, e.to_string())
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    whep::is_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        expected,
    )
}

pub(super) async fn offer(
    State(app): State<AppState>,
    stream: StreamPath,
    headers: HeaderMap,
    sdp: String,
) -> Response {
    let (whep, stream) = match offer_target(&app, &headers, &stream, "WHEP") {
        Ok((whep, stream)) => (whep, stream.id()),
        Err(refused) => return *refused,
    };
    match whep.offer(&stream, sdp, &[], None).await {
        Ok(answer) => {
            let location = whep::location(&stream, &answer.session);
            let links = whep::link_headers(whep.ice_servers());
            created(answer.sdp, &location, &links)
        }
        Err(e) => refused(e),
    }
}

/// The service and stream an offer (`what`: WHEP or WHIP) is for, or the refusal: no WebRTC
/// here, the wrong content type, a bad stream name.
pub(super) fn offer_target<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    stream: &StreamPath,
    what: &str,
) -> Result<(&'a crate::webrtc::Whep, StreamName), Box<Response>> {
    let Some(service) = app.whep.as_ref() else {
        return Err(Box::new(no_webrtc()));
    };
    if !content_type_is(headers, whep::SDP) {
        return Err(Box::new(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a {what} offer is sent as Content-Type: application/sdp"),
        )));
    }
    let stream = StreamName::parse(&stream.app, &stream.name)
        .map_err(|why| Box::new(plain(StatusCode::BAD_REQUEST, why)))?;
    Ok((service, stream))
}

/// A trickle-ICE PATCH (or an ICE restart) of a WHEP or WHIP session.
pub(super) async fn patch(
    State(app): State<AppState>,
    Extension(role): Extension<SessionRole>,
    path: SessionPath,
    headers: HeaderMap,
    frag: String,
) -> Response {
    let Some(whep) = app.whep.as_ref() else {
        return no_webrtc();
    };
    if !content_type_is(&headers, whep::SDPFRAG) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a WHEP PATCH is sent as Content-Type: application/trickle-ice-sdpfrag".into(),
        );
    }
    match whep
        .patch(&path.session, Some(&path.stream.id()), role, &frag)
        .await
    {
        Ok(_) => cors(StatusCode::NO_CONTENT.into_response()),
        Err(e) => refused(e),
    }
}

fn delete_session(app: AppState, stream: &str, session: &str, role: SessionRole) -> Response {
    let Some(whep) = app.whep.as_ref() else {
        return no_webrtc();
    };
    match whep.delete(session, Some(stream), role) {
        Ok(()) => cors(StatusCode::OK.into_response()),
        Err(e) => refused(e),
    }
}

/// `201 Created` with the answer, its session URL and the viewer's ICE servers.
pub(super) fn created(sdp: String, location: &str, links: &[String]) -> Response {
    let mut response = (StatusCode::CREATED, sdp).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    for link in links {
        if let Ok(v) = HeaderValue::from_str(link) {
            h.append(header::LINK, v);
        }
    }
    cors(response)
}

fn cors(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in whep::CORS {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}
