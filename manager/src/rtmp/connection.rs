//! One router connection: the client's handshake, `connect` and `createStream` answered here
//! (bounded in time and bytes), the key routed, the connection handed to the agent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use verge_media::rtmp::handover::{Handover, HandoverError};
use verge_media::rtmp::handshake::random_block;
use verge_media::rtmp::query::Query;
use verge_media::rtmp::session::{Event, Session, SessionConfig, SessionError};
use verge_tunnel::TunnelError;

use super::Router;
use super::admission::Ticket;
use super::route::{Refusal, authorize, publish_token, route};

/// What a client may send before `publish`: a handshake and a few small commands. A client
/// still talking past this is not an encoder.
const MAX_BEFORE_PUBLISH: usize = 64 * 1024;
/// Bound on every write to the client: a publisher reads little, but must read it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the client's end of input, how long the agent may take to finish its side.
const LINGER: Duration = Duration::from_secs(10);
/// The tunnel buffer between this task and the tunnel stream's bridge, each way.
const PIPE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("no publish within {0:?}")]
    Deadline(Duration),
    #[error("the client closed the connection before publishing")]
    ClosedEarly,
    #[error("{0} bytes and still no publish")]
    TooChatty(usize),
    #[error("RTMP: {0}")]
    Session(#[from] SessionError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client does not read ({0:?} blocked)")]
    WriteTimeout(Duration),
    #[error("publish of {stream} refused: {reason}")]
    Refused { stream: String, reason: String },
    #[error("play refused: the router only takes publishers")]
    Play,
    #[error("agent {agent}: {source}")]
    Handover {
        agent: String,
        source: HandoverError,
    },
    #[error("agent {agent} did not answer the RTMP handshake within {timeout:?}")]
    AgentSilent { agent: String, timeout: Duration },
}

/// How a handed-over connection ended.
pub struct Outcome {
    agent: String,
    stream: String,
    up: u64,
    down: u64,
    tunnel: Result<(), TunnelError>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} published into {} ({} bytes up, {} down)",
            self.stream, self.agent, self.up, self.down
        )?;
        if let Err(e) = &self.tunnel {
            write!(f, "; tunnel: {e}")?;
        }
        Ok(())
    }
}

/// What the client asked for before the handover: app and key without their queries, which
/// (with the token) are in `query`.
struct Publish {
    stream_id: u32,
    app: String,
    name: String,
    query: Query,
}

pub async fn run(
    mut socket: TcpStream,
    peer: SocketAddr,
    mut ticket: Ticket,
    router: &Router,
) -> Result<Outcome, RouterError> {
    let epoch = verge_protocol::now_ms() as u32;
    let mut session = Session::new(SessionConfig::default(), random_block(), epoch);
    let mut received = Vec::with_capacity(8 * 1024);
    let deadline = tokio::time::Instant::now() + router.handshake_timeout;
    let publish = tokio::time::timeout_at(
        deadline,
        until_publish(&mut socket, &mut session, &mut received),
    )
    .await
    .map_err(|_| RouterError::Deadline(router.handshake_timeout))??;

    // A key issued through another manager a moment ago must route here too; the copy this
    // manager holds serves while the database is down.
    if let Err(e) = router.keys.refresh().await {
        tracing::debug!(error = %e, "routing with the keys this manager holds");
    }
    let online: Vec<String> = router
        .registry
        .list()
        .into_iter()
        .filter(|a| a.online())
        .map(|a| a.id)
        .collect();
    let routed = route(
        &router.keys.snapshot(),
        &publish.app,
        &publish.name,
        &online,
    );
    let (agent, key) = match routed {
        Ok(routed) => routed,
        Err(Refusal { code, reason }) => {
            session.reject_publish(publish.stream_id, code, &reason);
            write_out(&mut socket, &session.take_output()).await?;
            return Err(RouterError::Refused {
                stream: format!("{}/…", publish.app),
                reason,
            });
        }
    };
    let stream = format!("{}/{}", key.app, key.name);
    let token = publish_token(&publish.query);
    let now = verge_protocol::now_ms() / 1000;
    if let Err(Refusal { code, reason }) = authorize(&router.auth, &stream, token.as_deref(), now) {
        session.reject_publish(publish.stream_id, code, &reason);
        write_out(&mut socket, &session.take_output()).await?;
        return Err(RouterError::Refused { stream, reason });
    }
    let opened = match router.tunnels.endpoint(&agent) {
        Ok(endpoint) => endpoint.open("rtmp").await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let tunnel = match opened {
        Ok(tunnel) => tunnel,
        Err(reason) => {
            let reason = format!("agent {agent} cannot be reached: {reason}");
            session.reject_publish(publish.stream_id, "NetStream.Failed", &reason);
            write_out(&mut socket, &session.take_output()).await?;
            return Err(RouterError::Refused { stream, reason });
        }
    };
    tracing::info!(%peer, %stream, %agent, tunnel_stream = tunnel.id(), "RTMP router: handing the publisher to its agent");
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let bridge = tokio::spawn(tunnel.bridge(theirs));
    let mut handover = Handover::start(session, &received, random_block()).map_err(|source| {
        RouterError::Handover {
            agent: agent.clone(),
            source,
        }
    })?;
    drop(received);
    let (mut agent_rd, mut agent_wr) = tokio::io::split(ours);

    // The agent's handshake, bounded like the client's.
    let handshake = async {
        agent_wr.write_all(&handover.take_to_server()).await?;
        let mut buf = vec![0u8; 8 * 1024];
        while !handover.is_relaying() {
            let n = agent_rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, RouterError>(false);
            }
            handover
                .from_server(&buf[..n])
                .map_err(|source| RouterError::Handover {
                    agent: agent.clone(),
                    source,
                })?;
        }
        agent_wr.write_all(&handover.take_to_server()).await?;
        Ok(true)
    };
    let patience = router.handshake_timeout;
    let through = match tokio::time::timeout(patience, handshake).await {
        Ok(Ok(through)) => through,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            bridge.abort();
            return Err(RouterError::AgentSilent {
                agent,
                timeout: patience,
            });
        }
    };
    if !through {
        // The agent's side ended before its handshake: the tunnel says why.
        let reason = match tokio::time::timeout(Duration::from_secs(1), bridge).await {
            Ok(Ok(Err(e))) => e.to_string(),
            _ => "it closed the connection".to_string(),
        };
        let reason = format!("agent {agent} refused: {reason}");
        handover.reject_publish(publish.stream_id, "NetStream.Failed", &reason);
        write_out(&mut socket, &handover.take_to_client()).await?;
        return Err(RouterError::Refused { stream, reason });
    }
    ticket.handshake_done();

    let (up, down) = relay(socket, &mut handover, agent_rd, agent_wr)
        .await
        .map_err(|e| match e {
            RelayError::Io(e) => RouterError::Io(e),
            RelayError::WriteTimeout => RouterError::WriteTimeout(WRITE_TIMEOUT),
            RelayError::Handover(source) => RouterError::Handover {
                agent: agent.clone(),
                source,
            },
        })?;
    let tunnel = match tokio::time::timeout(LINGER, bridge).await {
        Ok(Ok(result)) => result.map(|_| ()),
        Ok(Err(_)) | Err(_) => Ok(()),
    };
    Ok(Outcome {
        agent,
        stream,
        up,
        down,
        tunnel,
    })
}

