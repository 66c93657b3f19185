//! WHEP on the agent's own port: the same paths and answers as the manager's proxy, without the
//! MQTT hop.

use axum::Extension;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use verge_protocol::whep::{self, SessionRole};
use verge_serve::path::{SessionPath, StreamPath};

use super::{AppState, plain};
use crate::streams::StreamName;
use crate::webrtc::{IncomingOffer, WhepError};

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

/// A checked SDP offer to this agent's WebRTC service (`POST /whep/…` or `/whip/…`): the
/// agent serves WebRTC, the body is `application/sdp` and the path names a valid stream.
/// Otherwise the refusal, before the body is read.
pub(super) struct Offer {
    pub service: crate::webrtc::Whep,
    pub stream: StreamName,
    pub headers: HeaderMap,
    pub sdp: String,
}

impl FromRequest<AppState> for Offer {
    type Rejection = Response;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, Response> {
        let what = if request.uri().path().starts_with("/whip") {
            "WHIP"
        } else {
            "WHEP"
        };
        let (mut parts, body) = request.into_parts();
        let stream = StreamPath::from_request_parts(&mut parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(service) = app.whep.clone() else {
            return Err(no_webrtc());
        };
        if !content_type_is(&parts.headers, whep::SDP) {
            return Err(plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("a {what} offer is sent as Content-Type: application/sdp"),
            ));
        }
        let stream = StreamName::parse(&stream.app, &stream.name)
            .map_err(|why| plain(StatusCode::BAD_REQUEST, why))?;
        let headers = parts.headers.clone();
        let sdp = String::from_request(Request::from_parts(parts, body), app)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Offer {
            service,
            stream,
            headers,
            sdp,
        })
    }
}

pub(super) async fn offer(offer: Offer) -> Response {
    let stream = offer.stream.id();
    let direct = IncomingOffer::direct(&stream, offer.sdp);
    match offer.service.offer(direct).await {
        Ok(answer) => {
            let location = whep::location(&stream, &answer.session);
            let links = whep::link_headers(offer.service.ice_servers());
            created(answer.sdp, &location, &links)
        }
        Err(e) => refused(e),
    }
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
