//! What each HTTP route needs, in one table, so the whole policy can be read (and tested) in
//! one place. A path this table does not know needs admin rights: a route added later is
//! closed until someone decides otherwise here.

use axum::http::Method;
use verge_serve::form::{pairs, percent_decoded};

/// The right a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing: static pages, health, login, CORS preflights.
    Public,
    /// Read (WHEP, HTTP-FLV, HLS, playback) of one stream, `app/name`.
    Read(String),
    /// Write (WHIP, RTMP publish) of one stream.
    Write(String),
    /// A list filtered to the streams the token may read.
    ReadSome,
    /// Fleet-wide reading (agents, metrics): a read token for `*`.
    ReadAll,
    /// Changing the fleet: keys, agents, recordings, tokens, a box's own HTTP.
    Admin,
}

/// The need of `method` on `path` (the URI's path, still percent-encoded).
pub fn need(method: &Method, path: &str) -> Need {
    if method == Method::OPTIONS {
        return Need::Public;
    }
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decoded)
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = method == Method::GET || method == Method::HEAD;
    let stream = |app: &str, name: &str| Need::Read(format!("{app}/{name}"));
    match s.as_slice() {
        [""] | ["play", ..] | ["publish", ..] | ["api", "health"] | ["favicon.ico"] if get => {
            Need::Public
        }
        ["assets", ..] if get => Need::Public,
        ["api", "login"] if method == Method::POST => Need::Public,
        // `[storage] type = "fs"`: the URL's own signature is the check (`storage::fs`).
        ["api", "storage", "put", ..] if method == Method::PUT => Need::Public,
        ["whep", name] | ["session", name, _] => stream("live", name),
        ["whep", app, name] | ["session", app, name, _] => stream(app, name),
        ["whip", name] | ["whip-session", name, _] => Need::Write(format!("live/{name}")),
        ["whip", app, name] | ["whip-session", app, name, _] => {
            Need::Write(format!("{app}/{name}"))
        }
        // liveman's node-pinned offers.
        ["api", "whep", _, name] => stream("live", name),
        ["api", "whip", _, name] => Need::Write(format!("live/{name}")),
        ["flv", app, file] if get => stream(app, file.strip_suffix(".flv").unwrap_or(file)),
        ["hls", app, name, _] if get => stream(app, name),
        ["api", "streams"] | ["api", "streams", ""] | ["api", "playback"] if get => Need::ReadSome,
        ["api", "streams", id, "history"] if get && id.contains('/') => Need::Read(id.to_string()),
        ["api", "streams", name, "history"] if get => stream("live", name),
        ["api", "streams", app, name, "history"] if get => stream(app, name),
        ["api", "events"] if get => Need::ReadAll,
        // `/api/streams/tv%2Fcam` names `tv/cam`.
        ["api", "streams", id] if get && id.contains('/') => Need::Read(id.to_string()),
        ["api", "streams", name] | ["api", "playback", name] if get => stream("live", name),
        ["api", "streams", app, name] | ["api", "playback", app, name] if get => stream(app, name),
        // The handler decodes the whole rest and names the stream by its first two parts: a
        // `%2F` inside a segment moves the split there too.
        // A liveion node's recording: `@{node}/{stream}/{record}/{file}`, of `live/{stream}`.
        ["api", "record", "object", node, stream, ..] if get && node.starts_with('@') => {
            Need::Read(format!("live/{stream}"))
        }
        ["api", "record", "object", _, ..] if get => {
            let rest = path.trim_start_matches('/').splitn(4, '/').nth(3);
            let rest = percent_decoded(rest.unwrap_or_default());
            let mut parts = rest.split('/');
            stream(
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            )
        }
        ["api", "record", name] if get => stream("live", name),
        ["api", "record", app, name] if get => stream(app, name),
        ["api", "nodes", ..] | ["api", "agents"] | ["api", "agents", ""] | ["metrics"] if get => {
            Need::ReadAll
        }
        ["api", "agents", _] if get => Need::ReadAll,
        _ => Need::Admin,
    }
}

/// The need of a request whose rights depend on its query too: LiveGo's control API names
/// the stream in `?room=` (`/control/get?room=cam` writes `live/cam`'s key); everything else
/// is [`need`] of the path.
pub fn need_of(method: &Method, path: &str, query: Option<&str>) -> Need {
    match path {
        "/control/get" | "/control/reset" | "/control/delete" => {
            match room_of(query) {
                Some(room) if !room.is_empty() && !room.contains('/') => {
                    Need::Write(format!("live/{room}"))
                }
                // The handler answers 400; nobody learns anything from it.
                _ => Need::Admin,
            }
        }
        // Every stream's viewers, or `?room={app}/{name}`'s.
        "/stat/livestat" if method == Method::GET => match room_of(query) {
            Some(room) if room.split('/').count() == 2 => Need::Read(room),
            _ => Need::ReadAll,
        },
        _ => need(method, path),
    }
}

