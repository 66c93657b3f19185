//! `verge`: the one command for a laptop.
//!
//! - `verge up`: a manager (embedded broker, defaults) and one local agent in one process,
//!   and a summary of what runs where.
//! - `verge secret <enrollment-secret> <agent-id>`: the secret an agent needs when the
//!   manager admits agents by `[enrollment] secret`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use verge_agent::AgentConfig;
use verge_manager::config::EnrolledAgent;
use verge_manager::{ManagerConfig, loopback_for};

const USAGE: &str = "\
usage:
  verge up [--open] [--http ADDR] [--mqtt ADDR] [--rtmp ADDR] [--agent-http ADDR]
           [--hls ADDR] [--agent-id ID] [--ready-file PATH]
      Run a manager with its embedded MQTT broker and one local agent.
      Defaults: --http 127.0.0.1:8080 --mqtt 127.0.0.1:1883 --rtmp 127.0.0.1:1935
                --agent-http 127.0.0.1:7001 --hls 127.0.0.1:7002 --agent-id local
      --open: the same ports on every interface (0.0.0.0) instead of loopback. Whenever the
      manager's HTTP or MQTT listens beyond loopback, its API and dashboard need a token,
      made at start and printed (`[auth] tokens`); the box's own ports stay open, as on any
      box. Any port may be 0. --ready-file: once all is up, write the bound addresses there
      as one JSON object with keys http, mqtt, rtmp, agent_http, hls.
  verge secret <enrollment-secret> <agent-id>
      Print the secret of an agent admitted by [enrollment] secret.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]),
        Some(command) if verge::cli::handles(command) => verge::cli::run(command, &args[1..]),
        Some("secret") if args.len() == 3 => {
            println!(
                "{}",
                verge_protocol::secret::derive_agent_secret(&args[1], &args[2])
            );
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") => {
            println!("verge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}{}", verge::cli::USAGE);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}{}", verge::cli::USAGE);
            ExitCode::from(2)
        }
    }
}

struct UpOptions {
    http: SocketAddr,
    mqtt: SocketAddr,
    rtmp: SocketAddr,
    agent_http: SocketAddr,
    hls: SocketAddr,
    agent_id: String,
    ready_file: Option<std::path::PathBuf>,
}

impl UpOptions {
    /// Whether the manager can be reached from beyond this machine, so its API needs a token.
    fn manager_is_exposed(&self) -> bool {
        !self.http.ip().is_loopback() || !self.mqtt.ip().is_loopback()
    }
}

