//! What the agent and manager binaries both do around their run: the command line
//! (`--config`, `--ready-file`, `--version`, `--help`), logging, the open-files limit, the
//! runtime, and stopping on SIGINT or SIGTERM. Exit codes: 2 for a bad command line or config,
//! 1 for a failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, filter::FilterExt};

/// A parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommandLine {
    pub config: Option<PathBuf>,
    pub ready_file: Option<PathBuf>,
    /// One of the binary's own words (e.g. `hash-password`), when given.
    pub subcommand: Option<String>,
}

/// Parses `args` (without the program's name); `Err` is the exit code after `--help`,
/// `--version` or a mistake (already printed).
pub fn command_line(
    program: &str,
    usage: &str,
    subcommands: &[&str],
    args: impl IntoIterator<Item = String>,
) -> Result<CommandLine, ExitCode> {
    let mut line = CommandLine::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" | "--ready-file" => {
                let Some(value) = args.next().map(PathBuf::from) else {
                    eprintln!("{program}: {arg} needs a path\n{usage}");
                    return Err(ExitCode::from(2));
                };
                if arg == "--ready-file" {
                    line.ready_file = Some(value);
                } else {
                    line.config = Some(value);
                }
            }
            "--version" | "-V" => {
                println!("{program} {}", env!("CARGO_PKG_VERSION"));
                return Err(ExitCode::SUCCESS);
            }
            "--help" | "-h" => {
                println!("{usage}");
                return Err(ExitCode::SUCCESS);
            }
            word if line.subcommand.is_none() && subcommands.contains(&word) => {
                line.subcommand = Some(word.to_string());
            }
            other => {
                eprintln!("{program}: unexpected argument {other:?}\n{usage}");
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(line)
}

/// Installs the process's log; `RUST_LOG` wins over `default_filter` (e.g. `info,rumqttd=warn`).
/// Each call site of a dependency logs at most [`DEPENDENCY_LINES`] lines per
/// [`DEPENDENCY_WINDOW`] (see `DependencyBudget`).
pub fn init_tracing(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::registry()
        .with(log_layer(filter, std::io::stdout))
        .init();
}

fn log_layer<S, W>(filter: EnvFilter, writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer)
        .with_filter(filter.and(DependencyBudget::default()))
}

/// Lines one call site of a dependency may log per [`DEPENDENCY_WINDOW`].
pub const DEPENDENCY_LINES: u32 = 20;
pub const DEPENDENCY_WINDOW: Duration = Duration::from_secs(10);

/// A log budget for the call sites of code Verge cannot change (every target outside
/// `verge*`). rumqttd logs an ERROR for every failed accept and retries at once: out of
/// descriptors, that was 8.6 million lines, 1.44 GB, in 20 s (issue #27). The descriptor
/// budget (the manager's caps under `LimitNOFILE`) keeps that from happening; this keeps the
/// log readable if it happens anyway, or if another dependency repeats itself. Verge's own call
/// sites are not limited: each logs once per episode where repetition is possible.
#[derive(Default)]
struct DependencyBudget {
    /// Per call site: when its window began, and the lines it has logged in it.
    spent: Mutex<HashMap<tracing::callsite::Identifier, (Instant, u32)>>,
}

impl<S> Filter<S> for DependencyBudget {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if meta.target().starts_with("verge") {
            return true;
        }
        let now = Instant::now();
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        let (since, lines) = spent.entry(meta.callsite()).or_insert((now, 0));
        if now.duration_since(*since) >= DEPENDENCY_WINDOW {
            *since = now;
            *lines = 0;
        }
        *lines += 1;
        *lines <= DEPENDENCY_LINES
    }
}

/// Raises the soft limit on open files to the hard one, and logs the limit in effect. Every
/// connection is a descriptor, and the usual soft limit (1024) is below what the configured
/// connection caps allow; the hard limit is the operator's (systemd's `LimitNOFILE`). Returns
/// the limit in effect, if it can be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot read the open files limit");
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, hard = limit.rlim_max, "cannot raise the open files limit to the hard limit");
        }
    }
    tracing::info!(
        open_files = limit.rlim_cur,
        hard = limit.rlim_max,
        "open files limit"
    );
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit Linux, not everywhere
    Some(limit.rlim_cur as u64)
}

