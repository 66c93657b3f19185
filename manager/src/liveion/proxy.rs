//! WHEP and WHIP offers, and their sessions' PATCH and DELETE, passed on to a liveion node
//! with the node's token (the client's own credentials never reach the node, nor the node's
//! token the client). The node's session `/session/{stream}/{id}` is the manager's
//! `{alias}@{id}`.

use std::time::Duration;

use axum::http::{Method, header};
use bytes::Bytes;

use super::Target;
use crate::web_client::{self, Answer, Call, ClientError};

/// An offer's answer takes the node's ICE gathering; PATCH and DELETE are quick.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER: usize = 256 * 1024;
/// Longest session id taken from a node.
const MAX_SESSION_ID: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Whep,
    Whip,
}

impl Kind {
    fn path(self, name: &str) -> String {
        match self {
            Kind::Whep => format!("/whep/{name}"),
            Kind::Whip => format!("/whip/{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("liveion node {alias:?} cannot be reached: {source}")]
    Unreachable { alias: String, source: ClientError },
    #[error("liveion node {alias:?} answered {status}: {reason}")]
    Refused {
        alias: String,
        status: u16,
        reason: String,
    },
    #[error("liveion node {alias:?} answered without a usable session Location ({location:?})")]
    NoSession { alias: String, location: String },
}

/// A node's answer to an offer.
#[derive(Debug)]
pub struct Offered {
    /// The manager's session id for it: `{alias}@{node's id}`.
    pub session: String,
    pub sdp: String,
    /// The node's `Link` headers (its ICE servers).
    pub links: Vec<String>,
}

/// The manager's session id of a node's session `id`.
pub fn session_id(alias: &str, id: &str) -> String {
    format!("{alias}@{id}")
}

/// `(alias, node's id)` of a manager session id that names a liveion node's session.
pub fn split_session(session: &str) -> Option<(&str, &str)> {
    let (alias, id) = session.split_once('@')?;
    let ok = verge_protocol::id::validate(alias).is_ok() && valid_id(id);
    ok.then_some((alias, id))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SESSION_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// Sends an offer for stream `name` to the node.
pub async fn offer(
    target: &Target,
    kind: Kind,
    name: &str,
    sdp: String,
) -> Result<Offered, ProxyError> {
    let url = target.url.with_path(&kind.path(name));
    let call = target
        .get(&url)
        .with_body(Method::POST, "application/sdp", Bytes::from(sdp));
    let answer = send(target, call, OFFER_TIMEOUT, MAX_ANSWER).await?;
    let location = answer
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let id = location.rsplit('/').next().unwrap_or_default();
    if !valid_id(id) {
        return Err(ProxyError::NoSession {
            alias: target.alias.clone(),
            location,
        });
    }
    let links = answer
        .headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        // The layer-selection extension names a URL on the node: not passed on.
        .filter(|v| v.contains("rel=\"ice-server\""))
        .map(str::to_string)
        .collect();
    Ok(Offered {
        session: session_id(&target.alias, id),
        sdp: String::from_utf8_lossy(&answer.body).into_owned(),
        links,
    })
}

/// PATCH (trickle ICE) of the node's session `id` of stream `name`.
pub async fn patch(
    target: &Target,
    name: &str,
    id: &str,
    content_type: &str,
    frag: String,
) -> Result<(), ProxyError> {
    let url = target.url.with_path(&format!("/session/{name}/{id}"));
    let call = target
        .get(&url)
        .with_body(Method::PATCH, content_type, Bytes::from(frag));
    session_call(target, call).await
}

/// DELETE of the node's session `id` of stream `name`.
pub async fn delete(target: &Target, name: &str, id: &str) -> Result<(), ProxyError> {
    let url = target.url.with_path(&format!("/session/{name}/{id}"));
    let mut call = target.get(&url);
    call.method = Method::DELETE;
    session_call(target, call).await
}

async fn session_call(target: &Target, call: Call<'_>) -> Result<(), ProxyError> {
    send(target, call, SESSION_TIMEOUT, MAX_ANSWER)
        .await
        .map(drop)
}

/// Sends `call` to the node: its answer if it is a success (2xx), else why not, with the
/// first line of the node's reason.
pub(super) async fn send(
    target: &Target,
    call: Call<'_>,
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, ProxyError> {
    let answer = web_client::send(call, timeout, max_body)
        .await
        .map_err(|source| ProxyError::Unreachable {
            alias: target.alias.clone(),
            source,
        })?;
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let reason = answer
        .text()
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Err(ProxyError::Refused {
        alias: target.alias.clone(),
        status: answer.status,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_sessions_are_named_by_their_node() {
        assert_eq!(session_id("n1", "abc-123"), "n1@abc-123");
        assert_eq!(split_session("n1@abc-123"), Some(("n1", "abc-123")));
        assert_eq!(split_session("edge-1~0123456789abcdef"), None);
        for bad in ["@x", "n1@", "n 1@x", "n1@a/b", "n1@a b", "n1@a@b", "../x@y"] {
            assert_eq!(split_session(bad), None, "{bad}");
        }
        assert_eq!(split_session(&format!("n1@{}", "a".repeat(129))), None);
    }
}
