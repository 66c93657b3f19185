//! The Verge edge agent. It connects *out* to the fleet's MQTT broker, so it works behind NAT.
//!
//! - [`config`]: the `agent.toml` keys.
//! - [`session`]: the MQTT session: retained presence with an `offline` last will, retained
//!   state, the RPC server (admission, replay guard, sealed replies), the channel key table and
//!   the recording index's acknowledgements as they arrive, the goodbye on shutdown.
//! - [`heal`]: putting back our retained presence and state when someone replaces them
//!   (sans-IO; compares what the bodies mean, repairs bounded in time).
//! - [`rpc`]: the methods the manager can call.
//! - [`state`]: the live snapshot the session publishes when it changes.
//! - [`rtmp`]: the RTMP listener; publishers feed the hub, players read from it.
//! - [`http`]: the agent's HTTP server (HTTP-FLV, WHEP, WHIP, metrics, recordings).
//! - [`hls`]: live HLS on `[hls] listen`: fMP4 segments of the streams someone watches.
//! - [`record`]: recording to fMP4 + DASH under `[record] dir`, served at `/recordings/`.
//! - [`webrtc`]: WHEP viewers (peer connections fed from the hub) and WHIP publishers (peer
//!   connections feeding it).
//! - [`keys`]: the channel keys the manager hands out; with `[rtmp] noauth = false` a publisher
//!   must use one.
//! - [`calls`]: calls from this agent to the managers (LiveGo's control API on its port).
//! - [`livestat`]: LiveGo's list of publishers and players, for `/stat/livestat` and the
//!   manager's merge of it.
//! - [`streams`]: stream names, and the hub's streams copied into the state snapshot.
//! - [`tunnel`]: the agent's end of the tunnel: per-manager links, the `[tunnel] allow` check,
//!   dialling and bridging what the manager opens.
//!
//! A publish's path: OBS connects to [`rtmp::serve`]; the connection's
//! `verge_media::rtmp::session::Session` asks to publish `live/cam`; the hub accepts it;
//! [`streams::report`] puts the stream into the retained state, which the manager lists.
//!
//! A call's path: the manager publishes a signed request on `{p}/v1/a/{id}/req`; the link task
//! hands it to [`session::run`]'s loop, whose RPC server opens it, checks it is not a replay, and runs
//! [`rpc::dispatch`] on a task of its own; the signed reply goes to the manager's `res` topic.

pub mod calls;
pub mod config;
pub mod heal;
pub mod hls;
pub mod http;
pub mod keys;
pub mod livestat;
pub mod record;
pub mod rpc;
pub mod rtmp;
pub mod session;
pub mod state;
pub mod streams;
pub mod tunnel;
pub mod webrtc;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use config::AgentConfig;
pub use session::AgentError;
pub use state::StateHandle;
use verge_media::hub::{Hub, HubConfig};
use verge_protocol::ready::Listeners;

