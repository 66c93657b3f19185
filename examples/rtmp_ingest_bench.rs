//! Benchmark of the agent's RTMP ingest, against plain TCP on loopback as the baseline.
//!
//! ```text
//! cargo run --release --example rtmp_ingest_bench -- [--seconds 5] [--max-publishers 512]
//! ```
//!
//! Every publisher sends 4 Mbit/s of H.264-shaped video: 25 fps, a keyframe every 50 frames
//! (five times the size of an inter frame, which is about 18.5 KB), paced by the wall clock
//! (each frame is written at its due time). Independent cameras do not line up: publisher `i`
//! of `n` starts `i/n` of a GOP (2 s) after the first, so frames and keyframes are spread
//! evenly, and only frames due after that warm-up, in the next `--seconds`, are measured.
//! Each frame carries, right after its 5-byte FLV video header, the monotonic nanoseconds at
//! which the publisher started writing it (then the time it was due); the receiving end
//! subtracts the first from its own clock. Both ends are in this process: one clock.
//!
//! Two routes carry the same frames:
//! - **agent RTMP**: a real RTMP publisher (plain handshake, `connect`, `createStream`,
//!   `publish`, chunk size 4096) into `verge_agent::rtmp::serve`; a hub `Reader` subscribed in
//!   this process drains the stream. Latency is "message written" → "frame out of the reader".
//! - **direct TCP** (the baseline): the same payloads, length-prefixed, over a plain socket to a
//!   task that reads them back. The difference between the two is what RTMP parsing, the
//!   session and the hub add.
//!
//! The receiving side (server, and the hub readers) runs on a `current_thread` runtime in a
//! thread of its own, i.e. on one core; the publishers run on another `current_thread` runtime
//! on the main thread. A fresh server is started for every measurement.
//!
//! How to read the output:
//! 1. *Added latency*: one publisher for three times `--seconds`; p50/p99/max per frame,
//!    agent RTMP next to direct TCP. The agent runs with `RtmpSettings::default()`.
//! 2. *Ingest capacity on one core*: 8, 16, 32 … up to `--max-publishers` publishers, each step
//!    for `--seconds`. "achieved" counts the bytes that reached the readers no later than
//!    200 ms after the measured window closed; a step is **late** when fewer than 95 % of the
//!    offered bytes made it, when p99 latency is over 200 ms, when publishers had to start a
//!    frame more than 200 ms after its due time (p99 send lag: the server pushed back, or the
//!    publishers' own core was full; the baseline column tells which), or when publishers could
//!    not connect. Capacity is the largest step that was not late; once a route is late its
//!    larger steps are skipped. "core %" is the CPU time of the server thread and of the
//!    publishers' thread over the measured window (from `/proc/self/task/*/stat`), "RSS" the
//!    whole process's at the end of the window (the baseline's RSS is the part that is not
//!    the agent's: publishers, sockets' user buffers, the benchmark itself). For this run
//!    the agent's `max_connections` (256 by default) is raised to `--max-publishers` so that
//!    the limit measured is the core, not the setting.
//! 3. *RSS* of this process (the agent's server lives in it) before and after the capacity run.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at};
use verge_agent::rtmp::{RtmpSettings, serve};
use verge_media::amf0::{self, Amf0Value};
use verge_media::codec::avc;
use verge_media::flv::tag::{self, FrameType, VideoPacket};
use verge_media::hub::{Hub, HubConfig, Reader};
use verge_media::rtmp::chunk::{ChunkDecoder, ChunkEncoder, Message};
use verge_media::rtmp::message::{self, Control};
use verge_testkit::measure::numeric_flags;

const FPS: u32 = 25;
const FRAME_INTERVAL: Duration = Duration::from_millis(40);
/// Frames from one keyframe to the next.
const GOP: u32 = 50;
const BITRATE: u64 = 4_000_000;
/// A keyframe is this many times the size of an inter frame.
const KEY_RATIO: u64 = 5;
/// Where the send time sits in a frame: right after the FLV video header.
const STAMP_AT: usize = 5;
/// Where the time the frame was due sits, after the send time.
const DUE_AT: usize = STAMP_AT + 8;
const CHUNK_SIZE: u32 = 4096;
/// A minimal AVCDecoderConfigurationRecord: Baseline, one SPS, one PPS.
const AVC_CONFIG: [u8; 26] = [
    0x01, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0x00, 0x0b, 0x67, 0x42, 0xc0, 0x1e, 0x8c, 0x68, 0x14, 0x1f,
    0x20, 0x0d, 0x08, 0x01, 0x00, 0x04, 0x68, 0xce, 0x3c, 0x80,
];

