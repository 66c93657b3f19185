//! `[auth]` on a real manager: every kind of credential against every kind of route (401 who
//! are you, 403 not allowed, through otherwise), logins and their rate limit, `?token=` for
//! players, a WHEP viewer with a stream-scoped read token, and the RTMP router asking
//! publishers for a write token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use verge_testkit::edge::{Edge, EdgeOptions, Synthetic};
use verge_testkit::rtmp::RtmpClient;
use verge_testkit::whep::watching;
use verge_testkit::{ANY_PORT, bin, listener, request, wait_for};

const STATIC: &str = "static-token-1";
const SECRET: &str = "jwt-secret";

fn jwt(secret: &str, id: &str, mode: u8, exp: u64) -> String {
    verge_testkit::liveman_jwt(secret, id, mode, exp)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The status of one request, read from the status line only (a live FLV body never ends).
fn status(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

fn post_json(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> verge_testkit::Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    request(
        "POST",
        addr,
        path,
        &headers,
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap()
}

#[test]
fn every_route_answers_each_credential_as_its_rights_say() {
    let b = Edge::start(
        "auth",
        &EdgeOptions {
            noauth: true,
            manager_toml: format!(
                "[auth]\ntokens = [\"{STATIC}\"]\nsecret = \"{SECRET}\"\n\
                 [[auth.accounts]]\nusername = \"live777\"\npassword = \"live777\"\n\
                 [rtmp]\nlisten = \"{ANY_PORT}\"\n"
            ),
            api_token: Some(STATIC.into()),
            // Everything our code logs, down to debug: no token may appear in any of it.
            rust_log: Some("info,verge=debug,verge_manager=debug,verge_agent=debug,verge_mqtt=debug,verge_media=debug".into()),
            ..EdgeOptions::default()
        },
    );
    let m = b.manager_http;
    let _publisher = b.on_air("cam", "cam", &Synthetic::lasting(120));

    let later = now() + 600;
    let login = post_json(
        m,
        "/api/login",
        None,
        r#"{"username":"live777","password":"live777"}"#,
    );
    assert_eq!(login.status, 200, "{}", login.text());
    let login = login.json();
    assert_eq!(login["token_type"], "Bearer");
    let logged_in = login["access_token"].as_str().unwrap().to_string();

    // Who: (name, token).
    let who: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("static", Some(STATIC.into())),
        ("login", Some(logged_in)),
        ("read cam", Some(jwt(SECRET, "cam", 4, later))),
        ("read live/other", Some(jwt(SECRET, "live/other", 4, later))),
        ("write cam", Some(jwt(SECRET, "cam", 2, later))),
        ("read *", Some(jwt(SECRET, "*", 4, later))),
        ("admin *", Some(jwt(SECRET, "*", 1, later))),
        ("expired", Some(jwt(SECRET, "*", 7, now() - 1))),
        ("wrong key", Some(jwt("not-the-secret", "*", 7, later))),
        ("garbage", Some("not-a-token".into())),
    ];
    const A: u16 = 0; // through: whatever the route answers, not 401 or 403
    // (method, path, body, expected status per `who`, in order).
    let routes: &[(&str, &str, &str, [u16; 11])] = &[
        ("GET", "/api/health", "", [A, A, A, A, A, A, A, A, A, A, A]),
        ("GET", "/play/cam", "", [A, A, A, A, A, A, A, A, A, A, A]),
        (
            "OPTIONS",
            "/whep/cam",
            "",
            [A, A, A, A, A, A, A, A, A, A, A],
        ),
        (
            "GET",
            "/api/nodes/",
            "",
            [401, A, A, 403, 403, 403, A, A, 401, 401, 401],
        ),
        (
            "GET",
            "/api/agents/edge-1",
            "",
            [401, A, A, 403, 403, 403, A, A, 401, 401, 401],
        ),
        (
            "GET",
            "/api/streams/",
            "",
            [401, A, A, A, A, 403, A, A, 401, 401, 401],
        ),
        (
            "GET",
            "/api/streams/cam",
            "",
            [401, A, A, A, 403, 403, A, A, 401, 401, 401],
        ),
        (
            "GET",
            "/flv/live/cam.flv",
            "",
            [401, A, A, A, 403, 403, A, A, 401, 401, 401],
        ),
        (
            "POST",
            "/whep/cam",
            "v=0",
            [401, A, A, A, 403, 403, A, A, 401, 401, 401],
        ),
        (
            "GET",
            "/api/playback",
            "",
            [401, A, A, A, A, 403, A, A, 401, 401, 401],
        ),
        (
            "GET",
            "/api/keys",
            "",
            [401, A, A, 403, 403, 403, 403, A, 401, 401, 401],
        ),
        (
            "POST",
            "/api/keys/live/k2",
            "",
            [401, A, A, 403, 403, 403, 403, A, 401, 401, 401],
        ),
        (
            "POST",
            "/api/record/cam",
            "",
            [401, A, A, 403, 403, 403, 403, A, 401, 401, 401],
        ),
        (
            "GET",
            "/agents/edge-1/http/",
            "",
            [401, A, A, 403, 403, 403, 403, A, 401, 401, 401],
        ),
        (
            "POST",
            "/api/token",
            r#"{"id":"cam","mode":4}"#,
            [401, A, A, 403, 403, 403, 403, A, 401, 401, 401],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in routes {
        for ((name, token), want) in who.iter().zip(expected) {
            let got = status(m, method, path, token.as_deref(), body);
            let ok = match *want {
                A => got != 401 && got != 403 && got < 500 || got == 503,
                w => got == w,
            };
            if !ok {
                wrong.push(format!(
                    "{method} {path} as {name}: {got}, want {}",
                    if *want == A {
                        "through".to_string()
                    } else {
                        want.to_string()
                    }
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A stream-scoped reader sees only its stream in the list.
    let reader = jwt(SECRET, "cam", 4, later);
    let list = request(
        "GET",
        m,
        "/api/streams/",
        &[("Authorization", &format!("Bearer {reader}"))],
        b"",
        Duration::from_secs(10),
    )
    .unwrap()
    .json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let other = jwt(SECRET, "other", 4, later);
    let list = request(
        "GET",
        m,
        &format!("/api/streams/?token={other}"),
        &[],
        b"",
        Duration::from_secs(10),
    )
    .unwrap()
    .json();
    assert_eq!(list, serde_json::json!([]));

    // Reasons a person can act on, and the bearer challenge.
    let refused = request("GET", m, "/api/nodes/", &[], b"", Duration::from_secs(10)).unwrap();
    assert_eq!(refused.status, 401);
    assert!(
        refused.text().contains("Authorization: Bearer"),
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Bearer realm="verge""#)
    );
    let expired = request(
        "GET",
        m,
        "/api/nodes/",
        &[(
            "Authorization",
            &format!("Bearer {}", jwt(SECRET, "*", 7, now() - 1)),
        )],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(expired.text().contains("expired"), "{}", expired.text());
    let forbidden = post_json(m, "/api/keys/live/k3", Some(&reader), "");
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.text().contains("admin"), "{}", forbidden.text());

    // An admin mints a scoped token, which then reads exactly that stream.
    let minted = post_json(
        m,
        "/api/token",
        Some(STATIC),
        r#"{"id":"cam","mode":4,"duration":60}"#,
    );
    assert_eq!(minted.status, 200, "{}", minted.text());
    let minted = minted.json()["access_token"].as_str().unwrap().to_string();
    assert_ne!(status(m, "GET", "/api/streams/cam", Some(&minted), ""), 403);
    assert_eq!(status(m, "GET", "/api/nodes/", Some(&minted), ""), 403);
    for bad in [
        r#"{"id":"cam","mode":0}"#,
        r#"{"id":"../x","mode":4}"#,
        r#"{"id":"cam","mode":4,"duration":0}"#,
        "{",
    ] {
        assert_eq!(
            post_json(m, "/api/token", Some(STATIC), bad).status,
            400,
            "{bad}"
        );
    }

    // A WHEP viewer with the read token of this stream gets frames; `?token=` for players.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{m}/whep/cam?token={reader}");
    runtime.block_on(async {
        // The first picture, however long a loaded machine takes; then the session stays up.
        let mut viewer = watching(&url, "WHEP with a read token").await;
        let ended = viewer.watch(Duration::from_secs(3)).await.unwrap();
        assert!(!ended && viewer.stats.frames > 0, "{:?}", viewer.stats);
        viewer.close().await;
    });

    // The CLI: no token is exit 4; `verge login` prints a token the other commands take;
    // `verge token` mints a scoped one, which may not list keys.
    let verge = |args: &[&str], stdin: &str| {
        let mut child = std::process::Command::new(bin("verge"))
            .args(args)
            .args(["--manager", &format!("http://{m}")])
            .env_remove("VERGE_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = verge(&["nodes"], "");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("401"), "{err}");
    let (code, token, err) = verge(&["login", "live777"], "live777\n");
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = verge(&["nodes", "--token", &token], "");
    assert_eq!(code, Some(0), "{err}");
    let (code, scoped, err) = verge(&["token", "live/cam", "--mode", "r", "--token", STATIC], "");
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = verge(&["keys", "--token", &scoped], "");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("403"), "{err}");
    let (code, _, _) = verge(&["token", "cam", "--mode", "q", "--token", STATIC], "");
    assert_eq!(code, Some(2));

    // Logins: a wrong password is 401; a burst of them from one address is 429 with Retry-After,
    // even for the right password.
    let wrong_pass = post_json(
        m,
        "/api/login",
        None,
        r#"{"username":"live777","password":"x"}"#,
    );
    assert_eq!(wrong_pass.status, 401, "{}", wrong_pass.text());
    for _ in 0..5 {
        post_json(
            m,
            "/api/login",
            None,
            r#"{"username":"nobody","password":"x"}"#,
        );
    }
    let limited = post_json(
        m,
        "/api/login",
        None,
        r#"{"username":"live777","password":"live777"}"#,
    );
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(limited.header("retry-after").is_some());

    // The RTMP router wants a write token for the key's stream.
    let router = listener(&b.manager_listeners, "rtmp");
    let key = post_json(
        m,
        "/api/keys/live/cam2",
        Some(STATIC),
        r#"{"agent":"edge-1"}"#,
    );
    assert_eq!(key.status, 201, "{}", key.text());
    let key = key.json()["key"].as_str().unwrap().to_string();
    let publish = |name: &str| {
        let socket = TcpStream::connect_timeout(&router, Duration::from_secs(5)).unwrap();
        let mut c = RtmpClient::handshake(socket).unwrap();
        c.publish_status("live", name).unwrap()
    };
    let (code, reason) = publish(&key);
    assert_eq!(code, "NetStream.Publish.Unauthorized", "{reason}");
    assert!(reason.contains("token"), "{reason}");
    let (code, reason) = publish(&format!("{key}?token={}", jwt(SECRET, "cam2", 4, later)));
    assert_eq!(code, "NetStream.Publish.Unauthorized", "{reason}");
    assert!(reason.contains("may not publish to live/cam2"), "{reason}");
    let writer = jwt(SECRET, "cam2", 2, later);
    let started = wait_for(Duration::from_secs(20), || {
        let (code, _) = publish(&format!("{key}?token={writer}"));
        (code == "NetStream.Publish.Start").then_some(())
    });
    assert!(started.is_some(), "a write token did not publish");

    // No token, in a header, a query or an RTMP key, reached any process's log.
    let mut tokens: Vec<String> = who.iter().filter_map(|(_, t)| t.clone()).collect();
    tokens.extend([reader, minted, token, scoped, writer, STATIC.to_string()]);
    for (process, log) in [
        ("manager", b.manager.log_text()),
        ("agent", b.agent.log_text()),
    ] {
        for secret in tokens.iter().filter(|t| t.len() >= 10) {
            assert!(
                !log.contains(secret.as_str()),
                "the {process}'s log holds a token ({}…)",
                &secret[..10]
            );
        }
    }
}
