//! The WHEP proxy (liveman's paths): a viewer's offer goes over MQTT RPC to the agent holding
//! the stream, and the agent's answer comes back as `201 Created`.
//!
//! `{stream}` is `{name}` in the default app `live`, or `{app}/{name}`. The session id in
//! `Location: /session/{stream}/{session}` names its agent, so PATCH and DELETE reach it
//! through any manager without shared state. Every refusal is a status a client can act on
//! with a one-line reason: 404 unknown stream or session, 503 agent offline or busy, 504 the
//! agent did not answer in time, 400 an offer the agent cannot answer, 415 a wrong content
//! type (see [`ApiError`] for the mapping of RPC failures).

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use verge_protocol::id::validate_stream_part;
use verge_protocol::whep::{
    self, Client, OfferParams, OfferResult, PatchParams, PatchResult, SessionParams, SessionRole,
};
use verge_serve::path::{SessionPath, StreamPath};

use super::AppState;
use super::error::ApiError;
use crate::auth::{Grant, Need, policy};
use crate::cluster::PlaceError;
use crate::liveion::proxy::Kind::Whep as WHEP;

/// Largest offer or sdpfrag accepted; browsers' offers are a few KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// CORS preflight; it also hands out the ICE servers (`Link`), so a page can configure its
/// peer connection before it gathers candidates for the offer. Preflights are public (a
/// browser sends them without credentials), so the servers, and the TURN credentials among
/// them, go only to a caller whose token may make the offer or change the session the path
/// names, and for WHEP only while the stream is live: nobody gets a relay for nothing.
pub async fn preflight(
    State(app): State<AppState>,
    Extension(grant): Extension<Grant>,
    uri: Uri,
) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if may_have_ice(&app, &grant, uri.path()) {
        let servers = session_ice(&app).await;
        add_links(&mut response, &servers);
    }
    cors(response)
}

/// Whether a preflight on `path` may carry ICE servers for `grant`.
fn may_have_ice(app: &AppState, grant: &Grant, path: &str) -> bool {
    // What the request the preflight announces will need (offers and session changes need
    // the same right whatever their method).
    match policy::need(&Method::POST, path) {
        need @ Need::Read(_) => {
            let Need::Read(stream) = &need else {
                return false;
            };
            grant.meets(&need).is_ok() && super::streams::locate(app, stream).is_ok()
        }
        need @ Need::Write(_) => grant.meets(&need).is_ok(),
        _ => false,
    }
}

/// Who made a request, for the agents' per-client session caps: its source address and a
/// digest of its token (the token itself never leaves the manager). The auth guard puts one
/// in every request.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Client>);

impl Caller {
    pub fn new(address: Option<std::net::IpAddr>, token: Option<&str>) -> Self {
        Self(address.map(|address| Client {
            address: address.to_string(),
            token: token.filter(|t| !t.is_empty()).map(token_digest),
        }))
    }
}

/// 16 hex digits of SHA-256: enough to tell tokens apart, nothing to replay.
fn token_digest(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// ICE servers for one new session (fresh TURN credentials with `[extra_ice.coturn]`).
pub(super) async fn session_ice(app: &AppState) -> Vec<verge_protocol::whep::IceServer> {
    // The agent names its sessions when it answers; TURN credentials are made before, under a
    // random name of their own.
    let label = verge_protocol::secret::random_secret();
    let mut servers = crate::ice::for_session(&app.ice, &label, verge_protocol::now_ms() / 1000);
    if let Some(cloudflare) = &app.cloudflare {
        servers.extend(cloudflare.servers().await);
    }
    servers
}

pub(super) fn add_links(response: &mut Response, servers: &[verge_protocol::whep::IceServer]) {
    for link in whep::link_headers(servers) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            response.headers_mut().append(header::LINK, v);
        }
    }
}

/// Query parameters of a WHEP offer.
#[derive(Debug, Default, serde::Deserialize)]
pub struct OfferQuery {
    /// liveman's `?nodes=`: liveion node(s) to serve the viewer from, comma-separated.
    pub nodes: Option<String>,
    /// Set by the manager on a liveion node's cascade pull (the node's alias): that viewer is
    /// placed on Verge's own nodes only.
    pub cascade: Option<String>,
}

pub async fn offer(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    stream: StreamPath,
    axum::extract::Query(query): axum::extract::Query<OfferQuery>,
    headers: HeaderMap,
    body: String,
) -> Response {
    measured(
        &app,
        offer_for(
            &app,
            &caller,
            &stream.app,
            &stream.name,
            &query,
            &headers,
            body,
        ),
    )
    .await
}