fn parse_up(args: &[String]) -> Result<UpOptions, String> {
    // A laptop's demo is reachable from the laptop only unless asked: on a café's network an
    // open manager would let anyone issue keys and enrol agents.
    let ip: [u8; 4] = if args.iter().any(|a| a == "--open") {
        [0, 0, 0, 0]
    } else {
        [127, 0, 0, 1]
    };
    let mut opts = UpOptions {
        http: SocketAddr::from((ip, 8080)),
        mqtt: SocketAddr::from((ip, 1883)),
        rtmp: SocketAddr::from((ip, 1935)),
        agent_http: SocketAddr::from((ip, 7001)),
        hls: SocketAddr::from((ip, 7002)),
        agent_id: "local".into(),
        ready_file: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--open" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--http" => opts.http = value.parse().map_err(|e| format!("--http {value}: {e}"))?,
            "--mqtt" => opts.mqtt = value.parse().map_err(|e| format!("--mqtt {value}: {e}"))?,
            "--rtmp" => opts.rtmp = value.parse().map_err(|e| format!("--rtmp {value}: {e}"))?,
            "--agent-http" => {
                opts.agent_http = value
                    .parse()
                    .map_err(|e| format!("--agent-http {value}: {e}"))?;
            }
            "--hls" => opts.hls = value.parse().map_err(|e| format!("--hls {value}: {e}"))?,
            "--agent-id" => {
                verge_protocol::id::validate(value)
                    .map_err(|e| format!("--agent-id {value}: {e}"))?;
                opts.agent_id = value.clone();
            }
            "--ready-file" => opts.ready_file = Some(value.into()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(opts)
}

fn up(args: &[String]) -> ExitCode {
    let opts = match parse_up(args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("verge up: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    verge_mqtt::process::init_tracing(
        "warn,verge_manager=info,verge_agent=info,rumqttd::router=off,rtc_ice=error",
    );
    let runtime = match verge_mqtt::process::runtime("verge up", &Default::default()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(run_up(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verge up: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_up(opts: UpOptions) -> Result<(), String> {
    let secret = verge_protocol::secret::random_secret();
    let mut manager_cfg = ManagerConfig::default();
    manager_cfg.http.listen = opts.http;
    manager_cfg.broker.listen = opts.mqtt;
    let token = opts
        .manager_is_exposed()
        .then(verge_protocol::secret::random_secret);
    manager_cfg.auth.tokens.extend(token.clone());
    manager_cfg.agents.push(EnrolledAgent {
        id: opts.agent_id.clone(),
        secret: secret.clone(),
    });
    let manager = verge_manager::start(&manager_cfg)
        .await
        .map_err(|e| e.to_string())?;
    let manager_listeners = manager.listeners();
    let mqtt = manager_listeners
        .get("mqtt")
        .ok_or("the manager has no embedded broker")?;

    let mut agent_cfg = AgentConfig::with_defaults(
        &opts.agent_id,
        &secret,
        &format!("mqtt://{}", loopback_for(mqtt)),
    );
    agent_cfg.rtmp.listen = opts.rtmp;
    // A laptop: any stream name publishes. Fleets issue channel keys instead.
    agent_cfg.rtmp.noauth = true;
    agent_cfg.http.listen = opts.agent_http;
    agent_cfg.hls.listen = opts.hls;
    // The agent's listeners are bound before its MQTT session starts, and the manager's
    // broker listens already: nothing dials a port that is not open yet.
    let agent = match verge_agent::start(&agent_cfg).await {
        Ok(agent) => agent,
        Err(e) => {
            manager.stop().await;
            return Err(e.to_string());
        }
    };
    let agent_listeners = agent.listeners();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent.run(async {
        let _ = agent_stopped.await;
    }));

    // Wait until the manager lists the local agent, so the summary is true when printed.
    let online = tokio::time::timeout(Duration::from_secs(10), async {
        while !manager
            .registry
            .get(&opts.agent_id)
            .is_some_and(|r| r.online())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();

    let http = loopback_for(manager.http_addr);
    let rtmp = agent_listeners.get("rtmp").map(loopback_for);
    let agent_http = agent_listeners.get("http").map(loopback_for);
    let hls = agent_listeners.get("hls").map(loopback_for);
    let (Some(rtmp), Some(agent_http), Some(hls)) = (rtmp, agent_http, hls) else {
        return Err("the agent reported no RTMP, HTTP or HLS listener".into());
    };
    println!("Verge {} is up.", env!("CARGO_PKG_VERSION"));
    println!("  manager   http://{http}/  (dashboard; fleet API: http://{http}/api/nodes/)");
    println!("  broker    mqtt://{mqtt} (embedded)");
    println!(
        "  agent     {} {}  (details: http://{http}/api/agents/{})",
        opts.agent_id,
        if online {
            "online"
        } else {
            "NOT online yet, see the log"
        },
        opts.agent_id
    );
    println!(
        "  publish   rtmp://{rtmp}/live/<name>   (OBS: server rtmp://{rtmp}/live, key <name>)"
    );
    println!(
        "  watch     http://{agent_http}/live/<name>.flv (HTTP-FLV)  or  rtmp://{rtmp}/live/<name>"
    );
    println!("            http://{hls}/live/<name>/index.m3u8 (HLS)");
    println!(
        "  browser   http://{http}/play/<name>   (WebRTC via WHEP: http://{http}/whep/<name>)"
    );
    println!("  streams   http://{http}/api/streams/");
    match &token {
        Some(token) => println!(
            "  token     {token}\n            (the manager listens beyond loopback: its API and dashboard need this \
             token, as Authorization: Bearer or ?token=)"
        ),
        None => println!(
            "  (loopback only; `verge up --open` listens on every interface, with a token)"
        ),
    }
    let written = match &opts.ready_file {
        Some(path) => {
            let mut listeners = manager_listeners;
            for (name, addr) in agent_listeners.iter() {
                let key = if name == "http" { "agent_http" } else { name };
                listeners = listeners.with(key, addr);
            }
            listeners.write_atomic(path).map_err(|e| e.to_string())
        }
        None => Ok(()),
    };
    if written.is_ok() {
        println!("Press Ctrl-C to stop.");
        verge_mqtt::process::shutdown_signal().await;
    }
    println!("stopping…");
    let _ = stop_agent.send(());
    match tokio::time::timeout(Duration::from_secs(5), agent).await {
        Ok(Ok(Err(e))) => eprintln!("agent: {e}"),
        Ok(Err(e)) => eprintln!("agent task: {e}"),
        _ => {}
    }
    manager.stop().await;
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn verge_up_listens_on_loopback_unless_opened() {
        let opts = parse_up(&[]).unwrap();
        for addr in [opts.http, opts.mqtt, opts.rtmp, opts.agent_http, opts.hls] {
            assert!(addr.ip().is_loopback(), "{addr}");
        }
        assert!(!opts.manager_is_exposed());

        let open = parse_up(&args(&["--open", "--rtmp", "127.0.0.1:0"])).unwrap();
        assert!(open.http.ip().is_unspecified());
        assert!(open.rtmp.ip().is_loopback(), "an explicit address wins");
        assert!(open.manager_is_exposed());

        let wide = parse_up(&args(&["--mqtt", "0.0.0.0:0"])).unwrap();
        assert!(
            wide.manager_is_exposed(),
            "any wider manager listener needs a token"
        );
        assert!(parse_up(&args(&["--http"])).is_err());
    }
}
