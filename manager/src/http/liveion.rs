//! Streams on liveion nodes through the manager's own URLs: offers and their sessions passed
//! on ([`crate::liveion::proxy`]), liveman's node-pinned `POST /api/whep/{alias}/{stream}`
//! and `POST /api/whip/{alias}/{stream}` (a liveion node or a Verge agent), and
//! `POST /api/cascade/{stream}` with `{"node": alias}`.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use verge_protocol::whep::{self, SessionRole};

use super::AppState;
use super::error::ApiError;
use super::whep::{
    Caller, add_links, check_offer, cors, measured, offer_to_agent, require_content_type, respond,
    session_ice,
};
use crate::auth::{Claims, READ};
use crate::liveion::proxy::{self, Kind, ProxyError};
use crate::liveion::{Target, cascade as node_cascade};

/// How long a cascade's read token lasts: its source session's PATCH and DELETE need it too.
const CASCADE_TOKEN_SECS: u64 = 7 * 24 * 3600;

/// An offer for `stream` (`live/{name}`) passed on to a liveion node: `201 Created` with the
/// manager's session URL, the node's ICE servers (unless `[extra_ice]
/// override_upstream_ice_servers`) and the session's own.
pub(super) async fn offer(
    app: &AppState,
    target: &Target,
    kind: Kind,
    stream: &str,
    name: &str,
    sdp: String,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let offered = proxy::offer(target, kind, name, sdp)
        .await
        .map_err(api_error)?;
    let (location, label) = match kind {
        Kind::Whep => (whep::location(stream, &offered.session), "WHEP"),
        Kind::Whip => (whep::whip_location(stream, &offered.session), "WHIP"),
    };
    tracing::info!(node = %target.alias, %stream, session = %offered.session,
        signaling_ms = started.elapsed().as_millis() as u64, "{label} session created on a liveion node");
    let mut response = (StatusCode::CREATED, offered.sdp).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(whep::SDP));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if !app.ice.override_upstream_ice_servers {
        for link in &offered.links {
            if let Ok(v) = HeaderValue::from_str(link) {
                h.append(header::LINK, v);
            }
        }
    }
    add_links(&mut response, &session_ice(app).await);
    Ok(cors(response))
}

/// A node's refusal as the manager's: its status where a client can act on it, 502 where the
/// fault is between the manager and the node.
fn api_error(e: ProxyError) -> ApiError {
    let status = match &e {
        ProxyError::Refused { status, .. } => match *status {
            400 | 404 | 409 | 415 | 503 | 504 => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        },
        ProxyError::Unreachable { .. } | ProxyError::NoSession { .. } => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, e.to_string())
}

/// PATCH or DELETE (`frag` set or not) of a session on node `alias`. A viewer's URL
/// (`/session/…`) never reaches a publisher's session, as with agents.
pub(super) async fn session(
    app: &AppState,
    stream: &str,
    alias: &str,
    id: &str,
    role: SessionRole,
    patch: Option<(&HeaderMap, String)>,
) -> Result<Response, ApiError> {
    let no_session = || ApiError::not_found(format!("no session {}", proxy::session_id(alias, id)));
    let name = stream.strip_prefix("live/").ok_or_else(no_session)?;
    let target = app.liveion.target(alias).ok_or_else(no_session)?;
    if role == SessionRole::Viewer
        && app
            .liveion
            .stream(alias, name)
            .is_some_and(|s| s.publish.sessions.iter().any(|p| p.id == id))
    {
        return Err(no_session());
    }
    match patch {
        Some((headers, frag)) => {
            require_content_type(headers, whep::SDPFRAG)?;
            proxy::patch(&target, name, id, whep::SDPFRAG, frag)
                .await
                .map_err(api_error)?;
            Ok(cors(StatusCode::NO_CONTENT.into_response()))
        }
        None => {
            proxy::delete(&target, name, id).await.map_err(api_error)?;
            Ok(cors(StatusCode::OK.into_response()))
        }
    }
}

