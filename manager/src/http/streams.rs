//! `GET /api/streams/` and `GET /api/streams/{stream}`: every agent's live streams, merged, in
//! liveman's stream shape (camelCase, times in Unix ms) plus what Verge knows of each.
//!
//! A stream's id is `{name}` for the default app `live` and `{app}/{name}` otherwise, the same
//! id the WHEP path uses. Streams of liveion nodes (`[[nodes]]`) are listed too, as liveion
//! writes them, with `node` and `kind: "liveion"`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use verge_protocol::id::validate_stream_part;
use verge_protocol::state::StreamInfo;
use verge_protocol::whep;

use super::AppState;
use super::error::ApiError;
use crate::auth::{Grant, Need};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub id: String,
    pub created_at: u64,
    pub publish: PubSub,
    pub subscribe: PubSub,
    pub codecs: Vec<Codec>,
    // Verge's additions.
    /// The node holding this copy (for a Verge agent, its id).
    pub node: String,
    /// `verge` (an agent) or `liveion`.
    pub kind: &'static str,
    pub agent: String,
    pub app: String,
    pub name: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub bitrate_kbps: Option<u32>,
    pub readers: u32,
    /// What WebRTC viewers do not get of this stream, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webrtc_omits: Option<String>,
    /// The encoder sends B-frames.
    pub b_frames: bool,
    /// What to change at the encoder, when something hurts viewers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder_advice: Option<String>,
    /// On a relay's copy (`GET /api/streams/{stream}`): the node it pulls from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_of: Option<String>,
    /// On the stream as published: the cloud nodes relaying it, each with its viewers.
    pub relays: Vec<RelayInfo>,
}

/// A cloud node's copy of a stream, as `relays` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RelayInfo {
    pub node: String,
    /// The node it pulls from (the origin, or another relay).
    pub source: String,
    pub viewers: u32,
    /// What its viewers take, kbit/s (viewers × the stream's bitrate).
    pub kbps: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PubSub {
    /// 0 while someone is present (liveman's convention).
    pub leave_at: u64,
    pub sessions: Vec<Session>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub created_at: u64,
    pub leave_at: u64,
    pub state: &'static str,
    pub has_data_channel: bool,
}

#[derive(Debug, Serialize)]
pub struct Codec {
    pub kind: &'static str,
    pub codec: String,
    pub fmtp: String,
}

/// The id a stream is known by across Verge.
pub fn stream_id(app: &str, name: &str) -> String {
    if app == "live" {
        name.to_string()
    } else {
        format!("{app}/{name}")
    }
}

/// The publisher as `grant` may see it: its id (`WHIP {session}`, `RTMP {address}`) only with
/// the right to publish the stream, its kind (`WHIP`, `RTMP`) otherwise, and nothing of an id
/// in another form.
fn publisher_seen_by(grant: &Grant, stream: &str, publisher: Option<&str>) -> String {
    let publisher = publisher.unwrap_or_default();
    if grant.meets(&Need::Write(stream.to_string())).is_ok() {
        return publisher.to_string();
    }
    match publisher.split_once(' ') {
        Some((kind, _)) if kind.bytes().all(|b| b.is_ascii_uppercase()) => kind.to_string(),
        _ => String::new(),
    }
}

fn shape(agent: &str, s: &StreamInfo, grant: &Grant) -> Stream {
    let codecs = [("video", &s.video), ("audio", &s.audio)]
        .into_iter()
        .filter_map(|(kind, codec)| {
            codec.as_ref().map(|c| Codec {
                kind,
                codec: c.clone(),
                fmtp: String::new(),
            })
        })
        .collect();
    Stream {
        id: stream_id(&s.app, &s.name),
        created_at: s.started_at,
        publish: PubSub {
            leave_at: 0,
            sessions: vec![Session {
                id: publisher_seen_by(grant, &s.id(), s.publisher.as_deref()),
                created_at: s.started_at,
                leave_at: 0,
                state: "connected",
                has_data_channel: false,
            }],
        },
        subscribe: PubSub {
            leave_at: 0,
            sessions: vec![],
        },
        codecs,
        node: agent.to_string(),
        kind: "verge",
        agent: agent.to_string(),
        app: s.app.clone(),
        name: s.name.clone(),
        width: s.width,
        height: s.height,
        fps: s.fps,
        bitrate_kbps: s.bitrate_kbps,
        readers: s.readers,
        webrtc_omits: s.webrtc_omits.clone(),
        b_frames: s.b_frames,
        encoder_advice: s.encoder_advice.clone(),
        relay_of: s.relay.as_ref().map(|r| r.source.clone()),
        relays: Vec::new(),
    }
}

