//! The few HTTP/1.1 requests a WHEP client makes (POST an offer, DELETE a session), over a
//! plain TCP connection with `Connection: close`, each bounded by a timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WhepError;

/// Largest response accepted: an SDP answer is a few KiB.
const MAX_RESPONSE: usize = 256 * 1024;

/// An `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port`.
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, WhepError> {
        let bad = |why: &str| WhepError::Url(format!("{url}: {why}"));
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad("only http:// URLs are supported (put a TLS proxy in front for https)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().map_err(|_| bad("bad port"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            authority: authority.to_string(),
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The same server, another path (a `Location` header).
    pub fn with_path(&self, location: &str) -> Result<Self, WhepError> {
        if location.starts_with("http://") {
            return Self::parse(location);
        }
        Ok(Self {
            path: location.to_string(),
            ..self.clone()
        })
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub async fn request(
    method: &str,
    url: &HttpUrl,
    content_type: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<Response, WhepError> {
    request_with(method, url, &[], content_type, body, timeout).await
}

/// [`request`] with extra request headers (e.g. `Authorization`).
pub async fn request_with(
    method: &str,
    url: &HttpUrl,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<Response, WhepError> {
    let exchange = async {
        let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
        stream.set_nodelay(true)?;
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            url.path,
            url.authority,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| WhepError::Http(format!("{method} {} timed out after {timeout:?}", url.path)))?
        .map_err(|e| WhepError::Http(format!("{method} {}: {e}", url.path)))?;
    if raw.len() > MAX_RESPONSE {
        return Err(WhepError::Http(format!(
            "response larger than {MAX_RESPONSE} bytes"
        )));
    }
    parse(&raw).ok_or_else(|| WhepError::Http("malformed HTTP response".into()))
}

/// Parses a whole HTTP/1.1 response (`Connection: close`, so the body is the rest; chunked
/// bodies are joined).
pub fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/whep/cam").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/whep/cam")
        );
        let u = HttpUrl::parse("http://[::1]:9/whep/a/b").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = HttpUrl::parse("http://example.net").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert!(HttpUrl::parse("https://example.net/whep/x").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
        assert!(HttpUrl::parse("http://h:99999/").is_err());
        assert_eq!(u.with_path("/session/x/y").unwrap().path, "/session/x/y");
    }

    #[test]
    fn responses() {
        let r =
            parse(b"HTTP/1.1 201 Created\r\nLocation: /s/1\r\nLink: <a>\r\nLink: <b>\r\n\r\nv=0")
                .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/s/1"));
        assert_eq!(r.all("link").count(), 2);
        assert_eq!(r.text(), "v=0");
        let r =
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(r.text(), "abc");
        assert!(parse(b"garbage").is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_none());
    }
}
