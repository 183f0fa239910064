"""Sources of chunks over HTTP: peers (``/v1/blobs``) and upstream endpoints.

Both answer HTTP Range requests, so one client serves both; they differ only in
the URL and in the headers (an upstream token is never sent to a peer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import xxhash

from swarm.manifest import Manifest, ManifestError
from swarm.wire import decode_have

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
MAX_MANIFEST_BYTES = 1 << 20
MAX_HAVE_BYTES = 1 << 16


class SourceError(Exception):
    """A source failed to deliver what was asked (transport error or bad answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status it answered, when it answered one


@dataclass(frozen=True)
class PeerAddr:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

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
        async with client.stream("GET", source.url, headers=headers) as resp:
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


async def _get_small(
    client: httpx.AsyncClient, url: str, limit: int, headers: dict[str, str]
) -> httpx.Response:
    try:
        resp = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise SourceError(f"{url}: {type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise SourceError(f"{url}: HTTP {resp.status_code}")
    if len(resp.content) > limit:
        raise SourceError(f"{url}: answer too large")
    return resp


async def fetch_manifest(
    client: httpx.AsyncClient, peer: PeerAddr, file_id: str, size: int, headers: dict[str, str]
) -> Manifest:
    resp = await _get_small(
        client, peer.blob_url(file_id) + "/manifest", MAX_MANIFEST_BYTES, headers
    )
    try:
        return Manifest.from_json(resp.content, file_id=file_id, size=size)
    except ManifestError as exc:
        raise SourceError(f"{peer}: {exc}") from exc


async def fetch_have(
    client: httpx.AsyncClient, peer: PeerAddr, file_id: str, n_chunks: int, headers: dict[str, str]
) -> set[int]:
    resp = await _get_small(client, peer.blob_url(file_id) + "/have", MAX_HAVE_BYTES, headers)
    try:
        flags = decode_have(resp.content, n_chunks)
    except ValueError as exc:
        raise SourceError(f"{peer}: {exc}") from exc
    return {i for i, held in enumerate(flags) if held}
