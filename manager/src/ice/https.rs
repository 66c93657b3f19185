//! One HTTP/1.1 POST to an API (Cloudflare's), over TLS with the system's roots (rustls, ring)
//! or plain for `http://` (a local stand-in): `Connection: close`, the answer read to its end,
//! bounded in size and time. Just enough for a JSON API; not a general client.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read.
const MAX_RESPONSE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("URL {0:?} is not http(s)://host[:port]/path")]
    Url(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answer larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("the answer is not HTTP/1.1")]
    NotHttp,
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse(url: &str) -> Result<Target, HttpsError> {
    let bad = || HttpsError::Url(url.to_string());
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad());
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        path,
    })
}

/// POSTs `body` (JSON) with a bearer token; the status and body of the answer.
pub async fn post_json(
    url: &str,
    bearer: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), HttpsError> {
    let target = parse(url)?;
    tokio::time::timeout(timeout, exchange(&target, bearer, body))
        .await
        .map_err(|_| HttpsError::Timeout(timeout))?
}

async fn exchange(target: &Target, bearer: &str, body: &str) -> Result<(u16, Vec<u8>), HttpsError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nAccept: application/json\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        target.path,
        target.host,
        body.len()
    );
    let raw = if target.tls {
        let config =
            verge_mqtt::tls::client_config(None).map_err(|e| HttpsError::Tls(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| HttpsError::Tls(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| HttpsError::Tls(e.to_string()))?;
        send_and_read(stream, request.as_bytes()).await?
    } else {
        send_and_read(tcp, request.as_bytes()).await?
    };
    response(&raw)
}

async fn send_and_read<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<Vec<u8>, HttpsError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // Servers that close without TLS close_notify: what arrived is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(raw);
        }
        if raw.len() + n > MAX_RESPONSE {
            return Err(HttpsError::TooLarge);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Status and body of a whole answer (`Content-Length`, chunked, or to the end).
fn response(raw: &[u8]) -> Result<(u16, Vec<u8>), HttpsError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(HttpsError::NotHttp),
    };
    let status = parsed.code.ok_or(HttpsError::NotHttp)?;
    let chunked = parsed.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let rest = &raw[head_len..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, HttpsError> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(HttpsError::NotHttp)?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| HttpsError::NotHttp)?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| HttpsError::NotHttp)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size {
            return Err(HttpsError::NotHttp);
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).ok_or(HttpsError::NotHttp)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_answers_and_chunks() {
        let t = parse("https://rtc.live.cloudflare.com/v1/turn/keys").unwrap();
        assert!(t.tls && t.port == 443 && t.path == "/v1/turn/keys");
        let t = parse("http://127.0.0.1:8099").unwrap();
        assert!(!t.tls && t.port == 8099 && t.path == "/");
        assert!(parse("ftp://x").is_err() && parse("http://:80/").is_err());
        let plain = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(response(plain).unwrap(), (201, b"{}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(response(chunked).unwrap(), (200, b"{\"a\":1}".to_vec()));
        assert!(response(b"garbage").is_err());
        assert!(response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }
}
