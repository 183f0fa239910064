"""The peer wire protocol, server side: serve held content by content id over HTTP.

Routes (all GET; HEAD works too):

- ``/v1/ping``: ``{"service": "hffs-peer", "protocol": 1}``, for liveness probes.
- ``/v1/blobs/{id}``: the bytes. ``Range: bytes=a-b`` (one range) gives 206 with
  Content-Range; 416 when unsatisfiable (or several ranges), 400 when malformed.
  A partial file serves only ranges lying wholly inside verified chunks (else 416).
- ``/v1/blobs/{id}/manifest``: the Manifest JSON (digests ``null`` where not held);
  503 with ``Retry-After`` while a complete blob is digested (``swarm.manifest_cache``).
- ``/v1/blobs/{id}/have``: the verified-chunk bitmap, one bit per chunk, MSB first,
  ``application/octet-stream``, with headers ``X-Chunk-Count`` and ``X-File-Size``.

Ids are validated before anything else; the only paths ever opened are those the
content index returns and ``<partial root>/<validated id>.part|.state``. Nothing
here knows about Hugging Face: the daemon adds its own routes through
``extra_routes``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from swarm import portable, store
from swarm.chunking import chunk_count, chunk_size_for
from swarm.held_cache import HeldCache
from swarm.ids import is_file_id
from swarm.manifest import Manifest, ManifestError
from swarm.manifest_cache import RETRY_AFTER, ManifestCache
from swarm.peer_auth import Verifier, dest_of
from swarm.selfcheck import OnRotten, SelfCheck, chunk_matches, stat_key
from swarm.store import part_path, partial_digests, read_partial_state
from swarm.wire import encode_have

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SEND_BLOCK = 256 * 1024  # bytes per read/send: bounds memory per upload


class ContentIndex(Protocol):
    """Where complete files live; must be cheap (it is called in a thread, at most once a
    ``HeldCache.ttl`` per id and blob connection; see ``PeerServer.plan_blob``)."""

    def complete_path(self, file_id: str) -> Path | None: ...

    def shares(self, file_id: str) -> bool:
        """Whether this content may go to peers at all (its owner decides what is shared)."""
        ...


# -- plain decisions (no I/O) ----------------------------------------------------


class RangeError(Exception):
    """A Range header we refuse: ``status`` is 400 (malformed) or 416 (unsatisfiable)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte span ``[start, end)`` a Range header asks of a ``size``-byte file.

    None when there is no header (the whole file)."""
    if header is None:
        return None
    spec = header.strip().replace(" ", "")
    if spec.lower().startswith("bytes=") and "," in spec:
        raise RangeError(416, "only one range per request is supported")
    m = _RANGE.fullmatch(spec)
    if m is None or not (m[1] or m[2]):
        raise RangeError(400, f"malformed Range header: {header[:80]!r}")
    first, last = m[1], m[2]
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeError(416, "empty suffix range")
        return max(0, size - n), size
    start = int(first)
    if last and int(last) < start:
        raise RangeError(400, "range end before its start")
    if start >= size:
        raise RangeError(416, f"range starts at or past the end ({size} bytes)")
    end = min(int(last) + 1, size) if last else size
    return start, end


def span_is_held(start: int, end: int, chunk_size: int, have: Sequence[bool]) -> bool:
    """True when every chunk touching ``[start, end)`` is verified."""
    if end <= start:
        return False
    first, last = start // chunk_size, (end - 1) // chunk_size
    return last < len(have) and all(have[first : last + 1])


class RateLimiter:
    """A token bucket (as GCRA) shared by every upload: ``rate`` bytes/s, ``burst`` bytes."""

    def __init__(
        self,
        rate: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self._tau = burst / rate  # how far ahead of the steady rate a sender may get
        self._tat = 0.0  # "theoretical arrival time" of the next byte
        self._clock = clock
        self._sleep = sleep  # injected with the clock, so tests need no wall clock

    def reserve(self, n: int, now: float) -> float:
        """Book ``n`` bytes; return how long the caller must wait before sending them."""
        self._tat = max(self._tat, now) + n / self.rate
        return max(0.0, self._tat - self._tau - now)

    async def consume(self, n: int) -> None:
        delay = self.reserve(n, self._clock())
        if delay > 0:
            await self._sleep(delay)


@dataclass
class UploadStats:
    """Bytes sent per remote host, and the uploads running now."""

    by_host: dict[str, int] = field(default_factory=dict)
    active: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_host.values())

    def add(self, host: str, n: int) -> None:
        self.by_host[host] = self.by_host.get(host, 0) + n


@dataclass(frozen=True)
class UploadLimits:
    max_rate: int = 0  # bytes/s over all uploads; 0 = unlimited
    max_uploads: int = 32  # concurrent blob responses; 0 = unlimited


@dataclass(frozen=True)
class BlobPlan:
    """An accepted blob request: send ``[start, end)`` of ``path`` with this head."""

    path: Path
    start: int
    end: int
    status: int
    headers: dict[str, str]
    size: int = 0  # the whole file's
    ident: FileIdent | None = None  # what an open descriptor must be (``file_ident``)
    cached: bool = False  # decided from a remembered lookup (``PeerServer.held_cache``)

    @property
    def chunk(self) -> int | None:
        """The one chunk this span is exactly, if it is one (what downloaders ask)."""
        cs = chunk_size_for(self.size)
        if self.start % cs or self.end != min(self.start + cs, self.size):
            return None
        return self.start // cs


# -- what we hold ----------------------------------------------------------------

FileIdent = tuple[int, ...]


def file_ident(st: os.stat_result) -> FileIdent:
    """What a descriptor opened later must still show to be the file looked up. Not the
    inode alone: a partial file discarded and begun again may get the same inode number
    (without its verified chunks); its mtime moves with every chunk written."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Held:
    """A file we can serve from: complete (``have`` is None) or partial."""

    path: Path
    size: int
    have: list[bool] | None
    ident: FileIdent | None = None  # ``file_ident`` at lookup time

    @property
    def chunk_size(self) -> int:
        return chunk_size_for(self.size)

    def flags(self) -> list[bool]:
        n = chunk_count(self.size, self.chunk_size)
        return [True] * n if self.have is None else self.have


