//! `verge-manager --config manager.toml`: the cloud binary.

use std::process::ExitCode;

use verge_manager::ManagerConfig;
use verge_mqtt::process;

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
    let line = match process::command_line(
        "verge-manager",
        USAGE,
        &["hash-password"],
        std::env::args().skip(1),
    ) {
        Ok(line) => line,
        Err(code) => return code,
    };
    if line.subcommand.as_deref() == Some("hash-password") {
        return hash_password();
    }
    // rumqttd logs every connection at info; keep it at warn unless asked.
    process::init_tracing("info,rumqttd=warn");
    let open_files = process::raise_open_files_limit();
    let cfg = match &line.config {
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
    let needed = cfg.descriptors_needed();
    if let Some(limit) = open_files
        && limit < needed
    {
        tracing::warn!(
            limit,
            needed,
            "the open files limit is below what the connection caps allow: a flood can use up \
             the descriptors and stop every listener; raise LimitNOFILE or lower [http] \
             max_connections, [broker] max_connections, [rtmp] max_connections"
        );
    }
    let runtime = match process::runtime("verge-manager", &cfg.runtime) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(verge_manager::run(
        &cfg,
        line.ready_file.as_deref(),
        process::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "manager stopped");
            eprintln!("verge-manager: {e}");
            ExitCode::FAILURE
        }
    }
}
