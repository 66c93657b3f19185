//! The agent's RTMP listener: each connection runs a [`Session`] over its socket and becomes a
//! publisher into the hub or a player reading from it.
//!
//! Every wait is bounded: the handshake and an idle publisher by `idle_timeout`, each write by
//! `write_timeout` (a player that cannot keep up is dropped; until then the hub makes it skip
//! to the next keyframe, so it never holds memory or slows anyone else).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use verge_media::flv::tag;
use verge_media::hub::{Frame, Hub, Publisher, Reader, ReaderKind};
use verge_media::rtmp::handshake;
use verge_media::rtmp::session::{Event, MediaKind, Session, SessionConfig};

use crate::keys::KeyTable;
use crate::streams::StreamName;

#[derive(Debug, Clone)]
pub struct RtmpSettings {
    /// Channel keys: a publisher's key names the stream it goes to.
    pub keys: Option<KeyTable>,
    /// `[rtmp] noauth`: a name that is no key publishes under itself (LiveGo's `verge up`
    /// box still maps the keys `/control/get` issued to their rooms).
    pub noauth: bool,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl Default for RtmpSettings {
    fn default() -> Self {
        Self {
            keys: None,
            noauth: true,
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Session(#[from] verge_media::rtmp::session::SessionError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("write blocked for {0:?}: the peer does not read")]
    WriteTimeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Media(String),
}

/// Accepts RTMP connections until the task is dropped.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, settings: RtmpSettings) {
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let mut backoff = verge_serve::accept::AcceptBackoff::default();
    loop {
        let (socket, peer) = verge_serve::accept::next(&listener, &mut backoff, "RTMP").await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = settings.max_connections, "RTMP connection refused: too many connections");
            continue;
        };
        let (hub, settings) = (hub.clone(), settings.clone());
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            match connection(socket, peer, hub, &settings).await {
                Ok(()) => tracing::debug!(%peer, "RTMP connection closed"),
                Err(e) => tracing::info!(%peer, reason = %e, "RTMP connection closed"),
            }
            drop(permit);
        });
    }
}

enum Role {
    Idle,
    Publishing {
        stream_id: u32,
        publisher: Publisher,
        /// The key table, its change notifications and the key this publisher used.
        key: Option<(KeyTable, tokio::sync::watch::Receiver<u64>, String)>,
    },
    Playing {
        stream_id: u32,
        reader: Reader,
    },
}

struct Conn {
    socket: TcpStream,
    session: Session,
    settings: RtmpSettings,
    buf: Vec<u8>,
}

