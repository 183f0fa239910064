"""The fast face of the peer port: blob bodies leave by zero-copy sendfile.

uvicorn cannot sendfile (an ASGI body is bytes, copied through Python per 64 KiB),
so every connection to the peer port is first read here. ``GET``/``HEAD
/v1/blobs/{id}`` is answered here, as plain HTTP/1.1 with ``Range`` (curl can still
fetch a blob), on a persistent connection that may pipeline requests; the body is
sent with ``loop.sendfile`` from the blob, or from the verified chunks of a partial
file. Any other request (manifests, bitmaps, the daemon's own routes) is handed,
bytes and all, to the uvicorn protocol the front wraps, for that one request
(``Connection: close`` is added, so uvicorn never idles on a half-sent second one).

The same decisions as the ASGI route (``PeerServer.plan_blob``): validated id, only
held and verified spans, the shared rate limiter and upload slots. Beside them, the
front resists a hostile client (issue 9 item 7):

- a request head must arrive whole within ``header_timeout`` and fit ``MAX_HEAD``;
- an idle persistent connection is closed after ``idle_timeout``;
- a reader that stops reading is cut after ``stall_timeout`` without progress, which
  frees its upload slot;
- each client address holds at most ``per_address`` connections and
  ``PeerServer.slots_per_address`` uploads, so one address cannot take every slot.

Which request's body leaves when, and which is choked (503 with ``X-HFFS-Choked``), is
decided by swarm/choke.py (send slots, super-seeding, round robin by address); the
``UploadGate`` here carries its decisions out.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm import portable
from swarm.choke import ChokeConfig, Decision, UploadChoker
from swarm.have import CLAIMS_HEADER, HaveFeed, encode_frames
from swarm.ids import is_file_id
from swarm.manifest import ManifestError
from swarm.peer_auth import Verifier, dest_of
from swarm.peer_server import BlobPlan, FileIdent, PeerServer, file_ident

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # bytes of request line + headers
SEND_SLICE = 4 << 20  # bytes per sendfile step when not rate limited: the stall check's unit
_BLOB_PATH = re.compile(rb"/v1/blobs/([^/?#]*)")
_HAVES_PATH = re.compile(rb"/v1/blobs/([^/?#]*)/haves")


@dataclass(frozen=True)
class FrontLimits:
    header_timeout: float = 10.0  # first byte of a request head -> its last byte
    idle_timeout: float = 75.0  # no request on a persistent connection
    stall_timeout: float = 20.0  # a body step that made no progress for this long
    per_address: int = 24  # open connections per client address
    slot_wait: float = 5.0  # longest wait for a send slot before answering "busy"
    snub_after: float = 2.0  # a body step without progress this long gives its slot back
    kept_files: int = 128  # blobs kept open between requests, over all connections


class UploadGate:
    """The I/O edge of swarm/choke.py: requests wait here for a send slot."""

    def __init__(self, config: ChokeConfig | None = None) -> None:
        self.rule = UploadChoker(config)
        self._waiters: dict[int, asyncio.Future[Decision]] = {}

    def _now(self) -> float:
        return time.monotonic()  # the event loop's clock, without looking the loop up

    def _apply(self, decisions: dict[int, Decision]) -> None:
        for ticket, decision in decisions.items():
            fut = self._waiters.pop(ticket, None)
            if fut is not None and not fut.done():
                fut.set_result(decision)

    async def enter(self, host: str, file_id: str, chunk: int | None, wait: float) -> int | None:
        """A send slot's ticket, or None when choked (or no slot came within ``wait``)."""
        ticket, decisions = self.rule.arrive(host, file_id, chunk, self._now())
        own = decisions.pop(ticket, Decision.WAIT)
        self._apply(decisions)
        if own is not Decision.WAIT:
            return ticket if own is Decision.SEND else None
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = fut
        try:
            async with asyncio.timeout(wait):
                own = await fut
        except TimeoutError:
            own = Decision.CHOKE
        finally:
            if own is not Decision.SEND:  # timed out or cancelled: give back what we got
                self._waiters.pop(ticket, None)
                self.leave(ticket, 0)
        return ticket if own is Decision.SEND else None

    def leave(self, ticket: int, nbytes: int) -> None:
        self._apply(self.rule.finish(ticket, nbytes, self._now()))

    def snub(self, ticket: int) -> None:
        self._apply(self.rule.snub(ticket, self._now()))


