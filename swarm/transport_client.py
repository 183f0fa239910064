"""The fast peer client: chunk bodies land by ``recv_into`` in one reused block.

A ``PeerConnection`` is an ``asyncio.BufferedProtocol`` on a persistent HTTP/1.1
connection to a peer's blob route. Requests are pipelined (written at once, answered
in order); the socket reads straight into the connection's 1 MiB block, and each
block is hashed (xxh3-128) and handed to the request's sink (``pwrite`` at its
offset, or a copy into memory) as it fills, so no Python object is made per read
and memory per connection is one block whatever the chunk size.

Nothing a peer says is trusted: the status must be 206 for exactly the asked range
with exactly its length, no redirect is followed, a body is never read past the
length we asked for, and a head is at most ``MAX_HEAD`` bytes. Only the swarm's
signature is sent (never an upstream token): each pipelined head is signed for the
address the connection reached (``swarm.peer_auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import xxhash

from swarm import hostport, portable
from swarm.peer_auth import dest_of
from swarm.sources import PeerAddr, SourceError
from swarm.wire import PeerAuth

BLOCK = 1 << 20  # bytes read before a block is hashed and written (fits in L2)
MAX_HEAD = 16 * 1024
MAX_ERROR_BODY = 64 * 1024  # a refusal's body is skipped; a longer one closes the connection
CONNECT_TIMEOUT = 5.0
CONNS_PER_PEER = 2  # two connections share the work of two cores (recv + hash + write)
RECV_BUFFER = 4 << 20  # SO_RCVBUF floor for fast links (the kernel may still grow it)
MIN_AT_PEER = 2  # requests kept at the peer however small the batch
_CONTENT_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+)")
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: .*)?")


class Sink(Protocol):
    def write(self, view: memoryview, offset: int) -> None:
        """Bytes ``[offset, offset + len(view))`` of the asked span (view is reused after)."""


class MemorySink:
    """The span in memory (a chunk held until verified)."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self._view = memoryview(self.data)

    def write(self, view: memoryview, offset: int) -> None:
        self._view[offset : offset + len(view)] = view


