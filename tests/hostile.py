"""Hostile peers and cache checks shared by the fault and security suites.

`FakePeer` speaks the peer wire protocol (``/v1/ping``, ``/v1/blobs/{id}[/manifest|/have]``,
``/v1/repos/...``) from a uvicorn thread on a loopback address, and can lie in every way a
peer can: a manifest of other bytes, wrong chunk bytes, a have-bitmap it cannot honour, a body
that never comes. It records every request's Authorization header, so a test can prove what
was (never) sent to peers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import uvicorn
from starlette.types import Receive, Scope, Send

from swarm.manifest import Manifest, chunk_digest
from swarm.peer_server import RangeError, parse_range
from swarm.wire import encode_have

BlobMode = Literal["serve", "stall", "404", "416", "garbage"]
STALL_LIMIT_S = 120.0  # a stalled response gives up after this, whatever happens


def manifest_of(file_id: str, data: bytes) -> Manifest:
    """A complete manifest of ``data`` under ``file_id`` (a lie when they do not match)."""
    base = Manifest.empty(file_id, len(data))
    digests = tuple(chunk_digest(data[s:e]) for s, e in map(base.span, range(base.n_chunks)))
    return Manifest(file_id, len(data), base.chunk_size, digests)


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None


class FakePeer:
    """A peer that holds (or claims to hold) one file, served its own way.

    ``data`` is what blob requests get (``blob="serve"``); ``manifest`` what /manifest
    says (None: 404); ``have`` the bitmap it claims (default: every chunk)."""

    def __init__(
        self,
        host: str,
        file_id: str,
        data: bytes,
        *,
        manifest: Manifest | None = None,
        have: list[bool] | None = None,
        blob: BlobMode = "serve",
        listing: dict[str, object] | None = None,
        repo_path: str | None = None,
        manifest_raw: bytes | None = None,
        have_raw: bytes | None = None,
        blob_delay: float = 0.0,
    ) -> None:
        self.host = host
        self.blob_delay = blob_delay  # seconds before each blob answer (a slow peer)
        self.file_id = file_id
        self.data = data
        self.manifest = manifest
        base = Manifest.empty(file_id, len(data))
        self.have = have if have is not None else [True] * base.n_chunks
        self.blob = blob
        self.listing = listing  # served at repo_path: a /v1/repos/... answer
        self.manifest_raw = manifest_raw  # any bytes at all, instead of ``manifest``
        self.have_raw = have_raw  # any bytes at all, instead of the encoded ``have``
        self.repo_path = repo_path
        self.seen: list[Seen] = []
        self.blob_requests = 0
        self.bytes_sent = 0
        self._closing = False
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def authorizations(self) -> list[str | None]:
        with self._lock:
            return [s.authorization for s in self.seen]

    def asked(self, suffix: str) -> int:
        """How many requests for this file's ``suffix`` ("/have", "/manifest") came."""
        with self._lock:
            return sum(s.path == f"/v1/blobs/{self.file_id}{suffix}" for s in self.seen)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakePeer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._sock, self.port = sock, sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            log_config=None,
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("fake peer did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._closing = True
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> FakePeer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- ASGI ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        with self._lock:
            self.seen.append(Seen(scope["method"], path, headers.get("authorization")))
        base = f"/v1/blobs/{self.file_id}"
        if path == "/v1/ping":
            await _reply(send, 200, b'{"service":"hffs-peer","protocol":1}', "application/json")
        elif path == base + "/manifest" and self.manifest_raw is not None:
            await _reply(send, 200, self.manifest_raw, "application/json")
        elif path == base + "/manifest" and self.manifest is not None:
            await _reply(send, 200, self.manifest.to_json(), "application/json")
        elif path == base + "/have":
            extra = [
                (b"x-chunk-count", str(len(self.have)).encode()),
                (b"x-file-size", str(len(self.data)).encode()),
            ]
            bitmap = self.have_raw if self.have_raw is not None else encode_have(self.have)
            await _reply(send, 200, bitmap, "application/octet-stream", extra)
        elif path == base:
            await self._blob(headers.get("range"), receive, send)
        elif self.listing is not None and path == self.repo_path:
            await _reply(send, 200, json.dumps(self.listing).encode(), "application/json")
        else:
            await _reply(send, 404, b"not held\n", "text/plain")

    async def _blob(self, range_header: str | None, receive: Receive, send: Send) -> None:
        with self._lock:
            self.blob_requests += 1
        size = len(self.data)
        try:
            span = parse_range(range_header, size)
        except RangeError as exc:
            await _reply(send, exc.status, b"bad range\n", "text/plain")
            return
        start, end = span if span is not None else (0, size)
        if self.blob_delay:
            await asyncio.sleep(self.blob_delay)
        if self.blob == "404":
            await _reply(send, 404, b"not held\n", "text/plain")
            return
        if self.blob == "416":
            extra = [(b"content-range", f"bytes */{size}".encode())]
            await _reply(send, 416, b"range not held\n", "text/plain", extra)
            return
        body = os.urandom(end - start) if self.blob == "garbage" else self.data[start:end]
        status = 206 if span is not None else 200
        head = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(end - start).encode()),
        ]
        if span is not None:
            head.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": head})
        if self.blob == "stall":
            await self._stall(receive)
            return
        with self._lock:
            self.bytes_sent += len(body)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _stall(self, receive: Receive) -> None:
        """Headers are out; the body never comes. Ends when the client gives up (or we stop)."""
        deadline = time.monotonic() + STALL_LIMIT_S
        while not self._closing and time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(receive(), 0.2)
            except TimeoutError:
                continue
            if message["type"] == "http.disconnect":
                return