/// Beyond this a frame is late: p99 latency, p99 send lag, and the slack for "achieved".
const LATE: Duration = Duration::from_millis(200);
/// Below this share of the offered bytes a step is late.
const MIN_DELIVERED: f64 = 0.95;
/// Bound on connecting and publishing, per publisher.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one write; a publisher blocked longer gives up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishers start one after the other over this time (one GOP); then measuring begins.
const WARM_UP: Duration = Duration::from_secs(2);
/// After the measured window: how long receivers may still drain, and publishers may be late.
const GRACE: Duration = Duration::from_secs(3);
/// Server messages read while waiting for one command reply.
const MAX_REPLY_MESSAGES: usize = 64;
/// Linux's USER_HZ: the unit of utime/stime in /proc.
const CLOCK_TICKS: f64 = 100.0;

// ---------------------------------------------------------------- arguments

struct Args {
    seconds: u32,
    max_publishers: usize,
}

fn parse_args() -> Args {
    let [seconds, max_publishers] = numeric_flags(
        "rtmp_ingest_bench",
        [("--seconds", 5), ("--max-publishers", 512)],
    );
    let args = Args {
        seconds: seconds as u32,
        max_publishers: max_publishers as usize,
    };
    assert!(
        args.seconds > 0 && args.max_publishers > 0,
        "both must be positive"
    );
    args
}

/// 8, 16, 32 … and `max` itself.
fn steps(max: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = std::iter::successors(Some(8), |n| Some(n * 2))
        .take_while(|&n| n <= max)
        .collect();
    if steps.last() != Some(&max) {
        steps.push(max);
    }
    steps
}

