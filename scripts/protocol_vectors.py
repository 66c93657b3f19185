#!/usr/bin/env python3
"""Verge wire-protocol test vectors, computed independently of the Rust code.

The vectors in docs/protocol.md ("Test vectors") come from this script, and
protocol/tests/vectors.rs checks the same values against verge-protocol (V6,
the tunnel packet, tunnel/tests/vectors.rs against verge-tunnel). It
follows docs/protocol.md only (not the Rust source) and uses the standard
library for HMAC-SHA256 and HKDF-SHA256, and the `cryptography` package for
ChaCha20-Poly1305 (`pip install --user cryptography` if it is missing).

    python3 scripts/protocol_vectors.py          # prints every vector
    python3 scripts/protocol_vectors.py --check  # also runs the self-checks only

It also holds a reference of the receiving side a Python agent needs (raw body
extraction, envelope opening, unsealing), exercised on the vectors below.
"""

import base64
import hashlib
import hmac
import json
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_PAYLOAD = 1024 * 1024
PROTOCOL_VERSION = 1


# --- keys -------------------------------------------------------------------------------------


def derive_agent_secret(enrollment_secret: str, agent_id: str) -> str:
    """docs/protocol.md "Enrollment": lowercase hex of HMAC-SHA256(enrollment, "verge-agent-secret/v1/{id}")."""
    message = ("verge-agent-secret/v1/" + agent_id).encode("utf-8")
    return hmac.new(enrollment_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869, written out so the vectors do not rest on one library."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    okm = okm[:length]
    # Cross-check with the cryptography package's HKDF.
    other = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
    assert other == okm, "HKDF implementations disagree"
    return okm


def private_key(agent_secret: str) -> bytes:
    """docs/protocol.md "Sealed bodies": the RPC body key."""
    return hkdf_sha256(b"verge/private/v1", agent_secret.encode("utf-8"), b"rpc")


AAD_REQUEST = b"verge/rpc/request"
AAD_REPLY = b"verge/rpc/reply"


# --- envelope ---------------------------------------------------------------------------------


def mac_input(kind: str, sender: str, ts: int, body: bytes) -> bytes:
    parts = [b"verge/v1", kind.encode("utf-8"), sender.encode("utf-8"), str(ts).encode("ascii"), body]
    return b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def mac(agent_secret: str, kind: str, sender: str, ts: int, body: bytes) -> str:
    key = agent_secret.encode("utf-8")  # the secret's text, never hex-decoded
    return hmac.new(key, mac_input(kind, sender, ts, body), hashlib.sha256).hexdigest()


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def seal_envelope(agent_secret: str, kind: str, sender: str, ts: int, body_text: str) -> bytes:
    """Builds the payload by concatenation, so the body bytes are exactly the MAC'd ones."""
    body = body_text.encode("utf-8")
    tag = mac(agent_secret, kind, sender, ts, body)
    return (
        '{"v":1,"kind":' + compact(kind) + ',"from":' + compact(sender) + ',"ts":' + str(ts)
        + ',"body":' + body_text + ',"mac":"' + tag + '"}'
    ).encode("utf-8")


def seal_body(agent_secret: str, aad: bytes, value, nonce: bytes) -> dict:
    """{"sealed": base64(nonce ‖ ciphertext ‖ tag)}; a real sender draws a random nonce."""
    assert len(nonce) == 12
    plaintext = compact(value).encode("utf-8")
    sealed = ChaCha20Poly1305(private_key(agent_secret)).encrypt(nonce, plaintext, aad)
    return {"sealed": base64.b64encode(nonce + sealed).decode("ascii")}


# --- receiving (reference for a Python agent) ---------------------------------------------------

_WS = " \t\n\r"


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def raw_members(text: str) -> dict:
    """The exact source text of every top-level member of a JSON object. Duplicate names
    are refused (the Rust reader refuses duplicate envelope fields too)."""
    decoder = json.JSONDecoder()
    out = {}
    i = _skip(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _skip(text, i + 1)
    if text[i : i + 1] == "}":
        i = _skip(text, i + 1)
    else:
        while True:
            if text[i : i + 1] != '"':
                raise ValueError("expected a member name")
            name, i = json.decoder.scanstring(text, i + 1)
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                raise ValueError("expected ':'")
            i = _skip(text, i + 1)
            _, end = decoder.raw_decode(text, i)
            if name in out:
                raise ValueError(f"duplicate member {name!r}")
            out[name] = text[i:end]
            i = _skip(text, end)
            if text[i : i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i : i + 1] == "}":
                i = _skip(text, i + 1)
                break
            raise ValueError("expected ',' or '}'")
    if i != len(text):
        raise ValueError("trailing characters after the object")
    return out


def _is_u64(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


def open_envelope(payload: bytes, agent_secret: str, kind: str):
    """Checks in the normative order: size, JSON shape, version, kind, MAC, body."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("too large")
    text = payload.decode("utf-8")  # strict: invalid UTF-8 is malformed
    members = raw_members(text)
    v = json.loads(members["v"]) if "v" in members else None
    if not _is_u64(v):
        raise ValueError("malformed: v")
    if v != PROTOCOL_VERSION:
        raise ValueError(f"unsupported version {v}")
    try:
        got_kind = json.loads(members["kind"])
        sender = json.loads(members["from"])
        ts = json.loads(members["ts"])
        body_raw = members["body"]
        given = json.loads(members["mac"])
    except KeyError as missing:
        raise ValueError(f"malformed: no {missing}")
    if not (isinstance(got_kind, str) and isinstance(sender, str) and _is_u64(ts) and isinstance(given, str)):
        raise ValueError("malformed: field types")
    if got_kind != kind:
        raise ValueError(f"wrong kind {got_kind!r}")
    if len(given) % 2 or any(c not in "0123456789abcdefABCDEF" for c in given):
        raise ValueError("bad mac")
    want = mac(agent_secret, got_kind, sender, ts, body_raw.encode("utf-8"))
    if not hmac.compare_digest(bytes.fromhex(want), bytes.fromhex(given)):
        raise ValueError("bad mac")
    return sender, ts, json.loads(body_raw)


def open_body(agent_secret: str, aad: bytes, value):
    if not (isinstance(value, dict) and len(value) == 1 and isinstance(value.get("sealed"), str)):
        raise ValueError("not sealed")
    raw = base64.b64decode(value["sealed"], validate=True)
    if len(raw) < 12 + 16:
        raise ValueError("sealed body too short")
    plain = ChaCha20Poly1305(private_key(agent_secret)).decrypt(raw[:12], raw[12:], aad)
    return json.loads(plain)


# --- tunnel -----------------------------------------------------------------------------------


def tunnel_key(agent_secret: str, label: bytes, context: bytes, epoch: bytes) -> bytes:
    info = label + struct.pack(">Q", len(context)) + context + epoch
    return hkdf_sha256(b"verge/tunnel/v1", agent_secret.encode("utf-8"), info)


def tunnel_packet(agent_secret: str, label: bytes, context: bytes, epoch: bytes, counter: int, frames: bytes) -> bytes:
    header = bytes([1]) + epoch + struct.pack(">Q", counter)
    nonce = b"\0\0\0\0" + struct.pack(">Q", counter)
    key = tunnel_key(agent_secret, label, context, epoch)
    return header + ChaCha20Poly1305(key).encrypt(nonce, frames, header)


def frame_keepalive(token: int, reply: bool) -> bytes:
    return bytes([0x06]) + struct.pack(">I", 0) + struct.pack(">Q", token) + bytes([1 if reply else 0])


def frame_open(stream: int, window: int, target: str) -> bytes:
    t = target.encode("utf-8")
    return bytes([0x01]) + struct.pack(">I", stream) + struct.pack(">I", window) + bytes([len(t)]) + t


def frame_data(stream: int, offset: int, data: bytes) -> bytes:
    return bytes([0x02]) + struct.pack(">I", stream) + struct.pack(">Q", offset) + struct.pack(">H", len(data)) + data


# --- the vectors ------------------------------------------------------------------------------


def main() -> None:
    out = []

    def show(label, value):
        out.append(f"{label}: {value}")

    # 1. MAC with a plain secret.
    secret1 = "s3cret"
    body1 = compact({"seq": 1, "streams": []})
    show("V1 secret", secret1)
    show("V1 kind/from/ts", "state / edge-1 / 42")
    show("V1 body", body1)
    show("V1 mac input (hex)", mac_input("state", "edge-1", 42, body1.encode()).hex())
    show("V1 mac", mac(secret1, "state", "edge-1", 42, body1.encode()))
    env1 = seal_envelope(secret1, "state", "edge-1", 42, body1)
    show("V1 envelope", env1.decode())
    # The same message written by a serializer with spaces: the MAC covers these bytes.
    body1s = '{"seq": 1, "streams": []}'
    mac1s = mac(secret1, "state", "edge-1", 42, body1s.encode())
    env1s = ('{"v": 1, "kind": "state", "from": "edge-1", "ts": 42, "body": ' + body1s + ', "mac": "' + mac1s + '"}').encode()
    show("V1s envelope (spaced)", env1s.decode())
    assert open_envelope(env1, secret1, "state") == ("edge-1", 42, {"seq": 1, "streams": []})
    assert open_envelope(env1s, secret1, "state") == ("edge-1", 42, {"seq": 1, "streams": []})

    # 2. Enrollment.
    enrollment = "correct horse battery staple"
    agent = "edge-1"
    secret = derive_agent_secret(enrollment, agent)
    show("V2 enrollment secret", enrollment)
    show("V2 agent id", agent)
    show("V2 agent secret", secret)

    # 3. A presence envelope signed with the derived secret (its 64-character text).
    presence = {
        "status": "online",
        "version": "0.1.0",
        "started_at": 1763000000000,
        "session": 1763000000123,
        "capabilities": ["rpc", "rtmp", "http-flv"],
        "rtmp_url": "rtmp://192.168.1.20:1935",
        "http_url": "http://192.168.1.20:7001",
        "keepalive_secs": 10,
        "pub_max": 4,
        "sub_max": 64,
    }
    body3 = compact(presence)
    env3 = seal_envelope(secret, "presence", agent, 1763000000125, body3)
    show("V3 body", body3)
    show("V3 mac", mac(secret, "presence", agent, 1763000000125, body3.encode()))
    show("V3 envelope", env3.decode())
    assert open_envelope(env3, secret, "presence")[2] == presence

    # 4. Sealed bodies.
    key = private_key(secret)
    show("V4 private key (hex)", key.hex())
    nonce_req = bytes(range(0, 12))
    nonce_rep = bytes(range(12, 24))
    params = seal_body(secret, AAD_REQUEST, None, nonce_req)
    result = seal_body(secret, AAD_REPLY, {"agent_time": 1763000001002}, nonce_rep)
    show("V4 request nonce", nonce_req.hex())
    show("V4 request plaintext", compact(None))
    show("V4 request params", compact(params))
    show("V4 reply nonce", nonce_rep.hex())
    show("V4 reply plaintext", compact({"agent_time": 1763000001002}))
    show("V4 reply result", compact(result))
    assert open_body(secret, AAD_REQUEST, params) is None
    assert open_body(secret, AAD_REPLY, result) == {"agent_time": 1763000001002}
    try:
        open_body(secret, AAD_REPLY, params)
        raise AssertionError("a request's params opened as a reply")
    except Exception as e:  # InvalidTag
        assert not isinstance(e, AssertionError)

    # 5. A ping exchange: request (manager -> agent) and reply (agent -> manager).
    request = {"id": 123456789, "method": "ping", "params": params, "timeout_ms": 500, "reply_to": "manager"}
    env5q = seal_envelope(secret, "request", "manager", 1763000001000, compact(request))
    reply = {"id": 123456789, "result": {"ok": result}}
    env5r = seal_envelope(secret, "reply", agent, 1763000001003, compact(reply))
    show("V5 request envelope", env5q.decode())
    show("V5 reply envelope", env5r.decode())
    assert open_envelope(env5q, secret, "request")[2] == request
    assert open_envelope(env5r, secret, "reply")[2] == reply
    err = {"id": 123456789, "result": {"err": {"code": "busy", "message": "too many calls in flight on this agent"}}}
    env5e = seal_envelope(secret, "reply", agent, 1763000001003, compact(err))
    show("V5 error reply envelope", env5e.decode())

    # 6. A tunnel packet, manager -> agent, first of its epoch.
    epoch = struct.pack(">Q", 1763000000000) + bytes.fromhex("0123456789abcdef")
    frames = frame_keepalive(7, False) + frame_open(1, 65536, "http") + frame_data(1, 0, b"GET / HTTP/1.0\r\n\r\n")
    show("V6 epoch", epoch.hex())
    show("V6 tunnel key (manager->agent, context 'manager')", tunnel_key(secret, b"manager->agent", b"manager", epoch).hex())
    show("V6 frames", frames.hex())
    show("V6 packet (counter 0)", tunnel_packet(secret, b"manager->agent", b"manager", epoch, 0, frames).hex())

    print("\n".join(out))


if __name__ == "__main__":
    main()
    if "--check" in sys.argv:
        print("self-checks passed")