/// Every copy of every stream on an online node: the published ones and the relays' copies.
fn copies(app: &AppState, grant: &Grant) -> Vec<Stream> {
    let mut streams: Vec<Stream> = app
        .registry
        .list()
        .iter()
        .filter(|r| r.online())
        .flat_map(|r| {
            r.state
                .iter()
                .flat_map(|state| state.streams.iter())
                .map(|s| shape(&r.id, s, grant))
                .collect::<Vec<_>>()
        })
        .collect();
    streams.sort_by(|a, b| a.id.cmp(&b.id).then(a.agent.cmp(&b.agent)));
    streams
}

/// The streams as published, each with the relays carrying it.
fn all(app: &AppState, grant: &Grant) -> Vec<Stream> {
    let (mut origins, relays): (Vec<Stream>, Vec<Stream>) = copies(app, grant)
        .into_iter()
        .partition(|s| s.relay_of.is_none());
    for relay in relays {
        if let Some(origin) = origins.iter_mut().find(|o| o.id == relay.id) {
            origin.relays.push(RelayInfo {
                node: relay.agent,
                source: relay.relay_of.unwrap_or_default(),
                viewers: relay.readers,
                kbps: relay.readers * origin.bitrate_kbps.unwrap_or(0),
            });
        }
    }
    origins
}

/// A stream on a liveion node: liveion's own JSON (liveman passes it on so), and where it is.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStream {
    #[serde(flatten)]
    pub stream: crate::liveion::api::Stream,
    pub node: String,
    pub kind: &'static str,
    pub app: &'static str,
    pub name: String,
    pub readers: u32,
}

/// One entry of the lists: a Verge agent's stream or a liveion node's.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Listed {
    Verge(Stream),
    Liveion(NodeStream),
}

impl Listed {
    fn id(&self) -> &str {
        match self {
            Listed::Verge(s) => &s.id,
            Listed::Liveion(s) => &s.stream.id,
        }
    }
}

/// The liveion nodes' streams as `grant` may see them: a publisher's session id (which ends
/// it through `/session/…`) only with the right to publish, as for agents.
fn node_streams(app: &AppState, grant: &Grant) -> Vec<NodeStream> {
    app.liveion
        .streams()
        .into_iter()
        .filter(|(_, s)| validate_stream_part("stream name", &s.id).is_ok())
        .map(|(node, mut stream)| {
            if grant.meets(&Need::Write(full_id(&stream.id))).is_err() {
                for p in &mut stream.publish.sessions {
                    p.id = if p.rest.get("cascade").is_some_and(|c| !c.is_null()) {
                        "cascade".into()
                    } else {
                        "WHIP".into()
                    };
                }
            }
            NodeStream {
                node,
                kind: "liveion",
                app: "live",
                name: stream.id.clone(),
                readers: stream.subscribers() as u32,
                stream,
            }
        })
        .collect()
}

/// The streams the request's token may read (all of them with auth off).
pub async fn list(
    State(app): State<AppState>,
    Extension(grant): Extension<Grant>,
) -> Json<Vec<Listed>> {
    let verge = all(&app, &grant).into_iter().map(Listed::Verge);
    let nodes = node_streams(&app, &grant).into_iter().map(Listed::Liveion);
    Json(
        verge
            .chain(nodes)
            .filter(|s| grant.may_read(&full_id(s.id())))
            .collect(),
    )
}