/// Counts the offer by the status of its answer, and times the ones answered.
pub(super) async fn measured(
    app: &AppState,
    offer: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = std::time::Instant::now();
    let response = respond(offer.await);
    let status = response.status();
    if status == StatusCode::CREATED {
        app.metrics
            .whep_signaling_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    app.metrics.whep_offers.add(&[status.as_str()], 1);
    response
}

pub async fn patch(
    State(app): State<AppState>,
    Extension(role): Extension<SessionRole>,
    path: SessionPath,
    headers: HeaderMap,
    body: String,
) -> Response {
    respond(patch_session(&app, path.stream.id(), path.session, role, &headers, body).await)
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(role): Extension<SessionRole>,
    path: SessionPath,
) -> Response {
    respond(delete_session(&app, path.stream.id(), path.session, role).await)
}

pub(super) fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|refusal| cors(refusal.into_response()))
}

pub(super) fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if whep::is_content_type(value, expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send this request as Content-Type: {expected}"),
        ))
    }
}

pub(super) async fn call<T: DeserializeOwned>(
    app: &AppState,
    agent: &str,
    method: &str,
    params: impl serde::Serialize,
) -> Result<T, ApiError> {
    let params = serde_json::to_value(params)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let value = app.rpc.call(agent, method, params, app.rpc_timeout).await?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("agent {agent:?} answered {method} with something else: {e}"),
        )
    })
}

async fn offer_for(
    app: &AppState,
    caller: &Caller,
    app_name: &str,
    name: &str,
    query: &OfferQuery,
    headers: &HeaderMap,
    sdp: String,
) -> Result<Response, ApiError> {
    let stream = check_offer(headers, app_name, name, &sdp)?;
    if let Some(nodes) = query
        .nodes
        .as_deref()
        .filter(|n| !n.is_empty() && app_name == "live")
    {
        let pinned = nodes.split(',').map(str::trim).find_map(|alias| {
            let node = app.liveion.target(alias)?;
            app.liveion
                .stream(alias, name)
                .filter(|s| s.has_publisher())?;
            Some(node)
        });
        return match pinned {
            Some(node) => super::liveion::offer(app, &node, WHEP, &stream, name, sdp).await,
            None => Err(ApiError::not_found(format!(
                "stream {name} is not on any of the nodes {nodes:?}"
            ))),
        };
    }
    // 404 for a stream nowhere, 503 for one on an offline box, each with its reason; a stream
    // no agent has may be on a liveion node.
    if let Err(not_on_agents) = super::streams::locate(app, &stream) {
        if app_name != "live" {
            return Err(not_on_agents);
        }
        // A Verge cloud node relaying the liveion node's stream serves it first (its copy is
        // already paid for).
        if let Some(relay) = relay_of_node_stream(app, &stream) {
            let servers = session_ice(app).await;
            let method = whep::METHOD_OFFER;
            match offer_to_agent(
                app,
                caller,
                &relay,
                method,
                stream.clone(),
                sdp.clone(),
                servers,
            )
            .await
            {
                Ok(response) => return Ok(response),
                Err(e) => {
                    tracing::info!(%stream, node = %relay, "relay of a liveion stream refused a viewer: {}", e.reason)
                }
            }
        }
        return match app.liveion.viewer_node(name) {
            Ok(Some(node)) => super::liveion::offer(app, &node, WHEP, &stream, name, sdp).await,
            Ok(None) => Err(not_on_agents),
            Err(full) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, full)),
        };
    }
    // Past the box's share with no Verge cloud node to take it: a liveion node may.
    if app_name == "live"
        && query.cascade.is_none()
        && !app.liveion.running_aliases().is_empty()
        && let Some(response) = super::liveion::overflow(app, &stream, name, &sdp).await
    {
        return Ok(response);
    }
    let servers = session_ice(app).await;
    let mut failed = Vec::new();
    loop {
        let agent = app
            .cluster
            .place(&stream, &servers, &failed)
            .await
            .map_err(|e| match e {
                PlaceError::NotLive(_) => ApiError::not_found(e.to_string()),
                PlaceError::Full(_) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
            })?;
        let answer = offer_to_agent(
            app,
            caller,
            &agent,
            whep::METHOD_OFFER,
            stream.clone(),
            sdp.clone(),
            servers.clone(),
        )
        .await;
        match answer {
            // A node that died a moment ago may still be placed on until its will arrives, and
            // a relay that just closed until its node reports it: one more placement without
            // that node, so the viewer does not pay for it.
            Err(e) if failed.is_empty() && e.other_node_may_serve() => {
                tracing::info!(%stream, node = %agent, "offer not answered, placing elsewhere: {}", e.reason);
                failed.push(agent);
            }
            other => return other,
        }
    }
}

