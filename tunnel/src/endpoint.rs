//! The task that runs one end of a tunnel link: it owns the [`Mux`], the [`Sealer`] and the
//! [`Opener`], takes sealed packets in and hands sealed packets out over bounded channels, and
//! moves bytes between the mux's streams and the [`TunnelStream`]s the application bridges to
//! sockets.
//!
//! Nothing on a peer-controlled path is unbounded:
//! - upstream (socket → tunnel): a bridge may queue only as many bytes as its stream has send
//!   buffer for (a semaphore of bytes), so a fast socket behind a slow tunnel stops being read;
//! - downstream (tunnel → socket): a stream's bytes move to its bridge through a channel of a
//!   few chunks; while that is full they stay in the stream, whose window then closes, and the
//!   peer stops sending. A slow reader holds back its own stream only.
//!
//! Every size involved is one of the link's [`Limits`].
//! - packets out wait for room in the outgoing channel; meanwhile incoming packets and commands
//!   are still handled, so the MQTT event loop never waits on this task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::bridge::{Down, TunnelStream, Up};
use crate::error::TunnelError;
use crate::frame::{Frame, ResetCode};
use crate::limits::Limits;
use crate::mux::{Mux, MuxEvent, Side};
use crate::path::PathStats;
use crate::seal::{Direction, Epoch, Opener, SealError, Sealer};
use crate::stream::{Read, StreamEvent};

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub side: Side,
    pub limits: Limits,
    /// The agent's secret: the key material of both directions.
    pub secret: Vec<u8>,
    /// What both ends bind their keys to besides the secret (the manager's id).
    pub context: Vec<u8>,
}

impl EndpointConfig {
    /// Either end of a link between an agent and manager `manager_id`: `secret` is the
    /// agent's.
    pub fn link(side: Side, secret: &str, manager_id: &str, limits: Limits) -> Self {
        Self {
            side,
            limits,
            secret: secret.as_bytes().to_vec(),
            context: manager_id.as_bytes().to_vec(),
        }
    }
}

/// A stream the peer opened, waiting to be accepted (and bridged) or refused.
pub struct Incoming {
    pub target: String,
    id: u32,
    commands: mpsc::Sender<Command>,
}

impl Incoming {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Takes the stream (the peer learns it now: see [`TunnelStream::established`]); bytes
    /// the peer sent meanwhile are waiting in it.
    pub async fn accept(self) -> Result<TunnelStream, TunnelError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Accept { id: self.id, reply })
            .await
            .map_err(|_| TunnelError::Stopped)?;
        answer.await.map_err(|_| TunnelError::Stopped)?
    }

    /// Refuses the stream; the peer's opener gets `reason`.
    pub async fn refuse(self, code: ResetCode, reason: &str) {
        let _ = self
            .commands
            .send(Command::Refuse {
                id: self.id,
                code,
                reason: reason.to_string(),
            })
            .await;
    }
}

enum Command {
    Open {
        target: String,
        reply: oneshot::Sender<Result<TunnelStream, TunnelError>>,
    },
    Accept {
        id: u32,
        reply: oneshot::Sender<Result<TunnelStream, TunnelError>>,
    },
    Refuse {
        id: u32,
        code: ResetCode,
        reason: String,
    },
    Stats {
        reply: oneshot::Sender<EndpointStats>,
    },
}

/// What an endpoint has done, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub open_streams: usize,
    /// Bytes the streams hold (send buffers, unread received bytes).
    pub buffered_bytes: usize,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Sealed bytes received and sent.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Packets refused: forged, replayed, of an older epoch, or malformed.
    pub packets_refused: u64,
    pub resets: HashMap<String, u64>,
    /// The path as this end measures it.
    pub path: PathStats,
    /// True once packets to the agent go on its tunnel filter (manager's end).
    pub wide: bool,
}