// ---------------------------------------------------------------- clock and /proc

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Monotonic nanoseconds since the benchmark started: the stamp in every frame.
fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn ns_at(instant: Instant) -> u64 {
    instant.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The kernel's id of the calling thread.
fn thread_id() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// User plus system CPU ticks used so far by thread `tid` of this process.
fn cpu_ticks(tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A line of /proc/self/status in MiB (`VmRSS`, `VmHWM`).
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------- the media

/// The byte patterns every publisher sends; only the stamp changes from frame to frame.
struct Frames {
    key: Bytes,
    inter: Bytes,
}

impl Frames {
    fn new() -> Self {
        let gop_bytes = BITRATE / 8 * u64::from(GOP) / u64::from(FPS);
        let inter = (gop_bytes / (KEY_RATIO + u64::from(GOP) - 1)) as usize;
        Self {
            key: nalu_tag(true, inter * KEY_RATIO as usize),
            inter: nalu_tag(false, inter),
        }
    }

    fn template(&self, index: u32) -> &Bytes {
        if index.is_multiple_of(GOP) {
            &self.key
        } else {
            &self.inter
        }
    }

    fn len(&self, index: u32) -> u64 {
        self.template(index).len() as u64
    }

    /// Frame `index`, stamped with the time its write starts and the time it was due.
    fn payload(&self, index: u32, sent_ns: u64, due_ns: u64) -> Bytes {
        let mut payload = BytesMut::from(&self.template(index)[..]);
        payload[STAMP_AT..STAMP_AT + 8].copy_from_slice(&sent_ns.to_be_bytes());
        payload[DUE_AT..DUE_AT + 8].copy_from_slice(&due_ns.to_be_bytes());
        payload.freeze()
    }
}

/// An AVC NALU video tag body of `len` bytes: key or inter frame, composition time 0.
fn nalu_tag(keyframe: bool, len: usize) -> Bytes {
    let mut body = vec![0xA5; len];
    body[..STAMP_AT].copy_from_slice(&[if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
    Bytes::from(body)
}

fn sequence_header() -> Bytes {
    let mut body = vec![0x17, 0, 0, 0, 0];
    body.extend_from_slice(&AVC_CONFIG);
    Bytes::from(body)
}

/// Fails early if the agent would refuse what the publishers are about to send.
fn check_media(frames: &Frames) {
    let header = tag::parse_video(&sequence_header()).expect("the sequence header is a video tag");
    assert_eq!(header.packet, VideoPacket::SequenceHeader);
    avc::parse_avc_config(&header.data).expect("AVC_CONFIG is a valid decoder configuration");
    for (bytes, kind) in [
        (&frames.key, FrameType::Key),
        (&frames.inter, FrameType::Inter),
    ] {
        let parsed = tag::parse_video(bytes).expect("the frames are video tags");
        assert_eq!(
            (parsed.frame_type, parsed.packet, parsed.composition_time),
            (kind, VideoPacket::Nalu, 0)
        );
    }
}

// ---------------------------------------------------------------- what the receivers saw

#[derive(Debug, Clone, Copy)]
struct Sample {
    due_ns: u64,
    arrived_ns: u64,
    latency_ns: u64,
    len: usize,
}

/// One stream as its receiver saw it.
#[derive(Default)]
struct Received {
    samples: Vec<Sample>,
    /// Frames the hub dropped because the reader fell behind.
    dropped: u64,
}

impl Received {
    fn record(&mut self, payload: &[u8]) {
        let stamp = |at: usize| {
            let bytes = payload.get(at..at + 8)?;
            Some(u64::from_be_bytes(bytes.try_into().ok()?))
        };
        let (Some(sent_ns), Some(due_ns)) = (stamp(STAMP_AT), stamp(DUE_AT)) else {
            return;
        };
        let arrived_ns = now_ns();
        self.samples.push(Sample {
            due_ns,
            arrived_ns,
            latency_ns: arrived_ns.saturating_sub(sent_ns),
            len: payload.len(),
        });
    }
}

/// Drains a hub reader until the stream ends or `limit` passes.
async fn drain_hub(mut reader: Reader, limit: Duration, reports: mpsc::UnboundedSender<Received>) {
    let mut received = Received::default();
    let _ = timeout(limit, async {
        while let Some(frame) = reader.recv().await {
            if !frame.is_sequence_header() {
                received.record(&frame.payload);
            }
        }
    })
    .await;
    received.dropped = reader.dropped();
    let _ = reports.send(received);
}

/// The baseline's server: accepts connections and reads length-prefixed frames back.
async fn serve_tcp(
    listener: TcpListener,
    limit: Duration,
    reports: mpsc::UnboundedSender<Received>,
) {
    // Runs until the server is stopped.
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                tokio::spawn(read_tcp(socket, limit, reports.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn read_tcp(socket: TcpStream, limit: Duration, reports: mpsc::UnboundedSender<Received>) {
    let mut received = Received::default();
    let mut reader = BufReader::with_capacity(64 * 1024, socket);
    let mut frame = Vec::new();
    let _ = timeout(limit, async {
        while let Ok(len) = reader.read_u32().await {
            frame.resize(len.min(1 << 24) as usize, 0);
            if reader.read_exact(&mut frame).await.is_err() {
                break;
            }
            received.record(&frame);
        }
    })
    .await;
    let _ = reports.send(received);
}

// ---------------------------------------------------------------- the receiving side

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    AgentRtmp,
    DirectTcp,
}

/// What a publisher needs to reach the server and hand its stream to a reader.
#[derive(Clone)]
struct Target {
    route: Route,
    addr: SocketAddr,
    hub: Arc<Hub>,
    server: Handle,
    reports: mpsc::UnboundedSender<Received>,
    /// How long a receiver may run.
    limit: Duration,
}

/// The receiving side on a one-thread runtime of its own.
struct Server {
    target: Target,
    tid: Option<u32>,
    reports: mpsc::UnboundedReceiver<Received>,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Server {
    fn start(route: Route, settings: RtmpSettings, limit: Duration) -> Self {
        // The capacity steps go far beyond an agent's configured pub_max/sub_max.
        let hub = Arc::new(Hub::new(HubConfig {
            max_streams: usize::MAX,
            max_readers: usize::MAX,
            ..HubConfig::default()
        }));
        let (report_tx, reports) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn({
                let (hub, report_tx) = (hub.clone(), report_tx.clone());
                move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime for the server");
                    runtime.block_on(async move {
                        let listener = TcpListener::bind("127.0.0.1:0")
                            .await
                            .expect("bind 127.0.0.1:0");
                        let addr = listener.local_addr().expect("the listener's address");
                        let _ = ready_tx.send((addr, Handle::current(), thread_id()));
                        let serving = async move {
                            match route {
                                Route::AgentRtmp => serve(listener, hub, settings).await,
                                Route::DirectTcp => serve_tcp(listener, limit, report_tx).await,
                            }
                        };
                        tokio::select! {
                            () = serving => {}
                            _ = stopped => {}
                        }
                    });
                }
            })
            .expect("spawn the server thread");
        let (addr, server, tid) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the server thread binds its listener");
        Self {
            target: Target {
                route,
                addr,
                hub,
                server,
                reports: report_tx,
                limit,
            },
            tid,
            reports,
            stop,
            thread,
        }
    }

    /// Stops serving; dropping the runtime ends every connection and reader left.
    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().expect("the server thread ends cleanly");
    }
}

// ---------------------------------------------------------------- publishers

/// A publisher's open connection, ready for frames.
enum Link {
    Rtmp {
        writer: OwnedWriteHalf,
        encoder: ChunkEncoder,
        stream_id: u32,
        out: BytesMut,
    },
    Tcp {
        socket: TcpStream,
        out: BytesMut,
    },
}

impl Link {
    async fn open(target: &Target, index: usize) -> io::Result<Self> {
        let mut socket = TcpStream::connect(target.addr).await?;
        socket.set_nodelay(true)?;
        match target.route {
            Route::DirectTcp => Ok(Link::Tcp {
                socket,
                out: BytesMut::new(),
            }),
            Route::AgentRtmp => {
                handshake(&mut socket).await?;
                publish(socket, target, &format!("bench-{index}")).await
            }
        }
    }

    async fn send(&mut self, index: u32, payload: Bytes) -> io::Result<()> {
        match self {
            Link::Rtmp {
                writer,
                encoder,
                stream_id,
                out,
            } => {
                out.clear();
                encoder.encode(&video(*stream_id, index * 40, payload), out);
                writer.write_all(out).await
            }
            Link::Tcp { socket, out } => {
                out.clear();
                out.put_u32(payload.len() as u32);
                out.extend_from_slice(&payload);
                socket.write_all(out).await
            }
        }
    }

    /// Ends the stream: the receiver drains what it has and reports.
    async fn close(self) {
        let _ = match self {
            Link::Rtmp { mut writer, .. } => timeout(WRITE_TIMEOUT, writer.shutdown()).await,
            Link::Tcp { mut socket, .. } => timeout(WRITE_TIMEOUT, socket.shutdown()).await,
        };
    }
}

fn video(stream_id: u32, timestamp: u32, payload: Bytes) -> Message {
    Message {
        csid: message::CSID_VIDEO,
        timestamp,
        type_id: message::VIDEO,
        stream_id,
        payload,
    }
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// The plain handshake: C0 C1 (version 3, zero time, zero version, zero filler), S0 S1 S2 back,
/// C2 = S1.
async fn handshake(socket: &mut TcpStream) -> io::Result<()> {
    let mut c0c1 = vec![0u8; 1 + 1536];
    c0c1[0] = 3;
    socket.write_all(&c0c1).await?;
    let mut s0s1s2 = vec![0u8; 1 + 2 * 1536];
    socket.read_exact(&mut s0s1s2).await?;
    if s0s1s2[0] != 3 {
        return Err(invalid(format!("S0 is version {}", s0s1s2[0])));
    }
    socket.write_all(&s0s1s2[1..1537]).await
}

/// `connect`, `createStream`, `publish`; once the server says `NetStream.Publish.Start`, a hub
/// reader joins the stream on the server's runtime and the sequence header goes out.
async fn publish(socket: TcpStream, target: &Target, name: &str) -> io::Result<Link> {
    let (mut reader, mut writer) = socket.into_split();
    let mut inbox = Inbox::new();
    let mut encoder = ChunkEncoder::new();
    let mut out = BytesMut::new();
    encoder.encode(
        &message::control_message(Control::SetChunkSize(CHUNK_SIZE)),
        &mut out,
    );
    encoder.set_chunk_size(CHUNK_SIZE);
    let tc_url = format!("rtmp://{}/live", target.addr);
    let app = Amf0Value::object([
        ("app", Amf0Value::string("live")),
        ("type", Amf0Value::string("nonprivate")),
        ("tcUrl", Amf0Value::string(tc_url)),
    ]);
    command(&mut encoder, &mut out, 0, "connect", 1.0, &[app]);
    command(
        &mut encoder,
        &mut out,
        0,
        "createStream",
        2.0,
        &[Amf0Value::Null],
    );
    writer.write_all(&out).await?;

    let created = inbox.command(&mut reader, "_result", Some(2.0)).await?;
    let stream_id = created
        .get(3)
        .and_then(Amf0Value::as_number)
        .ok_or_else(|| invalid("createStream's _result has no stream id"))?
        as u32;
    out.clear();
    let args = [
        Amf0Value::Null,
        Amf0Value::string(name),
        Amf0Value::string("live"),
    ];
    command(&mut encoder, &mut out, stream_id, "publish", 3.0, &args);
    writer.write_all(&out).await?;

    let status = inbox.command(&mut reader, "onStatus", None).await?;
    let code = status
        .get(3)
        .and_then(|info| info.get("code"))
        .and_then(Amf0Value::as_str);
    if code != Some("NetStream.Publish.Start") {
        return Err(invalid(format!("publish answered {code:?}")));
    }
    let hub_reader = target
        .hub
        .subscribe(&format!("live/{name}"))
        .map_err(|e| invalid(format!("live/{name}: {e}")))?;
    target
        .server
        .spawn(drain_hub(hub_reader, target.limit, target.reports.clone()));
    tokio::spawn(discard(reader, target.limit));

    out.clear();
    encoder.encode(&video(stream_id, 0, sequence_header()), &mut out);
    writer.write_all(&out).await?;
    Ok(Link::Rtmp {
        writer,
        encoder,
        stream_id,
        out,
    })
}

fn command(
    encoder: &mut ChunkEncoder,
    out: &mut BytesMut,
    stream_id: u32,
    name: &str,
    txn: f64,
    args: &[Amf0Value],
) {
    let mut payload = Vec::new();
    amf0::encode(&Amf0Value::string(name), &mut payload);
    amf0::encode(&Amf0Value::Number(txn), &mut payload);
    for arg in args {
        amf0::encode(arg, &mut payload);
    }
    let msg = Message {
        csid: message::CSID_COMMAND,
        timestamp: 0,
        type_id: message::COMMAND_AMF0,
        stream_id,
        payload: Bytes::from(payload),
    };
    encoder.encode(&msg, out);
}

/// Reads what the server sends after the publish (acknowledgements, if any) so that it never
/// blocks on a full socket.
async fn discard(mut reader: OwnedReadHalf, limit: Duration) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = timeout(limit, async {
        while let Ok(n) = reader.read(&mut buf).await
            && n > 0
        {}
    })
    .await;
}

/// The server's messages, decoded.
struct Inbox {
    decoder: ChunkDecoder,
    buf: BytesMut,
}

impl Inbox {
    fn new() -> Self {
        Self {
            decoder: ChunkDecoder::new(1 << 20),
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The values of the next command called `name` (with transaction id `txn`, if given),
    /// applying the server's Set Chunk Size on the way.
    async fn command(
        &mut self,
        reader: &mut OwnedReadHalf,
        name: &str,
        txn: Option<f64>,
    ) -> io::Result<Vec<Amf0Value>> {
        for _ in 0..MAX_REPLY_MESSAGES {
            let msg = self.next(reader).await?;
            if let Some(Ok(Control::SetChunkSize(size))) =
                message::parse_control(msg.type_id, &msg.payload)
            {
                self.decoder
                    .set_chunk_size(size)
                    .map_err(|e| invalid(e.to_string()))?;
                continue;
            }
            if msg.type_id != message::COMMAND_AMF0 {
                continue;
            }
            let values = amf0::decode_all(&msg.payload).map_err(|e| invalid(e.to_string()))?;
            let named = values.first().and_then(Amf0Value::as_str) == Some(name);
            let numbered =
                txn.is_none_or(|t| values.get(1).and_then(Amf0Value::as_number) == Some(t));
            if named && numbered {
                return Ok(values);
            }
        }
        Err(invalid(format!(
            "no {name} in {MAX_REPLY_MESSAGES} messages"
        )))
    }

    /// The next message; every read either completes one or adds bytes, until EOF.
    async fn next(&mut self, reader: &mut OwnedReadHalf) -> io::Result<Message> {
        loop {
            if let Some(msg) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| invalid(e.to_string()))?
            {
                return Ok(msg);
            }
            self.buf.reserve(16 * 1024);
            if reader.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server hung up",
                ));
            }
        }
    }
}

/// What one publisher managed to send.
#[derive(Default)]
struct Sent {
    /// Per frame: how long after its due time the write started.
    lags_ns: Vec<u64>,
    error: Option<String>,
}

/// The measured part of a run: from the end of the warm-up for `--seconds`.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn holds(&self, due_ns: u64) -> bool {
        (ns_at(self.start)..ns_at(self.end)).contains(&due_ns)
    }
}

/// When publisher `index` of `publishers` sends: from its start, spread over the warm-up, one
/// frame every 40 ms until the window ends.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    count: u32,
    window: Window,
}

