//! LiveGo's control API on the manager, driven with curl as LiveGo's users script it: the key
//! from `/control/get` publishes with ffmpeg, `/control/reset` refuses the old key and takes
//! the new one, `/control/delete` refuses both; `/stat/livestat` lists the publisher and a
//! player, on the manager and on the box; `[auth]` guards it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic, tool};
use verge_testkit::rtmp::RtmpClient;
use verge_testkit::wait_for;

const ADMIN: &str = "admin-token";

/// `curl` of `path` on the manager: the HTTP status and the parsed LiveGo envelope.
fn curl(m: SocketAddr, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut cmd = Command::new(tool("curl"));
    cmd.args(["-s", "-m", "10", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("http://{m}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let status = code.trim().parse().unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into())),
    )
}

fn code(edge: &Edge, key: &str) -> String {
    let mut c = RtmpClient::connect(edge.rtmp).expect("RTMP");
    c.publish("live", key).expect("publish")
}

#[test]
fn livegos_control_api_issues_resets_and_deletes_channel_keys() {
    // The box wants channel keys (LiveGo's default); the manager's API wants a token.
    let edge = Edge::start(
        "livego",
        &EdgeOptions::default().token(ADMIN).manager(&format!(
            "[auth]\ntokens = [\"{ADMIN}\"]\n[[agents]]\nid = \"edge-2\"\nsecret = \"s-edge-2\"\n"
        )),
    );
    let m = edge.manager_http;
    let token = Some(ADMIN);

    // Without a token: refused, whatever the room.
    let (status, _) = curl(m, "/control/get?room=cam", None);
    assert_eq!(status, 401);
    // LiveGo's usage answer without a room.
    let (status, body) = curl(m, "/control/get", token);
    assert_eq!(
        (status, &body["status"]),
        (400, &serde_json::json!(400)),
        "{body}"
    );
    assert_eq!(body["data"], "url: /control/get?room=<ROOM_NAME>");

    // get: issued once, then the same key.
    let (status, body) = curl(m, "/control/get?room=cam", token);
    assert_eq!(
        (status, &body["status"]),
        (200, &serde_json::json!(200)),
        "{body}"
    );
    let first = body["data"].as_str().expect("a key").to_string();
    assert!(
        first.len() >= 24
            && first
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{first}"
    );
    assert_eq!(
        curl(m, "/control/get?room=cam", token).1["data"],
        first.as_str()
    );

    // A real ffmpeg publishes with it (the box learns keys over MQTT a moment later); players
    // use the room's name.
    let accepted = wait_for(Duration::from_secs(15), || {
        (code(&edge, &first) == "NetStream.Publish.Start").then_some(())
    });
    assert!(accepted.is_some(), "{}", edge.agent.log_text());
    let url = format!("rtmp://{}/live/{first}", edge.rtmp);
    let ffmpeg = edge.publish_to("ffmpeg", &url, &Synthetic::lasting(20));
    edge.wait_live("cam", &ffmpeg);

    // /stat/livestat: the publisher and a player (ffmpeg reading the box's HTTP-FLV), on the
    // box's own port and merged by the manager, in LiveGo's shape.
    let player = edge.decode(
        "player",
        &format!("http://{}/live/cam.flv", edge.http),
        None,
    );
    let (status, _) = curl(m, "/stat/livestat", None);
    assert_eq!(status, 401);
    let listed = wait_for(Duration::from_secs(20), || {
        let (status, body) = curl(m, "/stat/livestat", token);
        let data = &body["data"];
        let reading = data["players"].as_array()?.iter().any(|p| {
            p["key"] == "live/cam"
                && p["kind"] == "flv"
                && p["video_total_bytes"].as_u64() > Some(0)
        });
        (status == 200 && reading).then(|| data.clone())
    });
    let data = listed.unwrap_or_else(|| panic!("{:?}", curl(m, "/stat/livestat", token)));
    let publisher = &data["publishers"][0];
    assert_eq!(publisher["key"], "live/cam", "{data}");
    assert_eq!(publisher["agent"], "edge-1", "{data}");
    assert!(
        publisher["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("rtmp://")),
        "{data}"
    );
    assert!(publisher["video_total_bytes"].as_u64() > Some(0), "{data}");
    assert!(publisher["audio_total_bytes"].as_u64() > Some(0), "{data}");
    for field in ["stream_id", "video_speed", "audio_speed"] {
        assert!(publisher[field].is_u64(), "{field}: {data}");
    }
    // The publisher's key never shows: players and publishers are named by the room.
    assert!(!data.to_string().contains(&first), "{data}");
    let (status, body) = curl(edge.http, "/stat/livestat?room=live/cam", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["publishers"][0]["key"], "live/cam", "{body}");
    assert_eq!(body["data"]["players"][0]["kind"], "flv", "{body}");
    let (status, body) = curl(m, "/stat/livestat?room=live/none", token);
    assert_eq!(
        (status, &body["data"]),
        (404, &serde_json::json!("room not found or inactive")),
        "{body}"
    );
    drop(player);
    drop(ffmpeg);

    // reset: a new key; the old one is refused (LiveGo would keep taking it), the new taken.
    let (status, body) = curl(m, "/control/reset?room=cam", token);
    assert_eq!(status, 200, "{body}");
    let second = body["data"].as_str().expect("a key").to_string();
    assert_ne!(second, first);
    let switched = wait_for(Duration::from_secs(15), || {
        (code(&edge, &first) == "NetStream.Publish.BadName"
            && code(&edge, &second) == "NetStream.Publish.Start")
            .then_some(())
    });
    assert!(switched.is_some(), "{}", edge.agent.log_text());

    // delete: both refused; a second delete finds no room.
    let (status, body) = curl(m, "/control/delete?room=cam", token);
    assert_eq!(
        (status, &body["data"]),
        (200, &serde_json::json!("Ok")),
        "{body}"
    );
    let refused = wait_for(Duration::from_secs(15), || {
        (code(&edge, &first) == "NetStream.Publish.BadName"
            && code(&edge, &second) == "NetStream.Publish.BadName")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", edge.agent.log_text());
    let (status, body) = curl(m, "/control/delete?room=cam", token);
    assert_eq!(
        (status, &body["data"]),
        (404, &serde_json::json!("room not found")),
        "{body}"
    );

    // POST with a form body, as LiveGo also takes it; a key bound to a box with `agent`.
    let out = Command::new(tool("curl"))
        .args([
            "-s",
            "-m",
            "10",
            "-H",
            &format!("Authorization: Bearer {ADMIN}"),
        ])
        .args(["-d", "room=door&agent=edge-1"])
        .arg(format!("http://{m}/control/get"))
        .output()
        .expect("run curl");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(body["status"], 200, "{body}");
    let keys = verge_testkit::get(m, &format!("/api/keys?token={ADMIN}"))
        .expect("keys")
        .json();
    let door = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["name"] == "door"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(door["agent"], "edge-1", "{keys}");
    let (status, _) = curl(m, "/control/get?room=x&agent=nobody", token);
    assert_eq!(status, 404);

    // The same calls on the box's own port, as on a LiveGo box: the manager answers them
    // (over MQTT), judges the token as its own, and binds what the box issues to the box.
    let b = edge.http;
    let (status, body) = curl(b, "/control/get?room=lobby", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = curl(b, "/control/get", token);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["data"], "url: /control/get?room=<ROOM_NAME>");
    let (status, body) = curl(b, "/control/get?room=lobby", token);
    assert_eq!(
        (status, &body["status"]),
        (200, &serde_json::json!(200)),
        "{body}"
    );
    let lobby = body["data"].as_str().expect("a key").to_string();
    assert_eq!(
        curl(m, "/control/get?room=lobby", token).1["data"],
        lobby.as_str()
    );
    let keys = verge_testkit::get(m, &format!("/api/keys?token={ADMIN}"))
        .expect("keys")
        .json();
    let bound = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["name"] == "lobby"))
        .map(|k| k["agent"].clone());
    assert_eq!(bound, Some(serde_json::json!("edge-1")), "{keys}");
    let taken = wait_for(Duration::from_secs(15), || {
        (code(&edge, &lobby) == "NetStream.Publish.Start").then_some(())
    });
    assert!(taken.is_some(), "{}", edge.agent.log_text());
    let (status, body) = curl(b, "/control/reset?room=lobby", token);
    assert_eq!(status, 200, "{body}");
    let lobby2 = body["data"].as_str().expect("a key").to_string();
    let switched = wait_for(Duration::from_secs(15), || {
        (code(&edge, &lobby) == "NetStream.Publish.BadName"
            && code(&edge, &lobby2) == "NetStream.Publish.Start")
            .then_some(())
    });
    assert!(switched.is_some(), "{}", edge.agent.log_text());
    // A room another box holds is not this box's to manage.
    let (status, _) = curl(m, "/control/get?room=yard&agent=edge-2", token);
    assert_eq!(status, 200);
    let (status, body) = curl(b, "/control/reset?room=yard", token);
    assert_eq!(status, 409, "{body}");
    let (status, body) = curl(b, "/control/delete?room=lobby", token);
    assert_eq!(
        (status, &body["data"]),
        (200, &serde_json::json!("Ok")),
        "{body}"
    );
    let (status, body) = curl(b, "/control/delete?room=lobby", token);
    assert_eq!(status, 404, "{body}");
}