/// The application's handle on a running endpoint.
#[derive(Clone)]
pub struct Endpoint {
    commands: mpsc::Sender<Command>,
}

/// Takes a sealed packet without waiting, or gives it back when it has no room now. A packet
/// handed to a task that publishes it crosses one more task: tens of microseconds of a round
/// trip on a busy small box.
pub type DirectOut = Box<dyn FnMut(Vec<u8>) -> Result<(), Vec<u8>> + Send>;

/// The manager's second route to an agent: the agent's tunnel filter, whose broker log holds a
/// long path's bytes in flight (docs/protocol.md §16). The link starts on the agent's own
/// filter; while streams are open it probes the tunnel filter with a keepalive there, and
/// once one is answered (the agent subscribed on its first tunnel packet) and no open of this
/// end waits for its answer, every packet goes there and the in-flight cap rises to
/// [`Limits::wide_in_flight`].
pub struct WideRoute {
    /// Publishes a sealed packet on the tunnel filter's topic without waiting (a probe).
    pub probe: DirectOut,
    /// Set when the link switches: the publishers then use the tunnel filter's topic.
    pub switched: Arc<AtomicBool>,
}

/// Keepalive tokens with this bit probe the tunnel filter.
const WIDE_PROBE: u64 = 1 << 62;
/// Probes of the tunnel filter per link (and after each restart of the agent), one a second
/// while streams are open; an agent that never answers (it predates the tunnel filter) keeps
/// the link on its own filter.
const WIDE_PROBES: u32 = 30;
const WIDE_PROBE_EVERY: Duration = Duration::from_secs(1);
const WIDE_FIRST_PROBE: Duration = Duration::from_millis(250);

impl Endpoint {
    /// Starts the endpoint task. `packets_in` carries sealed packets from the peer,
    /// `packets_out` takes sealed packets to publish; `link_up` says whether the MQTT session
    /// is up. Streams the peer opens arrive on the returned receiver.
    pub fn spawn(
        cfg: EndpointConfig,
        packets_in: mpsc::Receiver<Vec<u8>>,
        packets_out: mpsc::Sender<Vec<u8>>,
        link_up: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), SealError> {
        Self::spawn_with(cfg, packets_in, packets_out, None, None, link_up)
    }

    /// [`Endpoint::spawn`] with a [`DirectOut`]: packets go there first, and to `packets_out`
    /// only when it has no room (or packets already wait there, so none overtakes another).
    pub fn spawn_with(
        cfg: EndpointConfig,
        packets_in: mpsc::Receiver<Vec<u8>>,
        packets_out: mpsc::Sender<Vec<u8>>,
        direct_out: Option<DirectOut>,
        wide: Option<WideRoute>,
        link_up: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), SealError> {
        let (send_dir, recv_dir) = match cfg.side {
            Side::Manager => (Direction::ToAgent, Direction::ToManager),
            Side::Agent => (Direction::ToManager, Direction::ToAgent),
        };
        let epoch = Epoch::new(verge_protocol::now_ms())?;
        let (commands, command_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(cfg.limits.max_streams.max(1));
        let (up_tx, up_rx) = mpsc::channel(1024);
        let (drained_tx, drained_rx) = mpsc::channel(cfg.limits.max_streams.max(1));
        let task = Task {
            mux: Mux::new(cfg.side, cfg.limits.mux()),
            sealer: Sealer::new(&cfg.secret, send_dir, &cfg.context, epoch),
            opener: Opener::new(&cfg.secret, recv_dir, &cfg.context),
            peer_seen: false,
            slots: HashMap::new(),
            pending_out: None,
            direct_out,
            commands: commands.clone(),
            incoming: incoming_tx,
            up_tx,
            drained_tx,
            limits: cfg.limits,
            down_since: None,
            stats: EndpointStats::default(),
            wide,
            wide_answered: false,
            wide_probes: 0,
            next_wide_probe: None,
        };
        tokio::spawn(task.run(
            packets_in,
            packets_out,
            link_up,
            command_rx,
            up_rx,
            drained_rx,
        ));
        Ok((Self { commands }, incoming))
    }

    /// Opens a stream to `target` on the peer. It may be written to at once (the peer holds a
    /// first window of bytes until it accepts); [`TunnelStream::established`] waits for the
    /// peer's answer.
    pub async fn open(&self, target: &str) -> Result<TunnelStream, TunnelError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Open {
                target: target.to_string(),
                reply,
            })
            .await
            .map_err(|_| TunnelError::Stopped)?;
        answer.await.map_err(|_| TunnelError::Stopped)?
    }

    pub async fn stats(&self) -> Result<EndpointStats, TunnelError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Stats { reply })
            .await
            .map_err(|_| TunnelError::Stopped)?;
        answer.await.map_err(|_| TunnelError::Stopped)
    }
}

