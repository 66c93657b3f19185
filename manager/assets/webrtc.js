"use strict";
// What the /play (WHEP) and /publish (WHIP) pages share: the ICE servers a Link header hands
// out, and a bounded wait for ICE gathering (the offer carries the candidates: no trickle).

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
