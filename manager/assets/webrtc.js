"use strict";
// What the /play (WHEP) and /publish (WHIP) pages share: the ICE servers the endpoint hands out
// (Link headers), a bounded wait for ICE gathering (the offer carries the candidates: no
// trickle), the offer/answer exchange itself, and the page around one session ([run]).

// Link: <turn:host>; rel="ice-server"; username="u"; credential="c"
function iceServersFrom(linkHeader) {
  if (!linkHeader) return [];
  return linkHeader.split(/,(?=\s*<)/).flatMap((link) => {
    const url = /<([^>]+)>/.exec(link);
    if (!url || !/rel="ice-server"/.test(link)) return [];
    const server = { urls: url[1] };
    const user = /username="([^"]*)"/.exec(link);
    const cred = /credential="([^"]*)"/.exec(link);
    if (user) server.username = user[1];
    if (cred) server.credential = cred[1];
    return [server];
  });
}

function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

// The endpoint's ICE servers, from the Link headers of its OPTIONS answer; none if it fails.
// The manager hands them only to a caller whose token may make the offer (`auth`).
async function offeredIceServers(url, auth) {
  try {
    const r = await fetch(url, { method: "OPTIONS", headers: { ...auth } });
    return iceServersFrom(r.headers.get("Link"));
  } catch (e) {
    return []; // host candidates only
  }
}

// POSTs `pc`'s offer to a WHEP or WHIP endpoint and applies the answer. Returns the session
// URL, or null after `status` showed the refusal (and the title says "error {status}").
async function exchange(url, pc, auth, label, status) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, 1500);
  const r = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", ...auth },
    body: pc.localDescription.sdp,
  });
  const body = await r.text();
  if (r.status !== 201) {
    status(label + " " + r.status + ": " + body.trim(), true);
    document.title = "error " + r.status;
    return null;
  }
  const session = new URL(r.headers.get("Location"), location.href).toString();
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  return session;
}

const $ = (id) => document.getElementById(id);

// The stream the page is for: the path after `prefix` ("/play/"), "{name}" (app "live") or
// "{app}/{name}".
function pageStream(prefix) {
  return decodeURIComponent(location.pathname.slice(prefix.length));
}

// With [auth] on: a token from ?token= (a shared link) or the dashboard's login.
function pageAuth() {
  const token = new URLSearchParams(location.search).get("token")
    || localStorage.getItem("verge.token");
  return token ? { Authorization: "Bearer " + token } : {};
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// Appends `name=value` for each of `names` in the stats entry `s` (0 until the browser has one).
function counters(lines, s, names) {
  for (const name of names) lines.push(name + "=" + (s[name] || 0));
}

// The video bytes `pc` has received so far.
async function videoBytes(pc) {
  let bytes = 0;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") bytes += s.bytesReceived || 0;
  });
  return bytes;
}

// Runs the page's session: `setup()` makes the peer connection, whose offer goes to `url`
// (`label`: WHEP or WHIP); its state shows in #status and `showStats(pc)` twice a second once
// answered; the session is deleted when the page goes, and a failure says so in the title.
// With `reoffer` (a player), media that stops for 2 s (the node serving it died, or the
// session ended) or a failed connection makes the page offer again, as any WHEP player should:
// the manager places the new session on a node that is alive. Retries back off from 0.5 s to
// 5 s; `window.vergeSessions` counts the sessions answered.
function run(url, auth, label, setup, showStats, reoffer) {
  let sessionUrl = null;
  let attempt = 0;
  window.vergeSessions = 0;
  window.addEventListener("pagehide", () => {
    if (sessionUrl) fetch(sessionUrl, { method: "DELETE", headers: auth, keepalive: true });
  });
  const fail = (e) => { status(String(e), true); document.title = "error"; };
  const retry = () => {
    const delay = Math.min(500 * 2 ** attempt, 5000);
    attempt += 1;
    setTimeout(() => start().catch(fail), delay);
  };
  const watch = (pc) => {
    const began = Date.now();
    let lastBytes = 0;
    let stalledSince = null;
    const timer = setInterval(async () => {
      await showStats(pc);
      if (!reoffer) return;
      const bytes = await videoBytes(pc);
      if (bytes > lastBytes) {
        lastBytes = bytes;
        stalledSince = null;
      } else if (stalledSince === null) {
        stalledSince = Date.now();
      }
      // The first bytes may take a TURN allocation's time; after them, 2 s of nothing is a stop.
      const stalled = stalledSince !== null
        && Date.now() - stalledSince > 2000 && (lastBytes > 0 || Date.now() - began > 8000);
      const dead = pc.connectionState === "failed" || pc.connectionState === "closed";
      if (!stalled && !dead) return;
      clearInterval(timer);
      const old = sessionUrl;
      sessionUrl = null;
      if (old) fetch(old, { method: "DELETE", headers: auth }).catch(() => {});
      pc.close();
      status("media stopped: offering again…", false);
      retry();
    }, 500);
  };
  const start = async () => {
    const pc = await setup();
    pc.onconnectionstatechange = () => status("connection: " + pc.connectionState,
      pc.connectionState === "failed");
    sessionUrl = await exchange(url, pc, auth, label, status);
    if (!sessionUrl) {
      pc.close();
      if (reoffer) retry();
      return;
    }
    window.vergeSessions += 1;
    attempt = 0;
    watch(pc);
  };
  start().catch(fail);
}
