//! WHEP signaling carried over RPC: the manager forwards a viewer's offer to the agent that
//! holds the stream and relays the answer. A session id names its agent, so any manager
//! instance can route a later PATCH or DELETE without shared state.

use serde::{Deserialize, Serialize};

/// `OfferParams` → `OfferResult`.
pub const METHOD_OFFER: &str = "whep.offer";
/// `PatchParams` → `PatchResult`: trickled candidates for a session.
pub const METHOD_PATCH: &str = "whep.patch";
/// `SessionParams` → `{}`: ends a session.
pub const METHOD_DELETE: &str = "whep.delete";
/// WHIP (RFC 9725): `OfferParams` → `OfferResult`, a publisher's offer. Its session is
/// patched and deleted with [`METHOD_PATCH`] and [`METHOD_DELETE`] like a viewer's.
pub const METHOD_WHIP_OFFER: &str = "whip.offer";

/// Separates the agent id from the random part of a session id. Agent ids cannot contain it
/// (see [`crate::id::validate`]) and it needs no escaping in a URL path.
const SESSION_SEPARATOR: char = '~';

/// One ICE server as WebRTC's `RTCIceServer` names it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferParams {
    /// `{app}/{name}`.
    pub stream: String,
    pub sdp: String,
    /// Servers the agent's peer connection uses; the viewer is handed the same list.
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// Who asks, for the agent's per-client caps (`[limits] sessions_per_address`,
    /// `sessions_per_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Client>,
}

/// The client behind an offer, as the manager saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Client {
    /// The source address of the HTTP request (no port).
    pub address: String,
    /// A digest of the bearer token it carried (never the token itself), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferResult {
    pub session: String,
    pub sdp: String,
    /// The agent's own ICE servers (`[webrtc] ice_servers`), which the manager passes on to
    /// the viewer unless `[extra_ice] override_upstream_ice_servers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<IceServer>,
}

/// Whose session a PATCH or DELETE may reach. The manager decides it from the URL it was
/// called on (`/session/…` needs read rights, `/whip-session/…` write rights), and the agent
/// finds a session only under its own role: a viewer's token cannot end a publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionRole {
    /// A WHEP viewer's session. A request without a role (an older manager) means this.
    #[default]
    Viewer,
    /// A WHIP publisher's session.
    Publisher,
}

impl SessionRole {
    fn is_viewer(&self) -> bool {
        *self == Self::Viewer
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    pub session: String,
    /// `{app}/{name}` from the session URL: a session is found only under its own stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "SessionRole::is_viewer")]
    pub role: SessionRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchParams {
    pub session: String,
    /// As in [`SessionParams`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "SessionRole::is_viewer")]
    pub role: SessionRole,
    /// The body of the PATCH: an `application/trickle-ice-sdpfrag`.
    pub frag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchResult {
    /// Candidates the PATCH carried that the agent added.
    pub added: usize,
}

/// `{agent}~{random}`.
pub fn session_id(agent: &str, random: u64) -> String {
    format!("{agent}{SESSION_SEPARATOR}{random:016x}")
}

/// The agent a session id names, if it is well formed.
pub fn session_agent(session: &str) -> Option<&str> {
    let (agent, random) = session.rsplit_once(SESSION_SEPARATOR)?;
    let well_formed = random.len() == 16
        && random.bytes().all(|b| b.is_ascii_hexdigit())
        && crate::id::validate(agent).is_ok();
    well_formed.then_some(agent)
}

/// The `a=candidate:` lines of an sdpfrag, each with the `a=mid:` in force where it appears.
pub fn frag_candidates(frag: &str) -> Vec<(Option<String>, String)> {
    let mut mid = None;
    let mut out = Vec::new();
    for line in frag.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_string());
        } else if let Some(c) = line.strip_prefix("a=")
            && c.starts_with("candidate:")
        {
            out.push((mid.clone(), c.to_string()));
        }
    }
    out
}

/// CORS response headers of every WHEP response, so a page on any origin can POST an offer
/// and read `Location` and `Link` (header name, value).
pub const CORS: [(&str, &str); 4] = [
    ("access-control-allow-origin", "*"),
    (
        "access-control-allow-methods",
        "POST, PATCH, DELETE, OPTIONS",
    ),
    (
        "access-control-allow-headers",
        "Content-Type, Authorization, If-Match",
    ),
    ("access-control-expose-headers", "Location, Link, ETag"),
];

