//! What each HTTP route needs, in one table, so the whole policy can be read (and tested) in
//! one place. A path this table does not know needs admin rights: a route added later is
//! closed until someone decides otherwise here.

use axum::http::Method;

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
        ["whep", name] | ["session", name, _] => stream("live", name),
        ["whep", app, name] | ["session", app, name, _] => stream(app, name),
        ["whip", name] | ["whip-session", name, _] => Need::Write(format!("live/{name}")),
        ["whip", app, name] | ["whip-session", app, name, _] => {
            Need::Write(format!("{app}/{name}"))
        }
        ["flv", app, file] if get => stream(app, file.strip_suffix(".flv").unwrap_or(file)),
        ["hls", app, name, _] if get => stream(app, name),
        ["api", "streams"] | ["api", "streams", ""] | ["api", "playback"] if get => Need::ReadSome,
        // `/api/streams/tv%2Fcam` names `tv/cam`.
        ["api", "streams", id] if get && id.contains('/') => Need::Read(id.to_string()),
        ["api", "streams", name] | ["api", "playback", name] if get => stream("live", name),
        ["api", "streams", app, name] | ["api", "playback", app, name] if get => stream(app, name),
        ["api", "record", "object", app, name, ..] if get => stream(app, name),
        ["api", "record", name] if get => stream("live", name),
        ["api", "record", app, name] if get => stream(app, name),
        ["api", "nodes", ..] | ["api", "agents"] | ["api", "agents", ""] | ["metrics"] if get => {
            Need::ReadAll
        }
        ["api", "agents", _] if get => Need::ReadAll,
        _ => Need::Admin,
    }
}

/// `%XX` decoded, so `/whep/c%61m` is judged as the `cam` the handler will see; a segment that
/// does not decode to UTF-8 is kept as sent (and matches no stream a token names).
pub fn percent_decoded(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_string();
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_string())
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
        ];
        for (method, path, want) in cases {
            assert_eq!(&need(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn encoded_paths_are_judged_as_the_handler_sees_them() {
        assert_eq!(need(&Method::POST, "/whep/c%61m"), read("live/cam"));
        assert_eq!(need(&Method::POST, "/whep/%ff"), read("live/%ff"));
        assert_eq!(need(&Method::POST, "/whep/a%2"), read("live/a%2"));
    }
}