impl Schedule {
    fn new(window: Window, index: usize, publishers: usize) -> Self {
        let start = window.start - WARM_UP + WARM_UP * index as u32 / publishers.max(1) as u32;
        let span = window.end.saturating_duration_since(start).as_nanos();
        Self {
            start,
            count: span.div_ceil(FRAME_INTERVAL.as_nanos()) as u32,
            window,
        }
    }

    fn due(&self, index: u32) -> Instant {
        self.start + FRAME_INTERVAL * index
    }

    /// Bytes this publisher offers inside the window.
    fn offered(&self, frames: &Frames) -> u64 {
        (0..self.count)
            .filter(|&i| self.window.holds(ns_at(self.due(i))))
            .map(|i| frames.len(i))
            .sum()
    }
}

/// Sends the schedule's frames, each at its due time, then closes.
async fn pace(mut link: Link, frames: Arc<Frames>, schedule: Schedule) -> Sent {
    let mut sent = Sent::default();
    let give_up = schedule.window.end + GRACE;
    for index in 0..schedule.count {
        let due = schedule.due(index);
        sleep_until(due.into()).await;
        let now = Instant::now();
        if now > give_up {
            let behind = schedule.count - index;
            sent.error = Some(format!("{behind} frames behind schedule"));
            break;
        }
        if schedule.window.holds(ns_at(due)) {
            sent.lags_ns.push((now - due).as_nanos() as u64);
        }
        let payload = frames.payload(index, now_ns(), ns_at(due));
        match timeout(WRITE_TIMEOUT, link.send(index, payload)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                sent.error = Some(format!("write: {e}"));
                break;
            }
            Err(_) => {
                sent.error = Some(format!("a write blocked for {WRITE_TIMEOUT:?}"));
                break;
            }
        }
    }
    link.close().await;
    sent
}

