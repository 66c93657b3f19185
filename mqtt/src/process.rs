//! What the agent and manager binaries both do around their run: the command line
//! (`--config`, `--ready-file`, `--version`, `--help`), logging, the runtime, and stopping on
//! SIGINT or SIGTERM. Exit codes: 2 for a bad command line or config, 1 for a failure.

use std::path::PathBuf;
use std::process::ExitCode;

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

/// Logs to stderr; `RUST_LOG` wins over `default_filter` (e.g. `info,rumqttd=warn`).
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
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
}
