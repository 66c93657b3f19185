// The player page (`GET /play/{stream}`), inside assets/page.html.
"use strict";
const stream = pageStream("/play/");
const whepUrl = "/whep/" + stream;
const auth = pageAuth();
$("name").textContent = stream;
// The page's peer connection, global so that tests can read it from the page.
let pc = null;

async function setup() {
  const iceServers = await offeredIceServers(whepUrl, auth);
  // ?policy=relay: only TURN relays (to check a TURN setup, or to hide one's address).
  const policy = new URLSearchParams(location.search).get("policy") === "relay" ? "relay" : "all";
  pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: policy });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.ontrack = (e) => {
    if (e.track.kind !== "video") return;
    $("video").srcObject = e.streams[0] || new MediaStream([e.track]);
  };
  return pc;
}

async function showStats(pc) {
  const report = await pc.getStats();
  const lines = [];
  report.forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    if (s.kind === "video") {
      counters(lines, s, [
        "framesDecoded", "framesReceived", "frameWidth", "frameHeight", "bytesReceived",
        "packetsLost", "keyFramesDecoded", "framesPerSecond", "freezeCount",
      ]);
      lines.push("totalFreezesDuration=" + Math.round((s.totalFreezesDuration || 0) * 1000));
      // When these counts were taken (ms): rates come out right whenever the page is read.
      lines.push("statsAtMs=" + Math.round(s.timestamp));
      document.title = "framesDecoded=" + (s.framesDecoded || 0);
    } else if (s.kind === "audio") {
      lines.push("audioSamplesReceived=" + (s.totalSamplesReceived || 0));
      // Energy is tiny for quiet audio: shown in millionths so that it reads as an integer.
      lines.push("audioEnergy=" + Math.round((s.totalAudioEnergy || 0) * 1e6));
      lines.push("audioConcealedSamples=" + (s.concealedSamples || 0));
      lines.push("audioPacketsLost=" + (s.packetsLost || 0));
    }
  });
  report.forEach((s) => {
    if (s.type !== "candidate-pair" || !s.nominated || s.state !== "succeeded") return;
    const local = report.get(s.localCandidateId);
    if (local) lines.push("candidateType=" + local.candidateType);
  });
  lines.push("connection=" + pc.connectionState);
  $("stats").textContent = lines.join("\n");
}

run(whepUrl, auth, "WHEP", setup, showStats, true);