/// The endpoint's side of one stream's bridge.
struct Slot {
    /// Bytes the bridge may queue upstream; topped up as the stream's send buffer frees.
    up_permits: Arc<Semaphore>,
    /// Permits handed out and not yet written into the stream.
    granted: usize,
    down: mpsc::Sender<Down>,
    /// Set when `down` was full: the bridge then reports (on the drained channel) that it
    /// took a chunk, and the stream is read again.
    wake_me: Arc<AtomicBool>,
    ended: bool,
}

struct Task {
    mux: Mux,
    sealer: Sealer,
    opener: Opener,
    peer_seen: bool,
    /// Streams handed to the application (accepted or opened here).
    slots: HashMap<u32, Slot>,
    pending_out: Option<Vec<u8>>,
    direct_out: Option<DirectOut>,
    commands: mpsc::Sender<Command>,
    incoming: mpsc::Sender<Incoming>,
    up_tx: mpsc::Sender<Up>,
    drained_tx: mpsc::Sender<u32>,
    limits: Limits,
    down_since: Option<Instant>,
    stats: EndpointStats,
    wide: Option<WideRoute>,
    /// A probe of the tunnel filter was answered.
    wide_answered: bool,
    wide_probes: u32,
    next_wide_probe: Option<Instant>,
}

impl Task {
    async fn run(
        mut self,
        mut packets_in: mpsc::Receiver<Vec<u8>>,
        packets_out: mpsc::Sender<Vec<u8>>,
        mut link_up: watch::Receiver<bool>,
        mut commands: mpsc::Receiver<Command>,
        mut up: mpsc::Receiver<Up>,
        mut drained: mpsc::Receiver<u32>,
    ) {
        let mut link_open = true;
        loop {
            self.drive_wide();
            self.fill_pending_out();
            self.send_direct(&packets_out);
            let deadline = self
                .mux
                .poll_timeout()
                .map(Instant::from_std)
                .into_iter()
                .chain(self.down_since.map(|t| t + self.limits.resume))
                .chain(self.wide_probe_due())
                .min();
            tokio::select! {
                permit = packets_out.reserve(), if self.pending_out.is_some() => {
                    let Ok(permit) = permit else { break };
                    if let Some(packet) = self.pending_out.take() {
                        self.stats.packets_out += 1;
                        self.stats.bytes_out += packet.len() as u64;
                        permit.send(packet);
                    }
                }
                packet = packets_in.recv() => {
                    let Some(packet) = packet else { break };
                    self.on_packet(&packet);
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.on_command(command);
                }
                Some(chunk) = up.recv() => self.on_up(chunk),
                Some(id) = drained.recv() => self.pump_down(id),
                changed = link_up.changed(), if link_open => {
                    if changed.is_err() {
                        link_open = false;
                        continue;
                    }
                    let up = *link_up.borrow_and_update();
                    self.on_link(up);
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    let resume = self.limits.resume;
                    if self.down_since.is_some_and(|t| now >= t + resume) {
                        self.down_since = None;
                        let why = format!("the MQTT link was down longer than {resume:?}");
                        tracing::warn!(streams = self.mux.len(), "tunnel link lost: {why}");
                        self.mux.reset_all(ResetCode::LinkLost, &why);
                    }
                    self.mux.handle_timeout(now.into_std());
                }
            }
            self.after_input();
        }
        // Stopped: every bridge learns it.
        for (_, slot) in self.slots.drain() {
            let _ = slot.down.try_send(Down::Reset {
                code: ResetCode::LinkLost,
                reason: "the tunnel endpoint stopped".into(),
            });
        }
    }

