//! `verge-agent --config agent.toml`: the edge binary.

use std::process::ExitCode;

use verge_agent::AgentConfig;
use verge_mqtt::process;

const USAGE: &str = "usage: verge-agent --config <agent.toml> [--ready-file <path>]

Runs a Verge edge agent. See conf/agent.toml for every key.
--ready-file: once RTMP and HTTP listen, write their bound addresses there as one JSON object
({\"rtmp\": \"127.0.0.1:1935\", \"http\": …}); any listen port may be 0.";

fn main() -> ExitCode {
    let line = match process::command_line("verge-agent", USAGE, &[], std::env::args().skip(1)) {
        Ok(line) => line,
        Err(code) => return code,
    };
    let Some(path) = line.config else {
        eprintln!("verge-agent: --config is required\n{USAGE}");
        return ExitCode::from(2);
    };
    process::init_tracing("info,rtc_ice=error");
    process::raise_open_files_limit();
    let cfg = match AgentConfig::load(&path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("verge-agent: config {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let runtime = match process::runtime("verge-agent", &cfg.runtime) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    tracing::info!(agent = %cfg.id, broker = %cfg.mqtt.url, "starting");
    match runtime.block_on(verge_agent::run(
        &cfg,
        line.ready_file.as_deref(),
        process::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verge-agent: {e}");
            tracing::error!(agent = %cfg.id, error = %e, "agent stopped");
            ExitCode::FAILURE
        }
    }
}