def _lookup(index: ContentIndex, partial_root: Path, file_id: str) -> Held | None:
    """Blocking: find a complete copy, else a partial one with a sane state; content the
    index does not share is not held, as far as peers can tell. A download that has no
    chunk yet is held too, with an empty bitmap (BitTorrent's empty bitfield): it
    announced itself as it started, and downloaders starting with it follow its haves
    stream from then on (its claims first) instead of finding it a refresh later."""
    if not index.shares(file_id):
        return None
    path = index.complete_path(file_id)
    if path is not None:
        try:
            st = path.stat()
            return Held(path, st.st_size, None, file_ident(st))
        except OSError:
            pass
    state = read_partial_state(partial_root, file_id)
    if state is None:
        return None
    size, have = state
    if len(have) != chunk_count(size, chunk_size_for(size)):
        return None
    part = part_path(partial_root, file_id)
    try:
        ident = file_ident(part.stat())
    except OSError:
        return None
    return Held(part, size, have, ident)


class _Refused(Exception):
    def __init__(self, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
        self.answer = (status, detail, extra)


def _span(held: Held, range_header: str | None) -> tuple[int, int, bool]:
    """``[start, end)`` to send and whether a Range asked for it; _Refused otherwise."""
    try:
        span = parse_range(range_header, held.size)
    except RangeError as exc:
        extra = {"Content-Range": f"bytes */{held.size}"} if exc.status == 416 else None
        raise _Refused(exc.status, exc.detail, extra) from None
    start, end = span if span is not None else (0, held.size)
    if held.have is not None and not span_is_held(start, end, held.chunk_size, held.have):
        if span is None:
            raise _Refused(404, "only part of this file is held; ask for a Range")
        raise _Refused(416, "range not held", {"Content-Range": f"bytes */{held.size}"})
    return start, end, span is not None


# -- the app ---------------------------------------------------------------------


def request_target(scope: Scope) -> bytes:
    """The request target as the client sent it (path and query), which it signed."""
    target = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return target + b"?" + query if query else target


class _SecretGuard:
    """Refuse every request not signed by a swarm member (``swarm.peer_auth``)."""

    def __init__(self, app: ASGIApp, verifier: Verifier) -> None:
        self.app = app
        self._verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._verifier.check(
            Headers(scope=scope).get("authorization"),
            scope["method"],
            request_target(scope),
            dest_of(scope.get("server")),
            time.time(),
        ):
            response = PlainTextResponse("swarm membership not proven\n", status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BlobResponse(Response):
    """Streams ``[start, end)`` of a file block by block, paced by the shared limiter."""

    def __init__(
        self,
        path: Path,
        start: int,
        end: int,
        *,
        status_code: int,
        headers: dict[str, str],
        host: str,
        server: PeerServer,
    ) -> None:
        super().__init__(status_code=status_code, headers=headers)  # holds a slot
        self._path, self._start, self._end = path, start, end
        self._host, self._server = host, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self._server
        try:
            fd = os.open(self._path, os.O_RDONLY | portable.O_BINARY)
        except OSError:
            server.release_slot(self._host)
            await PlainTextResponse("not held\n", 404)(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if scope["method"] != "HEAD":
                async with anyio.create_task_group() as tg:
                    # uvicorn drops sends after a disconnect silently: watch for it, or a
                    # gone client would hold an upload slot until the whole span was read.
                    tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
                    await self._stream(fd, send)
                    tg.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            os.close(fd)
            server.release_slot(self._host)

    async def _stream(self, fd: int, send: Send) -> None:
        server, pos = self._server, self._start
        while pos < self._end:
            n = min(server.block_size, self._end - pos)
            if server.limiter is not None:
                await server.limiter.consume(n)
            data = await anyio.to_thread.run_sync(portable.pread, fd, n, pos)
            if not data:  # the file shrank under us: the client sees a short body
                return
            await send({"type": "http.response.body", "body": data, "more_body": True})
            server.stats.add(self._host, len(data))
            pos += len(data)


async def cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (uvicorn drops later sends silently)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(detail + "\n", status_code=status, headers=headers)


class PeerServer:
    """State shared by the routes: where content is, limits, counters."""

    def __init__(
        self,
        index: ContentIndex,
        partial_root: Path,
        manifest_dir: Path,
        limits: UploadLimits = UploadLimits(),
        stats: UploadStats | None = None,
        on_rotten: OnRotten | None = None,
    ) -> None:
        self.index = index
        self.partial_root = partial_root
        self.limits = limits
        self.stats = stats if stats is not None else UploadStats()
        self.limiter: RateLimiter | None = None
        self.block_size = SEND_BLOCK
        if limits.max_rate > 0:  # small blocks at low rates, so pacing stays smooth
            self.block_size = min(SEND_BLOCK, max(4096, limits.max_rate // 16))
            self.limiter = RateLimiter(limits.max_rate, max(limits.max_rate // 4, self.block_size))
        self.manifests = ManifestCache(manifest_dir)
        self.selfcheck = SelfCheck()
        self.on_rotten = on_rotten
        # One address never holds every slot (32 never-reading downloads from one host).
        self.slots_per_address = max(1, limits.max_uploads // 4)
        self._slots_by_host: dict[str, int] = {}
        # Lookups reused by blob requests (swarm.held_cache has the rules); the owner
        # calls ``forget_held`` when what it shares changes.
        self.held_cache: HeldCache[Held] = HeldCache()

    async def held(self, file_id: str) -> Held | None:
        """What we hold of ``file_id``, looked up now; a complete file that failed its
        check is not held."""
        generation = self.held_cache.generation
        held = await anyio.to_thread.run_sync(_lookup, self.index, self.partial_root, file_id)
        if (
            held is not None
            and held.have is None
            and file_id in self.selfcheck.quarantine
            and await anyio.to_thread.run_sync(self.selfcheck.blocked, file_id, held.path)
        ):
            held = None
        self.held_cache.put(file_id, held, generation)
        return held

    def forget_held(self, file_id: str | None = None) -> None:
        """What is shared changed (a rescan, a file dropped): look ``file_id`` (or
        everything) up again on its next request."""
        self.held_cache.forget(file_id)

    async def follow_chunks(self) -> None:
        """``chunks_followed`` until cancelled (a task of the daemon's)."""
        with self.chunks_followed():
            await anyio.sleep_forever()

    @contextlib.contextmanager
    def chunks_followed(self) -> Iterator[None]:
        """While open (enter it on the event loop's thread): a chunk this process verifies
        in a partial file here is marked in the remembered lookup at once, so asking for
        it needs no new lookup (``swarm.store.chunk_hooks``)."""
        loop_thread = threading.get_ident()

        def verified(root: Path, file_id: str, index: int, digest: bytes) -> None:
            if root == self.partial_root and threading.get_ident() == loop_thread:
                self._mark_verified(file_id, index)  # (another thread's: looked up later)

        store.chunk_hooks.append(verified)
        try:
            yield
        finally:
            store.chunk_hooks.remove(verified)

    def _mark_verified(self, file_id: str, index: int) -> None:
        held = self.held_cache.get(file_id)
        if held is None or held.have is None or not 0 <= index < len(held.have):
            return
        try:  # the chunk went into the file at the path now: is it the one remembered?
            st = os.stat(held.path)
        except OSError:
            st = None
        if st is None or held.ident is None or (st.st_dev, st.st_ino) != held.ident[:2]:
            self.held_cache.forget(file_id)
            return
        # Served only from a descriptor of this very inode: one kept open since the
        # lookup, or one opened now whose (dev, inode, size, mtime) still matches it.
        held.have[index] = True

    # -- routes ------------------------------------------------------------------

    async def _requested(self, file_id: str) -> Held | Response:
        """What a request names: held content, or the error to answer with."""
        if not is_file_id(file_id):
            return _error(400, "bad content id")
        held = await self.held(file_id)
        return _error(404, "not held") if held is None else held

    async def ping(self, request: Request) -> Response:
        return JSONResponse({"service": "hffs-peer", "protocol": PROTOCOL_VERSION})

    def release_slot(self, host: str) -> None:
        self.stats.active -= 1
        left = self._slots_by_host.get(host, 1) - 1
        if left > 0:
            self._slots_by_host[host] = left
        else:
            self._slots_by_host.pop(host, None)

    async def plan_blob(
        self, file_id: str, range_header: str | None, host: str, *, fresh: bool = False
    ) -> BlobPlan | tuple[int, str, dict[str, str] | None]:
        """What a blob request gets: a plan holding an upload slot (the caller must
        ``release_slot``), or (status, detail, extra headers) to refuse it with.

        A lookup remembered in ``held_cache`` may only say yes: a complete file's, or a
        partial file's whose remembered bitmap holds the span. Anything else (and a
        quarantined id, and ``fresh``) is looked up now, so a chunk verified a moment
        ago is served at once and a quarantine takes effect at once."""
        if not is_file_id(file_id):
            return 400, "bad content id", None
        held = None
        if not fresh and file_id not in self.selfcheck.quarantine:
            held = self.held_cache.get(file_id)
        span = None
        if held is not None:
            try:
                span = _span(held, range_header)
            except _Refused as no:
                if no.answer[0] == 400:  # the header alone is malformed
                    return no.answer
        cached = span is not None
        if span is None:
            held = await self.held(file_id)
            if held is None:
                return 404, "not held", None
            try:
                span = _span(held, range_header)
            except _Refused as no:
                return no.answer
        assert held is not None
        start, end, ranged = span
        limit = self.limits.max_uploads
        if limit > 0 and (
            self.stats.active >= limit or self._slots_by_host.get(host, 0) >= self.slots_per_address
        ):
            return 503, "too many uploads; retry later", {"Retry-After": "1"}
        headers = {
            "Content-Length": str(end - start),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{held.size}"
        self.stats.active += 1
        self._slots_by_host[host] = self._slots_by_host.get(host, 0) + 1
        status = 206 if ranged else 200
        return BlobPlan(held.path, start, end, status, headers, held.size, held.ident, cached)

    async def blob(self, request: Request) -> Response:
        host = request.client.host if request.client else "?"
        plan = await self.plan_blob(  # not the hot path (the front is): looked up now
            request.path_params["file_id"], request.headers.get("range"), host, fresh=True
        )
        if not isinstance(plan, BlobPlan):
            status, detail, extra = plan
            return _error(status, detail, extra)
        return _BlobResponse(  # releases the slot, whatever happens to it
            plan.path,
            plan.start,
            plan.end,
            status_code=plan.status,
            headers=plan.headers,
            host=host,
            server=self,
        )

    async def manifest(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        held = await self._requested(file_id)
        if isinstance(held, Response):
            return held
        try:
            if held.have is None:  # a cold blob is digested in the background meanwhile
                manifest = await self.manifests.answer(file_id, held.path, held.size)
                if manifest is None:
                    return _error(503, "digesting; retry later", {"Retry-After": str(RETRY_AFTER)})
            else:
                manifest = await anyio.to_thread.run_sync(self._partial_manifest, file_id, held)
        except (OSError, ManifestError):
            return _error(404, "not held (file changed or vanished)")
        return Response(manifest.to_json(), media_type="application/json")

    def _partial_manifest(self, file_id: str, held: Held) -> Manifest:
        digests = partial_digests(self.partial_root, file_id)
        base = Manifest.empty(file_id, held.size)
        if len(digests) != base.n_chunks:
            raise ManifestError("partial state changed")
        return Manifest(file_id, held.size, base.chunk_size, tuple(digests))

    async def have(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        held = await self._requested(file_id)
        if isinstance(held, Response):
            return held
        flags = held.flags()
        digest = self.manifests.running(file_id) if held.have is None else None
        with contextlib.suppress(OSError, ManifestError):  # failed: its manifest says so
            if digest is not None and (known := digest.known()) is not None:
                # A cold blob vouches for the chunks digested so far, more as it goes.
                flags = [d is not None for d in known.digests]
        return Response(
            encode_have(flags),
            media_type="application/octet-stream",
            headers={"X-Chunk-Count": str(len(flags)), "X-File-Size": str(held.size)},
        )

    async def bad(self, request: Request) -> Response:
        """A downloader says chunk N of this file failed verification: check it."""
        file_id = request.path_params["file_id"]
        held = await self._requested(file_id)
        if isinstance(held, Response):
            return held
        n = chunk_count(held.size, held.chunk_size)
        text = request.query_params.get("chunk", "")
        if not (text.isascii() and text.isdigit() and len(text) < 8 and int(text) < n):
            return _error(400, "chunk must be a chunk index")
        if held.have is not None or not self.selfcheck.due(file_id):
            return JSONResponse({"checked": False}, status_code=202)
        rotten = await self._recheck(file_id, held.path, int(text))
        return JSONResponse({"checked": True, "rotten": rotten})

    async def _recheck(self, file_id: str, path: Path, chunk: int) -> bool:
        """One chunk against the cached manifest; if it differs, quarantine and verify the
        whole file (the cached manifest may be what is wrong); a rotten file is dropped."""
        key = await anyio.to_thread.run_sync(stat_key, path)
        try:
            manifest = await self.manifests.get(file_id, path)  # a rebuild verifies all
            if await anyio.to_thread.run_sync(chunk_matches, path, manifest, chunk):
                return False
            if key is not None:
                self.selfcheck.hold(file_id, key)
            self.manifests.forget(file_id)
            await self.manifests.get(file_id, path)
        except (OSError, ManifestError) as exc:
            log.warning("%s… no longer matches its id (%s): not served", file_id[:12], exc)
            if key is not None:
                self.selfcheck.hold(file_id, key)
                self.manifests.forget(file_id)
                if self.on_rotten is not None:
                    await self.on_rotten(file_id, path)
            return True
        self.selfcheck.release(file_id)  # the file is whole: its cached manifest was not
        return False

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/blobs/{file_id}/bad", self.bad, methods=["POST"]),
            Route("/v1/ping", self.ping, methods=["GET"]),
            Route("/v1/blobs/{file_id}", self.blob, methods=["GET"]),
            Route("/v1/blobs/{file_id}/manifest", self.manifest, methods=["GET"]),
            Route("/v1/blobs/{file_id}/have", self.have, methods=["GET"]),
        ]


def create_peer_app(
    index: ContentIndex,
    partial_root: Path,
    manifest_dir: Path,
    *,
    limits: UploadLimits = UploadLimits(),
    stats: UploadStats | None = None,
    secret: str | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    on_rotten: OnRotten | None = None,
) -> ASGIApp:
    """The peer app: blob routes plus ``extra_routes``, all behind the swarm secret if set."""
    server = PeerServer(index, partial_root, manifest_dir, limits, stats, on_rotten)
    verifier = Verifier(secret) if secret else None
    return peer_app_for(server, verifier=verifier, extra_routes=extra_routes)


def peer_app_for(
    server: PeerServer,
    *,
    verifier: Verifier | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> ASGIApp:
    """The peer app over an existing ``PeerServer`` (shared with the sendfile front, so
    both count the same upload slots and pace with the same limiter). With a swarm
    secret, ``verifier`` is the one the front checks with too: one nonce memory."""
    app: ASGIApp = Starlette(routes=[*server.routes(), *extra_routes])
    return _SecretGuard(app, verifier) if verifier is not None else app
