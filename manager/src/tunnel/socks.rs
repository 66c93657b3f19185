//! `[tunnel] socks_listen`: a SOCKS5 proxy (RFC 1928, no authentication, CONNECT) into the
//! fleet. The host is an agent, `{agent}` or `{agent}.verge`; the port is one of that agent's
//! own listeners (`localhost:{port}` on the agent, which must be in its `[tunnel] allow`, as
//! its `rtmp` and `http` are by default). For example, through the manager:
//! `curl --socks5-hostname manager:1080 http://edge-1.verge:7001/live/cam.flv`.
//!
//! The greeting and the request are parsed by [`parse_greeting`] and [`parse_request`] (bytes
//! in, a verdict out); the task around them owns the socket. The client hears "succeeded" only
//! once the agent has accepted the stream (dialled the target); a refusal is the reply code
//! [`refusal_reply`] picks, and an agent that does not answer within [`ACCEPT_TIMEOUT`] is
//! "TTL expired".

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use verge_tunnel::TunnelError;
use verge_tunnel::frame::ResetCode;

use super::Tunnels;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CONNECT: u8 = 1;
const DOMAIN: u8 = 3;
/// Reply codes.
const SUCCEEDED: u8 = 0;
const GENERAL_FAILURE: u8 = 1;
const NOT_ALLOWED: u8 = 2;
const HOST_UNREACHABLE: u8 = 4;
const CONNECTION_REFUSED: u8 = 5;
const TTL_EXPIRED: u8 = 6;
const COMMAND_NOT_SUPPORTED: u8 = 7;
const ADDRESS_NOT_SUPPORTED: u8 = 8;
/// A client has this long to say where it wants to go.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent has to accept a stream: to dial its target (it gives up after 5 s) and
/// answer over MQTT. An agent that is gone without the registry knowing yet answers never.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a parser needs: more bytes, a verdict, or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    Incomplete,
    Done { value: T, used: usize },
    Invalid(&'static str),
}

/// The greeting `VER NMETHODS METHODS…`: whether "no authentication" is offered.
pub fn parse_greeting(buf: &[u8]) -> Parsed<bool> {
    match buf {
        [] | [_] => Parsed::Incomplete,
        [v, ..] if *v != VERSION => Parsed::Invalid("not SOCKS5"),
        [_, n, methods @ ..] => {
            let n = usize::from(*n);
            if methods.len() < n {
                return Parsed::Incomplete;
            }
            Parsed::Done {
                value: methods[..n].contains(&NO_AUTH),
                used: 2 + n,
            }
        }
    }
}

/// A CONNECT request's target host and port; `Err(reply code)` for what is not supported.
pub fn parse_request(buf: &[u8]) -> Parsed<Result<(String, u16), u8>> {
    if buf.len() < 4 {
        return Parsed::Incomplete;
    }
    if buf[0] != VERSION {
        return Parsed::Invalid("not SOCKS5");
    }
    let refuse = |code: u8, used: usize| Parsed::Done {
        value: Err(code),
        used,
    };
    if buf[3] != DOMAIN {
        // An IP address names no agent.
        return refuse(ADDRESS_NOT_SUPPORTED, buf.len());
    }
    let Some(&len) = buf.get(4) else {
        return Parsed::Incomplete;
    };
    let end = 5 + usize::from(len);
    if buf.len() < end + 2 {
        return Parsed::Incomplete;
    }
    if buf[1] != CONNECT {
        return refuse(COMMAND_NOT_SUPPORTED, end + 2);
    }
    let Ok(host) = std::str::from_utf8(&buf[5..end]) else {
        return Parsed::Invalid("host is not UTF-8");
    };
    let port = u16::from_be_bytes([buf[end], buf[end + 1]]);
    Parsed::Done {
        value: Ok((host.to_string(), port)),
        used: end + 2,
    }
}