/// Answers the client until it asks to publish. Every byte it sent is kept in `received`.
async fn until_publish(
    socket: &mut TcpStream,
    session: &mut Session,
    received: &mut Vec<u8>,
) -> Result<Publish, RouterError> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                Event::PublishRequested {
                    stream_id,
                    name,
                    query,
                } => {
                    return Ok(Publish {
                        stream_id,
                        app: session.app().unwrap_or_default().to_string(),
                        name,
                        query,
                    });
                }
                Event::PlayRequested { stream_id, .. } => {
                    session.reject_play(
                        stream_id,
                        "this is the manager's RTMP router: it takes publishers only",
                    );
                    write_out(socket, &session.take_output()).await?;
                    return Err(RouterError::Play);
                }
                _ => {}
            }
        }
        write_out(socket, &session.take_output()).await?;
        if received.len() >= MAX_BEFORE_PUBLISH {
            return Err(RouterError::TooChatty(received.len()));
        }
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(RouterError::ClosedEarly);
        }
        received.extend_from_slice(&buf[..n]);
        session.receive(&buf[..n])?;
    }
}

enum RelayError {
    Io(std::io::Error),
    WriteTimeout,
    Handover(HandoverError),
}

/// Client bytes to the agent as they are; the agent's messages through `handover`. Ends when
/// the agent's side ends (or the client's, once the agent has finished). Returns the bytes
/// moved each way.
async fn relay(
    socket: TcpStream,
    handover: &mut Handover,
    mut agent_rd: impl AsyncRead + Unpin,
    mut agent_wr: impl AsyncWrite + Unpin,
) -> Result<(u64, u64), RelayError> {
    let (mut client_rd, mut client_wr) = socket.into_split();
    let pending = handover.take_to_client();
    write_timed(&mut client_wr, &pending).await?;
    let up = std::sync::atomic::AtomicU64::new(0);
    let upward = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if agent_wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    up.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let _ = agent_wr.shutdown().await;
    };
    let downward = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = pending.len() as u64;
        loop {
            let n = agent_rd.read(&mut buf).await.map_err(RelayError::Io)?;
            if n == 0 {
                let _ = client_wr.shutdown().await;
                return Ok::<u64, RelayError>(total);
            }
            handover
                .from_server(&buf[..n])
                .map_err(RelayError::Handover)?;
            let out = handover.take_to_client();
            total += out.len() as u64;
            write_timed(&mut client_wr, &out).await?;
        }
    };
    tokio::pin!(upward, downward);
    let down = tokio::select! {
        down = &mut downward => down?,
        () = &mut upward => {
            // The client is done; let the agent finish (it closes once it sees the end).
            match tokio::time::timeout(LINGER, downward).await {
                Ok(down) => down?,
                Err(_) => 0,
            }
        }
    };
    Ok((up.load(std::sync::atomic::Ordering::Relaxed), down))
}

async fn write_timed(
    socket: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> Result<(), RelayError> {
    if bytes.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(bytes)).await {
        Ok(result) => result.map_err(RelayError::Io),
        Err(_) => Err(RelayError::WriteTimeout),
    }
}

async fn write_out(socket: &mut TcpStream, bytes: &[u8]) -> Result<(), RouterError> {
    if bytes.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(bytes))
        .await
        .map_err(|_| RouterError::WriteTimeout(WRITE_TIMEOUT))??;
    Ok(())
}