impl Conn {
    async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.session.has_output() {
            return Ok(());
        }
        let out = self.session.take_output();
        tokio::time::timeout(self.settings.write_timeout, self.socket.write_all(&out))
            .await
            .map_err(|_| ConnError::WriteTimeout(self.settings.write_timeout))??;
        Ok(())
    }

    /// Reads once (bounded by the idle timeout) and feeds the session. `false` on EOF.
    async fn read(&mut self, idle: Option<Duration>) -> Result<bool, ConnError> {
        let n = match idle {
            Some(limit) => tokio::time::timeout(limit, self.socket.read(&mut self.buf))
                .await
                .map_err(|_| ConnError::Idle(limit))??,
            None => self.socket.read(&mut self.buf).await?,
        };
        if n == 0 {
            return Ok(false);
        }
        self.session.receive(&self.buf[..n])?;
        Ok(true)
    }
}

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    settings: &RtmpSettings,
) -> Result<(), ConnError> {
    let epoch = verge_protocol::now_ms() as u32;
    let mut conn = Conn {
        socket,
        session: Session::new(SessionConfig::default(), handshake::random_block(), epoch),
        settings: settings.clone(),
        buf: vec![0u8; 64 * 1024],
    };
    let mut role = Role::Idle;
    loop {
        while let Some(event) = conn.session.poll_event() {
            role = match on_event(&mut conn, &hub, peer, role, event) {
                Ok(role) => role,
                Err(e) => {
                    // Deliver the refusal (onStatus) before closing.
                    let _ = conn.flush().await;
                    return Err(e);
                }
            };
        }
        conn.flush().await?;
        match &mut role {
            Role::Playing { stream_id, reader } => {
                let stream_id = *stream_id;
                tokio::select! {
                    more = conn.read(None) => if !more? { return Ok(()) },
                    frame = reader.recv() => match frame {
                        // RTMP players take AAC; a WHIP publisher's Opus stays with WebRTC.
                        Some(frame) if frame.kind == MediaKind::Audio
                            && !verge_media::flv::make::is_aac(&frame.payload) => {}
                        Some(frame) => conn.session.send_media(stream_id, frame.kind, frame.timestamp, frame.payload),
                        None => {
                            conn.session.end_of_stream(stream_id);
                            conn.flush().await?;
                            return Ok(());
                        }
                    },
                }
            }
            Role::Publishing { publisher, key, .. } => {
                let revoked = async {
                    let Some((keys, changes, used)) = key else {
                        return std::future::pending().await;
                    };
                    loop {
                        if changes.changed().await.is_err() {
                            return std::future::pending().await;
                        }
                        if keys.lookup(used).is_none() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    more = conn.read(Some(settings.idle_timeout)) => if !more? {
                        tracing::info!(%peer, stream = %publisher.id(), "publisher disconnected without unpublishing");
                        return Ok(());
                    },
                    () = revoked => {
                        return Err(ConnError::Refused(format!("the channel key of {} was revoked", publisher.id())));
                    }
                }
            }
            Role::Idle => {
                if !conn.read(Some(settings.idle_timeout)).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// The stream a `publish` goes to, and whether a channel key named it: the stream the key
/// maps to (the key must belong to the app the publisher connected to), or with `noauth` a
/// name that is no key, itself. App and name come without their queries (the session cut
/// them off).
fn publish_target(
    keys: Option<&KeyTable>,
    noauth: bool,
    app: &str,
    key: &str,
) -> Result<(StreamName, bool), String> {
    let keyed_app = if app.is_empty() { "live" } else { app };
    match keys.and_then(|k| k.lookup(key)) {
        Some(channel) if channel.app == keyed_app => {
            StreamName::parse(&channel.app, &channel.name).map(|s| (s, true))
        }
        _ if noauth => StreamName::parse(app, key).map(|s| (s, false)),
        Some(_) => Err(format!("that channel key is not for app {keyed_app:?}")),
        None => Err("unknown channel key".into()),
    }
}

fn on_event(
    conn: &mut Conn,
    hub: &Arc<Hub>,
    peer: SocketAddr,
    role: Role,
    event: Event,
) -> Result<Role, ConnError> {
    let app = conn.session.app().unwrap_or("live").to_string();
    match event {
        Event::Connected { app, .. } => {
            tracing::debug!(%peer, %app, "RTMP connect");
            Ok(role)
        }
        Event::PublishRequested {
            stream_id, name, ..
        } => {
            if !matches!(role, Role::Idle) {
                conn.session.reject_publish(
                    stream_id,
                    "NetStream.Publish.BadName",
                    "this connection already has a stream",
                );
                return Err(ConnError::Refused(
                    "a second publish on one connection".into(),
                ));
            }
            let settings = &conn.settings;
            let (stream, keyed) =
                match publish_target(settings.keys.as_ref(), settings.noauth, &app, &name) {
                    Ok(target) => target,
                    Err(why) => {
                        conn.session
                            .reject_publish(stream_id, "NetStream.Publish.BadName", &why);
                        return Err(ConnError::Refused(why));
                    }
                };
            // Named like a WHIP publisher (`WHIP {session}`): its kind, then who it is.
            match hub.publish(&stream.id(), &format!("RTMP {peer}")) {
                Ok(publisher) => {
                    tracing::info!(%peer, stream = %stream.id(), "publishing");
                    conn.session.accept_publish(stream_id, &stream.id());
                    // A stream a key named ends when the key is revoked.
                    let key = conn
                        .settings
                        .keys
                        .as_ref()
                        .filter(|_| keyed)
                        .map(|keys| (keys.clone(), keys.subscribe(), name));
                    Ok(Role::Publishing {
                        stream_id,
                        publisher,
                        key,
                    })
                }
                Err(e) => {
                    conn.session.reject_publish(
                        stream_id,
                        "NetStream.Publish.BadName",
                        &e.to_string(),
                    );
                    Err(ConnError::Refused(e.to_string()))
                }
            }
        }
        Event::PlayRequested {
            stream_id, name, ..
        } => {
            let stream = StreamName::parse(&app, &name).map_err(ConnError::Refused)?;
            match hub.subscribe_as(&stream.id(), ReaderKind::Rtmp) {
                Ok(reader) => {
                    tracing::info!(%peer, stream = %stream.id(), "RTMP player joined");
                    reader.set_label(format!("rtmp://{peer}"));
                    conn.session.accept_play(stream_id, &stream.id());
                    Ok(Role::Playing { stream_id, reader })
                }
                Err(e) => {
                    conn.session.reject_play(stream_id, &e.to_string());
                    Err(ConnError::Refused(format!("play of {}: {e}", stream.id())))
                }
            }
        }
        Event::Media {
            kind,
            timestamp,
            payload,
        } => {
            let Role::Publishing { publisher, .. } = &role else {
                return Ok(role);
            };
            // Checked per frame (only the header bytes): an unsupported codec gets a clear
            // reason instead of a stream no player can decode.
            match kind {
                MediaKind::Video => {
                    tag::parse_video(&payload)
                        .map_err(|e| ConnError::Media(format!("video: {e}")))?;
                }
                MediaKind::Audio => {
                    tag::parse_audio(&payload)
                        .map_err(|e| ConnError::Media(format!("audio: {e}")))?;
                }
                MediaKind::Data => {}
            }
            publisher.push(Frame {
                kind,
                timestamp,
                payload,
            });
            Ok(role)
        }
        Event::StreamClosed { stream_id } => match role {
            Role::Publishing {
                stream_id: s,
                publisher,
                ..
            } if s == stream_id => {
                tracing::info!(%peer, stream = %publisher.id(), "publisher left");
                Ok(Role::Idle)
            }
            Role::Playing { stream_id: s, .. } if s == stream_id => Ok(Role::Idle),
            other => Ok(other),
        },
    }
}