async def _reply(
    send: Send,
    status: int,
    body: bytes,
    ctype: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", ctype.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# -- the HF cache: nothing corrupt is ever published ---------------------------------


def blob_matches_name(blob: Path) -> bool:
    """A blob is named by its sha256 (LFS) or its git blob sha1, as huggingface_hub names it."""
    size = blob.stat().st_size
    if len(blob.name) == 64:
        h = hashlib.sha256()
    elif len(blob.name) == 40:
        h = hashlib.sha1()
        h.update(b"blob %d\0" % size)
    else:
        return False
    with blob.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == blob.name


def corrupt_bytes_published(hub_cache: Path) -> int:
    """Bytes of every published blob that does not match its name, of every snapshot entry
    that points at no blob, and of every half-written temporary file left in the cache."""
    bad = 0
    if not hub_cache.is_dir():
        return 0
    for path in hub_cache.rglob("*"):
        if path.name.endswith((".hffs-tmp", ".incomplete")):
            bad += max(path.lstat().st_size, 1)
        elif path.parent.name == "blobs" and path.is_file():
            if not blob_matches_name(path):
                bad += path.stat().st_size
        elif "snapshots" in path.parts and path.is_symlink() and not path.exists():
            bad += 1  # a dangling link: HF tools would see a file that is not there
    return bad


def iter_blobs(hub_cache: Path) -> Iterator[Path]:
    yield from (p for p in hub_cache.rglob("*") if p.parent.name == "blobs" and p.is_file())


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll ``check`` (bounded in time); True as soon as it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# -- raw hostile HTTP: bodies that never end, drip, or redirect ----------------------

RawMode = Literal["endless", "drip", "redirect", "silent"]
RAW_LIMIT_S = 60.0  # a hostile connection gives up after this, whatever happens


class RawHostile:
    """An HTTP server on raw sockets that answers every request in one hostile way.

    ``endless``: 200 with no length, then ``pattern`` repeated until the client hangs up;
    ``drip``: 200 with a length, then one byte per ``drip_s``; ``redirect``: 302 to
    ``location``; ``silent``: reads the request and never answers (the connection stays
    open). Counts requests and bytes sent (what the attack cost the client)."""

    def __init__(
        self,
        host: str,
        mode: RawMode,
        *,
        pattern: bytes = b"[",
        location: str = "",
        drip_s: float = 0.2,
        content_type: str = "application/json",
    ) -> None:
        self.host, self.mode, self.pattern = host, mode, pattern
        self.location, self.drip_s, self.content_type = location, drip_s, content_type
        self.requests: list[bytes] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._closing = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> RawHostile:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock, self.port = sock, sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> RawHostile:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self) -> None:
        assert self._sock is not None
        deadline = time.monotonic() + 10 * RAW_LIMIT_S
        while not self._closing and time.monotonic() < deadline:
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + RAW_LIMIT_S
        conn.settimeout(2.0)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                part = conn.recv(4096)
                if not part:
                    return
                head += part
            with self._lock:
                self.requests.append(head.split(b"\r\n", 1)[0])
            if self.mode == "silent":
                while not self._closing and time.monotonic() < deadline:
                    try:
                        if not conn.recv(4096):
                            return  # the client gave up
                    except TimeoutError:
                        continue
                return
            if self.mode == "redirect":
                conn.sendall(
                    b"HTTP/1.1 302 Found\r\nLocation: "
                    + self.location.encode()
                    + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                return
            ctype = self.content_type.encode()
            if self.mode == "drip":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: "
                    + ctype
                    + b"\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
                )
                while not self._closing and time.monotonic() < deadline:
                    conn.sendall(self.pattern[:1])
                    with self._lock:
                        self.bytes_sent += 1
                    time.sleep(self.drip_s)
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nConnection: close\r\n\r\n"
            )
            block = self.pattern * max(1, 65536 // len(self.pattern))
            while not self._closing and time.monotonic() < deadline:
                conn.sendall(block)
                with self._lock:
                    self.bytes_sent += len(block)
        except OSError:
            return  # the client hung up: the attack was refused
        finally:
            conn.close()