@dataclass
class FrontShared:
    """What every connection of one listener shares."""

    server: PeerServer
    verifier: Verifier | None  # with a swarm secret: the ASGI guard's own (one nonce memory)
    limits: FrontLimits = FrontLimits()
    feed: HaveFeed = field(default_factory=HaveFeed)  # chunks verified in this process
    connections: dict[str, int] = field(default_factory=dict)  # per client address
    kept_files: int = 0  # connections keeping a blob open now (FrontLimits.kept_files)
    gate: UploadGate = field(default_factory=UploadGate)  # send slots (swarm/choke.py)


class _Closed(Exception):
    """The connection ended (peer gone, timeout, or a request we will not parse)."""


@dataclass(frozen=True)
class Head:
    method: str
    target: bytes
    version: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    raw: bytes  # the head's bytes, through the blank line


class HeadError(ValueError):
    pass


def parse_head(raw: bytes) -> Head:
    """Parse an HTTP/1.x request head (``raw`` ends with the blank line)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # latin-1 decodes anything; kept for clarity
        raise HeadError("undecodable head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[0].isalpha():
        raise HeadError("bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not name.isascii():
            raise HeadError("bad header line")
        headers[name.lower()] = value.strip()
    return Head(parts[0], parts[1].encode("latin-1"), parts[2], headers, raw)


def with_connection_close(raw: bytes) -> bytes:
    """The same head with ``Connection: close`` added after its request line."""
    line_end = raw.index(b"\r\n") + 2
    return raw[:line_end] + b"Connection: close\r\n" + raw[line_end:]


_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    416: "Range Not Satisfiable",
    503: "Service Unavailable",
}


def render_head(status: int, headers: dict[str, str], *, close: bool) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    last = "Connection: close\r\n\r\n" if close else "\r\n"
    reason = _REASONS.get(status, "Error")
    return f"HTTP/1.1 {status} {reason}\r\n{fields}{last}".encode("latin-1")


class FrontProtocol(asyncio.Protocol):
    """One connection to the peer port: blob requests here, anything else to uvicorn."""

    def __init__(
        self,
        shared: FrontShared,
        inner_factory: Callable[[], asyncio.Protocol],
        registry: set[Any] | None = None,
    ) -> None:
        self.shared = shared
        self._inner_factory = inner_factory
        self._registry = registry  # uvicorn's live connections, so its shutdown sees ours
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._more = asyncio.Event()
        self._eof = False
        self._task: asyncio.Task[None] | None = None
        self._host = "?"
        self._counted = False
        self._paused = False
        # The blob last sent on this connection, kept open for the next request (a
        # downloader asks for many chunks of one file): (file, path, ident).
        self._file: tuple[io.FileIO, Path, FileIdent | None] | None = None
        self._keeps = False  # counted in shared.kept_files
        self._direct: portable.DirectSend | None = None  # made at the first body
        self._direct_tried = False
        self._deadline: float | None = None  # for the next head (loop time), if waiting
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._host = str(peer[0]) if peer else "?"
        conns = self.shared.connections
        if conns.get(self._host, 0) >= self.shared.limits.per_address:
            log.debug("connection from %s refused: %d open", self._host, conns[self._host])
            transport.abort()  # refused before reading a byte: costs us one accept
            return
        conns[self._host] = conns.get(self._host, 0) + 1
        self._counted = True
        if self._registry is not None:
            self._registry.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buf += data
        self._more.set()
        if len(self._buf) > 2 * MAX_HEAD and not self._paused and self._transport is not None:
            self._paused = True  # a client sending faster than we answer waits in TCP
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        self._eof = True
        self._more.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            left = self.shared.connections.get(self._host, 1) - 1
            if left > 0:
                self.shared.connections[self._host] = left
            else:
                self.shared.connections.pop(self._host, None)
        if self._registry is not None:
            self._registry.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
        elif self._task is not None:
            self._task.cancel()
        self._eof = True
        self._more.set()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's shutdown: close a blob connection now (its client will reconnect)."""
        if self._inner is None and self._transport is not None:
            self._transport.close()

    # -- reading heads ------------------------------------------------------------

    async def _wait_data(self) -> None:
        if self._eof or self._timed_out:
            raise _Closed
        self._more.clear()
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        await self._more.wait()

    async def _read_head(self) -> bytes:
        """The next request head: the idle deadline runs while nothing has come, the
        header deadline from its first bytes on (``_wait_until``)."""
        limits = self.shared.limits
        if not self._buf:
            self._wait_until(limits.idle_timeout)
            while not self._buf:
                await self._wait_data()
        if (end := self._buf.find(b"\r\n\r\n")) < 0:
            self._wait_until(limits.header_timeout)
            while (end := self._buf.find(b"\r\n\r\n")) < 0:
                if len(self._buf) > MAX_HEAD:
                    raise _Closed
                await self._wait_data()
        self._deadline = None
        if end + 4 > MAX_HEAD:
            raise _Closed
        raw = bytes(self._buf[: end + 4])
        del self._buf[: end + 4]
        return raw

    def _wait_until(self, timeout: float) -> None:
        """Close the connection if no head came ``timeout`` seconds from now.

        One timer per connection, moved only when a deadline comes sooner than it: a
        timer per request (asyncio.timeout) costs more than reading the request."""
        loop = asyncio.get_running_loop()
        self._deadline = deadline = loop.time() + timeout
        dog = self._watchdog
        if dog is None or dog.when() > deadline:
            if dog is not None:
                dog.cancel()
            self._watchdog = loop.call_at(deadline, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        deadline = self._deadline
        if deadline is None:  # not waiting for a head: armed again when a wait begins
            return
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._watch)
            return
        self._timed_out = True
        self._more.set()

    # -- serving ------------------------------------------------------------------

    async def _serve(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while True:
                raw = await self._read_head()
                if raw.startswith(b"\r\n"):  # a stray CRLF between requests is allowed
                    self._buf[:0] = raw[2:]
                    continue
                try:
                    head = parse_head(raw)
                except HeadError:
                    await self._answer(400, "malformed request\n", close=True)
                    return
                if head.method == "GET" and (h := _HAVES_PATH.fullmatch(head.target)):
                    await self._haves(head, h[1].decode("latin-1"))
                    return
                m = _BLOB_PATH.fullmatch(head.target)
                if head.method not in ("GET", "HEAD") or m is None:
                    self._hand_over(raw)
                    return
                if not await self._blob(head, m[1].decode("latin-1")):
                    return
                # A pipelined request may be answered without waiting for anything (the
                # socket took it all): let the other connections have a turn.
                await asyncio.sleep(0)
        except (_Closed, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must not take the listener down
            log.exception("peer connection from %s failed", self._host)
        finally:
            self._deadline = None
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            self._close_file()
            if self._direct is not None:
                self._direct.release()
                self._direct = None
            if self._inner is None:
                transport.close()

    def _hand_over(self, raw: bytes) -> None:
        """Give this connection to uvicorn for one request, bytes already read included."""
        transport = self._transport
        assert transport is not None
        if self._registry is not None:
            self._registry.discard(self)  # the inner protocol registers itself
        inner = self._inner_factory()
        self._inner = inner
        inner.connection_made(transport)
        inner.data_received(with_connection_close(raw) + bytes(self._buf))
        self._buf.clear()
        if self._paused:
            self._paused = False
            transport.resume_reading()

    async def _answer(
        self, status: int, text: str, headers: dict[str, str] | None = None, *, close: bool
    ) -> None:
        assert self._transport is not None
        body = text.encode()
        head = {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Length": str(len(body)),
            **(headers or {}),
        }
        self._transport.write(render_head(status, head, close=close) + body)

    def _authorized(self, head: Head) -> bool:
        verifier = self.shared.verifier
        if verifier is None:
            return True
        transport = self._transport
        dest = dest_of(transport.get_extra_info("sockname")) if transport is not None else None
        return verifier.check(
            head.headers.get("authorization"), head.method, head.target, dest, time.time()
        )

    async def _haves(self, head: Head, file_id: str) -> None:
        """The haves stream (swarm.have): frames until the file is complete here (for a
        complete blob digested now, until its digest has told every chunk)."""
        transport = self._transport
        assert transport is not None
        server = self.shared.server
        if not self._authorized(head):
            await self._answer(403, "swarm membership not proven\n", close=True)
            return
        if not is_file_id(file_id):
            await self._answer(400, "bad content id\n", close=True)
            return
        held = await server.held(file_id)
        if held is None:
            await self._answer(404, "not held\n", close=True)
            return
        n = len(held.flags())
        head_out = render_head(
            200, {"Content-Type": "application/octet-stream", "X-Chunk-Count": str(n)}, close=True
        )
        transport.write(head_out)

        def alive() -> bool:
            return not transport.is_closing()

        if held.have is None:  # complete: each chunk as its digest is known (at once, warm)
            with contextlib.suppress(OSError, ManifestError):  # vouched for no longer: ends
                async for batch in server.manifests.follow(file_id, held.path, alive):
                    transport.write(encode_frames(batch))
            return
        claims = head.headers.get(CLAIMS_HEADER.lower()) == "1"
        await self.shared.feed.follow(
            file_id, server.partial_root, n, transport.write, alive, claims=claims
        )

    async def _blob(self, head: Head, file_id: str) -> bool:
        """Answer one blob request; False when the connection must close after it."""
        shared = self.shared
        close = head.version == "HTTP/1.0" or "close" in head.headers.get("connection", "").lower()
        if any(h in head.headers for h in ("content-length", "transfer-encoding")):
            await self._answer(400, "a GET has no body\n", close=True)
            return False
        if not self._authorized(head):
            await self._answer(403, "swarm membership not proven\n", close=close)
            return not close
        server = shared.server
        for fresh in (False, True):
            plan = await server.plan_blob(
                file_id, head.headers.get("range"), self._host, fresh=fresh
            )
            if not isinstance(plan, BlobPlan):
                status, detail, extra = plan
                await self._answer(status, detail + "\n", extra, close=close)
                return not close
            f = self._file_for(plan)
            if f is not None or not plan.cached:
                break
            server.release_slot(self._host)  # a remembered lookup gone stale: look again
        assert isinstance(plan, BlobPlan)  # the loop returns on anything else
        try:
            if f is None:
                await self._answer(404, "not held\n", close=close)
                return not close
            if head.method == "HEAD":
                return await self._send_blob(plan, f, True, close, None)
            gate = shared.gate
            ticket = await gate.enter(self._host, file_id, plan.chunk, shared.limits.slot_wait)
            if ticket is None:  # choked: another holder (or a later ask) serves it
                await self._answer(
                    503,
                    "choked; ask another holder\n",
                    {"Retry-After": "1", "X-HFFS-Choked": "1"},
                    close=close,
                )
                return not close
            sent = [0]
            try:
                return await self._send_blob(plan, f, False, close, (ticket, sent))
            finally:
                gate.leave(ticket, sent[0])
        finally:
            server.release_slot(self._host)
            if not self._keeps:
                self._close_file()

    def _file_for(self, plan: BlobPlan) -> io.FileIO | None:
        """The plan's file, open: the one kept from the last request when it is the same
        file, else opened now. None when it cannot be opened or is not the file the plan
        was made from (``ident``: replaced or re-created since)."""
        kept = self._file
        if kept is not None and plan.ident is not None and kept[1:] == (plan.path, plan.ident):
            return kept[0]
        self._close_file()
        try:
            f = io.FileIO(plan.path, "rb")
        except OSError:
            return None
        try:
            same = plan.ident is None or file_ident(os.fstat(f.fileno())) == plan.ident
        except OSError:
            same = False
        if not same:
            f.close()
            return None
        self._file = (f, plan.path, plan.ident)
        shared = self.shared
        if not self._keeps and portable.keep_files_open():
            # Bounded: idle connections must not hold a descriptor each without limit.
            self._keeps = shared.kept_files < shared.limits.kept_files
            shared.kept_files += self._keeps
        return f

    def _close_file(self) -> None:
        if self._file is not None:
            self._file[0].close()
            self._file = None
        if self._keeps:
            self._keeps = False
            self.shared.kept_files -= 1

    def _direct_send(self) -> portable.DirectSend | None:
        if not self._direct_tried and self._transport is not None:
            self._direct_tried = True
            self._direct = portable.DirectSend.of(self._transport)
        return self._direct

    async def _send_blob(
        self,
        plan: BlobPlan,
        f: io.FileIO,
        head_only: bool,
        close: bool,
        slot: tuple[int, list[int]] | None,
    ) -> bool:
        """Send the plan's head and body; ``slot`` is the gate's ticket and the count of
        bytes sent, kept up to date for it.

        While the transport's buffer is empty the bytes go straight to the socket
        (``portable.DirectSend``: the head in the body's flight, then sendfile); only a
        socket that is full is waited on, through asyncio's sendfile, under the stall
        and snub timers."""
        transport = self._transport
        assert transport is not None
        server = self.shared.server
        head = render_head(plan.status, plan.headers, close=close)
        pos, end = plan.start, plan.end
        direct = self._direct_send()
        if direct is not None and not self._buffered(transport):
            k = direct.head(head, more=not head_only and pos < end)
            head = head[k:]
        if head:
            transport.write(head)
        if head_only:
            return not close
        step = server.block_size if server.limiter is not None else SEND_SLICE
        fd = f.fileno()
        while pos < end:
            n = min(step, end - pos)
            if server.limiter is not None:
                await server.limiter.consume(n)
            sent = 0
            if direct is not None and not self._buffered(transport):
                try:
                    while sent < n and (k := direct.body(fd, pos + sent, n - sent)):
                        sent += k
                except BlockingIOError:
                    pass
                else:
                    if sent < n:  # the file shrank under us: the client sees a short body
                        transport.abort()
                        raise _Closed
            if sent < n:
                sent += await self._send_waiting(f, pos + sent, n - sent, slot)
            server.stats.add(self._host, sent)
            if slot is not None:
                slot[1][0] += sent
            pos += sent
        return not close

    @staticmethod
    def _buffered(transport: asyncio.Transport) -> bool:
        """Whether the transport still holds bytes (or is closing): then only it writes."""
        return transport.is_closing() or transport.get_write_buffer_size() > 0

    async def _send_waiting(
        self, f: io.FileIO, pos: int, n: int, slot: tuple[int, list[int]] | None
    ) -> int:
        """Send ``n`` bytes from ``pos`` through the transport, waiting for the socket;
        a step without progress for ``snub_after`` gives the send slot back, one without
        progress for ``stall_timeout`` cuts the connection."""
        transport = self._transport
        assert transport is not None
        if transport.is_closing():  # aborted meanwhile (shutdown, a stall elsewhere)
            raise _Closed
        limits = self.shared.limits
        snub = None
        if slot is not None:
            snub = asyncio.get_running_loop().call_later(
                limits.snub_after, self.shared.gate.snub, slot[0]
            )
        try:
            async with asyncio.timeout(limits.stall_timeout):
                sent = await portable.transport_sendfile(transport, f, pos, n)
        except TimeoutError:
            log.info("upload to %s stalled; connection closed", self._host)
            transport.abort()
            raise _Closed from None
        finally:
            if snub is not None:
                snub.cancel()
        if sent < n:  # the file shrank under us: the client sees a short body
            transport.abort()
            raise _Closed
        return sent


def install_front(config: Any, shared: FrontShared) -> None:
    """Make a ``uvicorn.Config`` serve every connection through ``FrontProtocol``.

    uvicorn builds each connection's protocol with ``config.http_protocol_class(config=...,
    server_state=..., app_state=..., _loop=...)``; the front wraps that class."""
    if not config.loaded:
        config.load()
    inner_cls = config.http_protocol_class

    def factory(**kwargs: Any) -> asyncio.Protocol:
        registry = getattr(kwargs.get("server_state"), "connections", None)
        return FrontProtocol(shared, lambda: inner_cls(**kwargs), registry)

    config.http_protocol_class = factory