/// liveman's `POST /api/whep/{alias}/{stream}` (a viewer on that node or agent, counted with
/// the other WHEP offers) and `POST /api/whip/{alias}/{stream}` (a publisher into it).
pub fn pinned_offer(kind: Kind) -> MethodRouter<AppState> {
    post(
        move |State(app): State<AppState>,
              Extension(caller): Extension<Caller>,
              Path((alias, name)): Path<(String, String)>,
              headers: HeaderMap,
              body: String| async move {
            let offer = pinned(&app, &caller, kind, &alias, &name, &headers, body);
            match kind {
                Kind::Whep => measured(&app, offer).await,
                Kind::Whip => respond(offer.await),
            }
        },
    )
}

async fn pinned(
    app: &AppState,
    caller: &Caller,
    kind: Kind,
    alias: &str,
    name: &str,
    headers: &HeaderMap,
    sdp: String,
) -> Result<Response, ApiError> {
    let stream = check_offer(headers, "live", name, &sdp)?;
    if let Some(target) = app.liveion.target(alias) {
        return offer(app, &target, kind, &stream, name, sdp).await;
    }
    if app.registry.get(alias).is_none() {
        return Err(ApiError::not_found(format!(
            "no node or agent is called {alias:?}"
        )));
    }
    let method = match kind {
        Kind::Whep => whep::METHOD_OFFER,
        Kind::Whip => whep::METHOD_WHIP_OFFER,
    };
    let servers = session_ice(app).await;
    offer_to_agent(app, caller, alias, method, stream, sdp, servers).await
}

#[derive(Debug, Deserialize)]
pub struct CascadeBody {
    /// The liveion node to pull the stream into.
    pub node: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cascaded {
    pub node: String,
    pub stream: String,
    pub source_url: String,
    /// The node's copy closes after this long without a subscriber.
    pub maximum_idle_time: u64,
}

/// Makes `target` pull `live/{name}` from the manager's `/whep/{name}` (the pull marked
/// `?cascade={alias}`, so it is placed on Verge's own nodes), waits until its copy is
/// connected, and closes it once idle; the source URL.
pub(super) async fn cascade_into(
    app: &AppState,
    target: &Target,
    name: &str,
) -> Result<String, ApiError> {
    let stream = format!("live/{name}");
    let token = app.auth.enabled().then(|| {
        app.auth.mint(&Claims {
            id: stream.clone(),
            exp: verge_protocol::now_ms() / 1000 + CASCADE_TOKEN_SECS,
            mode: READ,
        })
    });
    let source_url = format!("{}/whep/{name}?cascade={}", app.public_url, target.alias);
    node_cascade::pull(target, name, &source_url, token)
        .await
        .map_err(api_error)?;
    tracing::info!(node = %target.alias, %stream, %source_url, "cascade into a liveion node connected");
    app.liveion.refresh(target).await;
    tokio::spawn(node_cascade::close_when_idle(
        app.liveion.clone(),
        target.clone(),
        name.to_string(),
        source_url.clone(),
        app.cascade_idle,
    ));
    Ok(source_url)
}

/// A viewer of a box's stream past what Verge's nodes should carry ([`crate::cluster::Cluster::overflows`]),
/// when liveion nodes run: served by a node holding a copy cascaded from this manager, with
/// room, or by one that pulls a copy now. `None`: no liveion node takes it (Verge's
/// placement serves it as it would alone).
pub(super) async fn overflow(
    app: &AppState,
    stream: &str,
    name: &str,
    sdp: &str,
) -> Option<Response> {
    let source = format!("{}/whep/{name}", app.public_url);
    let _turn = app.liveion.turn(name).await;
    if !app.cluster.overflows(stream) {
        return None;
    }
    let node = match app.liveion.copy_node(name, &source) {
        Some(node) => node,
        None => {
            let node = app.liveion.publish_node_without(name)?;
            if let Err(e) = cascade_into(app, &node, name).await {
                tracing::warn!(%stream, node = %node.alias, "no cascade into the liveion node: {}", e.reason);
                return None;
            }
            node
        }
    };
    match offer(app, &node, Kind::Whep, stream, name, sdp.to_string()).await {
        Ok(response) => Some(response),
        Err(e) => {
            tracing::warn!(%stream, node = %node.alias, "liveion node refused an overflow viewer: {}", e.reason);
            None
        }
    }
}

/// A stream of a liveion node relayed into Verge cloud node `node` (its viewers, recorder,
/// HTTP-FLV and HLS then take it as any stream of the node's). A box's own streams are placed
/// on cloud nodes by the manager itself ([cluster]).
async fn into_verge_node(
    app: &AppState,
    node: &str,
    name: &str,
) -> Result<Json<Cascaded>, ApiError> {
    let stream = format!("live/{name}");
    let record = app
        .registry
        .get(node)
        .filter(|r| r.online())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node {node:?} is offline"),
            )
        })?;
    if record.presence.as_ref().map(|p| p.role) != Some(verge_protocol::relay::NodeRole::Cloud) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{node:?} is a box: only cloud nodes ([node] role = \"cloud\") take relays"),
        ));
    }
    let source = match app.liveion.viewer_node(name) {
        Ok(Some(source)) => source,
        Ok(None) if super::streams::locate(app, &stream).is_ok() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "stream {name} is on a box: the manager places relays of boxes' streams on cloud nodes itself ([cluster])"
                ),
            ));
        }
        Ok(None) => {
            return Err(ApiError::not_found(format!(
                "stream {name} is not live on any liveion node"
            )));
        }
        Err(full) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, full)),
    };
    let servers = session_ice(app).await;
    app.cluster
        .relay_from_liveion(node, &stream, &source.alias, &servers)
        .await
        .map_err(|why| ApiError::new(StatusCode::BAD_GATEWAY, why))?;
    Ok(Json(Cascaded {
        node: node.to_string(),
        stream: name.to_string(),
        source_url: format!("{}/whep/{name}", source.url),
        maximum_idle_time: app.cascade_idle.as_millis() as u64,
    }))
}