/// `GET /api/streams/{stream}/history`: the stream's last hour (see [`crate::history`]).
pub async fn history(
    State(app): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<crate::history::Series<crate::history::StreamPoint>>, ApiError> {
    history_of(&app, &full_id(&stream))
}

pub async fn history_in_app(
    State(app): State<AppState>,
    Path((app_name, name)): Path<(String, String)>,
) -> Result<Json<crate::history::Series<crate::history::StreamPoint>>, ApiError> {
    history_of(&app, &format!("{app_name}/{name}"))
}

fn history_of(
    app: &AppState,
    id: &str,
) -> Result<Json<crate::history::Series<crate::history::StreamPoint>>, ApiError> {
    app.history.stream(id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no history of {id} in the last hour (since this manager started)"
        ))
    })
}

/// `app/name` of a stream id as this API writes it (`name` alone for app `live`).
pub fn full_id(id: &str) -> String {
    if id.contains('/') {
        id.to_string()
    } else {
        format!("live/{id}")
    }
}

/// One stream, keyed by the agent holding it (liveman keys by node alias; where liveman answers
/// `{}` for an unknown stream, Verge answers 404 with the reason). `{stream}` may be `name` (app `live`) or `app/name` (URL-encoded `app%2Fname`,
/// or the two-segment route).
pub async fn one(
    State(app): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path(stream): Path<String>,
) -> Result<Json<BTreeMap<String, Listed>>, ApiError> {
    find(&app, &grant, &stream)
}

pub async fn one_in_app(
    State(app): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path((app_name, name)): Path<(String, String)>,
) -> Result<Json<BTreeMap<String, Listed>>, ApiError> {
    find(&app, &grant, &stream_id(&app_name, &name))
}

fn find(
    app: &AppState,
    grant: &Grant,
    id: &str,
) -> Result<Json<BTreeMap<String, Listed>>, ApiError> {
    let id = id.strip_prefix("live/").unwrap_or(id);
    let mut found: BTreeMap<String, Listed> = copies(app, grant)
        .into_iter()
        .filter(|s| s.id == id)
        .map(|s| (s.agent.clone(), Listed::Verge(s)))
        .collect();
    found.extend(
        node_streams(app, grant)
            .into_iter()
            .filter(|s| s.stream.id == id)
            .map(|s| (s.node.clone(), Listed::Liveion(s))),
    );
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "stream {id:?} is not live on any online agent or running node"
        )));
    }
    Ok(Json(found))
}

/// The online agent where `stream` (`{app}/{name}`) is published (not a relay's copy).
pub(crate) fn locate(app: &AppState, stream: &str) -> Result<String, ApiError> {
    let holders: Vec<(String, bool)> = app
        .registry
        .list()
        .into_iter()
        .filter(|r| {
            r.state.as_ref().is_some_and(|s| {
                s.streams
                    .iter()
                    .any(|i| i.id() == stream && i.relay.is_none())
            })
        })
        .map(|r| {
            let online = r.online();
            (r.id, online)
        })
        .collect();
    if let Some((agent, _)) = holders.iter().find(|(_, online)| *online) {
        return Ok(agent.clone());
    }
    match holders.first() {
        Some((agent, _)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stream {} is on agent {agent:?}, which is offline",
                whep::stream_path(stream)
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "stream {} is not live on any agent",
                whep::stream_path(stream)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{READ, WRITE};

    #[test]
    fn readers_see_a_publishers_kind_and_writers_its_id() {
        let grant = |id: &str, mode| Grant {
            id: id.into(),
            mode,
        };
        let id = "WHIP edge-1~0123456789abcdef";
        let whip = Some(id);
        let reader = grant("live/cam", READ);
        assert_eq!(publisher_seen_by(&reader, "live/cam", whip), "WHIP");
        assert_eq!(
            publisher_seen_by(&reader, "live/cam", Some("RTMP 10.0.0.7:50123")),
            "RTMP"
        );
        assert_eq!(
            publisher_seen_by(&reader, "live/cam", Some("10.0.0.7:1")),
            ""
        );
        assert_eq!(publisher_seen_by(&reader, "live/cam", None), "");
        let writer = grant("live/cam", WRITE);
        assert_eq!(publisher_seen_by(&writer, "live/cam", whip), id);
        assert_eq!(publisher_seen_by(&Grant::all(), "live/cam", whip), id);
        // A writer of another stream is a reader here.
        let other = grant("live/other", READ | WRITE);
        assert_eq!(publisher_seen_by(&other, "live/cam", whip), "WHIP");
    }
}
