//! `[auth]` at the HTTP edge: the guard in front of every route, `POST /api/login` and
//! `POST /api/token`.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::{self, Claims, Denied, LoginError, policy};

use super::AppState;
use super::error::ApiError;

/// Checks the request's credentials against what its route needs; the grant goes into the
/// request's extensions for handlers that filter by it. A `?token=` is taken out of the URI
/// so it never travels on (to an agent, into a log).
pub async fn guard(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let need = policy::need_of(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    let (token, rest) = token_of(&request);
    let now = verge_protocol::now_ms() / 1000;
    match app.auth.admit(&need, token.as_deref(), now) {
        Ok(grant) => {
            if let Some(uri) = rest {
                *request.uri_mut() = uri;
            }
            let address = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            request
                .extensions_mut()
                .insert(super::whep::Caller::new(address, token.as_deref()));
            request.extensions_mut().insert(grant);
            next.run(request).await
        }
        Err(denied) => {
            tracing::debug!(method = %request.method(), path = request.uri().path(), reason = %denied, "refused");
            refusal(denied, token.is_some())
        }
    }
}

fn refusal(denied: Denied, had_token: bool) -> Response {
    let (status, reason) = match denied {
        Denied::Unauthenticated(r) => (StatusCode::UNAUTHORIZED, r),
        Denied::Forbidden(r) => (StatusCode::FORBIDDEN, r),
    };
    let mut response = (status, format!("{reason}\n")).into_response();
    let h = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        let challenge = if had_token {
            r#"Bearer realm="verge", error="invalid_token""#
        } else {
            r#"Bearer realm="verge""#
        };
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    // A WHEP page on another origin must be able to read why it was refused.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The request's token (`Authorization: Bearer`, else `?token=`) and, when the token came in
/// the query, the URI without it.
fn token_of(request: &Request) -> (Option<String>, Option<Uri>) {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    let Some(query) = request.uri().query() else {
        return (bearer, None);
    };
    let mut from_query = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("token=") {
            Some(value) => {
                from_query.get_or_insert_with(|| verge_serve::form::percent_decoded(value));
                false
            }
            None => true,
        })
        .collect();
    if from_query.is_none() {
        return (bearer, None);
    }
    let path = request.uri().path();
    let rebuilt = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    (bearer.or(from_query), rebuilt.parse().ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// liveman's answer to a login, and to `POST /api/token`.
#[derive(Serialize)]
pub struct TokenAnswer {
    access_token: String,
    token_type: &'static str,
    id: String,
    mode: u8,
    exp: u64,
}

impl TokenAnswer {
    fn new(access_token: String, claims: Claims) -> Self {
        Self {
            access_token,
            token_type: "Bearer",
            id: claims.id,
            mode: claims.mode,
            exp: claims.exp,
        }
    }
}

/// `POST /api/login` `{"username", "password"}` → an admin JWT.
pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Json<TokenAnswer>, Response> {
    if !app.auth.has_accounts() {
        return Err(ApiError::not_found("no accounts: [[auth.accounts]] is empty").into_response());
    }
    let body: LoginBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not {{\"username\": …, \"password\": …}}: {e}"),
        )
        .into_response()
    })?;
    let login = app.auth.login(
        &body.username,
        &body.password,
        from.ip(),
        verge_protocol::now_ms(),
    );
    match login.await {
        Ok((token, claims)) => {
            tracing::info!(user = %body.username, %from, "login");
            Ok(Json(TokenAnswer::new(token, claims)))
        }
        Err(e @ LoginError::Wrong) => {
            tracing::info!(user = %body.username, %from, "login refused: wrong username or password");
            Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response())
        }
        Err(e) => {
            // Refused without a check. At debug: a flood of these would flood the log (the
            // global budget says once when it runs out).
            tracing::debug!(%from, reason = %e, "login refused");
            let mut response =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()).into_response();
            if let Some(wait) = e.retry_after() {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            }
            Err(response)
        }
    }
}

/// The body of `POST /api/token` (live777's): a stream or `*`, the mode bits, a lifetime.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    id: String,
    mode: u8,
    /// Seconds; an hour when absent.
    #[serde(default = "default_duration")]
    duration: u64,
}

fn default_duration() -> u64 {
    3600
}

/// Ten years: long enough for a device's token, short enough to stay a number people read.
const MAX_DURATION: u64 = 10 * 365 * 24 * 3600;

/// `POST /api/token` (admin): a JWT scoped to one stream or all, with the given rights.
pub async fn token(
    State(app): State<AppState>,
    body: Bytes,
) -> Result<Json<TokenAnswer>, ApiError> {
    if !app.auth.enabled() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "[auth] is off, so nothing checks tokens: set [auth] secret (and tokens or accounts)",
        ));
    }
    let body: MintBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not {{\"id\": \"live/cam\" | \"*\", \"mode\": 1..7, \"duration\": seconds}}: {e}"),
        )
    })?;
    if body.mode == 0 || body.mode > 7 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "mode is 1..7: 4 read, 2 write, 1 admin, added",
        ));
    }
    if body.id != auth::ANY {
        let (app_name, name) = body.id.split_once('/').unwrap_or(("live", &body.id));
        for (what, part) in [("app", app_name), ("stream name", name)] {
            verge_protocol::id::validate_stream_part(what, part)
                .map_err(|reason| ApiError::new(StatusCode::BAD_REQUEST, reason))?;
        }
    }
    if body.duration == 0 || body.duration > MAX_DURATION {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("duration is 1..{MAX_DURATION} seconds"),
        ));
    }
    let claims = Claims {
        id: body.id,
        exp: verge_protocol::now_ms() / 1000 + body.duration,
        mode: body.mode,
    };
    tracing::info!(id = %claims.id, mode = claims.mode, exp = claims.exp, "token minted");
    Ok(Json(TokenAnswer::new(app.auth.mint(&claims), claims)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(uri: &str, authorization: Option<&str>) -> (Option<String>, Option<String>) {
        let mut builder = axum::http::Request::builder().uri(uri);
        if let Some(a) = authorization {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        let request = builder.body(axum::body::Body::empty()).unwrap();
        let (token, rest) = token_of(&request);
        (token, rest.map(|u| u.to_string()))
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query_which_loses_them() {
        assert_eq!(split("/whep/cam", None), (None, None));
        assert_eq!(
            split("/whep/cam", Some("bearer  abc ")),
            (Some("abc".into()), None)
        );
        assert_eq!(split("/whep/cam", Some("Basic abc")), (None, None));
        assert_eq!(
            split("/flv/live/cam.flv?token=a%2Eb&x=1", None),
            (Some("a.b".into()), Some("/flv/live/cam.flv?x=1".into()))
        );
        assert_eq!(
            split("/flv/live/cam.flv?token=q", Some("Bearer h")),
            (Some("h".into()), Some("/flv/live/cam.flv".into()))
        );
        assert_eq!(
            split("/a?x=1&tokens=2", None),
            (None, None),
            "only the exact key counts"
        );
    }
}