/// `POST /api/cascade/{stream}` with `{"node": alias}`: the liveion node pulls the stream
/// from the manager's `/whep/{stream}` (so from a box behind NAT, a cloud node, or another
/// liveion node, wherever the manager places a viewer). 200 once the node's copy is connected.
/// With a Verge cloud node's id, a liveion node's stream is relayed into it instead.
pub async fn cascade(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Cascaded>, ApiError> {
    let body: CascadeBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not {{\"node\": \"alias\"}}: {e}"),
        )
    })?;
    verge_protocol::id::validate_stream_part("stream name", &name)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, why))?;
    let stream = format!("live/{name}");
    let Some(target) = app.liveion.target(&body.node) else {
        if app.registry.get(&body.node).is_some() {
            return into_verge_node(&app, &body.node, &name).await;
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("no liveion node or Verge node is called {:?}", body.node),
        ));
    };
    if !app.liveion.is_running(&target.alias) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("liveion node {:?} is stopped", target.alias),
        ));
    }
    if app
        .liveion
        .stream(&target.alias, &name)
        .is_some_and(|s| s.has_publisher())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("liveion node {:?} already has stream {name}", target.alias),
        ));
    }
    // Live somewhere else: a box, or another node.
    if super::streams::locate(&app, &stream).is_err()
        && app.liveion.viewer_node(&name).ok().flatten().is_none()
    {
        return Err(ApiError::not_found(format!("stream {name} is not live")));
    }
    let source_url = cascade_into(&app, &target, &name).await?;
    Ok(Json(Cascaded {
        node: target.alias,
        stream: name,
        source_url,
        maximum_idle_time: app.cascade_idle.as_millis() as u64,
    }))
}