/// A config file that cannot be read or is not the TOML its binary expects.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

/// The config in the TOML file at `path`; its errors name the file.
pub fn load_toml<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<T, ConfigFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_toml(&text, &shown)
}

/// The config in `text`; its errors name it `what` (a file, or "agent config").
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|source| ConfigFileError::Parse {
        path: what.into(),
        source,
    })
}

/// A config file read as [`load_toml`] reads it, then checked by `validate`.
pub fn load_valid<T, E>(
    path: &std::path::Path,
    validate: impl FnOnce(&T) -> Result<(), E>,
) -> Result<T, E>
where
    T: serde::de::DeserializeOwned,
    E: From<ConfigFileError>,
{
    let cfg = load_toml(path)?;
    validate(&cfg)?;
    Ok(cfg)
}

/// The config in `text` (its errors name it `what`), checked by `validate`.
pub fn parse_valid<T, E>(
    text: &str,
    what: &str,
    validate: impl FnOnce(&T) -> Result<(), E>,
) -> Result<T, E>
where
    T: serde::de::DeserializeOwned,
    E: From<ConfigFileError>,
{
    let cfg = parse_toml(text, what)?;
    validate(&cfg)?;
    Ok(cfg)
}

/// `[runtime]`, the same in agent.toml and manager.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run the process's tasks; 0: one per CPU core (or `TOKIO_WORKER_THREADS`).
    pub worker_threads: usize,
}

/// The most worker threads a config may ask for.
pub const MAX_WORKER_THREADS: usize = 256;

impl RuntimeConfig {
    /// Why the section cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(format!(
                "[runtime] worker_threads = {}: at most {MAX_WORKER_THREADS} (0: one per CPU core)",
                self.worker_threads
            ));
        }
        Ok(())
    }
}

/// The multi-threaded runtime `cfg` asks for, or the exit code after saying why there is none.
pub fn runtime(program: &str, cfg: &RuntimeConfig) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.worker_threads > 0 {
        builder.worker_threads(cfg.worker_threads);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("{program}: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CommandLine, ExitCode> {
        command_line(
            "verge-x",
            "usage",
            &["hash-password"],
            args.iter().map(|s| s.to_string()),
        )
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            parse(&["-c", "a.toml", "--ready-file", "r.json"]),
            Ok(CommandLine {
                config: Some("a.toml".into()),
                ready_file: Some("r.json".into()),
                subcommand: None,
            })
        );
        assert_eq!(
            parse(&["hash-password"]).map(|l| l.subcommand),
            Ok(Some("hash-password".into()))
        );
        assert_eq!(parse(&["--config"]), Err(ExitCode::from(2)));
        assert_eq!(parse(&["--what"]), Err(ExitCode::from(2)));
        assert_eq!(parse(&["--help"]), Err(ExitCode::SUCCESS));
    }

    /// The log's output, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_dependency_repeating_an_error_is_cut_to_its_budget_and_ours_are_not() {
        let captured = Captured::default();
        let writer = {
            let captured = captured.clone();
            move || captured.clone()
        };
        let subscriber = tracing_subscriber::registry()
            .with(log_layer(EnvFilter::new("info,rumqttd=warn"), writer));
        tracing::subscriber::with_default(subscriber, || {
            // rumqttd's accept loop out of descriptors, and its per-connection info line.
            for _ in 0..10_000 {
                tracing::error!(target: "rumqttd::server::broker", error = "EMFILE", "Unable to accept socket.");
                tracing::info!(target: "rumqttd::server::broker", "accept");
            }
            for _ in 0..30 {
                tracing::warn!(target: "rumqttd::router::routing", "no space for new connection");
            }
            for i in 0..50 {
                tracing::info!(target: "verge_manager::http", i, "ours");
            }
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let count = |what: &str| text.lines().filter(|l| l.contains(what)).count() as u32;
        assert_eq!(count("Unable to accept socket."), DEPENDENCY_LINES);
        assert_eq!(
            count("no space"),
            DEPENDENCY_LINES,
            "each call site has its own budget"
        );
        assert!(
            !text.lines().any(|l| l.ends_with(" accept")),
            "rumqttd=warn still applies"
        );
        assert_eq!(count("ours"), 50);
    }
}
