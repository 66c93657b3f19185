#!/usr/bin/env python3
"""A minimal Verge agent, written from docs/protocol.md only (conformance test).

    python3 tests/conformance/agent.py --broker 127.0.0.1:1883 --id py-1 --secret S \
        [--prefix verge] [--ready-file PATH] [--keepalive 10]

What it does (section numbers of docs/protocol.md):
- 3: one paho client per connection attempt, client id "{id}:{session:x}", username = id,
  password = secret, clean session, MQTT 3.1.1, last will = the session's offline presence;
  after CONNACK it subscribes to "{p}/v1/a/{id}/+" and "{p}/v1/ask" and, on the SUBACK,
  publishes its online presence and its state (retained, QoS 1).
- 8.1: asked on "{p}/v1/ask", it publishes both again, at most once per 2 s.
- 5: envelopes signed with HMAC-SHA256 over length-prefixed parts, the body's raw bytes
  (opened by the reference receiver, `open_envelope` of scripts/protocol_vectors.py).
- 7: ChaCha20-Poly1305 sealed RPC params and results.
- 10: bounded, content-based healing of its retained presence and state.
- 11, 13: `ping` and `agent.revoked`; forged requests dropped, replays dropped, stale
  requests answered `stale`; ids echoed in the form they came.
On SIGTERM/SIGINT it publishes its offline presence, waits for the PUBACK and disconnects.

It logs one line per request to stderr: "answered ping id=…", "refused forged request …",
"refused replayed request id=…", "refused stale request id=…", …
Dependencies: paho-mqtt (1.x or 2.x) and cryptography.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import signal
import struct
import sys
import time

# The receiving side's reference (docs/protocol.md 5.4): envelopes are opened by it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

try:
    from protocol_vectors import open_envelope as reference_open_envelope
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as missing:  # pragma: no cover
    sys.stderr.write(f"agent.py needs paho-mqtt and cryptography: {missing}\n")
    sys.exit(3)

VERSION = "0.1.0-conformance"
MAX_REQUEST_SKEW_MS = 120_000  # 13.2
HEAL_MIN_INTERVAL_MS = 5_000  # 10
HEAL_MAX_REPAIRS = 3  # 10
AAD_REQUEST = b"verge/rpc/request"  # 7
AAD_REPLY = b"verge/rpc/reply"
U64_MAX = 2**64 - 1
ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def log(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    sys.stderr.flush()


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def is_u64(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U64_MAX


# --- envelope (5) -----------------------------------------------------------------------------


def mac_hex(secret: str, kind: str, sender: str, ts: int, body: bytes) -> str:
    parts = [b"verge/v1", kind.encode(), sender.encode(), str(ts).encode("ascii"), body]
    message = b"".join(struct.pack(">Q", len(p)) + p for p in parts)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def seal_envelope(secret: str, kind: str, sender: str, body) -> bytes:
    body_text = compact(body)  # serialized once; these are the signed bytes
    ts = now_ms()
    tag = mac_hex(secret, kind, sender, ts, body_text.encode("utf-8"))
    return (
        '{"v":1,"kind":' + compact(kind) + ',"from":' + compact(sender) + ',"ts":' + str(ts)
        + ',"body":' + body_text + ',"mac":"' + tag + '"}'
    ).encode("utf-8")


class Refused(Exception):
    """A message refused at one of the steps of 5.4; `step` names it."""

    def __init__(self, step: str, detail: str = ""):
        super().__init__(f"{step}: {detail}" if detail else step)
        self.step = step


def open_envelope(payload: bytes, secret: str, kind: str):
    """5.4, in its order, by the reference receiver. Returns (from, ts, body value)."""
    try:
        return reference_open_envelope(payload, secret, kind)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
        raise Refused("bad_mac" if str(e).startswith("bad mac") else "malformed", str(e))


# --- sealed bodies (6.3, 7) -------------------------------------------------------------------


class Private:
    def __init__(self, secret: str):
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"verge/private/v1", info=b"rpc").derive(
            secret.encode("utf-8")
        )
        self.aead = ChaCha20Poly1305(key)

    def seal(self, aad: bytes, value) -> dict:
        nonce = os.urandom(12)
        sealed = self.aead.encrypt(nonce, compact(value).encode("utf-8"), aad)
        return {"sealed": base64.b64encode(nonce + sealed).decode("ascii")}

    def open(self, aad: bytes, value):
        if not (isinstance(value, dict) and len(value) == 1 and isinstance(value.get("sealed"), str)):
            raise ValueError("not sealed")
        text = value["sealed"]
        try:
            raw = base64.b64decode(text, validate=True)
        except Exception:
            raise ValueError("malformed")
        if base64.b64encode(raw).decode("ascii") != text or len(raw) < 28:
            raise ValueError("malformed")
        try:
            plain = self.aead.decrypt(raw[:12], raw[12:], aad)
        except Exception:
            raise ValueError("does not decrypt")
        return json.loads(plain)


# --- RPC (11) ---------------------------------------------------------------------------------


def request_id(raw):
    """11.2: a u64 JSON number, or a JSON string of decimal digits whose value fits in u64.
    Returns the numeric identity, or None."""
    if is_u64(raw):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,20}", raw) and int(raw) <= U64_MAX:
        return int(raw)
    return None


class ReplayGuard:
    """13.1: accepted (reply_to, id) pairs, each kept until the agent's clock passes the
    request's ts + MAX_REQUEST_SKEW_MS (bounded by expiry, never by count, so no pair whose
    request could still pass the freshness check is forgotten)."""

    def __init__(self):
        self.seen = {}

    def accept(self, reply_to: str, rid: int, ts: int) -> bool:
        now = now_ms()
        if len(self.seen) > 1024:
            self.seen = {k: exp for k, exp in self.seen.items() if exp >= now}
        key = (reply_to, rid)
        if key in self.seen:
            return False
        self.seen[key] = max(ts, now) + MAX_REQUEST_SKEW_MS
        return True


# --- the agent --------------------------------------------------------------------------------


class Agent:
    def __init__(self, args):
        self.id = args.id
        self.secret = args.secret
        self.prefix = args.prefix.strip("/")
        self.host, port = args.broker.rsplit(":", 1)
        self.port = int(port)
        self.keepalive = args.keepalive
        self.ready_file = args.ready_file
        self.private = Private(self.secret)
        self.started_at = now_ms()
        self.session = 0
        self.replay = ReplayGuard()
        self.stopping = False
        self.revoked = False
        self.state_seq = 0
        base = f"{self.prefix}/v1/a/{self.id}"
        self.t_presence = f"{base}/presence"
        self.t_state = f"{base}/state"
        self.t_req = f"{base}/req"
        self.t_keys = f"{base}/keys"
        self.filter = f"{base}/+"
        self.t_ask = f"{self.prefix}/v1/ask"
        self.last_answer = 0  # 8.1: when we last answered an ask (ms)
        self.ask_pending = False

    # bodies (8, 9)
    def presence(self, status: str) -> dict:
        return {
            "status": status,
            "version": VERSION,
            "started_at": self.started_at,
            "session": self.session,
            "capabilities": ["rpc"],
            "keepalive_secs": self.keepalive,
        }

    def state(self) -> dict:
        return {"seq": self.state_seq, "streams": []}

    def envelope(self, kind: str, body) -> bytes:
        return seal_envelope(self.secret, kind, self.id, body)

    # connection (3)
    def new_client(self):
        client_id = f"{self.id}:{self.session:x}"
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho 2.x
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=True,
                protocol=mqtt.MQTTv311,
                reconnect_on_failure=False,
            )
        else:  # paho 1.x
            client = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
        client.username_pw_set(self.id, self.secret)
        client.will_set(self.t_presence, self.envelope("presence", self.presence("offline")), qos=1, retain=True)
        client.on_connect = self.on_connect
        client.on_subscribe = self.on_subscribe
        client.on_message = self.on_message
        client.on_publish = self.on_publish
        client.on_unsubscribe = self.on_publish  # both only record the acknowledged mid
        return client

    def run(self) -> int:
        backoff = 0.2
        while not self.stopping:
            self.session = max(now_ms(), self.session + 1)
            self.reset_connection_state()
            client = self.new_client()
            self.client = client
            try:
                client.connect(self.host, self.port, keepalive=self.keepalive)
            except OSError as e:
                log(f"connect to {self.host}:{self.port} failed: {e}")
                time.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 30.0)
                continue
            while not self.stopping and not self.revoked:
                rc = client.loop(timeout=0.2)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    log(f"connection lost (rc={rc})")
                    break
                self.heal_due()
                self.ask_due()
                if self.announced:
                    backoff = 0.2
            if self.revoked:
                client.loop(timeout=0.2)  # flush the reply
                client.disconnect()  # discards the will: no presence at all (11.6)
                log("revoked: disconnected, not reconnecting")
                return 0
            if self.stopping:
                self.goodbye(client)
                return 0
            time.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 30.0)
        return 0

    def reset_connection_state(self):
        self.announced = False
        self.subscribe_mid = None
        self.acked = set()
        # healing (10): per topic, last published body, last received (matches?), repairs
        self.heal = {
            topic: {"body": None, "ok": True, "echoed": False, "last": 0, "repairs": 0, "kind": kind}
            for topic, kind in ((self.t_presence, "presence"), (self.t_state, "state"))
        }

    def goodbye(self, client):
        """3, "Goodbye": offline presence (acknowledged), then DISCONNECT. The agent first
        unsubscribes, so that nothing arrives unread when the socket closes (a close with unread
        input sends a reset, which can make the broker lose the DISCONNECT and publish the will)."""
        deadline = time.monotonic() + 5

        def pump(done) -> None:
            while not done() and time.monotonic() < deadline:
                if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                    return

        if self.announced:
            _, mid = client.unsubscribe([self.filter, self.t_ask])
            pump(lambda: mid in self.acked)
        info = client.publish(self.t_presence, self.envelope("presence", self.presence("offline")), qos=1, retain=True)
        pump(lambda: info.mid in self.acked)
        client.disconnect()
        client.loop(timeout=0.1)
        log("published offline presence and disconnected")

    def on_connect(self, client, userdata, flags, rc, properties=None):
        code = getattr(rc, "value", rc)
        if code != 0:
            log(f"broker refused the connection: {rc}")
            return
        log(f"connected as {self.id}:{self.session:x}")
        # 3: subscribe before announcing; the fleet's ask (8.1) in the same SUBSCRIBE
        result, mid = client.subscribe([(self.filter, 1), (self.t_ask, 0)])
        self.subscribe_mid = mid

    def on_subscribe(self, client, userdata, mid, granted, properties=None):
        if mid != self.subscribe_mid:
            return
        codes = [getattr(g, "value", g) for g in granted]
        if any(c not in (0, 1, 2) for c in codes):
            log(f"subscription refused: {codes}")
            client.disconnect()
            return
        self.publish_retained(self.t_presence, self.presence("online"))
        self.publish_retained(self.t_state, self.state())
        self.announced = True
        log(f"announced online (session {self.session})")
        if self.ready_file:
            tmp = self.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"id": self.id, "session": self.session}, f)
            os.replace(tmp, self.ready_file)

    def on_publish(self, client, userdata, mid, *rest):
        self.acked.add(mid)

    def publish_retained(self, topic: str, body):
        """An ordinary publish (10.6): becomes the new "last published" body."""
        h = self.heal[topic]
        h["body"] = body
        h["ok"] = True
        self.client.publish(topic, self.envelope(h["kind"], body), qos=1, retain=True)

    # healing (10)
    def on_retained_echo(self, topic: str, payload: bytes):
        h = self.heal[topic]
        if h["body"] is None:
            return  # 10.2: nothing published yet on this connection
        matches = False
        if payload:
            try:
                sender, _ts, body = open_envelope(payload, self.secret, h["kind"])
                if sender == self.id:
                    if body == h["body"]:
                        matches = True
                        h["echoed"] = True
                    elif h["kind"] == "presence" and is_u64(body.get("session")) and body["session"] > self.session:
                        log(f"presence of a newer session {body['session']} seen; not repairing")
                        h["ok"] = True
                        return
            except (Refused, ValueError, AttributeError):
                pass
        if not h["echoed"]:
            # 10.2 (MAY): the previous process's retained message can arrive after the SUBACK,
            # so after this connection's announcement left; ignore all before our own echo.
            return
        h["ok"] = matches

    def heal_due(self):
        if not self.announced:
            return
        now = now_ms()
        for topic, h in self.heal.items():
            if h["ok"] or h["body"] is None:
                continue
            if h["repairs"] >= HEAL_MAX_REPAIRS:
                if h["repairs"] == HEAL_MAX_REPAIRS:
                    log(f"warning: {topic} replaced again after {HEAL_MAX_REPAIRS} repairs; not repairing until reconnect")
                    h["repairs"] += 1
                continue
            if h["last"] and now - h["last"] < HEAL_MIN_INTERVAL_MS:
                continue
            h["repairs"] += 1
            h["last"] = now
            h["ok"] = True
            self.client.publish(topic, self.envelope(h["kind"], h["body"]), qos=1, retain=True)
            log(f"repaired {topic} ({h['repairs']}/{HEAL_MAX_REPAIRS})")

    # asked to announce (8.1)
    def on_ask(self, payload: bytes):
        if len(payload) > 1024:
            return
        try:
            asked = json.loads(payload)
        except ValueError:
            return
        if isinstance(asked, dict):
            self.ask_pending = True

    def ask_due(self):
        if not (self.ask_pending and self.announced) or now_ms() - self.last_answer < 2000:
            return
        self.ask_pending = False
        self.last_answer = now_ms()
        self.publish_retained(self.t_presence, self.presence("online"))
        self.publish_retained(self.t_state, self.state())
        log("asked: announced again")

    # messages
    def on_message(self, client, userdata, msg):
        if msg.topic == self.t_req:
            self.on_request(msg.payload)
        elif msg.topic == self.t_ask:
            self.on_ask(msg.payload)
        elif msg.topic in self.heal:
            self.on_retained_echo(msg.topic, msg.payload)
        # keys, idx, ack:{mgr}, tun:{mgr}: not implemented by this minimal agent (18.9)

    def reply(self, reply_to: str, raw_id, result: dict):
        body = {"id": raw_id, "result": result}  # raw_id: the id as it came (number or string)
        self.client.publish(f"{self.prefix}/v1/m/{reply_to}/res", self.envelope("reply", body), qos=0, retain=False)

    def on_request(self, payload: bytes):
        # 11.3 step 1: open with the agent's own secret, kind `request`.
        try:
            _sender, ts, body = open_envelope(payload, self.secret, "request")
        except Refused as e:
            what = "forged" if e.step == "bad_mac" else "invalid"
            log(f"refused {what} request: {e}")
            return
        # 5.4 step 7: the body's structure (11.1).
        if not isinstance(body, dict):
            log("refused invalid request: body is not an object")
            return
        raw_id = body.get("id")
        rid = request_id(raw_id)
        method = body.get("method")
        timeout_ms = body.get("timeout_ms")
        reply_to = body.get("reply_to")
        if rid is None or not isinstance(method, str) or not is_u64(timeout_ms) or not isinstance(reply_to, str):
            log(f"refused invalid request: bad body {compact(body)[:200]}")
            return
        shown = compact(raw_id)
        # step 2
        if not ID_RE.match(reply_to):
            log(f"refused request id={shown}: reply_to {reply_to!r} is not an id")
            return
        # step 3: freshness (13.2)
        now = now_ms()
        if abs(ts - now) > MAX_REQUEST_SKEW_MS:
            skew = (now - ts) / 1000
            message = f"request ts {ts} is {abs(skew):.1f} s from agent time {now}"
            self.reply(reply_to, raw_id, {"err": {"code": "stale", "message": message}})
            log(f"refused stale request id={shown}: {message}")
            return
        # step 4: replay (13.1)
        if not self.replay.accept(reply_to, rid, ts):
            log(f"refused replayed request id={shown} reply_to={reply_to}")
            return
        # step 5
        if method == "agent.revoked":
            self.reply(reply_to, raw_id, {"ok": self.private.seal(AAD_REPLY, None)})
            log(f"answered agent.revoked id={shown}")
            self.revoked = True
            return
        # step 6: calls run one at a time here, never more than the maximum.
        # step 7
        try:
            params = self.private.open(AAD_REQUEST, body.get("params"))
        except ValueError as e:
            self.reply(reply_to, raw_id, {"err": {"code": "invalid_params", "message": f"params: {e}"}})
            log(f"refused request id={shown}: invalid params ({e})")
            return
        # step 8
        if method == "ping":
            result = {"agent_time": now_ms()}
        else:
            self.reply(reply_to, raw_id, {"err": {"code": "unknown_method", "message": f"no method {method}"}})
            log(f"answered {method} id={shown}: unknown_method")
            return
        del params
        # step 9
        self.reply(reply_to, raw_id, {"ok": self.private.seal(AAD_REPLY, result)})
        log(f"answered ping id={shown} reply_to={reply_to}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="HOST:PORT")
    parser.add_argument("--id", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--prefix", default="verge")
    parser.add_argument("--ready-file")
    parser.add_argument("--keepalive", type=int, default=10)
    args = parser.parse_args()
    if not ID_RE.match(args.id):
        parser.error("--id: 1 to 64 of A-Z a-z 0-9 - _ .")
    agent = Agent(args)

    def stop(signum, frame):
        agent.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"verge conformance agent {agent.id}, paho-mqtt {paho.mqtt.__version__}")
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