/// The agent a SOCKS host names: `{agent}` or `{agent}.verge`.
pub fn agent_of(host: &str) -> Option<&str> {
    let agent = host.strip_suffix(".verge").unwrap_or(host);
    verge_protocol::id::validate(agent).ok().map(|()| agent)
}

fn reply(code: u8) -> [u8; 10] {
    [VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// The reply to a client whose stream the agent did not accept.
pub fn refusal_reply(refusal: &TunnelError) -> u8 {
    match refusal {
        TunnelError::Reset { code, .. } => match code {
            // Not in the agent's `[tunnel] allow`.
            ResetCode::Refused => NOT_ALLOWED,
            ResetCode::TargetRefused => CONNECTION_REFUSED,
            ResetCode::Unreachable | ResetCode::LinkLost => HOST_UNREACHABLE,
            ResetCode::Aborted
            | ResetCode::Protocol
            | ResetCode::TooManyStreams
            | ResetCode::Other(_) => GENERAL_FAILURE,
        },
        TunnelError::Open(_) | TunnelError::Stopped => GENERAL_FAILURE,
    }
}

/// Accepts SOCKS5 clients until the task is aborted.
pub async fn serve(listener: TcpListener, tunnels: Tunnels) {
    let mut backoff = verge_serve::accept::AcceptBackoff::default();
    loop {
        let (socket, peer) = verge_serve::accept::next(&listener, &mut backoff, "SOCKS5").await;
        let _ = socket.set_nodelay(true);
        let tunnels = tunnels.clone();
        tokio::spawn(async move {
            if let Err(why) = handle(socket, &tunnels).await {
                tracing::info!(%peer, "SOCKS5 client refused: {why}");
            }
        });
    }
}

async fn handle(mut socket: TcpStream, tunnels: &Tunnels) -> Result<(), String> {
    let target = tokio::time::timeout(REQUEST_TIMEOUT, negotiate(&mut socket))
        .await
        .map_err(|_| format!("no request within {REQUEST_TIMEOUT:?}"))??;
    let Some((agent, port)) = target else {
        return Ok(());
    };
    let endpoint = match tunnels.endpoint(&agent) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            let _ = socket.write_all(&reply(HOST_UNREACHABLE)).await;
            return Err(e.to_string());
        }
    };
    let target = format!("localhost:{port}");
    let accepted = match endpoint.open(&target).await {
        Ok(mut stream) => match tokio::time::timeout(ACCEPT_TIMEOUT, stream.established()).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(refusal)) => Err((refusal_reply(&refusal), refusal.to_string())),
            Err(_) => {
                let why = format!("agent {agent} did not accept within {ACCEPT_TIMEOUT:?}");
                stream.abort(&why).await;
                Err((TTL_EXPIRED, why))
            }
        },
        Err(e) => Err((GENERAL_FAILURE, e.to_string())),
    };
    let stream = match accepted {
        Ok(stream) => stream,
        Err((code, why)) => {
            let _ = socket.write_all(&reply(code)).await;
            return Err(format!("{agent}:{port}: {why}"));
        }
    };
    socket
        .write_all(&reply(SUCCEEDED))
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(%agent, port, "SOCKS5 stream open");
    stream
        .bridge(socket)
        .await
        .map(|_| ())
        .map_err(|e| format!("{agent}:{port}: {e}"))
}