/// The online cloud node with the fewest readers relaying `stream` from a liveion node.
fn relay_of_node_stream(app: &AppState, stream: &str) -> Option<String> {
    app.registry
        .list()
        .into_iter()
        .filter(|r| r.online())
        .filter_map(|r| {
            let copy = r.state.as_ref()?.streams.iter().find(|s| {
                s.id() == stream
                    && s.relay
                        .as_ref()
                        .is_some_and(|of| app.liveion.target(&of.source).is_some())
            })?;
            Some((copy.readers, r.id))
        })
        .min()
        .map(|(_, id)| id)
}

/// Carries an offer (WHEP or WHIP, by `method`) to `agent` and answers the client with 201,
/// the session's `Location` and the ICE servers: `servers`, from [`session_ice`], which the
/// client and the agent both get (with TURN credentials of this session, a box behind a
/// symmetric NAT relays too).
pub(super) async fn offer_to_agent(
    app: &AppState,
    caller: &Caller,
    agent: &str,
    method: &str,
    stream: String,
    sdp: String,
    servers: Vec<verge_protocol::whep::IceServer>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let answer: OfferResult = call(
        app,
        agent,
        method,
        OfferParams {
            stream: stream.clone(),
            sdp,
            ice_servers: servers.clone(),
            client: caller.0.clone(),
        },
    )
    .await?;
    check_session(agent, &answer)?;
    let (location, kind) = if method == whep::METHOD_WHIP_OFFER {
        (whep::whip_location(&stream, &answer.session), "WHIP")
    } else {
        (whep::location(&stream, &answer.session), "WHEP")
    };
    tracing::info!(%agent, %stream, session = %answer.session,
        signaling_ms = started.elapsed().as_millis() as u64, "{kind} session created");
    Ok(created(app, &location, answer, servers))
}

/// The checks every offer (WHEP or WHIP) passes before it goes to an agent; its stream id.
pub(super) fn check_offer(
    headers: &HeaderMap,
    app_name: &str,
    name: &str,
    sdp: &str,
) -> Result<String, ApiError> {
    require_content_type(headers, whep::SDP)?;
    for (what, part) in [("app", app_name), ("stream name", name)] {
        validate_stream_part(what, part)
            .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, why))?;
    }
    if !sdp.trim_start().starts_with("v=0") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body is not an SDP offer (it must start with v=0)",
        ));
    }
    Ok(format!("{app_name}/{name}"))
}

/// The agent names its sessions after itself; anything else could not be routed back.
pub(super) fn check_session(agent: &str, answer: &OfferResult) -> Result<(), ApiError> {
    if whep::session_agent(&answer.session) == Some(agent) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("agent {agent:?} answered with a session id that is not its own"),
    ))
}

/// `201 Created` with the agent's answer, the session URL and the ICE servers: those given to
/// the agent with the offer, and the agent's own too, as liveman passes on its upstream's,
/// unless `[extra_ice] override_upstream_ice_servers`.
pub(super) fn created(
    app: &AppState,
    location: &str,
    answer: OfferResult,
    servers: Vec<verge_protocol::whep::IceServer>,
) -> Response {
    let mut response = (StatusCode::CREATED, answer.sdp).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(whep::SDP));
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    let mut links = servers;
    if !app.ice.override_upstream_ice_servers {
        for server in answer.ice_servers {
            if !links.contains(&server) {
                links.push(server);
            }
        }
    }
    add_links(&mut response, &links);
    cors(response)
}

fn session_agent(session: &str) -> Result<String, ApiError> {
    whep::session_agent(session)
        .map(str::to_string)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no WHEP session {session}")))
}

pub(super) async fn patch_session(
    app: &AppState,
    stream: String,
    session: String,
    role: SessionRole,
    headers: &HeaderMap,
    frag: String,
) -> Result<Response, ApiError> {
    if let Some((alias, id)) = crate::liveion::proxy::split_session(&session) {
        return super::liveion::session(app, &stream, alias, id, role, Some((headers, frag))).await;
    }
    require_content_type(headers, whep::SDPFRAG)?;
    let agent = session_agent(&session)?;
    let _: PatchResult = call(
        app,
        &agent,
        whep::METHOD_PATCH,
        PatchParams {
            session,
            stream: Some(stream),
            role,
            frag,
        },
    )
    .await?;
    Ok(cors(StatusCode::NO_CONTENT.into_response()))
}

pub(super) async fn delete_session(
    app: &AppState,
    stream: String,
    session: String,
    role: SessionRole,
) -> Result<Response, ApiError> {
    if let Some((alias, id)) = crate::liveion::proxy::split_session(&session) {
        return super::liveion::session(app, &stream, alias, id, role, None).await;
    }
    let agent = session_agent(&session)?;
    let params = SessionParams {
        session,
        stream: Some(stream),
        role,
    };
    let _: serde_json::Value = call(app, &agent, whep::METHOD_DELETE, params).await?;
    Ok(cors(StatusCode::OK.into_response()))
}

pub(super) fn cors(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in whep::CORS {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}