class FileSink:
    """The span written at ``base`` of a file as it arrives; ``stop()`` ends the writes
    at once (another writer took the chunk). A write error is kept, not raised inside
    the protocol, so the caller can tell a full disk from a bad peer."""

    def __init__(self, fd: int, base: int) -> None:
        self.fd = fd
        self.base = base
        self.stopped = False
        self.error: OSError | None = None

    def stop(self) -> None:
        self.stopped = True

    def write(self, view: memoryview, offset: int) -> None:
        if self.stopped:
            return
        pos = self.base + offset
        try:
            while view:
                n = portable.pwrite(self.fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            self.error = exc
            self.stopped = True


# Told once how a request ended: its xxh3-128 digest, or the error. Called from the
# protocol (on the event loop, inside the read that completed it); must not raise.
Done = Callable[[bytes | None, SourceError | None], None]


@dataclass(eq=False)
class Ticket:
    """One request on one connection; ``PeerPool.abandon`` drops it."""

    start: int
    end: int
    sink: Sink | None  # None once the caller gave up: the body is read and dropped
    done: Done | None
    conn: PeerConnection
    hasher: xxhash.xxh3_128 = field(default_factory=xxhash.xxh3_128)
    got: int = 0
    late: Done | None = None  # told how it ended after the caller gave up

    def _settle(self, digest: bytes | None, exc: SourceError | None) -> None:
        done, self.done = self.done, None
        late, self.late = self.late, None
        if done is not None:
            done(digest, exc)
        elif late is not None:
            late(digest, exc)


def should_send(at_peer: int, held_back: int) -> bool:
    """Whether the request heads held back go out now (in one write).

    Sent one by one, every request costs a syscall on each side and, on a fast link, a
    wakeup of the peer per chunk. Held back until they are as many as those the peer
    still has to answer (or until it has fewer than ``MIN_AT_PEER``), heads leave in
    batches while the peer always keeps at least half of the window to work on."""
    return held_back > 0 and (at_peer < MIN_AT_PEER or held_back >= at_peer)


def request_head(host: str, path: str, start: int, end: int, extra: list[str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", f"Range: bytes={start}-{end - 1}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class ResponseHead:
    status: int
    length: int
    content_range: tuple[int, int] | None  # [start, end) the answer claims
    close: bool


def parse_response_head(raw: bytes) -> ResponseHead:
    """Parse a response head from a peer; SourceError for anything we will not follow."""
    lines = raw.split(b"\r\n")
    m = _STATUS.fullmatch(lines[0])
    if m is None:
        raise SourceError("bad status line")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise SourceError("bad header line")
        key = name.strip().lower()
        if key in headers and key in (b"content-length", b"content-range"):
            raise SourceError(f"repeated {key.decode()}")
        headers[key] = value.strip()
    if b"transfer-encoding" in headers:
        raise SourceError("chunked answers are not accepted from peers")
    raw_len = headers.get(b"content-length", b"")
    if not raw_len.isdigit() or len(raw_len) > 18:
        raise SourceError("answer without a valid Content-Length")
    span = None
    if (cr := headers.get(b"content-range")) is not None and (
        mr := _CONTENT_RANGE.fullmatch(cr)
    ) is not None:
        span = (int(mr[1]), int(mr[2]) + 1)
    close = b"close" in headers.get(b"connection", b"").lower()
    return ResponseHead(int(m[1]), int(raw_len), span, close)


class PeerConnection(asyncio.BufferedProtocol):
    """One persistent connection to one peer; requests answered in order."""

    def __init__(self, peer: PeerAddr, auth: PeerAuth) -> None:
        self.peer = peer
        self._auth = auth
        self._dest: tuple[str, int] | None = None  # the IP and port this connection reached
        self._block = bytearray(BLOCK)
        self._view = memoryview(self._block)
        self._fill = 0  # bytes of the block received
        self._used = 0  # of those, bytes already handled
        self._pending: deque[Ticket] = deque()  # asked, unanswered (sent or held back)
        self._held_back: list[tuple[Ticket, bytes]] = []  # the last ones, not sent yet
        self._current: Ticket | None = None  # the request whose body is being read
        self._skip = 0  # body bytes of a refusal still to drop
        self._body_left = 0  # body bytes of the current answer not yet received
        self._close_after = False
        self.transport: asyncio.Transport | None = None
        self.closed = False

    # -- the caller's side --------------------------------------------------------

    @property
    def load(self) -> int:
        return len(self._pending)

    def request(self, path: str, start: int, end: int, sink: Sink, done: Done) -> Ticket:
        """Ask for ``[start, end)`` of ``path``; ``done`` hears the xxh3-128 digest."""
        assert self.transport is not None and not self.closed
        ticket = Ticket(start, end, sink, done, self)
        self._pending.append(ticket)
        dest = self._dest or (self.peer.host, self.peer.port)
        auth = self._auth.head_lines("GET", path, dest)
        self._held_back.append((ticket, request_head(str(self.peer), path, start, end, auth)))
        self._send_held()
        return ticket

    def _send_held(self) -> None:
        held = len(self._held_back)
        if self.transport is not None and should_send(len(self._pending) - held, held):
            self.transport.write(b"".join(head for _, head in self._held_back))
            self._held_back.clear()

    def forget(self, ticket: Ticket) -> None:
        """An abandoned request not sent yet is never sent (the peer may be banned)."""
        if any(t is ticket for t, _ in self._held_back):
            self._held_back = [(t, h) for t, h in self._held_back if t is not ticket]
            self._pending = deque(t for t in self._pending if t is not ticket)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(SourceError(f"{self.peer}: connection closed"))

    # -- asyncio.BufferedProtocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._dest = dest_of(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECV_BUFFER:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._current is not None or self._skip:
            # Never read past this body: the next answer's head starts a fresh block.
            room = min(BLOCK - self._fill, self._body_left - (self._fill - self._used))
            return self._view[self._fill : self._fill + max(room, 1)]
        return self._view[self._fill :]

    def buffer_updated(self, nbytes: int) -> None:
        self._fill += nbytes
        try:
            self._process()
            self._send_held()
        except SourceError as exc:
            if self.transport is not None:
                self.transport.abort()
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SourceError(f"{self.peer}: connection lost"))

    # -- parsing ------------------------------------------------------------------

    def _process(self) -> None:
        while True:
            if self._current is None and not self._skip:
                if not self._read_head():
                    break
                continue
            avail = self._fill - self._used
            if avail < self._body_left and self._fill < BLOCK:
                break  # wait for a full block (or the end of the body)
            take = min(avail, self._body_left)
            if take:
                self._deliver(self._view[self._used : self._used + take])
                self._used += take
                self._body_left -= take
            if self._body_left == 0:
                self._finish()
            if self._used == self._fill:
                self._fill = self._used = 0
                break
            if self._fill == BLOCK and self._body_left:
                self._fill = self._used = 0  # unreachable in practice; keeps room
        if self._close_after and not self._pending and self.transport is not None:
            self.closed = True  # the peer said so: nothing more is sent on it
            self.transport.close()

    def _read_head(self) -> bool:
        """Parse the next answer's head if it is all here; False to wait for more."""
        end = self._block.find(b"\r\n\r\n", self._used, self._fill)
        if end < 0:
            if self._fill - self._used > MAX_HEAD:
                raise SourceError(f"{self.peer}: answer head too large")
            if self._used:  # keep the partial head at the start of the block
                rest = bytes(self._view[self._used : self._fill])
                self._block[: len(rest)] = rest
                self._fill, self._used = len(rest), 0
            return False
        if not self._pending:
            raise SourceError(f"{self.peer}: an answer nobody asked for")
        head = parse_response_head(bytes(self._view[self._used : end]))
        self._used = end + 4
        req = self._pending[0]
        self._close_after = head.close
        if head.status == 206 and head.content_range == (req.start, req.end):
            if head.length != req.end - req.start:
                raise SourceError(f"{self.peer}: body length differs from the range")
            self._current, self._body_left = req, head.length
            if head.length == 0:
                self._finish()
            return True
        # A refusal (503 busy, 416 not held, 404...) or another range: this request fails.
        if head.length > MAX_ERROR_BODY or (300 <= head.status < 400):
            raise SourceError(f"{self.peer}: HTTP {head.status}")
        self._pending.popleft()
        msg = f"{self.peer} answered HTTP {head.status}"
        if head.status == 206:
            msg = f"{self.peer} answered another range"
        req._settle(None, SourceError(msg, head.status))
        self._skip, self._body_left = 1, head.length
        self._current = None
        if head.length == 0:
            self._skip = 0
        return True

    def _deliver(self, view: memoryview) -> None:
        req = self._current
        if req is None:
            return
        if req.sink is not None:
            req.hasher.update(view)
            req.sink.write(view, req.got)
            req.got += len(view)
        elif req.late is not None:
            req.hasher.update(view)  # written nowhere, but still judged (``abandon``)

    def _finish(self) -> None:
        if self._skip:
            self._skip = 0
            return
        req = self._pending.popleft()
        self._current = None
        if req.sink is not None or req.late is not None:
            req._settle(req.hasher.digest(), None)

    def _fail(self, exc: SourceError) -> None:
        self.closed = True
        self._current = None
        self._held_back.clear()
        while self._pending:
            self._pending.popleft()._settle(None, exc)


class PeerPool:
    """Persistent, pipelined connections to peers, ``CONNS_PER_PEER`` each at most."""

    def __init__(self, auth: PeerAuth | None = None, conns_per_peer: int = CONNS_PER_PEER) -> None:
        self._auth = auth if auth is not None else PeerAuth()
        self._per_peer = conns_per_peer
        self._conns: dict[PeerAddr, list[PeerConnection]] = {}
        self._connecting: dict[PeerAddr, int] = {}

    async def _open(self, peer: PeerAddr) -> PeerConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(
                    lambda: PeerConnection(peer, self._auth),
                    peer.host,
                    peer.port,
                    local_addr=hostport.source_addr(peer.host),
                )
        except (OSError, TimeoutError) as exc:
            raise SourceError(f"{peer}: cannot connect ({type(exc).__name__})") from exc
        return conn

    async def _connection(self, peer: PeerAddr) -> PeerConnection:
        conns = [c for c in self._conns.get(peer, []) if not c.closed]
        self._conns[peer] = conns
        idle = min(conns, key=lambda c: c.load, default=None)
        opening = self._connecting.get(peer, 0)
        if (idle is None or idle.load > 0) and len(conns) + opening < self._per_peer:
            self._connecting[peer] = opening + 1
            try:
                conn = await self._open(peer)
            finally:
                self._connecting[peer] -= 1
            self._conns.setdefault(peer, []).append(conn)
            return conn
        if idle is None:  # another task is connecting: wait for it, bounded
            for _ in range(int(CONNECT_TIMEOUT / 0.01)):
                await asyncio.sleep(0.01)
                conns = [c for c in self._conns.get(peer, []) if not c.closed]
                if conns:
                    return min(conns, key=lambda c: c.load)
            raise SourceError(f"{peer}: cannot connect")
        return idle

    def ready(self, peer: PeerAddr) -> PeerConnection | None:
        """The open connection to pipeline the next request on, at once; None when the
        peer should get one (more) first, which ``fetch`` opens."""
        conns = [c for c in self._conns.get(peer, ()) if not c.closed]
        conn = min(conns, key=lambda c: c.load, default=None)
        more = len(conns) + self._connecting.get(peer, 0) < self._per_peer
        if conn is None or (conn.load and more):
            return None
        return conn

    @staticmethod
    def send(
        conn: PeerConnection, file_id: str, start: int, end: int, sink: Sink, done: Done
    ) -> Ticket:
        """Pipeline ``[start, end)`` of ``file_id`` on ``conn`` (from ``ready``); ``done``
        hears how it ended, unless abandoned first."""
        return conn.request(f"/v1/blobs/{file_id}", start, end, sink, done)

    @staticmethod
    def abandon(ticket: Ticket, late: Done | None = None) -> None:
        """The caller gave up: its bytes are written nowhere and ``done`` is not called;
        ``late`` still hears how it ends (a refusal, or the digest of the bytes the peer
        sent anyway), so a peer that lies in answers nobody waits for is still caught."""
        # Its answer is still read (and dropped): closing would fail the requests
        # pipelined behind it, which count against a good peer.
        ticket.sink = None
        ticket.done = None
        ticket.late = late
        ticket.conn.forget(ticket)

    async def fetch(
        self,
        peer: PeerAddr,
        file_id: str,
        start: int,
        end: int,
        sink: Sink,
        late: Done | None = None,
    ) -> bytes:
        """Bytes ``[start, end)`` of ``file_id`` from ``peer`` into ``sink``; their digest.
        Cancelled once the request is out, it is abandoned with ``late`` (``abandon``)."""
        conn = await self._connection(peer)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def done(digest: bytes | None, exc: SourceError | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                assert digest is not None
                fut.set_result(digest)

        ticket = conn.request(f"/v1/blobs/{file_id}", start, end, sink, done)
        try:
            return await fut
        except asyncio.CancelledError:
            self.abandon(ticket, late)
            raise

    def close(self) -> None:
        for conns in self._conns.values():
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.abort()
        self._conns.clear()

    async def __aenter__(self) -> PeerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