/// An agent whose listeners are bound and serving; [`Agent::run`] adds the MQTT session.
pub struct Agent {
    /// The configuration with the listen addresses as bound (a port 0 is a real port here),
    /// so the URLs the agent announces are the ones that work.
    cfg: AgentConfig,
    /// What the MQTT session serves from and feeds, once it runs.
    session: session::Inputs,
    /// The WebRTC service, also closed when the agent stops.
    whep: webrtc::Whep,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds RTMP, HTTP and HLS (any may ask for port 0) and starts serving them.
pub async fn start(cfg: &AgentConfig) -> Result<Agent, AgentError> {
    cfg.validate()?;
    let mut cfg = cfg.clone();
    let (rtmp_listener, rtmp_addr) = bind(cfg.rtmp.listen, "RTMP").await?;
    let (http_listener, http_addr) = bind(cfg.http.listen, "HTTP").await?;
    let (hls_listener, hls_addr) = bind(cfg.hls.listen, "HLS").await?;
    cfg.rtmp.listen = rtmp_addr;
    cfg.http.listen = http_addr;
    cfg.hls.listen = hls_addr;
    let hub = Arc::new(Hub::new(HubConfig {
        max_streams: usize::from(cfg.limits.pub_max.max(1)),
        max_readers: usize::from(cfg.limits.sub_max.max(1)),
        ..HubConfig::default()
    }));
    let state = StateHandle::new();
    let keys = keys::KeyTable::default();
    let mut whep_settings = cfg.webrtc.settings(&cfg.limits);
    whep_settings.role = cfg.node.role;
    let whep = webrtc::Whep::new(&cfg.id, hub.clone(), whep_settings);
    // Days a recording begins go to the manager's index through the MQTT session.
    let (days_tx, days) = tokio::sync::mpsc::channel::<record::writer::NewDay>(64);
    let recorder = record::Recorder::new(hub.clone(), cfg.record.settings(), days_tx);
    let calls = calls::ManagerCalls::default();
    let uploads = Arc::<record::upload::UploadStats>::default();
    let router = http::router(http::Parts {
        calls: calls.clone(),
        uploads: uploads.clone(),
        agent_id: cfg.id.clone(),
        hub: hub.clone(),
        whep: Some(whep.clone()),
        record_dir: Some(cfg.record.dir.clone()),
        recorder: Some(recorder.clone()),
        keys: (!cfg.rtmp.noauth).then(|| keys.clone()),
    });
    let index = Some(session::IndexInputs {
        recorder: recorder.clone(),
        outbox: cfg.record.dir.join(".index-outbox.json"),
        days,
    });
    let hls = hls::http::router(hls::LiveHls::new(hub.clone(), cfg.hls.settings()));
    let http_limits = verge_serve::http::Limits::from_config(
        cfg.http.max_connections,
        cfg.http.header_timeout_secs,
        cfg.http.idle_timeout_secs,
    );
    let mut tasks = vec![
        tokio::spawn(rtmp::serve(
            rtmp_listener,
            hub.clone(),
            rtmp::RtmpSettings {
                keys: Some(keys.clone()),
                noauth: cfg.rtmp.noauth,
                ..rtmp::RtmpSettings::default()
            },
        )),
        tokio::spawn(recorder.clone().run()),
        tokio::spawn({
            let (dir, calls, upload) = (
                cfg.record.dir.clone(),
                calls.clone(),
                crate::config::UploadConfig {
                    keep_local_days: cfg.record.keep_local_days,
                    ..cfg.record.upload.clone()
                },
            );
            let (stats, state) = (uploads.clone(), state.clone());
            async move {
                if upload.enabled {
                    record::upload::run(dir, calls, upload, stats, state).await;
                }
            }
        }),
        tokio::spawn(streams::report(
            hub.clone(),
            state.clone(),
            Duration::from_secs(10),
            cfg.webrtc.audio == config::WebrtcAudio::Opus,
            {
                let whep = whep.clone();
                move |stream: &str| whep.relay_of(stream)
            },
        )),
    ];
    // Both end when the agent aborts its tasks.
    for (listener, router, what) in [(http_listener, router, "HTTP"), (hls_listener, hls, "HLS")] {
        let serving =
            verge_serve::http::serve(listener, router, http_limits, what, std::future::pending());
        tasks.push(tokio::spawn(serving));
    }
    let agent = Agent {
        cfg,
        session: session::Inputs {
            state,
            keys,
            whep: Some(whep.clone()),
            index,
            hub,
            calls,
        },
        whep,
        tasks,
    };
    tracing::info!(agent = %agent.cfg.id, listening = %agent.listeners().summary(), "media listeners up");
    Ok(agent)
}

impl Agent {
    /// What this agent listens on, as bound: `rtmp`, `http` and `hls`. The ready file's
    /// contents.
    pub fn listeners(&self) -> Listeners {
        Listeners::new()
            .with("rtmp", self.cfg.rtmp.listen)
            .with("http", self.cfg.http.listen)
            .with("hls", self.cfg.hls.listen)
    }

    /// Runs the MQTT session until `shutdown` completes, then stops serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let result = session::run(&self.cfg, self.session, shutdown).await;
        // Viewers hear from us (DTLS close) rather than waiting out an ICE timeout.
        self.whep.close_all(Duration::from_millis(500)).await;
        for task in self.tasks {
            task.abort();
        }
        result
    }
}

/// Runs the whole agent (RTMP, HTTP, the MQTT session) until `shutdown` completes; once its
/// listeners are up, writes what they bound to `ready_file` (see [`verge_protocol::ready`]).
pub async fn run(
    cfg: &AgentConfig,
    ready_file: Option<&Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let agent = start(cfg).await?;
    if let Some(path) = ready_file {
        agent.listeners().write_atomic(path)?;
    }
    agent.run(shutdown).await
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(tokio::net::TcpListener, SocketAddr), AgentError> {
    let error = |source| AgentError::Listen { what, addr, source };
    let listener = verge_serve::listen(addr).map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}
