"""Sources of chunks over HTTP: peers (``/v1/blobs``) and upstream endpoints.

Both answer HTTP Range requests, so one client serves both; they differ only in
the URL and in the headers (an upstream token is never sent to a peer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import httpx
import xxhash

from swarm.bounded import BoundedReadError, fetch_bounded
from swarm.hostport import format_hostport
from swarm.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from swarm.wire import busy_retry_delay, decode_have, parse_retry_after

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
MAX_HAVE_BYTES = 1 << 16
SMALL_TIMEOUT = 10.0  # a manifest or bitmap, whole, from one holder
REPORT_TIMEOUT = 3.0  # telling a holder one of its chunks was bad
MAX_BUSY_ASKS = 8  # manifest requests to one busy holder per fetch (time bounds it first)


class SourceError(Exception):
    """A source failed to deliver what was asked (transport error or bad answer)."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status it answered, when it answered one
        # A busy answer's Retry-After (e.g. a holder still digesting the manifest asked)
        self.retry_after = retry_after


@dataclass(frozen=True)
class PeerAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)

    def blob_url(self, file_id: str) -> str:
        return f"http://{self}/v1/blobs/{file_id}"


@dataclass(frozen=True)
class Source:
    """Where chunks of one file can be asked for."""

    id: str  # shown to users: "127.0.0.2:9009" or "https://hf-mirror.com"
    url: str
    upstream: bool
    headers: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


async def stream_range(
    client: httpx.AsyncClient, source: Source, start: int, end: int, sink: Callable[[bytes], None]
) -> None:
    """Fetch bytes ``[start, end)``, handing each block to ``sink`` as it arrives.

    Refuses an answer of the wrong range or length rather than trusting it."""
    want = end - start
    got = 0
    headers = {**source.headers, "range": f"bytes={start}-{end - 1}", "accept-encoding": "identity"}
    try:
        # A peer's redirect is never followed (it could aim us at loopback services);
        # upstream's follow the client's own policy.
        follow = httpx.USE_CLIENT_DEFAULT if source.upstream else False
        async with client.stream(
            "GET", source.url, headers=headers, follow_redirects=follow
        ) as resp:
            if resp.status_code == 206:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
                if not m or (int(m[1]), int(m[2])) != (start, end - 1):
                    raise SourceError(f"{source.id} answered another range")
            elif resp.status_code != 200 or start != 0:
                raise SourceError(f"{source.id} answered HTTP {resp.status_code}", resp.status_code)
            whole = resp.status_code == 200
            async for block in resp.aiter_bytes():
                if len(block) > want - got:
                    if not whole:
                        raise SourceError(f"{source.id} sent more than the range asked")
                    block = block[: want - got]  # a 200 carries the whole file: keep ours
                if block:
                    sink(block)
                    got += len(block)
                if whole and got >= want:
                    break  # the rest of the file is not ours; this connection is dropped
            # A 206 body is read to its end, so the connection goes back to the pool.
    except httpx.HTTPError as exc:
        raise SourceError(f"{source.id}: {type(exc).__name__}") from exc
    if got != want:
        raise SourceError(f"{source.id} sent {got} of {want} bytes")


async def fetch_range(
    client: httpx.AsyncClient, source: Source, start: int, end: int
) -> tuple[bytearray, bytes]:
    """Fetch bytes ``[start, end)`` into memory; returns (data, xxh3-128 digest).

    One buffer of the final size, filled in place: no regrowth, no final copy."""
    hasher = xxhash.xxh3_128()
    buf = bytearray(end - start)
    view = memoryview(buf)
    filled = 0

    def sink(block: bytes) -> None:
        nonlocal filled
        view[filled : filled + len(block)] = block
        filled += len(block)
        hasher.update(block)

    await stream_range(client, source, start, end, sink)
    return buf, hasher.digest()


async def _get_small(client: httpx.AsyncClient, url: str, limit: int, auth: httpx.Auth) -> bytes:
    try:
        answer = await fetch_bounded(client, url, limit=limit, timeout=SMALL_TIMEOUT, auth=auth)
    except BoundedReadError as exc:
        raise SourceError(f"{url}: {exc}") from exc
    if answer.status != 200:
        wait = parse_retry_after(answer.headers.get("retry-after"))
        raise SourceError(f"{url}: HTTP {answer.status}", answer.status, wait)
    return answer.body


async def fetch_manifest(
    client: httpx.AsyncClient, peer: PeerAddr, file_id: str, size: int, auth: httpx.Auth
) -> Manifest:
    """A holder's manifest. A holder still digesting its blob answers busy (503 with
    Retry-After): asked again as ``busy_retry_delay`` allows, then SourceError(503)."""
    url = peer.blob_url(file_id) + "/manifest"
    started = anyio.current_time()
    for _ in range(MAX_BUSY_ASKS):
        try:
            body = await _get_small(client, url, MAX_MANIFEST_BYTES, auth)
            break
        except SourceError as exc:
            if exc.status != 503:
                raise
            delay = busy_retry_delay(exc.retry_after, anyio.current_time() - started)
            if delay is None:
                raise
            await anyio.sleep(delay)
    else:
        raise SourceError(f"{url}: busy", 503)
    try:
        return Manifest.from_json(body, file_id=file_id, size=size)
    except ManifestError as exc:
        raise SourceError(f"{peer}: {exc}") from exc


async def fetch_have(
    client: httpx.AsyncClient, peer: PeerAddr, file_id: str, n_chunks: int, auth: httpx.Auth
) -> set[int]:
    body = await _get_small(client, peer.blob_url(file_id) + "/have", MAX_HAVE_BYTES, auth)
    try:
        flags = decode_have(body, n_chunks)
    except ValueError as exc:
        raise SourceError(f"{peer}: {exc}") from exc
    return {i for i, held in enumerate(flags) if held}


async def report_bad_chunk(
    client: httpx.AsyncClient, peer: PeerAddr, file_id: str, chunk: int, auth: httpx.Auth
) -> bool:
    """Tell a holder its chunk failed verification, so it re-checks its copy (best effort:
    False when it could not be told)."""
    url = f"{peer.blob_url(file_id)}/bad?chunk={int(chunk)}"
    try:
        answer = await fetch_bounded(
            client, url, limit=4096, timeout=REPORT_TIMEOUT, method="POST", auth=auth
        )
    except BoundedReadError:
        return False
    return answer.status in (200, 202)