/// Greeting and request; `None` when the client was answered with a refusal.
async fn negotiate(socket: &mut TcpStream) -> Result<Option<(String, u16)>, String> {
    let mut buf = Vec::with_capacity(300);
    let mut chunk = [0u8; 300];
    let no_auth = loop {
        match parse_greeting(&buf) {
            Parsed::Done { value, used } => {
                buf.drain(..used);
                break value;
            }
            Parsed::Invalid(why) => return Err(why.into()),
            Parsed::Incomplete => read_more(socket, &mut buf, &mut chunk).await?,
        }
    };
    let method = if no_auth {
        NO_AUTH
    } else {
        NO_ACCEPTABLE_METHOD
    };
    socket
        .write_all(&[VERSION, method])
        .await
        .map_err(|e| e.to_string())?;
    if !no_auth {
        return Err("the client offers no method without authentication".into());
    }
    loop {
        match parse_request(&buf) {
            Parsed::Done {
                value: Ok((host, port)),
                ..
            } => {
                let Some(agent) = agent_of(&host) else {
                    let _ = socket.write_all(&reply(HOST_UNREACHABLE)).await;
                    return Err(format!("{host:?} is not an agent"));
                };
                return Ok(Some((agent.to_string(), port)));
            }
            Parsed::Done {
                value: Err(code), ..
            } => {
                let _ = socket.write_all(&reply(code)).await;
                return Ok(None);
            }
            Parsed::Invalid(why) => return Err(why.into()),
            Parsed::Incomplete => read_more(socket, &mut buf, &mut chunk).await?,
        }
    }
}

async fn read_more(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Result<(), String> {
    if buf.len() > 512 {
        return Err("request too long".into());
    }
    match socket.read(chunk).await {
        Ok(0) => Err("the client left".into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_say_whether_no_auth_is_offered() {
        assert_eq!(parse_greeting(&[5]), Parsed::Incomplete);
        assert_eq!(parse_greeting(&[5, 2, 0]), Parsed::Incomplete);
        assert_eq!(
            parse_greeting(&[5, 2, 2, 0]),
            Parsed::Done {
                value: true,
                used: 4
            }
        );
        assert_eq!(
            parse_greeting(&[5, 1, 2]),
            Parsed::Done {
                value: false,
                used: 3
            }
        );
        assert_eq!(parse_greeting(&[4, 1, 0]), Parsed::Invalid("not SOCKS5"));
    }

    #[test]
    fn requests_name_a_host_and_port_or_are_refused_with_a_code() {
        let mut req = vec![5, 1, 0, 3, 12];
        req.extend_from_slice(b"edge-1.verge");
        req.extend_from_slice(&7001u16.to_be_bytes());
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut]), Parsed::Incomplete, "cut {cut}");
        }
        assert_eq!(
            parse_request(&req),
            Parsed::Done {
                value: Ok(("edge-1.verge".into(), 7001)),
                used: req.len()
            }
        );
        let mut bind = req.clone();
        bind[1] = 2;
        assert!(matches!(
            parse_request(&bind),
            Parsed::Done {
                value: Err(COMMAND_NOT_SUPPORTED),
                ..
            }
        ));
        let ipv4 = [5, 1, 0, 1, 127, 0, 0, 1, 0, 80];
        assert!(matches!(
            parse_request(&ipv4),
            Parsed::Done {
                value: Err(ADDRESS_NOT_SUPPORTED),
                ..
            }
        ));
        assert_eq!(
            parse_request(&[4, 1, 0, 3, 0, 0, 0]),
            Parsed::Invalid("not SOCKS5")
        );
        assert_eq!(agent_of("edge-1.verge"), Some("edge-1"));
        assert_eq!(agent_of("edge-1"), Some("edge-1"));
        assert_eq!(agent_of("evil/../x"), None);
    }

    #[test]
    fn each_refusal_of_the_agent_has_its_reply_code() {
        let reset = |code| TunnelError::Reset {
            code,
            reason: String::new(),
        };
        assert_eq!(refusal_reply(&reset(ResetCode::Refused)), NOT_ALLOWED);
        assert_eq!(
            refusal_reply(&reset(ResetCode::TargetRefused)),
            CONNECTION_REFUSED
        );
        assert_eq!(
            refusal_reply(&reset(ResetCode::Unreachable)),
            HOST_UNREACHABLE
        );
        assert_eq!(refusal_reply(&reset(ResetCode::LinkLost)), HOST_UNREACHABLE);
        assert_eq!(
            refusal_reply(&reset(ResetCode::TooManyStreams)),
            GENERAL_FAILURE
        );
        assert_eq!(refusal_reply(&TunnelError::Stopped), GENERAL_FAILURE);
    }
}
