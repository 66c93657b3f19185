//! HTTP/1.1 requests to other servers: the manager's calls to liveion nodes (their streams,
//! WHEP and WHIP offers passed on, cascades) and Cloudflare's TURN keys, and a box's uploads
//! of recordings to presigned URLs.
//!
//! hyper's client connection over TCP, or over TLS (rustls with ring, the system's roots) for
//! `https://`. One connection per request: these calls are seconds apart, and a fresh
//! connection never meets a half-closed keep-alive. Every wait has a deadline and every body a
//! size bound; an event stream (SSE) is read line by line, each line bounded.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest answer body read by [`send`] unless the caller says otherwise.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest line of an event stream.
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("URL {0:?} is not http(s)://host[:port][/path]")]
    Url(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

/// An `http(s)://host[:port][/path]` URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Starts with `/`; query included.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Url(url.to_string());
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') || authority.is_empty() {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h, p.parse().map_err(|_| bad())?)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['[', ']', ' ']) {
            return Err(bad());
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The same server with another path (and query).
    pub fn with_path(&self, path: &str) -> Self {
        Self {
            path: path.to_string(),
            ..self.clone()
        }
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let path = if self.path == "/" { "" } else { &self.path };
        write!(f, "{scheme}://{}{path}", self.authority())
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// A byte stream an HTTP exchange runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream being opened by a [`Dialer`].
pub type Dialing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Box<dyn Io>>> + Send + 'a>>;

/// Opens the byte stream to a server another way than TCP to its URL's host (the manager's
/// net4mqtt tunnel over MQTT to liveion nodes).
pub trait Dialer: Send + Sync {
    fn dial(&self) -> Dialing<'_>;
}

/// What to send.
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a Url,
    /// Bearer token, when not empty.
    pub bearer: &'a str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// How to reach the server, when not over TCP to `url`'s host.
    pub via: Option<std::sync::Arc<dyn Dialer>>,
}

impl<'a> Call<'a> {
    pub fn get(url: &'a Url, bearer: &'a str) -> Self {
        Self {
            method: Method::GET,
            url,
            bearer,
            headers: Vec::new(),
            body: Bytes::new(),
            via: None,
        }
    }

    pub fn with_body(mut self, method: Method, content_type: &str, body: Bytes) -> Self {
        self.method = method;
        if let Ok(v) = HeaderValue::from_str(content_type) {
            self.headers.push((header::CONTENT_TYPE, v));
        }
        self.body = body;
        self
    }
}

/// Sends `call` and reads the whole answer (at most `max_body` bytes), all within `timeout`.
pub async fn send(
    call: Call<'_>,
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, ClientError> {
    tokio::time::timeout(timeout, async {
        let response = exchange(call).await?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => ClientError::Http(*e),
                Err(_) => ClientError::TooLarge(max_body),
            })?
            .to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    })
    .await
    .map_err(|_| ClientError::Timeout(timeout))?
}

/// An answer whose body is read as it comes (an event stream).
pub struct Streaming {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    pending: BytesMut,
}