/// The content type of an offer and an answer.
pub const SDP: &str = "application/sdp";
/// The content type of a trickle-ICE PATCH.
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// Whether a `Content-Type` value names `expected` (parameters ignored).
pub fn is_content_type(value: Option<&str>, expected: &str) -> bool {
    value
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// The path form of a stream id: `{name}` in the default app `live`, `{app}/{name}` otherwise.
pub fn stream_path(stream: &str) -> &str {
    stream.strip_prefix("live/").unwrap_or(stream)
}

/// The session URL a `201 Created` names: `/session/{stream}/{session}`.
pub fn location(stream: &str, session: &str) -> String {
    format!("/session/{}/{session}", stream_path(stream))
}

/// The URL path of a WHIP publisher's session: `/whip-session/{stream}/{session}`.
pub fn whip_location(stream: &str, session: &str) -> String {
    format!("/whip-session/{}/{session}", stream_path(stream))
}

/// `Link` header values (RFC 8288, as WHEP uses them) handing the viewer `servers`.
pub fn link_headers(servers: &[IceServer]) -> Vec<String> {
    // A quote or backslash inside a quoted-string would end or escape it.
    fn quoted(s: &str) -> String {
        s.replace(['"', '\\'], "")
    }
    let mut out = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{}>; rel=\"ice-server\"", url.replace(['<', '>'], ""));
            if !server.username.is_empty() || !server.credential.is_empty() {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quoted(&server.username),
                    quoted(&server.credential)
                ));
            }
            out.push(link);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_request_without_a_role_reaches_only_viewers() {
        let old: SessionParams = serde_json::from_str(r#"{"session":"a~1"}"#).unwrap();
        assert_eq!(old.role, SessionRole::Viewer);
        let publisher = SessionParams {
            session: "a~1".into(),
            stream: None,
            role: SessionRole::Publisher,
        };
        let text = serde_json::to_string(&publisher).unwrap();
        assert_eq!(text, r#"{"session":"a~1","role":"publisher"}"#);
        assert_eq!(
            serde_json::from_str::<SessionParams>(&text).unwrap(),
            publisher
        );
        assert!(serde_json::from_str::<SessionParams>(r#"{"session":"a","role":"x"}"#).is_err());
    }

    #[test]
    fn locations_use_the_short_form_for_the_default_app() {
        assert_eq!(location("live/cam", "a~1"), "/session/cam/a~1");
        assert_eq!(location("show/cam", "a~1"), "/session/show/cam/a~1");
    }

    #[test]
    fn link_headers_carry_credentials_without_breaking_quotes() {
        let servers = [
            IceServer {
                urls: vec!["stun:stun.example.net:3478".into()],
                ..Default::default()
            },
            IceServer {
                urls: vec!["turn:t.example.net?transport=udp".into()],
                username: "u\"x".into(),
                credential: "p".into(),
            },
        ];
        assert_eq!(
            link_headers(&servers),
            vec![
                "<stun:stun.example.net:3478>; rel=\"ice-server\"".to_string(),
                "<turn:t.example.net?transport=udp>; rel=\"ice-server\"; username=\"ux\"; \
                 credential=\"p\"; credential-type=\"password\""
                    .to_string(),
            ]
        );
    }

    #[test]
    fn session_ids_name_their_agent() {
        let id = session_id("edge-1.site_a", 0xdead_beef);
        assert_eq!(id, "edge-1.site_a~00000000deadbeef");
        assert_eq!(session_agent(&id), Some("edge-1.site_a"));
    }

    #[test]
    fn malformed_session_ids_name_no_agent() {
        for bad in [
            "",
            "~0000000000000000",
            "edge",
            "edge~123",
            "edge~000000000000000g",
            "ed ge~0000000000000000",
            "edge~00000000000000000",
            "a/b~0000000000000000",
        ] {
            assert_eq!(session_agent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn frag_candidates_keep_their_mid() {
        let frag = "a=ice-ufrag:abc\r\na=ice-pwd:x\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
                    a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n";
        assert_eq!(
            frag_candidates(frag),
            vec![(
                Some("0".to_string()),
                "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".to_string()
            )]
        );
        assert!(frag_candidates("garbage\n\0\n").is_empty());
    }

    #[test]
    fn params_round_trip_and_ignore_unknown_fields() {
        let p: OfferParams =
            serde_json::from_str(r#"{"stream":"live/a","sdp":"v=0","extra":1}"#).unwrap();
        assert!(p.ice_servers.is_empty());
        let back: OfferParams = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
