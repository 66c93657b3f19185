//! `[extra_ice.cloudflare]`: TURN credentials from Cloudflare's Realtime TURN API
//! (`POST {api_url}/{key_id}/credentials/generate-ice-servers`, `Authorization: Bearer
//! {api_token}`, body `{"ttl": …}` → `{"iceServers": [{urls, username, credential}, …]}`).
//!
//! One set of credentials serves every session until half its lifetime has passed: asking
//! Cloudflare on every WHEP offer would add its round trip to every viewer's start. A failed
//! request is logged and the session goes on without these servers (the others still apply).

use std::time::{Duration, Instant};

use serde::Deserialize;
use verge_protocol::whep::IceServer;

use crate::config::Cloudflare as CloudflareConfig;
use crate::web_client::{self, Call, ClientError, Url};

/// Longest a WHEP offer waits for Cloudflare.
const TIMEOUT: Duration = Duration::from_secs(3);
/// After a failure, the next offers go without for this long instead of each waiting again.
const BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CloudflareError {
    #[error("{0}")]
    Http(#[from] ClientError),
    #[error("Cloudflare answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Cloudflare's answer is not {{\"iceServers\": …}}: {0}")]
    Shape(String),
}

pub struct Cloudflare {
    cfg: CloudflareConfig,
    /// The servers and until when they are handed out; or, after a failure, until when none
    /// are asked for.
    cache: tokio::sync::Mutex<Option<(Instant, Vec<IceServer>)>>,
}

impl Cloudflare {
    pub fn new(cfg: CloudflareConfig) -> Self {
        Self {
            cfg,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Servers for one more session.
    pub async fn servers(&self) -> Vec<IceServer> {
        let mut cache = self.cache.lock().await;
        if let Some((until, servers)) = cache.as_ref()
            && Instant::now() < *until
        {
            return servers.clone();
        }
        match self.fetch().await {
            Ok(servers) => {
                let fresh = Duration::from_secs(self.cfg.ttl.max(2) / 2);
                tracing::debug!(
                    servers = servers.len(),
                    ?fresh,
                    "Cloudflare TURN credentials"
                );
                *cache = Some((Instant::now() + fresh, servers.clone()));
                servers
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?BACKOFF, "no Cloudflare TURN credentials; sessions go on without them");
                *cache = Some((Instant::now() + BACKOFF, Vec::new()));
                Vec::new()
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<IceServer>, CloudflareError> {
        let url = format!(
            "{}/{}/credentials/generate-ice-servers",
            self.cfg.api_url.trim_end_matches('/'),
            self.cfg.key_id
        );
        let body = serde_json::json!({ "ttl": self.cfg.ttl }).to_string();
        let url = Url::parse(&url)?;
        let call = Call::get(&url, &self.cfg.api_token).with_body(
            axum::http::Method::POST,
            "application/json",
            body.into(),
        );
        let answer = web_client::send(call, TIMEOUT, 256 * 1024).await?;
        if !(200..300).contains(&answer.status) {
            return Err(CloudflareError::Status {
                status: answer.status,
                body: answer.text().chars().take(200).collect(),
            });
        }
        parse(&answer.body)
    }
}

/// `iceServers` as an array (the documented shape) or one object (the older `generate`
/// endpoint's); `urls` a list or one string.
pub fn parse(answer: &[u8]) -> Result<Vec<IceServer>, CloudflareError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    #[derive(Deserialize)]
    struct Server {
        urls: Urls,
        #[serde(default)]
        username: String,
        #[serde(default)]
        credential: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Servers {
        Many(Vec<Server>),
        One(Server),
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        ice_servers: Servers,
    }
    let answer: Answer =
        serde_json::from_slice(answer).map_err(|e| CloudflareError::Shape(e.to_string()))?;
    let servers = match answer.ice_servers {
        Servers::Many(many) => many,
        Servers::One(one) => vec![one],
    };
    Ok(servers
        .into_iter()
        .map(|s| IceServer {
            urls: match s.urls {
                Urls::One(url) => vec![url],
                Urls::Many(urls) => urls,
            },
            username: s.username,
            credential: s.credential,
        })
        .filter(|s| !s.urls.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_answer_shapes() {
        let documented = br#"{"iceServers":[{"urls":["stun:stun.cloudflare.com:3478"]},
            {"urls":["turn:turn.cloudflare.com:3478?transport=udp"],"username":"u","credential":"c"}]}"#;
        let servers = parse(documented).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].username, "u");
        let legacy = br#"{"iceServers":{"urls":"turn:turn.cloudflare.com:3478","username":"u","credential":"c"}}"#;
        assert_eq!(
            parse(legacy).unwrap()[0].urls,
            ["turn:turn.cloudflare.com:3478"]
        );
        for bad in [&b"{}"[..], b"[]", b"{\"iceServers\": 5}", b"not json"] {
            assert!(parse(bad).is_err());
        }
    }
}