// ---------------------------------------------------------------- one measurement

/// Everything one run of `publishers` publishers for `seconds` produced.
struct Outcome {
    seconds: u32,
    offered_bytes: u64,
    window: Window,
    sent: Vec<Sent>,
    received: Vec<Received>,
    setup_failures: Vec<String>,
    usage: Usage,
}

fn measure(route: Route, publishers: usize, seconds: u32, settings: RtmpSettings) -> Outcome {
    let measured = Duration::from_secs(u64::from(seconds));
    let limit = SETUP_TIMEOUT + WARM_UP + measured + 2 * GRACE;
    let mut server = Server::start(route, settings, limit);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for the publishers");
    let outcome = runtime.block_on(drive(&mut server, publishers, seconds));
    drop(runtime);
    server.stop();
    outcome
}

async fn drive(server: &mut Server, publishers: usize, seconds: u32) -> Outcome {
    let frames = Arc::new(Frames::new());
    let (links, setup_failures) = open_all(&server.target, publishers).await;
    let opened = links.len();

    let start = Instant::now() + WARM_UP + Duration::from_millis(200);
    let window = Window {
        start,
        end: start + FRAME_INTERVAL * seconds * FPS,
    };
    let schedules: Vec<Schedule> = (0..publishers)
        .map(|i| Schedule::new(window, i, publishers))
        .collect();
    let mut pacing = JoinSet::new();
    for (link, schedule) in links.into_iter().zip(&schedules) {
        pacing.spawn(pace(link, frames.clone(), *schedule));
    }
    let usage = Usage::over(window, server.tid).await;
    let sent = join_all(pacing, window.end + GRACE + WRITE_TIMEOUT).await;
    let received = collect(&mut server.reports, opened, Instant::now() + GRACE).await;
    Outcome {
        seconds,
        offered_bytes: schedules.iter().map(|s| s.offered(&frames)).sum(),
        window,
        sent,
        received,
        setup_failures,
        usage,
    }
}

