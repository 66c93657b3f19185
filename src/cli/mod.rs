//! `verge` commands against a manager's HTTP API: `nodes`, `streams`, `keys`, `record`.
//!
//! Tables for people, `--json` for scripts (the API's own JSON, unchanged). Exit codes: 0 done,
//! 1 the manager refused (its one-line reason on stderr), 2 a usage error, 3 the manager could
//! not be reached.
//!
//! - `api`: the manager's HTTP API as the CLI calls it (one request, a deadline, JSON back).
//! - `table`: plain-text tables for people.

mod api;
mod table;

use std::process::ExitCode;

use serde_json::Value;

pub use api::{Api, CallError};

pub const USAGE: &str =
    "  verge nodes                      the fleet: each agent, online or not, version, streams
  verge streams                    live streams on all agents
  verge keys                       channel keys
  verge keys issue APP/NAME [--agent ID]   issue (or show) a stream's key, bound to an agent
  verge keys revoke APP/NAME       revoke it
  verge record start|stop|state APP/NAME [--agent ID]
                                   record a stream from now on, stop, or show its recording
  verge recordings [APP/NAME]      streams with recordings, or a stream's recorded days
  verge agents add [ID]            enrol an agent (a new id unless given): prints its id and
                                   secret, shown this once, for the agent's agent.toml
  verge agents revoke ID           revoke an agent: disconnected and refused from then on
  verge login USERNAME             log in ([[auth.accounts]]; the password is read from stdin)
                                   and print the token, for --token or $VERGE_TOKEN
  verge token APP/NAME|'*' --mode r|w|x|rw|… [--duration SECS]
                                   mint a token for one stream or all (admin)
      Options: --manager URL (default $VERGE_MANAGER or http://127.0.0.1:8080),
               --token TOKEN (default $VERGE_TOKEN; sent as a bearer token), --json.
      Exit codes: 0 done, 1 the manager refused, 2 usage, 3 the manager cannot be reached,
                  4 the token is missing, wrong or not allowed to do this (401/403).";

/// Whether `command` is one of these.
pub fn handles(command: &str) -> bool {
    matches!(
        command,
        "nodes" | "streams" | "keys" | "record" | "recordings" | "login" | "token" | "agents"
    )
}

struct Options {
    manager: String,
    token: Option<String>,
    json: bool,
    agent: Option<String>,
    mode: Option<String>,
    duration: Option<u64>,
    words: Vec<String>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        manager: std::env::var("VERGE_MANAGER").unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
        token: std::env::var("VERGE_TOKEN").ok().filter(|t| !t.is_empty()),
        json: false,
        agent: None,
        mode: None,
        duration: None,
        words: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--manager" => opts.manager = value("--manager")?,
            "--token" => opts.token = Some(value("--token")?),
            "--agent" => opts.agent = Some(value("--agent")?),
            "--mode" => opts.mode = Some(value("--mode")?),
            "--duration" => {
                let v = value("--duration")?;
                opts.duration = Some(
                    v.parse()
                        .map_err(|_| format!("--duration {v:?}: not seconds"))?,
                );
            }
            "--json" => opts.json = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            word => opts.words.push(word.to_string()),
        }
    }
    Ok(opts)
}

/// `APP/NAME` (or `NAME`, app `live`) as the API's path.
fn stream_path(stream: &str) -> Result<String, String> {
    let (app, name) = stream.split_once('/').unwrap_or(("live", stream));
    for (what, part) in [("app", app), ("name", name)] {
        verge_protocol::id::validate_stream_part(what, part)?;
    }
    Ok(format!("{app}/{name}"))
}