    /// When the next probe of the tunnel filter is due, while probing.
    fn wide_probe_due(&self) -> Option<Instant> {
        let probing = self
            .wide
            .as_ref()
            .is_some_and(|w| !w.switched.load(Ordering::Acquire))
            && !self.wide_answered
            && self.wide_probes < WIDE_PROBES
            && !self.mux.is_empty();
        probing.then(|| {
            self.next_wide_probe
                .unwrap_or_else(|| Instant::now() + WIDE_FIRST_PROBE)
        })
    }

    /// Probes the tunnel filter, and switches to it once a probe was answered.
    fn drive_wide(&mut self) {
        let Some(wide) = &mut self.wide else {
            return;
        };
        if wide.switched.load(Ordering::Acquire) {
            return;
        }
        if self.wide_answered {
            // An open on the old route must not be overtaken by its stream's data on the new.
            if !self.mux.opens_pending() {
                wide.switched.store(true, Ordering::Release);
                self.mux.set_max_in_flight(self.limits.wide_in_flight);
                tracing::info!(
                    in_flight = self.limits.wide_in_flight,
                    "tunnel link moved to the agent's tunnel filter"
                );
            }
            return;
        }
        let now = Instant::now();
        if self.mux.is_empty() || self.wide_probes >= WIDE_PROBES {
            return;
        }
        let Some(due) = self.next_wide_probe else {
            // The agent subscribes on our first packet: a probe sent with it would arrive
            // before the subscription.
            self.next_wide_probe = Some(now + WIDE_FIRST_PROBE);
            return;
        };
        if now < due {
            return;
        }
        self.wide_probes += 1;
        self.next_wide_probe = Some(now + WIDE_PROBE_EVERY);
        let mut frames = Vec::new();
        Frame::Keepalive {
            token: WIDE_PROBE | u64::from(self.wide_probes),
            reply: false,
        }
        .encode(&mut frames);
        match self.sealer.seal(&frames) {
            // Lost when the client has no room: the next probe goes a second later.
            Ok(packet) => {
                let _ = (wide.probe)(packet);
            }
            Err(e) => tracing::error!(error = %e, "cannot seal a tunnel probe"),
        }
    }

    /// The peer restarted: it listens on its own filter only until our packets reach it.
    fn wide_restart(&mut self) {
        if let Some(wide) = &self.wide {
            wide.switched.store(false, Ordering::Release);
            self.mux.set_max_in_flight(self.limits.max_in_flight);
        }
        self.wide_answered = false;
        self.wide_probes = 0;
        self.next_wide_probe = None;
    }

    /// Publishes what it can through `direct_out`, while `packets_out` is empty (so no packet
    /// overtakes one queued there). Bounded: the mux stops producing at its in-flight cap.
    fn send_direct(&mut self, packets_out: &mpsc::Sender<Vec<u8>>) {
        let Some(mut direct) = self.direct_out.take() else {
            return;
        };
        while packets_out.capacity() == packets_out.max_capacity() {
            let Some(packet) = self.pending_out.take() else {
                break;
            };
            let len = packet.len() as u64;
            match direct(packet) {
                Ok(()) => {
                    self.stats.packets_out += 1;
                    self.stats.bytes_out += len;
                    self.fill_pending_out();
                }
                // Given back empty: lost (the client is gone); what it carried is resent.
                Err(packet) if packet.is_empty() => self.fill_pending_out(),
                Err(packet) => {
                    self.pending_out = Some(packet);
                    break;
                }
            }
        }
        self.direct_out = Some(direct);
    }

