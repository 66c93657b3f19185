//! The task that owns rumqttc's `EventLoop`: it polls without ever being cancelled, turns
//! packets into [`LinkEvent`]s on a bounded channel, and reconnects forever with jittered
//! backoff, refreshing the last will before each attempt.

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
}

impl LinkOptions {
    pub fn new(url: BrokerUrl, client_id: impl Into<String>) -> Self {
        Self {
            url,
            client_id: client_id.into(),
            username: None,
            password: None,
            keepalive: Duration::from_secs(10),
            ca_file: None,
            queue: 256,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What the link reports to its owner.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A session is up (after every reconnect): subscribe and publish retained state now.
    Connected,
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

/// Builds a fresh last will before every connection attempt, so its timestamp is current.
pub type WillFn = Box<dyn FnMut() -> LastWill + Send>;

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
        let mut mqtt = MqttOptions::new(&opts.client_id, &opts.url.host, opts.url.port);
        mqtt.set_keep_alive(opts.keepalive)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_clean_session(true);
        let username = opts.url.username.clone().or_else(|| opts.username.clone());
        let password = opts.url.password.clone().or_else(|| opts.password.clone());
        if let Some(user) = username {
            mqtt.set_credentials(user, password.unwrap_or_default());
        }
        if opts.url.tls {
            let config = tls::client_config(opts.ca_file.as_deref())?;
            mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, opts.queue.max(1));
        // Control messages are small and latency-bound: without this, Nagle and delayed ACKs
        // added ~40 ms per hop to every RPC (measured with examples/agent_swarm).
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let (tx, events) = mpsc::channel(opts.queue.max(1));
        let backoff = Backoff::new(Duration::from_millis(200), opts.max_backoff);
        let task = tokio::spawn(run(
            eventloop,
            tx,
            will,
            backoff,
            opts.url.clone(),
            opts.keepalive,
        ));
        Ok(Self {
            client,
            events,
            task,
        })
    }
}

async fn run(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<LinkEvent>,
    mut will: Option<WillFn>,
    mut backoff: Backoff,
    url: BrokerUrl,
    keepalive: Duration,
) {
    if let Some(make) = will.as_mut() {
        eventloop.mqtt_options.set_last_will(make());
    }
    let mut session_up = false;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                session_up = true;
                backoff.reset();
                tracing::info!(broker = %url, "connected to broker");
                LinkEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message {
                topic: p.topic,
                payload: p.payload,
            },
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::debug!(broker = %url, "disconnected on request");
                return;
            }
            Ok(_) => continue,
            Err(err) => {
                let bad_credentials = refused_credentials(&err, session_up);
                let mut retry_in = backoff.next_delay();
                if session_up && !peer_hung_up(&err) {
                    // We noticed the break, the broker may not have: wait until it has dropped
                    // the old session (1.5 × keepalive). Reconnecting sooner is a takeover, on
                    // which rumqttd publishes the *new* session's will and forgets it.
                    retry_in = retry_in.max(keepalive.mul_f32(1.5));
                }
                session_up = false;
                let reason = describe(&err);
                if bad_credentials {
                    tracing::error!(broker = %url, %reason, ?retry_in, "broker refused the connection before the session was up: wrong id or secret?");
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
                if let Some(make) = will.as_mut() {
                    eventloop.mqtt_options.set_last_will(make());
                }
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// The broker closed the connection, so it knows the session is gone.
fn peer_hung_up(err: &ConnectionError) -> bool {
    use std::io::ErrorKind;
    let hung_up = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
        )
    };
    match err {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::Io(e) | ConnectionError::MqttState(StateError::Io(e)) => hung_up(e),
        _ => false,
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
