//! The task that owns rumqttc's `EventLoop`: it polls without ever being cancelled, turns
//! packets into [`LinkEvent`]s on a bounded channel, and reconnects forever with jittered
//! backoff.
//!
//! Every connection attempt is a new *session* with a number that only grows (Unix ms, across
//! restarts too). The last will is rebuilt for each session, and with `session_client_ids` the
//! client id is `{client_id}:{session}`. Unique client ids mean a reconnect never takes over a
//! half-dead old connection, which rumqttd mishandles (it publishes the *new* session's will and
//! forgets it); the old connection then dies on its own, and its late will carries an older
//! session number that readers can tell apart.
//!
//! A link may know several nodes of one broker cluster ([`LinkOptions::fallbacks`]): every
//! failed attempt or lost session moves it to the next node, so a box whose node dies is on
//! another within one backoff step.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    NetworkOptions, Outgoing, Packet, StateError, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::url::BrokerUrl;
use crate::{MAX_PACKET, tls};

/// Everything needed to reach a broker.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub url: BrokerUrl,
    /// Other nodes of the same broker cluster, tried in turn after `url` (each with its own
    /// credentials and scheme, falling back to `username`/`password` as `url` does).
    pub fallbacks: Vec<BrokerUrl>,
    pub client_id: String,
    /// Used when the URL carries no credentials.
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: Duration,
    /// Extra CA certificate(s) for `mqtts://` to a broker with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Capacity of the incoming event channel and of rumqttc's request channel.
    pub queue: usize,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Connect as `{client_id}:{session}` instead of `{client_id}`.
    pub session_client_ids: bool,
}

impl LinkOptions {
    pub fn new(url: BrokerUrl, client_id: impl Into<String>) -> Self {
        Self {
            url,
            fallbacks: Vec::new(),
            client_id: client_id.into(),
            username: None,
            password: None,
            keepalive: Duration::from_secs(10),
            ca_file: None,
            queue: 256,
            max_backoff: Duration::from_secs(2),
            session_client_ids: false,
        }
    }
}

