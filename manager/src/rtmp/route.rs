//! Where a `publish` goes: the channel key names the stream and (when bound) its agent.

use verge_media::rtmp::query::Query;
use verge_protocol::channel_keys::{ChannelKey, Keys};

/// A publish the router refuses, with the RTMP status code and a reason for the encoder's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
}

const BAD_NAME: &str = "NetStream.Publish.BadName";
const FAILED: &str = "NetStream.Failed";

/// The agent `key` (as sent in `publish` on `app`, both without their queries) goes to, and
/// its key. `online` lists the agents online now.
pub fn route(
    keys: &Keys,
    app: &str,
    key: &str,
    online: &[String],
) -> Result<(String, ChannelKey), Refusal> {
    let app = if app.is_empty() { "live" } else { app };
    // Every entry is compared, in constant time, so timing tells nothing of other keys.
    let found = keys.keys.iter().fold(None, |found, k| {
        let equal = verge_protocol::secret::secrets_equal(&k.key, key);
        if equal && found.is_none() {
            Some(k)
        } else {
            found
        }
    });
    let Some(channel) = found else {
        return Err(Refusal {
            code: BAD_NAME,
            reason: "unknown channel key".into(),
        });
    };
    if channel.app != app {
        return Err(Refusal {
            code: BAD_NAME,
            reason: format!("that channel key is not for app {app:?}"),
        });
    }
    let stream = format!("{}/{}", channel.app, channel.name);
    let agent = match &channel.agent {
        Some(agent) if online.contains(agent) => agent.clone(),
        Some(agent) => {
            return Err(Refusal {
                code: FAILED,
                reason: format!("{stream} publishes into agent {agent}, which is offline"),
            });
        }
        None => match online {
            [only] => only.clone(),
            [] => {
                return Err(Refusal {
                    code: FAILED,
                    reason: "no agent is online".into(),
                });
            }
            many => {
                return Err(Refusal {
                    code: FAILED,
                    reason: format!(
                        "the key of {stream} names no agent and {} are online: bind it with \
                         POST /api/keys/{stream} {{\"agent\": \"…\"}}",
                        many.len()
                    ),
                });
            }
        },
    };
    Ok((agent, channel.clone()))
}

/// The `token` a publisher sends with `[auth]` on: in the stream key's query
/// (`{key}?token=…`, what OBS's key field can hold) or the app's (`rtmp://host/live?token=…/…`);
/// the session put both in `query`, the key's first.
pub fn publish_token(query: &Query) -> Option<String> {
    query.get("token").map(verge_serve::form::percent_decoded)
}

/// `Err(refusal)` when `[auth]` does not let `token` publish `stream`.
pub fn authorize(
    auth: &crate::auth::Auth,
    stream: &str,
    token: Option<&str>,
    now: u64,
) -> Result<(), Refusal> {
    auth.admit(&crate::auth::Need::Write(stream.to_string()), token, now)
        .map(|_| ())
        .map_err(|denied| Refusal {
            code: UNAUTHORIZED,
            reason: format!("{denied} (publish with {{key}}?token=<write token>)"),
        })
}

const UNAUTHORIZED: &str = "NetStream.Publish.Unauthorized";

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let key = |key: &str, name: &str, agent: Option<&str>| ChannelKey {
            key: key.into(),
            app: "live".into(),
            name: name.into(),
            agent: agent.map(str::to_string),
        };
        Keys {
            version: 1,
            keys: vec![
                key("k-cam", "cam", Some("edge-1")),
                key("k-free", "free", None),
            ],
        }
    }

    fn online(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_bound_key_goes_to_its_agent_only_while_it_is_online() {
        let (agent, key) = route(&keys(), "live", "k-cam", &online(&["edge-2", "edge-1"])).unwrap();
        assert_eq!((agent.as_str(), key.name.as_str()), ("edge-1", "cam"));
        let refusal = route(&keys(), "live", "k-cam", &online(&["edge-2"])).unwrap_err();
        assert_eq!(refusal.code, "NetStream.Failed");
        assert!(
            refusal.reason.contains("edge-1, which is offline"),
            "{refusal:?}"
        );
    }

    #[test]
    fn unknown_keys_wrong_apps_and_ambiguous_unbound_keys_are_refused() {
        let all = online(&["edge-1", "edge-2"]);
        assert_eq!(
            route(&keys(), "live", "cam", &all).unwrap_err().code,
            "NetStream.Publish.BadName"
        );
        assert_eq!(
            route(&keys(), "live", "", &all).unwrap_err().code,
            "NetStream.Publish.BadName"
        );
        let wrong_app = route(&keys(), "other", "k-cam", &all).unwrap_err();
        assert!(wrong_app.reason.contains("not for app"), "{wrong_app:?}");
        // An empty app is LiveGo's default, live.
        assert!(route(&keys(), "", "k-cam", &all).is_ok());

        let ambiguous = route(&keys(), "live", "k-free", &all).unwrap_err();
        assert!(
            ambiguous.reason.contains("POST /api/keys/live/free"),
            "{ambiguous:?}"
        );
        let none = route(&keys(), "live", "k-free", &[]).unwrap_err();
        assert_eq!(none.reason, "no agent is online");
        let (agent, _) = route(&keys(), "live", "k-free", &online(&["edge-2"])).unwrap();
        assert_eq!(agent, "edge-2");
    }

    #[test]
    fn publish_tokens_and_their_rights() {
        let query = |text: &str| Query::split_off(text).1;
        assert_eq!(publish_token(&query("k?token=a%2Eb")), Some("a.b".into()));
        assert_eq!(publish_token(&query("live?x=1&token=t")), Some("t".into()));
        assert_eq!(publish_token(&query("k?x=1")), None);
        let cfg: crate::config::AuthConfig = toml::from_str("secret = \"s\"").unwrap();
        let auth = crate::auth::Auth::new(&cfg).unwrap();
        let token = |id: &str, mode: u8| {
            auth.mint(&crate::auth::Claims {
                id: id.into(),
                exp: 100,
                mode,
            })
        };
        assert!(authorize(&auth, "live/cam", Some(&token("cam", 2)), 10).is_ok());
        let read_only = authorize(&auth, "live/cam", Some(&token("cam", 4)), 10).unwrap_err();
        assert!(
            read_only.reason.contains("may not publish to live/cam"),
            "{read_only:?}"
        );
        assert!(authorize(&auth, "live/cam", Some(&token("other", 2)), 10).is_err());
        assert!(authorize(&auth, "live/cam", None, 10).is_err());
        let open = crate::auth::Auth::new(&Default::default()).unwrap();
        assert!(authorize(&open, "live/cam", None, 10).is_ok());
    }
}
