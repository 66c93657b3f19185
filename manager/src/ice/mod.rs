//! ICE servers for one WHEP session: the static `[[extra_ice.ice_servers]]` plus, with
//! `[extra_ice.coturn]`, TURN credentials of coturn's REST scheme made for this session alone:
//! `username = {expiry}:{session}`, `credential = base64(HMAC-SHA1(secret, username))`. coturn
//! (`use-auth-secret`) checks them without asking anyone and refuses them after `expiry`.
//! With `[extra_ice.cloudflare]`, Cloudflare's TURN too ([`cloudflare`], whose credential API
//! is called through [`crate::web_client`]).

pub mod cloudflare;

use base64::Engine;
use ring::hmac;
use verge_protocol::whep::IceServer;

use crate::config::{Coturn, ExtraIce};

/// The servers a session named `session` gets at `now` (Unix seconds).
pub fn for_session(extra: &ExtraIce, session: &str, now: u64) -> Vec<IceServer> {
    let mut servers = extra.ice_servers.clone();
    if let Some(coturn) = &extra.coturn {
        servers.push(coturn_server(coturn, session, now));
    }
    servers
}

pub fn coturn_server(coturn: &Coturn, session: &str, now: u64) -> IceServer {
    // ':' separates expiry and name in coturn's scheme; keep it out of the name.
    let name: String = session.chars().filter(|c| *c != ':').collect();
    let username = format!("{}:{name}", now + coturn.ttl);
    IceServer {
        urls: coturn.urls.clone(),
        credential: credential(&coturn.secret, &username),
        username,
    }
}

/// coturn's password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn credential(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_rest_credentials() {
        let coturn = Coturn {
            secret: "north".into(),
            urls: vec!["turn:127.0.0.1:3478".into()],
            ttl: 600,
        };
        let server = coturn_server(&coturn, "s1", 1_700_000_000 - 600);
        assert_eq!(server.username, "1700000000:s1");
        // python3: base64(hmac.new(b'north', b'1700000000:s1', sha1).digest())
        assert_eq!(server.credential, "QvP5NTCoHOiDw4o+Ut4C0xnk7uk=");
        assert_eq!(coturn_server(&coturn, "a:b", 0).username, "600:ab");
        let extra = ExtraIce {
            ice_servers: vec![IceServer {
                urls: vec!["stun:127.0.0.1:3478".into()],
                username: String::new(),
                credential: String::new(),
            }],
            coturn: Some(coturn),
            cloudflare: None,
            override_upstream_ice_servers: false,
            unknown: Default::default(),
        };
        let servers = for_session(&extra, "s1", 0);
        assert_eq!(servers.len(), 2);
        assert!(servers[1].urls[0].starts_with("turn:"));
    }
}
