// The publisher page (`GET /publish/{stream}`), inside assets/page.html.
"use strict";
// Publishes this browser's camera and microphone over WHIP to the stream named by the path
// after /publish/: "{name}" (app "live") or "{app}/{name}". ?agent={id} picks the box when the
// stream's key is not bound to one; ?token= (or the dashboard's login) when [auth] is on.
const stream = pageStream("/publish/");
const params = new URLSearchParams(location.search);
const whipUrl = "/whip/" + stream + (params.get("agent") ? "?agent=" + encodeURIComponent(params.get("agent")) : "");
const auth = pageAuth();
$("name").textContent = "publishing " + stream;
// The page's peer connection, global so that tests can read it from the page.
let pc = null;

async function setup() {
  const media = await navigator.mediaDevices.getUserMedia({
    video: { width: 1280, height: 720, frameRate: 30 }, audio: true });
  $("video").srcObject = media;
  const iceServers = await offeredIceServers(whipUrl, auth);
  pc = new RTCPeerConnection({ iceServers });
  for (const track of media.getTracks()) {
    const t = pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
    // The box takes H.264 only: offer it first (and only), so the browser does not pick VP8.
    if (track.kind === "video" && RTCRtpSender.getCapabilities) {
      const h264 = RTCRtpSender.getCapabilities("video").codecs
        .filter((c) => c.mimeType === "video/H264" && /packetization-mode=1/.test(c.sdpFmtpLine || ""));
      if (h264.length) t.setCodecPreferences(h264);
    }
  }
  return pc;
}

async function showStats(pc) {
  const report = await pc.getStats();
  const lines = [];
  report.forEach((s) => {
    if (s.type !== "outbound-rtp") return;
    if (s.kind === "video") {
      counters(lines, s, ["framesSent", "frameWidth", "nackCount", "pliCount"]);
      const codec = s.codecId && report.get(s.codecId);
      if (codec) lines.push("videoCodec=" + codec.mimeType);
    } else if (s.kind === "audio") {
      lines.push("audioPacketsSent=" + (s.packetsSent || 0));
    }
  });
  lines.push("connection=" + pc.connectionState);
  $("stats").textContent = lines.join("\n");
  document.title = "connection=" + pc.connectionState;
}

run(whipUrl, auth, "WHIP", setup, showStats);