/// Opens every publisher's connection at once; each is bounded by [`SETUP_TIMEOUT`].
async fn open_all(target: &Target, publishers: usize) -> (Vec<Link>, Vec<String>) {
    let mut opening = JoinSet::new();
    for index in 0..publishers {
        let target = target.clone();
        opening.spawn(async move { timeout(SETUP_TIMEOUT, Link::open(&target, index)).await });
    }
    let (mut links, mut failures) = (Vec::new(), Vec::new());
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(Ok(link))) => links.push(link),
            Ok(Ok(Err(e))) => failures.push(e.to_string()),
            Ok(Err(_)) => failures.push(format!("no publish within {SETUP_TIMEOUT:?}")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    (links, failures)
}

/// What the sending window cost: core shares (%) of the server thread and of the publishers'
/// thread, and the process's RSS at the end.
#[derive(Debug, Clone, Copy)]
struct Usage {
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    rss_mib: f64,
}

impl Usage {
    /// Samples over `window`; call on the publishers' thread.
    async fn over(window: Window, server: Option<u32>) -> Self {
        let client = thread_id();
        let ticks = |tid: Option<u32>| tid.and_then(cpu_ticks);
        sleep_until(window.start.into()).await;
        let (server_before, client_before, at) = (ticks(server), ticks(client), Instant::now());
        sleep_until(window.end.into()).await;
        let elapsed = at.elapsed().as_secs_f64();
        let share = |before: Option<u64>, after: Option<u64>| {
            Some((after? - before?) as f64 / CLOCK_TICKS / elapsed * 100.0)
        };
        Self {
            server_cpu: share(server_before, ticks(server)),
            client_cpu: share(client_before, ticks(client)),
            rss_mib: status_mib("VmRSS"),
        }
    }
}