/// What the link reports to its owner.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A session is up (after every reconnect): subscribe and publish retained state now.
    Connected { session: u64 },
    Message {
        topic: String,
        payload: bytes::Bytes,
    },
    /// The session broke or could not be set up; the link retries after `retry_in`.
    Disconnected {
        reason: String,
        /// The broker refused these credentials: no retry will fix it until the
        /// configuration changes (the link keeps retrying so a fixed broker takes effect).
        bad_credentials: bool,
        retry_in: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Builds the last will of a session, before its connection attempt.
pub type WillFn = Box<dyn FnMut(u64) -> LastWill + Send>;

/// Sees each incoming message first, on the link's own task, and returns true when it took
/// it (then the session never sees it). For traffic where a hop costs more than the work:
/// tunnel packets, whose round trip lost tens of microseconds to each task they crossed. It
/// runs where the MQTT connection is drained, so it must never wait.
pub type Tap = Box<dyn FnMut(&str, &bytes::Bytes) -> bool + Send>;

/// A running link: publish and subscribe through `client`, read `events`.
pub struct Link {
    pub client: AsyncClient,
    pub events: mpsc::Receiver<LinkEvent>,
    pub task: JoinHandle<()>,
}

impl Link {
    /// Starts the event loop task. It ends after a `disconnect()` has been sent, or when
    /// `events` is dropped.
    pub fn spawn(opts: &LinkOptions, will: Option<WillFn>) -> Result<Self, LinkError> {
        Self::spawn_tapped(opts, will, None)
    }

    /// [`Link::spawn`] with a [`Tap`] on incoming messages.
    pub fn spawn_tapped(
        opts: &LinkOptions,
        will: Option<WillFn>,
        tap: Option<Tap>,
    ) -> Result<Self, LinkError> {
        let nodes = std::iter::once(&opts.url)
            .chain(&opts.fallbacks)
            .map(|url| Ok((url.clone(), mqtt_options(opts, url)?)))
            .collect::<Result<Vec<_>, LinkError>>()?;
        let mqtt = nodes[0].1.clone();
        let (client, mut eventloop) = AsyncClient::new(mqtt, opts.queue.max(1));
        // Control messages are small and latency-bound: without this, Nagle and delayed ACKs
        // added ~40 ms per hop to every RPC (measured with examples/agent_swarm).
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let (tx, events) = mpsc::channel(opts.queue.max(1));
        let backoff = Backoff::new(Duration::from_millis(200), opts.max_backoff);
        let identity = Identity {
            client_id: opts.client_id.clone(),
            unique: opts.session_client_ids,
            will,
            session: 0,
        };
        let task = tokio::spawn(run(eventloop, tx, identity, backoff, nodes, tap));
        Ok(Self {
            client,
            events,
            task,
        })
    }
}

/// The options of one broker node: its address, credentials and transport.
fn mqtt_options(opts: &LinkOptions, url: &BrokerUrl) -> Result<MqttOptions, LinkError> {
    let mut mqtt = MqttOptions::new(&opts.client_id, &url.host, url.port);
    mqtt.set_keep_alive(opts.keepalive)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_clean_session(true);
    let username = url.username.clone().or_else(|| opts.username.clone());
    let password = url.password.clone().or_else(|| opts.password.clone());
    if let Some(user) = username {
        mqtt.set_credentials(user, password.unwrap_or_default());
    }
    if url.tls {
        let config = tls::client_config(opts.ca_file.as_deref())?;
        mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    Ok(mqtt)
}

/// What changes from one connection attempt to the next.
struct Identity {
    client_id: String,
    unique: bool,
    will: Option<WillFn>,
    session: u64,
}

impl Identity {
    /// Starts the next session: a number above the last one and above the clock.
    fn next(&mut self, options: &mut MqttOptions) {
        self.session = verge_now_ms().max(self.session + 1);
        if self.unique {
            options.set_client_id(format!("{}:{:x}", self.client_id, self.session));
        }
        if let Some(make) = self.will.as_mut() {
            options.set_last_will(make(self.session));
        }
    }
}

fn verge_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn run(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<LinkEvent>,
    mut identity: Identity,
    mut backoff: Backoff,
    nodes: Vec<(BrokerUrl, MqttOptions)>,
    mut tap: Option<Tap>,
) {
    let mut node = 0;
    let mut url = nodes[0].0.clone();
    identity.next(&mut eventloop.mqtt_options);
    let mut session_up = false;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                session_up = true;
                backoff.reset();
                tracing::info!(broker = %url, session = identity.session, "connected to broker");
                LinkEvent::Connected {
                    session: identity.session,
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(tap) = tap.as_mut()
                    && tap(&p.topic, &p.payload)
                {
                    continue;
                }
                LinkEvent::Message {
                    topic: p.topic,
                    payload: p.payload,
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::debug!(broker = %url, "disconnected on request");
                return;
            }
            Ok(_) => continue,
            Err(err) => {
                let bad_credentials = refused_credentials(&err, session_up);
                let retry_in = if !session_up && took_the_connection(&err) {
                    backoff.next_delay_busy()
                } else {
                    backoff.next_delay()
                };
                session_up = false;
                let reason = describe(&err);
                if bad_credentials {
                    tracing::error!(broker = %url, %reason, ?retry_in, "broker refused the connection before the session was up: wrong id or secret?");
                } else if reason.contains("invalid peer certificate") {
                    tracing::error!(broker = %url, %reason, ?retry_in, "the broker's TLS certificate is not trusted: is [mqtt] ca_file the CA that signed it, and does it name this host?");
                } else {
                    tracing::warn!(broker = %url, %reason, ?retry_in, "broker connection lost or refused, retrying");
                }
                let event = LinkEvent::Disconnected {
                    reason,
                    bad_credentials,
                    retry_in,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
                tokio::time::sleep(retry_in).await;
                if nodes.len() > 1 {
                    node = (node + 1) % nodes.len();
                    url = nodes[node].0.clone();
                    eventloop.mqtt_options = nodes[node].1.clone();
                    tracing::info!(broker = %url, "trying the next broker node");
                }
                identity.next(&mut eventloop.mqtt_options);
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// Whether the broker accepted the TCP connection (it was there) before the attempt failed:
/// everything but a refused or unreachable connect. Before the session is up that means a
/// broker too busy to answer CONNECT in time (rumqttd registering a fleet closes the socket),
/// or one refusing us: either way, retrying sooner only adds to its load.
fn took_the_connection(err: &ConnectionError) -> bool {
    use std::io::ErrorKind;
    match err {
        ConnectionError::Io(e) => !matches!(
            e.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable
                | ErrorKind::TimedOut
        ),
        _ => true,
    }
}

/// A refusal of our credentials. mosquitto says so in its CONNACK; rumqttd closes the socket
/// without one, which shows as the peer hanging up before the session was up.
fn refused_credentials(err: &ConnectionError, session_up: bool) -> bool {
    use std::io::ErrorKind;
    let hung_up = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        )
    };
    match err {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => true,
        ConnectionError::Io(e) if !session_up => hung_up(e),
        ConnectionError::MqttState(StateError::Io(e)) if !session_up => hung_up(e),
        ConnectionError::MqttState(StateError::ConnectionAborted) => !session_up,
        _ => false,
    }
}

fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => {
            format!("connection refused by broker: {code:?}")
        }
        other => other.to_string(),
    }
}