    fn fill_pending_out(&mut self) {
        if self.pending_out.is_some() {
            return;
        }
        if let Some(frames) = self.mux.poll_packet(Instant::now().into_std()) {
            match self.sealer.seal(&frames) {
                Ok(packet) => self.pending_out = Some(packet),
                Err(e) => tracing::error!(error = %e, "cannot seal a tunnel packet"),
            }
        }
        self.collect_events();
    }

    fn on_link(&mut self, up: bool) {
        if up {
            if self.down_since.take().is_some() {
                tracing::info!(
                    streams = self.mux.len(),
                    "tunnel link back; resuming streams"
                );
            }
            self.mux.resume(Instant::now().into_std());
        } else if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
        }
    }

    fn on_packet(&mut self, packet: &[u8]) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        let (frames, new_epoch) = match self.opener.open(packet) {
            Ok(opened) => opened,
            Err(e) => {
                self.stats.packets_refused += 1;
                tracing::warn!(error = %e, "tunnel packet refused");
                return;
            }
        };
        if new_epoch && self.peer_seen {
            // The peer restarted: the streams it had are gone on its side.
            tracing::info!(
                streams = self.mux.len(),
                "tunnel peer restarted; resetting its streams"
            );
            self.mux
                .reset_all(ResetCode::LinkLost, "the other end restarted");
            self.wide_restart();
            self.collect_events();
        }
        self.peer_seen = true;
        if let Err(e) = self.mux.handle_packet(&frames, Instant::now().into_std()) {
            self.stats.packets_refused += 1;
            tracing::warn!(error = %e, "tunnel packet with a malformed frame refused");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Open { target, reply } => {
                let result = match self.mux.open(&target) {
                    Ok(id) => Ok(self.bridge(id)),
                    Err(e) => Err(TunnelError::Open(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::Accept { id, reply } => {
                let result = if !self.slots.contains_key(&id) && self.mux.accept(id) {
                    Ok(self.bridge(id))
                } else {
                    Err(TunnelError::Reset {
                        code: ResetCode::Aborted,
                        reason: "the stream ended before it was accepted".into(),
                    })
                };
                let _ = reply.send(result);
                self.pump_down(id);
            }
            Command::Refuse { id, code, reason } => {
                tracing::info!(stream = id, %code, %reason, "tunnel stream refused");
                self.count_reset(code);
                self.mux.refuse(id, code, &reason);
            }
            Command::Stats { reply } => {
                self.stats.open_streams = self.mux.len();
                self.stats.buffered_bytes = self.mux.buffered();
                self.stats.path = self.mux.path().stats();
                self.stats.wide = self
                    .wide
                    .as_ref()
                    .is_some_and(|w| w.switched.load(Ordering::Acquire));
                let _ = reply.send(self.stats.clone());
            }
        }
    }

    /// A slot and the application's handle for stream `id`.
    fn bridge(&mut self, id: u32) -> TunnelStream {
        let room = self.mux.stream(id).map_or(0, |s| s.write_room());
        let up_permits = Arc::new(Semaphore::new(room));
        let (down_tx, down_rx) = mpsc::channel(self.limits.down_chunks);
        let wake_me = Arc::new(AtomicBool::new(false));
        self.slots.insert(
            id,
            Slot {
                up_permits: up_permits.clone(),
                granted: room,
                down: down_tx,
                wake_me: wake_me.clone(),
                ended: false,
            },
        );
        TunnelStream::new(
            id,
            up_permits,
            self.up_tx.clone(),
            down_rx,
            wake_me,
            self.drained_tx.clone(),
        )
    }

    fn on_up(&mut self, up: Up) {
        match up {
            Up::Bytes { id, bytes } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return;
                };
                slot.granted = slot.granted.saturating_sub(bytes.len());
                if let Some(stream) = self.mux.stream(id) {
                    // Never short: the bridge held permits for these bytes.
                    let _ = stream.write(&bytes);
                }
            }
            Up::Finish { id } => {
                if let Some(stream) = self.mux.stream(id) {
                    let _ = stream.finish();
                }
            }
            Up::Abort { id, reason } => {
                self.count_reset(ResetCode::Aborted);
                self.mux.refuse(id, ResetCode::Aborted, &reason);
                self.slots.remove(&id);
            }
        }
    }

    fn after_input(&mut self) {
        self.collect_events();
        // Grant bridges the send buffer that acks freed.
        for (id, slot) in &mut self.slots {
            if let Some(stream) = self.mux.stream(*id) {
                let room = stream.write_room();
                if room > slot.granted {
                    slot.up_permits.add_permits(room - slot.granted);
                    slot.granted = room;
                }
            }
        }
    }

    fn collect_events(&mut self) {
        while let Some(event) = self.mux.poll_event() {
            match event {
                MuxEvent::Opened { stream, target } => {
                    let incoming = Incoming {
                        target,
                        id: stream,
                        commands: self.commands.clone(),
                    };
                    if self.incoming.try_send(incoming).is_err() {
                        self.mux.refuse(
                            stream,
                            ResetCode::TooManyStreams,
                            "the endpoint is not accepting",
                        );
                    }
                }
                MuxEvent::Stream {
                    stream,
                    event: StreamEvent::Established,
                } => {
                    // First on the channel: nothing is readable before the peer's first frame.
                    if let Some(slot) = self.slots.get(&stream) {
                        let _ = slot.down.try_send(Down::Established);
                    }
                }
                MuxEvent::Stream {
                    stream,
                    event: StreamEvent::Readable,
                } => self.pump_down(stream),
                MuxEvent::Stream {
                    stream,
                    event: StreamEvent::Reset { code, reason },
                } => {
                    self.count_reset(code);
                    if let Some(slot) = self.slots.remove(&stream) {
                        let _ = slot.down.try_send(Down::Reset { code, reason });
                    }
                }
                MuxEvent::Stream {
                    event: StreamEvent::Writable,
                    ..
                } => {}
                MuxEvent::Closed { stream } => {
                    self.slots.remove(&stream);
                }
                MuxEvent::Pong { token } => {
                    if token & WIDE_PROBE != 0 {
                        self.wide_answered = true;
                    }
                }
            }
        }
    }

    fn count_reset(&mut self, code: ResetCode) {
        *self
            .stats
            .resets
            .entry(code.as_str().to_string())
            .or_default() += 1;
    }

    /// Moves stream `id`'s readable bytes to its bridge while the bridge's channel has room.
    fn pump_down(&mut self, id: u32) {
        let chunk = self.limits.chunk;
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(stream) = self.mux.stream(id) else {
            return;
        };
        while !slot.ended {
            let permit = match slot.down.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => {
                    // Ask the bridge to say when it has drained some, then look once more:
                    // it may have drained between the two, before it could see the request.
                    slot.wake_me.store(true, Ordering::Release);
                    match slot.down.try_reserve() {
                        Ok(permit) => permit,
                        Err(_) => return,
                    }
                }
                Err(mpsc::error::TrySendError::Closed(())) => return,
            };
            let mut buf = vec![0u8; chunk.min(stream.readable().max(1))];
            match stream.read(&mut buf) {
                Ok(Read::Bytes(n)) => {
                    buf.truncate(n);
                    permit.send(Down::Bytes(buf));
                }
                Ok(Read::End) => {
                    permit.send(Down::End);
                    slot.ended = true;
                }
                Ok(Read::Blocked) | Err(_) => return,
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
