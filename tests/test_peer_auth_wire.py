"""The swarm secret on the wire, against real daemons: captured from loopback with a
packet socket, it is never there, and what is there cannot be replayed."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Callable

import httpx

from swarm.chunking import MIN_CHUNK_SIZE
from swarm.peer_auth import WINDOW, Signer
from swarm.wire import PeerAuth
from tests.nodes import COMMIT, REPO, Node, wait_for
from tests.sniff import LoopbackCapture, request_heads
from tests.test_swarm import FILE, cached_bytes

CHUNK = MIN_CHUNK_SIZE


def exchange(host: str, port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send one raw request; (status, body) of the answer, read by its Content-Length."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            more = sock.recv(1 << 16)
            if not more:
                break
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        want = int(m[1]) if m else 0
        while len(body) < want and time.monotonic() < deadline:
            more = sock.recv(1 << 16)
            if not more:
                break
            body += more
    return int(head.split(b" ", 2)[1]), body


def secret_forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def test_the_secret_never_travels_and_captured_requests_do_not_replay(
    nodes: Callable[[str], Node],
) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    data = os.urandom(3 * CHUNK)
    fid = hashlib.sha256(data).hexdigest()
    a, b, c = nodes("127.0.0.2"), nodes("127.0.0.3"), nodes("127.0.0.4")
    a.add_model_file(FILE, data)
    c.add_model_file(FILE, data)  # another member holding the same file
    assert a.start("--swarm-secret", secret).returncode == 0
    assert c.start("--swarm-secret", secret).returncode == 0

    with LoopbackCapture(a.host, a.port) as cap:
        r = b.start("--swarm-secret", secret, "--bootstrap", f"{a.host}:{a.port}")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: (a.host, a.port) in b.client().find_providers(fid), 20, "B to find A")
        r = b.cli("model", "add", REPO, "--revision", COMMIT, timeout=60)
        assert r.returncode == 0, r.stderr
        assert cached_bytes(b) == data
        wait_for(lambda: bool(cap.datagrams()) and len(cap.streams()) > 1, 10, "the capture")
    streams, datagrams = cap.streams(), cap.datagrams()

    # 1. What crossed the wire to A: signed requests and MAC'd datagrams, never the secret.
    for form in secret_forms(secret):
        assert not any(form in s for s in streams + datagrams), form
    heads = [h for s in streams for h in request_heads(s)]
    blob_heads = [h for h in heads if h.startswith(f"GET /v1/blobs/{fid} ".encode())]
    assert blob_heads, heads[:5]
    assert all(b"Authorization: HFFS-HMAC-SHA256 t=" in h for h in heads), heads[:5]
    served = a.client().status()["bytes_up"]
    assert served >= len(data) // 3  # B did get bytes from A

    # 2. Each captured request, replayed verbatim to A: refused, not a byte of the file.
    for head in heads:
        status, body = exchange(a.host, a.port, head)
        assert status == 403 and data[:4096] not in body, head
    # ... to another member holding the file: refused too.
    for head in blob_heads:
        status, body = exchange(c.host, c.port, head)
        assert status == 403 and data[:4096] not in body
    # ... its signature on another path, method or range: refused.
    auth = re.search(rb"Authorization: [^\r]*", blob_heads[0])
    assert auth is not None
    for line in (
        f"GET /v1/blobs/{fid}/manifest HTTP/1.1",
        f"HEAD /v1/blobs/{fid} HTTP/1.1",
        f"GET /v1/blobs/{fid}?again HTTP/1.1",
        "GET /v1/ping HTTP/1.1",
    ):
        raw = (
            f"{line}\r\nHost: x\r\nRange: bytes=0-{CHUNK - 1}\r\n".encode() + auth[0] + b"\r\n\r\n"
        )
        status, body = exchange(a.host, a.port, raw)
        assert status == 403 and data[:4096] not in body, line

    # 3. Requests signed outside the clock window (a capture replayed later, or a
    # member's clock far off), and with a wrong secret: refused.
    with httpx.Client(timeout=10) as http:
        url = f"{a.url}/v1/blobs/{fid}"
        late = Signer(secret, clock=lambda: time.time() - WINDOW - 10)
        early = Signer(secret, clock=lambda: time.time() + WINDOW + 10)
        for auth_ in (PeerAuth(signer=late), PeerAuth(signer=early), PeerAuth("guess")):
            resp = http.get(url, auth=auth_)
            assert resp.status_code == 403 and data[:4096] not in resp.content
        assert a.client().status()["bytes_up"] == served  # nothing went out to any of them
        # ... while a fresh signature with the secret is served (the check is not vacuous).
        ok = http.get(url, auth=PeerAuth(secret), headers={"Range": "bytes=0-4095"})
        assert ok.status_code == 206 and ok.content == data[:4096]