async fn join_all(mut pacing: JoinSet<Sent>, deadline: Instant) -> Vec<Sent> {
    let mut sent = Vec::new();
    while let Ok(Some(joined)) = timeout_at(deadline.into(), pacing.join_next()).await {
        sent.push(joined.unwrap_or_else(|e| Sent {
            error: Some(e.to_string()),
            ..Sent::default()
        }));
    }
    pacing.abort_all();
    sent
}

async fn collect(
    reports: &mut mpsc::UnboundedReceiver<Received>,
    expected: usize,
    deadline: Instant,
) -> Vec<Received> {
    let mut received = Vec::new();
    while received.len() < expected {
        match timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(report)) => received.push(report),
            _ => break,
        }
    }
    received
}

// ---------------------------------------------------------------- summaries

struct Summary {
    offered_mbps: f64,
    achieved_mbps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    lag_p99_ms: f64,
    frames: usize,
    /// Frames the hub dropped for readers that fell behind.
    dropped: u64,
    usage: Usage,
    /// Why the step counts as late, or `None`.
    late: Option<String>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

fn summarize(outcome: &Outcome) -> Summary {
    let on_time_ns = ns_at(outcome.window.end + FRAME_INTERVAL + LATE);
    let samples = outcome
        .received
        .iter()
        .flat_map(|r| &r.samples)
        .filter(|s| outcome.window.holds(s.due_ns));
    let mut latencies: Vec<u64> = samples.clone().map(|s| s.latency_ns).collect();
    latencies.sort_unstable();
    let on_time: u64 = samples
        .filter(|s| s.arrived_ns <= on_time_ns)
        .map(|s| s.len as u64)
        .sum();
    let mut lags: Vec<u64> = outcome
        .sent
        .iter()
        .flat_map(|s| &s.lags_ns)
        .copied()
        .collect();
    lags.sort_unstable();
    let mbps = |bytes: u64| bytes as f64 * 8.0 / f64::from(outcome.seconds) / 1e6;
    let mut summary = Summary {
        offered_mbps: mbps(outcome.offered_bytes),
        achieved_mbps: mbps(on_time),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        lag_p99_ms: percentile(&lags, 0.99),
        frames: latencies.len(),
        dropped: outcome.received.iter().map(|r| r.dropped).sum(),
        usage: outcome.usage,
        late: None,
    };
    summary.late = lateness(outcome, &summary, on_time);
    summary
}

fn lateness(outcome: &Outcome, s: &Summary, on_time: u64) -> Option<String> {
    let late_ms = LATE.as_secs_f64() * 1e3;
    let errors = outcome.sent.iter().filter(|s| s.error.is_some()).count();
    if let Some(first) = outcome.setup_failures.first() {
        Some(format!(
            "{} not published ({first})",
            outcome.setup_failures.len()
        ))
    } else if errors > 0 {
        Some(format!("{errors} publishers stopped"))
    } else if (on_time as f64) < MIN_DELIVERED * outcome.offered_bytes as f64 {
        Some("rate".into())
    } else if s.p99_ms > late_ms {
        Some("p99".into())
    } else if s.lag_p99_ms > late_ms {
        Some("send lag".into())
    } else {
        None
    }
}

// ---------------------------------------------------------------- report

fn pair(
    agent: Option<&Summary>,
    tcp: Option<&Summary>,
    cell: impl Fn(&Summary) -> String,
) -> String {
    let show = |s: Option<&Summary>| s.map_or_else(|| "—".to_string(), &cell);
    format!("{} / {}", show(agent), show(tcp))
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "?".into(), |v| format!("{v:.0}"))
}

fn latency_table(agent: &Summary, tcp: &Summary, seconds: u32) -> String {
    let mut out = format!(
        "## Added latency, one 4 Mbit/s publisher, {seconds} s\n\n\
         | per frame, written → read | agent RTMP → hub reader | direct TCP (baseline) |\n\
         |---|---:|---:|\n"
    );
    let ms = |v: f64| format!("{v:.3}");
    let rows = [
        ("p50 ms", ms(agent.p50_ms), ms(tcp.p50_ms)),
        ("p99 ms", ms(agent.p99_ms), ms(tcp.p99_ms)),
        ("max ms", ms(agent.max_ms), ms(tcp.max_ms)),
        (
            "frames measured",
            agent.frames.to_string(),
            tcp.frames.to_string(),
        ),
        (
            "frames dropped by the hub",
            agent.dropped.to_string(),
            "—".into(),
        ),
    ];
    for (name, a, t) in rows {
        out += &format!("| {name} | {a} | {t} |\n");
    }
    out
}

struct Step {
    publishers: usize,
    agent: Option<Summary>,
    tcp: Option<Summary>,
}