/// The query's `room`, decoded as a form value.
fn room_of(query: Option<&str>) -> Option<String> {
    pairs(query?).find(|(k, _)| k == "room").map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> Need {
        Need::Read(s.into())
    }

    #[test]
    fn every_route_has_its_need() {
        let get = Method::GET;
        let post = Method::POST;
        let delete = Method::DELETE;
        let patch = Method::PATCH;
        let cases: &[(&Method, &str, Need)] = &[
            (&get, "/", Need::Public),
            (&get, "/api/health", Need::Public),
            (&get, "/play/cam", Need::Public),
            (&get, "/play/live/cam", Need::Public),
            (&post, "/api/login", Need::Public),
            (&Method::OPTIONS, "/whep/cam", Need::Public),
            (&post, "/whep/cam", read("live/cam")),
            (&post, "/whep/tv/cam", read("tv/cam")),
            (&patch, "/session/cam/s1", read("live/cam")),
            (&delete, "/session/tv/cam/s1", read("tv/cam")),
            (&post, "/whip/cam", Need::Write("live/cam".into())),
            (&post, "/whip/tv/cam", Need::Write("tv/cam".into())),
            (
                &patch,
                "/whip-session/cam/s1",
                Need::Write("live/cam".into()),
            ),
            (
                &delete,
                "/whip-session/tv/cam/s1",
                Need::Write("tv/cam".into()),
            ),
            (&get, "/flv/live/cam.flv", read("live/cam")),
            (&get, "/hls/live/cam/index.m3u8", read("live/cam")),
            (&get, "/api/streams/", Need::ReadSome),
            (&get, "/api/streams", Need::ReadSome),
            (&get, "/api/streams/cam", read("live/cam")),
            (&get, "/api/streams/tv/cam", read("tv/cam")),
            (&get, "/api/streams/tv%2Fcam", read("tv/cam")),
            (&get, "/api/playback", Need::ReadSome),
            (&get, "/api/playback/tv/cam", read("tv/cam")),
            (
                &get,
                "/api/record/object/tv/cam/2026/12/01/p0-v-0.m4s",
                read("tv/cam"),
            ),
            (&get, "/api/record/cam", read("live/cam")),
            (&post, "/api/record/cam", Need::Admin),
            (&delete, "/api/record/tv/cam", Need::Admin),
            (&get, "/api/nodes/", Need::ReadAll),
            (&get, "/api/agents", Need::ReadAll),
            (&get, "/api/agents/edge-1", Need::ReadAll),
            (&get, "/metrics", Need::ReadAll),
            (&post, "/api/agents", Need::Admin),
            (&delete, "/api/agents/edge-1", Need::Admin),
            (&get, "/api/keys", Need::Admin),
            (&post, "/api/keys/live/cam", Need::Admin),
            (&delete, "/api/keys/live/cam", Need::Admin),
            (&post, "/api/token", Need::Admin),
            (&get, "/agents/edge-1/http/api/streams", Need::Admin),
            (&get, "/something/new", Need::Admin),
            (&post, "/api/health", Need::Admin),
            (&post, "/api/whep/sfu-1/cam", read("live/cam")),
            (&post, "/api/whip/sfu-1/cam", Need::Write("live/cam".into())),
            (&post, "/api/cascade/cam", Need::Admin),
            (&get, "/control/get", Need::Admin),
            (&get, "/api/streams/cam/history", read("live/cam")),
            (&get, "/api/streams/tv/cam/history", read("tv/cam")),
            (&get, "/api/nodes/edge-1/history", Need::ReadAll),
            (&get, "/api/events", Need::ReadAll),
            (
                &get,
                "/api/record/object/@sfu-1/cam/17/manifest.mpd",
                read("live/cam"),
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(&need(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn livestat_needs_the_right_to_read_the_room_or_everything() {
        let get = Method::GET;
        assert_eq!(
            need_of(&get, "/stat/livestat", Some("room=live%2Fcam")),
            Need::Read("live/cam".into())
        );
        assert_eq!(need_of(&get, "/stat/livestat", None), Need::ReadAll);
        assert_eq!(
            need_of(&get, "/stat/livestat", Some("room=cam")),
            Need::ReadAll
        );
        assert_eq!(need_of(&Method::POST, "/stat/livestat", None), Need::Admin);
    }

    #[test]
    fn livegos_control_api_needs_the_right_to_write_the_room() {
        let get = Method::GET;
        let write = |s: &str| Need::Write(s.into());
        assert_eq!(
            need_of(&get, "/control/get", Some("room=cam")),
            write("live/cam")
        );
        assert_eq!(
            need_of(&get, "/control/reset", Some("x=1&room=c%61m")),
            write("live/cam")
        );
        assert_eq!(
            need_of(&Method::POST, "/control/delete", Some("room=cam")),
            write("live/cam")
        );
        for bad in [
            None,
            Some(""),
            Some("room="),
            Some("room=a/b"),
            Some("room=a%2Fb"),
        ] {
            assert_eq!(need_of(&get, "/control/get", bad), Need::Admin, "{bad:?}");
        }
        assert_eq!(
            need_of(&get, "/whep/cam", Some("room=x")),
            need(&get, "/whep/cam")
        );
    }

    #[test]
    fn a_recording_object_is_judged_by_the_stream_its_handler_serves() {
        let get = Method::GET;
        let object = "/api/record/object/tv%2Fcam/2026/12/01/manifest.mpd";
        assert_eq!(need(&get, object), read("tv/cam"));
        assert_eq!(
            need(&get, "/api/record/object/tv/cam/2026/12/01/manifest.mpd"),
            read("tv/cam")
        );
    }

    #[test]
    fn encoded_paths_are_judged_as_the_handler_sees_them() {
        assert_eq!(need(&Method::POST, "/whep/c%61m"), read("live/cam"));
        assert_eq!(need(&Method::POST, "/whep/%ff"), read("live/%ff"));
        assert_eq!(need(&Method::POST, "/whep/a%2"), read("live/a%2"));
    }

    /// How a route's handler names the stream it serves, from the route's parameters as axum
    /// hands them over (each percent-decoded).
    #[derive(Clone, Copy)]
    enum Right {
        Public,
        ReadSome,
        ReadAll,
        Admin,
        /// Read of `live/{name}` (one parameter) or `{app}/{name}` (two); `/api/streams/{id}`
        /// takes an id with a slash as it is.
        Read,
        Write,
        /// `{*path}` of a recording object: the stream its path names, if it names one.
        ReadObject,
    }

    /// Every route of `crate::http::router`, with the methods it answers and what its handler
    /// needs. GET routes answer HEAD too; every WHEP/WHIP route answers OPTIONS (public).
    const ROUTES: &[(&str, &[&str], Right)] = &[
        ("/", &["GET"], Right::Public),
        ("/api/health", &["GET"], Right::Public),
        ("/api/nodes", &["GET"], Right::ReadAll),
        ("/api/nodes/", &["GET"], Right::ReadAll),
        ("/api/agents", &["GET"], Right::ReadAll),
        ("/api/agents", &["POST"], Right::Admin),
        ("/api/agents/", &["GET"], Right::ReadAll),
        ("/api/agents/", &["POST"], Right::Admin),
        ("/api/agents/{id}", &["GET"], Right::ReadAll),
        ("/api/agents/{id}", &["DELETE"], Right::Admin),
        ("/api/keys", &["GET"], Right::Admin),
        ("/api/keys/", &["GET"], Right::Admin),
        ("/api/keys/{app}/{name}", &["POST", "DELETE"], Right::Admin),
        ("/api/streams", &["GET"], Right::ReadSome),
        ("/api/streams/", &["GET"], Right::ReadSome),
        ("/api/streams/{stream}", &["GET"], Right::Read),
        ("/api/streams/{app}/{name}", &["GET"], Right::Read),
        ("/whep/{name}", &["POST"], Right::Read),
        ("/whep/{app}/{name}", &["POST"], Right::Read),
        (
            "/session/{name}/{session}",
            &["PATCH", "DELETE"],
            Right::Read,
        ),
        (
            "/session/{app}/{name}/{session}",
            &["PATCH", "DELETE"],
            Right::Read,
        ),
        ("/whip/{name}", &["POST"], Right::Write),
        ("/whip/{app}/{name}", &["POST"], Right::Write),
        (
            "/whip-session/{name}/{session}",
            &["PATCH", "DELETE"],
            Right::Write,
        ),
        (
            "/whip-session/{app}/{name}/{session}",
            &["PATCH", "DELETE"],
            Right::Write,
        ),
        ("/agents/{id}/http/", &["GET"], Right::Admin),
        ("/agents/{id}/http/{*path}", &["GET"], Right::Admin),
        ("/flv/{app}/{file}", &["GET"], Right::Read),
        ("/hls/{app}/{name}/{file}", &["GET"], Right::Read),
        ("/api/playback", &["GET"], Right::ReadSome),
        ("/api/playback/{name}", &["GET"], Right::Read),
        ("/api/playback/{app}/{name}", &["GET"], Right::Read),
        ("/api/record/object/{*path}", &["GET"], Right::ReadObject),
        ("/api/record/{name}", &["GET"], Right::Read),
        ("/api/record/{name}", &["POST", "DELETE"], Right::Admin),
        ("/api/record/{app}/{name}", &["GET"], Right::Read),
        (
            "/api/record/{app}/{name}",
            &["POST", "DELETE"],
            Right::Admin,
        ),
        ("/play/{name}", &["GET"], Right::Public),
        ("/play/{app}/{name}", &["GET"], Right::Public),
        ("/assets/webrtc.js", &["GET"], Right::Public),
        ("/publish/{name}", &["GET"], Right::Public),
        ("/publish/{app}/{name}", &["GET"], Right::Public),
        ("/metrics", &["GET"], Right::ReadAll),
        ("/api/login", &["POST"], Right::Public),
        ("/api/token", &["POST"], Right::Admin),
        ("/api/streams/{stream}/history", &["GET"], Right::Read),
        ("/api/streams/{app}/{name}/history", &["GET"], Right::Read),
        ("/api/nodes/{id}/history", &["GET"], Right::ReadAll),
        ("/api/events", &["GET"], Right::ReadAll),
        ("/api/whep/{alias}/{name}", &["POST"], Right::Read),
        ("/api/whip/{alias}/{name}", &["POST"], Right::Write),
        ("/api/cascade/{name}", &["POST"], Right::Admin),
    ];

    /// The parameters of `path` (raw, still percent-encoded) if `pattern` matches it as axum
    /// does: literal segments equal, a `{param}` any non-empty segment, `{*rest}` the rest.
    fn route_params(pattern: &str, path: &str) -> Option<Vec<String>> {
        let mut params = Vec::new();
        let mut rest = path.strip_prefix('/')?;
        let mut parts = pattern.strip_prefix('/')?.split('/').peekable();
        while let Some(part) = parts.next() {
            if part.starts_with("{*") {
                if rest.is_empty() {
                    return None;
                }
                params.push(percent_decoded(rest));
                return Some(params);
            }
            let (segment, after) = match rest.split_once('/') {
                Some((segment, after)) => (segment, Some(after)),
                None => (rest, None),
            };
            if part.starts_with('{') {
                if segment.is_empty() {
                    return None;
                }
                params.push(percent_decoded(segment));
            } else if part != segment {
                return None;
            }
            match (after, parts.peek()) {
                (Some(after), Some(_)) => rest = after,
                (None, None) => return Some(params),
                _ => return None,
            }
        }
        None
    }

    /// What the handler of a route with `right` needs for `params`.
    fn handler_need(right: Right, pattern: &str, params: &[String]) -> Need {
        let stream = || {
            if pattern == "/api/streams/{stream}" || pattern == "/api/streams/{stream}/history" {
                let id = &params[0];
                return if id.contains('/') {
                    id.clone()
                } else {
                    format!("live/{id}")
                };
            }
            // liveman's node-pinned offers: the node, then the stream.
            if pattern.contains("{alias}") {
                return format!("live/{}", params[1]);
            }
            if !pattern.contains("{app}") {
                return format!("live/{}", params[0]);
            }
            let name = &params[1];
            // `/flv/{app}/{name}.flv`; a file without the suffix is not served at all.
            let name = match pattern.starts_with("/flv/") {
                true => name.strip_suffix(".flv").unwrap_or(name),
                false => name,
            };
            format!("{}/{name}", params[0])
        };
        match right {
            Right::Public => Need::Public,
            Right::ReadSome => Need::ReadSome,
            Right::ReadAll => Need::ReadAll,
            Right::Admin => Need::Admin,
            Right::Read => Need::Read(stream()),
            Right::Write => Need::Write(stream()),
            // The handler serves nothing for a path that names no recording (400).
            Right::ReadObject => match (
                crate::http::playback::parse_node_object(&params[0]),
                crate::http::playback::parse_object(&params[0]),
            ) {
                (Ok((_, stream, ..)), _) => Need::Read(format!("live/{stream}")),
                (_, Ok((stream, ..))) => Need::Read(stream),
                _ => Need::Public,
            },
        }
    }

    /// Grants of every shape, for the streams the random paths name.
    fn grants(streams: &[String]) -> Vec<crate::auth::Grant> {
        use crate::auth::{ADMIN, ANY, Grant, READ, WRITE};
        let mut all = vec![Grant::all()];
        for id in streams.iter().map(String::as_str).chain([ANY]) {
            for mode in [READ, WRITE, READ | WRITE, ADMIN, READ | ADMIN, 0] {
                all.push(Grant {
                    id: id.to_string(),
                    mode,
                });
            }
        }
        all
    }

    /// Random requests from a vocabulary of route words, ids and encodings (`%2F`, `%2e%2e`,
    /// empty segments, case): whatever route axum would hand one to, the policy asks at least
    /// what that route's handler needs. "At least": every grant that meets the policy's need
    /// meets the handler's.
    #[test]
    fn no_path_reaches_a_handler_with_less_than_it_needs() {
        const WORDS: &[&str] = &[
            "",
            "whep",
            "whip",
            "session",
            "whip-session",
            "api",
            "streams",
            "playback",
            "record",
            "object",
            "nodes",
            "agents",
            "keys",
            "login",
            "token",
            "health",
            "metrics",
            "flv",
            "hls",
            "play",
            "publish",
            "assets",
            "webrtc.js",
            "http",
            "live",
            "cam",
            "tv",
            "cam.flv",
            "index.m3u8",
            "tv%2Fcam",
            "%2e%2e",
            "..",
            "WHEP",
            "Api",
            "edge-1",
            "a~0123456789abcdef",
            "c%61m",
            "%2F",
            "cam%2F..%2Fx",
            "2026",
            "p.m4s",
            "12",
            "01",
            "tv%2Fcam%2F2026",
            "manifest.mpd",
        ];
        const METHODS: &[&str] = &["GET", "HEAD", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut routed = 0;
        for _ in 0..200_000 {
            // Half the paths are a route with random words in its parameters (and now and
            // then a literal swapped), half random words: both sides of every route.
            let segments: Vec<String> = if next(2) == 0 {
                let (pattern, _, _) = ROUTES[next(ROUTES.len())];
                pattern
                    .trim_start_matches('/')
                    .split('/')
                    .map(|part| match part {
                        p if p.starts_with("{*") => (0..1 + next(5))
                            .map(|_| WORDS[next(WORDS.len())])
                            .collect::<Vec<_>>()
                            .join("/"),
                        p if p.starts_with('{') || next(8) == 0 => {
                            WORDS[next(WORDS.len())].to_string()
                        }
                        literal => literal.to_string(),
                    })
                    .collect()
            } else {
                (0..1 + next(6))
                    .map(|_| WORDS[next(WORDS.len())].to_string())
                    .collect()
            };
            let path = format!("/{}", segments.join("/"));
            let method_name = METHODS[next(METHODS.len())];
            let method = Method::from_bytes(method_name.as_bytes()).unwrap();
            // The route axum hands the request to: where several patterns match, a literal
            // segment wins over a parameter, and a parameter over a catch-all, segment by
            // segment (matchit's priority).
            let rank = |pattern: &str| -> Vec<u8> {
                pattern
                    .split('/')
                    .map(|part| match part {
                        p if p.starts_with("{*") => 0,
                        p if p.starts_with('{') => 1,
                        _ => 2,
                    })
                    .collect()
            };
            let chosen = ROUTES
                .iter()
                .filter_map(|(p, _, _)| route_params(p, &path).map(|params| (*p, params)))
                .max_by_key(|(p, _)| rank(p));
            let answering = chosen.and_then(|(pattern, params)| {
                ROUTES
                    .iter()
                    .find(|(p, methods, _)| {
                        *p == pattern
                            && (methods.contains(&method_name)
                                || (method_name == "HEAD" && methods.contains(&"GET")))
                    })
                    .map(|(_, _, right)| (pattern, params, *right))
            });
            // No route, or 405: no handler runs.
            if let Some((pattern, params, right)) = answering {
                routed += 1;
                let handler = handler_need(right, pattern, &params);
                let policy = need(&method, &path);
                let streams: Vec<String> = [&handler, &policy]
                    .iter()
                    .filter_map(|n| match n {
                        Need::Read(s) | Need::Write(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                for grant in grants(&streams) {
                    assert!(
                        grant.meets(&policy).is_err() || grant.meets(&handler).is_ok(),
                        "{method} {path} (route {pattern}): the policy asks {policy:?}, the \
                         handler needs {handler:?}; {grant:?} gets in"
                    );
                }
            }
        }
        assert!(
            routed > 10_000,
            "only {routed} random requests reached a route"
        );
    }
}
