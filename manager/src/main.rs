//! `verge-manager --config manager.toml`: the cloud binary.

use std::path::PathBuf;
use std::process::ExitCode;

use verge_manager::ManagerConfig;

const USAGE: &str = "usage: verge-manager [--config <manager.toml>] [--ready-file <path>]
       verge-manager hash-password   (reads a password on stdin, prints its argon2id hash for
                                      [[auth.accounts]] password)

Runs the Verge manager; without --config, on embedded defaults. See conf/manager.toml.
--ready-file: once every listener is up, write their bound addresses there as one JSON object
({\"http\": \"127.0.0.1:8080\", \"mqtt\": …}); any listen port may be 0.";

/// One line from stdin (not an argument, which shells keep in their history) as an argon2id
/// PHC string.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("verge-manager: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("verge-manager: the password is empty");
        return ExitCode::from(2);
    }
    match verge_manager::auth::password::hash(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("verge-manager: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    let mut ready_file: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" | "--ready-file" => {
                let Some(value) = args.next().map(PathBuf::from) else {
                    eprintln!("verge-manager: {arg} needs a path\n{USAGE}");
                    return ExitCode::from(2);
                };
                if arg == "--ready-file" {
                    ready_file = Some(value);
                } else {
                    config = Some(value);
                }
            }
            "hash-password" => return hash_password(),
            "--version" | "-V" => {
                println!("verge-manager {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("verge-manager: unexpected argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    init_tracing();
    let cfg = match &config {
        Some(path) => ManagerConfig::load(path),
        None => ManagerConfig::parse(""),
    };
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("verge-manager: config: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("verge-manager: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(verge_manager::run(
        &cfg,
        ready_file.as_deref(),
        shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "manager stopped");
            eprintln!("verge-manager: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    // rumqttd logs every connection at info; keep it at warn unless asked.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the manager");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}