fn capacity_table(steps: &[Step], seconds: u32) -> String {
    let mut out = format!(
        "## Ingest capacity on one core, {seconds} s per step (cells: agent RTMP / direct TCP)\n\n\
         | publishers | offered Mbit/s | achieved Mbit/s | p50 ms | p99 ms | send lag p99 ms \
         | server core % | publishers' core % | RSS MiB | late? |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    );
    for step in steps {
        let (a, t) = (step.agent.as_ref(), step.tcp.as_ref());
        let offered = a.or(t).map_or(f64::NAN, |s| s.offered_mbps);
        out += &format!(
            "| {} | {offered:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            step.publishers,
            pair(a, t, |s| format!("{:.0}", s.achieved_mbps)),
            pair(a, t, |s| format!("{:.2}", s.p50_ms)),
            pair(a, t, |s| format!("{:.2}", s.p99_ms)),
            pair(a, t, |s| format!("{:.2}", s.lag_p99_ms)),
            pair(a, t, |s| percent(s.usage.server_cpu)),
            pair(a, t, |s| percent(s.usage.client_cpu)),
            pair(a, t, |s| format!("{:.0}", s.usage.rss_mib)),
            pair(a, t, |s| s.late.clone().unwrap_or_else(|| "no".into())),
        );
    }
    out
}

/// The largest step a route was on time at, and whether a larger one was late.
fn capacity(steps: &[Step], pick: impl Fn(&Step) -> Option<&Summary>) -> String {
    let on_time = steps
        .iter()
        .filter(|s| pick(s).is_some_and(|s| s.late.is_none()))
        .map(|s| s.publishers)
        .max();
    let hit_limit = steps
        .iter()
        .any(|s| pick(s).is_some_and(|s| s.late.is_some()));
    match (on_time, hit_limit) {
        (Some(n), true) => format!("{n} publishers ({} Mbit/s)", n * 4),
        (Some(n), false) => format!("≥ {n} publishers (the cap; never late)"),
        (None, _) => "below the first step".into(),
    }
}

fn log_step(route: Route, s: &Summary, publishers: usize) {
    eprintln!(
        "{route:?} × {publishers}: {:.0}/{:.0} Mbit/s, p99 {:.2} ms, lag p99 {:.2} ms, server {}%, late: {:?}",
        s.achieved_mbps,
        s.offered_mbps,
        s.p99_ms,
        s.lag_p99_ms,
        percent(s.usage.server_cpu),
        s.late
    );
}

fn main() {
    let args = parse_args();
    epoch();
    check_media(&Frames::new());
    let load_before = load_average();

    let latency_seconds = 3 * args.seconds;
    let [agent, tcp] = [Route::AgentRtmp, Route::DirectTcp].map(|route| {
        let summary = summarize(&measure(route, 1, latency_seconds, RtmpSettings::default()));
        log_step(route, &summary, 1);
        summary
    });

    let rss_before = status_mib("VmRSS");
    let settings = RtmpSettings {
        max_connections: args
            .max_publishers
            .max(RtmpSettings::default().max_connections),
        ..RtmpSettings::default()
    };
    let mut steps: Vec<Step> = Vec::new();
    let still_on_time = |steps: &[Step], pick: fn(&Step) -> Option<&Summary>| {
        steps
            .last()
            .is_none_or(|s| pick(s).is_some_and(|s| s.late.is_none()))
    };
    for publishers in self::steps(args.max_publishers) {
        let run = |route| {
            let summary = summarize(&measure(route, publishers, args.seconds, settings.clone()));
            log_step(route, &summary, publishers);
            summary
        };
        let agent_next = still_on_time(&steps, |s| s.agent.as_ref());
        let tcp_next = still_on_time(&steps, |s| s.tcp.as_ref());
        if !agent_next && !tcp_next {
            break;
        }
        steps.push(Step {
            publishers,
            agent: agent_next.then(|| run(Route::AgentRtmp)),
            tcp: tcp_next.then(|| run(Route::DirectTcp)),
        });
    }
    let rss_after = status_mib("VmRSS");

    println!("{}", latency_table(&agent, &tcp, latency_seconds));
    println!("{}", capacity_table(&steps, args.seconds));
    println!(
        "Capacity on one core: agent RTMP {}; direct TCP {}.\n",
        capacity(&steps, |s| s.agent.as_ref()),
        capacity(&steps, |s| s.tcp.as_ref())
    );
    println!(
        "RSS of this process (agent server, hub and publishers): {rss_before:.1} MiB before the \
         capacity run, {rss_after:.1} MiB after (peak {:.1} MiB).",
        status_mib("VmHWM")
    );
    println!(
        "Cores: {}; load average before {load_before}, after {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
}
