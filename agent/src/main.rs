//! `verge-agent --config agent.toml`: the edge binary.

use std::path::PathBuf;
use std::process::ExitCode;

use verge_agent::AgentConfig;

const USAGE: &str = "usage: verge-agent --config <agent.toml> [--ready-file <path>]

Runs a Verge edge agent. See conf/agent.toml for every key.
--ready-file: once RTMP and HTTP listen, write their bound addresses there as one JSON object
({\"rtmp\": \"127.0.0.1:1935\", \"http\": …}); any listen port may be 0.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    let mut ready_file: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" | "--ready-file" => {
                let Some(value) = args.next().map(PathBuf::from) else {
                    eprintln!("verge-agent: {arg} needs a path\n{USAGE}");
                    return ExitCode::from(2);
                };
                if arg == "--ready-file" {
                    ready_file = Some(value);
                } else {
                    config = Some(value);
                }
            }
            "--version" | "-V" => {
                println!("verge-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("verge-agent: unexpected argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(path) = config else {
        eprintln!("verge-agent: --config is required\n{USAGE}");
        return ExitCode::from(2);
    };
    init_tracing();
    let cfg = match AgentConfig::load(&path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("verge-agent: config {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("verge-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(agent = %cfg.id, broker = %cfg.mqtt.url, "starting");
    match runtime.block_on(verge_agent::run(
        &cfg,
        ready_file.as_deref(),
        shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(agent = %cfg.id, error = %e, "agent stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rtc_ice=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}
