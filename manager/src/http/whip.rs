//! The WHIP proxy (RFC 9725): a publisher's offer goes over MQTT RPC to the agent that is to
//! carry the stream, and its answer comes back as `201 Created` with
//! `Location: /whip-session/{stream}/{session}`.
//!
//! The agent is the one the stream's channel key is bound to; else the one named by
//! `?agent={id}`; else the only online agent (with several and no choice, 409 asks for one).
//! Refusals are those of WHEP plus 409 for a stream that already has a publisher. PATCH and
//! DELETE of the session go to the agent like a viewer's (one session table per agent), in the
//! publisher's role: `/whip-session/…` needs the right to write the stream.
//!
//! liveion nodes (`[[nodes]]`) take publishers too: `?nodes={alias}` (liveman's) names one,
//! and with no agent online and no key bound, the running node with the fewest streams.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use verge_protocol::whep;
use verge_serve::path::StreamPath;

use super::AppState;
use super::error::ApiError;
use super::whep::{Caller, check_offer, offer_to_agent, respond, session_ice};
use crate::liveion::proxy::Kind;

#[derive(Debug, Default, Deserialize)]
pub struct Target {
    /// The agent to publish into, when the stream has no key bound to one.
    pub agent: Option<String>,
    /// liveman's `?nodes=`: the liveion node (or agent) to publish into; several,
    /// comma-separated, for the first of them that runs.
    pub nodes: Option<String>,
}

pub async fn offer(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    stream: StreamPath,
    Query(target): Query<Target>,
    headers: HeaderMap,
    body: String,
) -> Response {
    respond(
        offer_for(
            &app,
            &caller,
            &stream.app,
            &stream.name,
            target,
            &headers,
            body,
        )
        .await,
    )
}

/// The agent a stream is published into (see the module's doc).
fn choose_agent(
    app: &AppState,
    app_name: &str,
    name: &str,
    asked: Option<String>,
) -> Result<String, ApiError> {
    let bound = app.keys.store.bound_agent(app_name, name);
    let online = |id: &str| app.registry.get(id).is_some_and(|r| r.online());
    let chosen = match (bound, asked) {
        (Some(bound), Some(asked)) if bound != asked => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "stream {app_name}/{name} has a channel key bound to agent {bound:?}, not {asked:?}"
                ),
            ));
        }
        (Some(agent), _) | (None, Some(agent)) => agent,
        (None, None) => {
            let up = app.registry.online_ids();
            match up.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no agent is online to publish into",
                    ));
                }
                _ => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "{} agents are online: name one with ?agent={{id}}, or bind the stream's key to one",
                            up.len()
                        ),
                    ));
                }
            }
        }
    };
    if !online(&chosen) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("agent {chosen:?} is not online"),
        ));
    }
    Ok(chosen)
}

async fn offer_for(
    app: &AppState,
    caller: &Caller,
    app_name: &str,
    name: &str,
    target: Target,
    headers: &HeaderMap,
    sdp: String,
) -> Result<Response, ApiError> {
    let stream = check_offer(headers, app_name, name, &sdp)?;
    let mut asked = target.agent;
    if let Some(nodes) = target.nodes.as_deref().filter(|n| !n.is_empty()) {
        let listed: Vec<&str> = nodes.split(',').map(str::trim).collect();
        let node = listed.iter().find(|a| app.liveion.is_running(a));
        match node.and_then(|a| app.liveion.target(a)) {
            Some(node) if app_name == "live" => {
                return super::liveion::offer(app, &node, Kind::Whip, &stream, name, sdp).await;
            }
            Some(node) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "liveion node {:?} takes streams of the default app only (/whip/{{name}})",
                        node.alias
                    ),
                ));
            }
            None => match listed.iter().find(|a| app.registry.get(a).is_some()) {
                Some(agent) => asked = Some(agent.to_string()),
                None => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("none of the nodes {nodes:?} is running"),
                    ));
                }
            },
        }
    } else if asked.is_none()
        && app_name == "live"
        && app.registry.online_ids().is_empty()
        && app.keys.store.bound_agent(app_name, name).is_none()
        && let Some(node) = app.liveion.publish_node()
    {
        // No agent to publish into, but liveion nodes: the one with the fewest streams.
        return super::liveion::offer(app, &node, Kind::Whip, &stream, name, sdp).await;
    }
    let agent = choose_agent(app, app_name, name, asked)?;
    let servers = session_ice(app).await;
    offer_to_agent(
        app,
        caller,
        &agent,
        whep::METHOD_WHIP_OFFER,
        stream,
        sdp,
        servers,
    )
    .await
}