enum Show {
    Table(Vec<&'static str>, Vec<Vec<String>>),
    Text(String),
}

/// Runs `command` with `args`; prints the result and returns the exit code.
pub fn run(command: &str, args: &[String]) -> ExitCode {
    let opts = match options(args) {
        Ok(opts) => opts,
        Err(e) => return usage(&e),
    };
    let api = match Api::new(&opts.manager, opts.token.clone()) {
        Ok(api) => api,
        Err(e) => return usage(&e),
    };
    let words: Vec<&str> = opts.words.iter().map(String::as_str).collect();
    let agent_query = opts
        .agent
        .as_deref()
        .map(|a| format!("?agent={a}"))
        .unwrap_or_default();
    let call = match (command, words.as_slice()) {
        ("nodes", []) => api
            .call("GET", "/api/nodes/", None)
            .map(|v| (show_nodes(&v), v)),
        ("streams", []) => api
            .call("GET", "/api/streams/", None)
            .map(|v| (show_streams(&v), v)),
        ("keys", [] | ["list"]) => api
            .call("GET", "/api/keys", None)
            .map(|v| (show_keys(&v), v)),
        ("keys", ["issue", stream]) => match stream_path(stream) {
            Ok(path) => {
                let body = opts
                    .agent
                    .as_ref()
                    .map(|a| serde_json::json!({ "agent": a }).to_string());
                api.call("POST", &format!("/api/keys/{path}"), body.as_deref())
                    .map(|v| (show_key(&api, &v), v))
            }
            Err(e) => return usage(&e),
        },
        ("keys", ["revoke", stream]) => match stream_path(stream) {
            Ok(path) => api
                .call("DELETE", &format!("/api/keys/{path}"), None)
                .map(|v| (Show::Text(format!("revoked the key of {path}")), v)),
            Err(e) => return usage(&e),
        },
        ("record", [action @ ("start" | "stop" | "state"), stream]) => match stream_path(stream) {
            Ok(path) => {
                let method = match *action {
                    "start" => "POST",
                    "stop" => "DELETE",
                    _ => "GET",
                };
                api.call(method, &format!("/api/record/{path}{agent_query}"), None)
                    .map(|v| (show_record(&v), v))
            }
            Err(e) => return usage(&e),
        },
        ("agents", ["add", rest @ ..]) if rest.len() <= 1 => {
            let body = rest
                .first()
                .map(|id| serde_json::json!({ "id": id }).to_string());
            api.call("POST", "/api/agents", body.as_deref()).map(|v| {
                let text = format!(
                    "enrolled {id}; its secret is shown only now.\nIn its agent.toml:\n  id = \"{id}\"\n  secret = \"{secret}\"",
                    id = text(&v["id"]),
                    secret = text(&v["secret"]),
                );
                (Show::Text(text), v)
            })
        }
        ("agents", ["revoke", id]) if verge_protocol::id::validate(id).is_ok() => api
            .call("DELETE", &format!("/api/agents/{id}"), None)
            .map(|v| (Show::Text(format!("revoked {id}")), v)),
        ("login", [username]) => {
            let mut password = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut password) {
                return usage(&format!("cannot read the password from stdin: {e}"));
            }
            let body = serde_json::json!({
                "username": username,
                "password": password.trim_end_matches(['\r', '\n']),
            });
            api.call("POST", "/api/login", Some(&body.to_string()))
                .map(|v| (Show::Text(text(&v["access_token"])), v))
        }
        ("token", [id]) => {
            let mode = match opts.mode.as_deref().map(mode_bits) {
                Some(Ok(mode)) => mode,
                Some(Err(e)) => return usage(&e),
                None => return usage("verge token needs --mode (r, w, x or a mix, e.g. rw)"),
            };
            let id = if *id == "*" {
                id.to_string()
            } else {
                match stream_path(id) {
                    Ok(path) => path,
                    Err(e) => return usage(&e),
                }
            };
            let mut body = serde_json::json!({ "id": id, "mode": mode });
            if let Some(d) = opts.duration {
                body["duration"] = d.into();
            }
            api.call("POST", "/api/token", Some(&body.to_string()))
                .map(|v| (Show::Text(text(&v["access_token"])), v))
        }
        ("recordings", []) => api
            .call("GET", "/api/playback", None)
            .map(|v| (show_list("STREAM", &v), v)),
        ("recordings", [stream]) => match stream_path(stream) {
            Ok(path) => api
                .call("GET", &format!("/api/playback/{path}"), None)
                .map(|v| (show_days(&v), v)),
            Err(e) => return usage(&e),
        },
        _ => {
            return usage(&format!(
                "verge {command} {}: not a command",
                words.join(" ")
            ));
        }
    };
    match call {
        Ok((show, value)) => {
            if opts.json {
                println!("{value}");
            } else {
                match show {
                    Show::Table(head, rows) => print!("{}", table::render(&head, &rows)),
                    Show::Text(text) => println!("{text}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(CallError::Refused { status, reason }) => {
            eprintln!("verge {command}: the manager answered {status}: {reason}");
            if status == 401 || status == 403 {
                ExitCode::from(4)
            } else {
                ExitCode::from(1)
            }
        }
        Err(CallError::Unreachable(why)) => {
            eprintln!(
                "verge {command}: cannot reach the manager at {}: {why}",
                opts.manager
            );
            ExitCode::from(3)
        }
    }
}

/// `rw`-style rights as live777's mode bits (4 read, 2 write, 1 admin).
fn mode_bits(letters: &str) -> Result<u8, String> {
    let mut mode = 0;
    for c in letters.chars() {
        mode |= match c {
            'r' => 4,
            'w' => 2,
            'x' => 1,
            other => return Err(format!("--mode {letters:?}: {other:?} is not r, w or x")),
        };
    }
    if mode == 0 {
        return Err("--mode is empty".into());
    }
    Ok(mode)
}

fn usage(why: &str) -> ExitCode {
    eprintln!("verge: {why}\nusage:\n{USAGE}");
    ExitCode::from(2)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rows(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn show_nodes(v: &Value) -> Show {
    let rows = rows(v)
        .iter()
        .map(|n| {
            vec![
                text(&n["alias"]),
                if n["online"] == true {
                    "online"
                } else {
                    "OFFLINE"
                }
                .into(),
                text(&n["version"]),
                n["streams"]
                    .as_array()
                    .map_or_else(|| text(&n["streams"]), |s| s.len().to_string()),
                text(&n["url"]),
            ]
        })
        .collect();
    Show::Table(vec!["AGENT", "STATUS", "VERSION", "STREAMS", "URL"], rows)
}

fn show_streams(v: &Value) -> Show {
    let rows = rows(v)
        .iter()
        .map(|s| {
            let size = match (s["width"].as_u64(), s["height"].as_u64()) {
                (Some(w), Some(h)) => format!("{w}x{h}"),
                _ => "-".into(),
            };
            vec![
                text(&s["id"]),
                text(&s["agent"]),
                s["codecs"]
                    .as_array()
                    .map(|c| {
                        c.iter()
                            .map(|codec| text(&codec["codec"]))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|| "-".into()),
                size,
                text(&s["fps"]),
                text(&s["bitrateKbps"]),
                text(&s["readers"]),
            ]
        })
        .collect();
    Show::Table(
        vec![
            "STREAM", "AGENT", "CODECS", "SIZE", "FPS", "KBIT/S", "READERS",
        ],
        rows,
    )
}

fn show_keys(v: &Value) -> Show {
    let rows = rows(v)
        .iter()
        .map(|k| {
            vec![
                format!("{}/{}", text(&k["app"]), text(&k["name"])),
                text(&k["agent"]),
                text(&k["key"]),
            ]
        })
        .collect();
    Show::Table(vec!["STREAM", "AGENT", "KEY"], rows)
}

fn show_key(api: &Api, v: &Value) -> Show {
    let (app, key) = (text(&v["app"]), text(&v["key"]));
    let host = api.host();
    Show::Text(format!(
        "{key}\npublish to rtmp://{host}/{app}/{key} (OBS: server rtmp://{host}/{app}, stream key {key}){}",
        match v["agent"].as_str() {
            Some(agent) => format!("; only agent {agent} takes it"),
            None => String::new(),
        }
    ))
}

fn show_record(v: &Value) -> Show {
    let mut line = format!(
        "{} on {}: {}{}, {} segments, {} bytes",
        text(&v["stream"]),
        text(&v["agent"]),
        text(&v["state"]),
        if v["wanted"] == true { " (wanted)" } else { "" },
        text(&v["segments"]),
        text(&v["bytes"]),
    );
    if let Some(error) = v["error"].as_str() {
        line.push_str(&format!("\nerror: {error}"));
    }
    Show::Text(line)
}

fn show_list(head: &'static str, v: &Value) -> Show {
    Show::Table(vec![head], rows(v).iter().map(|s| vec![text(s)]).collect())
}

fn show_days(v: &Value) -> Show {
    let rows = rows(v)
        .iter()
        .map(|d| {
            vec![
                format!(
                    "{:04}-{:02}-{:02}",
                    d["year"].as_u64().unwrap_or(0),
                    d["month"].as_u64().unwrap_or(0),
                    d["day"].as_u64().unwrap_or(0)
                ),
                text(&d["agent"]),
                text(&d["mpd_path"]),
            ]
        })
        .collect();
    Show::Table(
        vec!["DAY", "AGENT", "MANIFEST (GET /api/record/object/…)"],
        rows,
    )
}