impl Streaming {
    /// The next line (without its `\r\n` or `\n`); `None` at the end of the body. Waits as
    /// long as the server keeps the stream open: the caller bounds the wait.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line = self.pending.split_to(end + 1);
                let line = String::from_utf8_lossy(&line[..end]);
                return Ok(Some(line.strip_suffix('\r').unwrap_or(&line).to_string()));
            }
            if self.pending.len() > MAX_LINE {
                return Err(ClientError::TooLarge(MAX_LINE));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The body as it comes, for passing on.
    pub fn into_body(self) -> Incoming {
        self.body
    }

    /// The rest of the body, at most `max` bytes (for an error's reason).
    pub async fn text(mut self, max: usize) -> String {
        while self.pending.len() < max {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        self.pending.truncate(max);
        String::from_utf8_lossy(&self.pending).trim().to_string()
    }
}

/// Sends `call` and returns once the answer's head arrived (within `timeout`).
pub async fn open(call: Call<'_>, timeout: Duration) -> Result<Streaming, ClientError> {
    let response = tokio::time::timeout(timeout, exchange(call))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    let (parts, body) = response.into_parts();
    Ok(Streaming {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        pending: BytesMut::new(),
    })
}

async fn connect(url: &Url, via: Option<&dyn Dialer>) -> Result<Box<dyn Io>, ClientError> {
    if let Some(dialer) = via {
        return dialer
            .dial()
            .await
            .map_err(|e| ClientError::Connect(url.authority(), e));
    }
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| ClientError::Connect(url.authority(), e))?;
    let _ = tcp.set_nodelay(true);
    if !url.tls {
        return Ok(Box::new(tcp));
    }
    let config =
        verge_mqtt::tls::client_config(None).map_err(|e| ClientError::Tls(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

async fn exchange(call: Call<'_>) -> Result<hyper::Response<Incoming>, ClientError> {
    let io = connect(call.url, call.via.as_deref()).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection's task ends when the answer's body is read or dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(call.method)
        .uri(&call.url.path)
        .header(header::HOST, call.url.authority());
    if !call.bearer.is_empty() {
        request = request.header(header::AUTHORIZATION, format!("Bearer {}", call.bearer));
    }
    for (name, value) in call.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(call.body))
        .map_err(|e| ClientError::Request(e.to_string()))?;
    Ok(sender.send_request(request).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://rtc.live.cloudflare.com/v1/turn/keys").unwrap();
        assert!(
            u.tls
                && u.port == 443
                && u.path == "/v1/turn/keys"
                && u.authority() == "rtc.live.cloudflare.com"
        );
        let u = Url::parse("http://127.0.0.1:7777").unwrap();
        assert!(!u.tls && u.port == 7777 && u.path == "/" && u.authority() == "127.0.0.1:7777");
        let u = Url::parse("http://[::1]:8080/a?b=c").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/a?b=c")
        );
        assert_eq!(u.authority(), "[::1]:8080");
        let u = Url::parse("http://host?x=1").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/?x=1"));
        for bad in [
            "ftp://x",
            "http://",
            "http://:80/",
            "http://u:p@host/",
            "http://h:99999/",
            "h:80",
            "http://a b/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(u.with_path("/api/streams/").path, "/api/streams/");
    }

    /// A server that answers one request with `answer` and the request it read.
    async fn one_answer(answer: &'static [u8]) -> (Url, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/x", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).await.unwrap();
            got.truncate(n);
            let _ = s.write_all(answer).await;
            let _ = s.shutdown().await;
            got
        });
        (url, task)
    }

    #[tokio::test]
    async fn answers_bodies_and_their_bounds() {
        let (url, server) =
            one_answer(b"HTTP/1.1 201 Created\r\nLocation: /s/1\r\nContent-Length: 2\r\n\r\n{}")
                .await;
        let call = Call::get(&url, "t0k").with_body(
            Method::POST,
            "application/json",
            Bytes::from_static(b"{}"),
        );
        let a = send(call, Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (201, "{}"));
        assert_eq!(a.headers.get("location").unwrap(), "/s/1");
        let request = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(request.starts_with("POST /x HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("authorization: Bearer t0k\r\n"),
            "{request}"
        );

        let (url, _server) = one_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n").await;
        let e = send(Call::get(&url, ""), Duration::from_secs(5), 8)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::TooLarge(8)), "{e}");

        let (url, _server) = one_answer(b"garbage\r\n\r\n").await;
        assert!(
            send(Call::get(&url, ""), Duration::from_secs(5), 8)
                .await
                .is_err()
        );

        // Nobody answers: the deadline.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", silent.local_addr().unwrap())).unwrap();
        let e = send(Call::get(&url, ""), Duration::from_millis(200), 8)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
    }

    #[tokio::test]
    async fn event_streams_come_line_by_line() {
        let (url, _server) = one_answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n8\r\ndata: [1\r\n5\r\n]\r\n\r\n\r\n0\r\n\r\n").await;
        let mut s = open(Call::get(&url, ""), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(s.status, 200);
        assert_eq!(s.next_line().await.unwrap().as_deref(), Some("data: [1]"));
        assert_eq!(s.next_line().await.unwrap().as_deref(), Some(""));
        assert_eq!(s.next_line().await.unwrap(), None);
    }
}
