"""Push, not poll: a holder still downloading tells its followers each verified chunk.

``GET /v1/blobs/{id}/haves`` (served by the sendfile front) answers 200 with no
length and keeps the connection open: the body is a stream of 20-byte frames, one
per verified chunk (4-byte big-endian index, then the chunk's xxh3-128 digest):
first every chunk held when the request came, then each chunk as it is verified.
The stream ends when the holder's file is complete (a follower then knows it holds
everything) or when it no longer holds the file.

The digest rides with the index so a follower can check the chunk on arrival
without asking for the manifest again (as in a manifest from a holder still
downloading, it is a transport check only; the whole-file hash decides).

Holders learn of new chunks from ``HaveFeed.publish`` (a download in the same process)
and, for a download in another process, by reading the partial file's state, which
only this machine's disk sees (never a network poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swarm.manifest import DIGEST_SIZE
from swarm.peer_auth import dest_of
from swarm.sources import PeerAddr, SourceError
from swarm.store import partial_digests
from swarm.wire import PeerAuth

FRAME = struct.Struct(">I16s")
assert FRAME.size == 4 + DIGEST_SIZE
LOCAL_CHECK_SECONDS = 0.1  # how often another process's state file is read, per file
MAX_FOLLOW_HEAD = 16 * 1024


def encode_frames(chunks: dict[int, bytes]) -> bytes:
    return b"".join(FRAME.pack(i, d) for i, d in sorted(chunks.items()))


@dataclass
class _Topic:
    waiters: set[asyncio.Event] = field(default_factory=set)
    known: dict[int, bytes] = field(default_factory=dict)


class HaveFeed:
    """Verified chunks per file, published in process and read by the haves stream."""

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}

    def publish(self, file_id: str, index: int, digest: bytes) -> None:
        topic = self._topics.get(file_id)
        if topic is None:
            return  # nobody follows this file
        topic.known[index] = digest
        for event in topic.waiters:
            event.set()

    async def follow(
        self,
        file_id: str,
        partial_root: Path,
        n_chunks: int,
        send: Callable[[bytes], None],
        alive: Callable[[], bool],
    ) -> None:
        """Send frames for every chunk verified until all ``n_chunks`` are, the partial
        file is gone (published or dropped: the follower asks again), or ``alive()`` fails."""
        topic = self._topics.setdefault(file_id, _Topic())
        event = asyncio.Event()
        topic.waiters.add(event)
        sent: set[int] = set()
        try:
            while alive() and len(sent) < n_chunks:
                event.clear()
                try:
                    digests = partial_digests(partial_root, file_id)
                except OSError:
                    return
                new = {i: d for i, d in enumerate(digests) if d is not None and i not in sent}
                new.update((i, d) for i, d in topic.known.items() if i not in sent)
                new = {i: d for i, d in new.items() if 0 <= i < n_chunks}
                if new:
                    send(encode_frames(new))
                    sent.update(new)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOCAL_CHECK_SECONDS):
                        await event.wait()
        finally:
            topic.waiters.discard(event)
            if not topic.waiters:
                self._topics.pop(file_id, None)


# -- the follower's side ------------------------------------------------------------


async def follow_haves(
    peer: PeerAddr,
    file_id: str,
    n_chunks: int,
    auth: PeerAuth,
    on_have: Callable[[dict[int, bytes]], None],
) -> None:
    """Follow ``peer``'s haves stream of ``file_id``, calling ``on_have`` with each batch
    of (chunk -> digest), until the stream ends. SourceError when it cannot be followed."""
    try:
        reader, writer = await asyncio.open_connection(peer.host, peer.port, limit=1 << 16)
    except OSError as exc:
        raise SourceError(f"{peer}: cannot connect ({type(exc).__name__})") from exc
    try:
        path = f"/v1/blobs/{file_id}/haves"
        dest = dest_of(writer.get_extra_info("peername")) or (peer.host, peer.port)
        lines = [f"GET {path} HTTP/1.1", f"Host: {peer}", *auth.head_lines("GET", path, dest)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise SourceError(f"{peer}: bad haves answer") from exc
        if len(head) > MAX_FOLLOW_HEAD or not head.startswith(b"HTTP/1.1 200 "):
            raise SourceError(f"{peer}: haves answered {head[:40]!r}")
        rest = b""
        while data := await reader.read(1 << 16):
            rest += data
            whole = len(rest) - len(rest) % FRAME.size
            batch = {}
            for index, digest in FRAME.iter_unpack(rest[:whole]):
                if index >= n_chunks:
                    raise SourceError(f"{peer}: have of chunk {index} of {n_chunks}")
                batch[index] = digest
            rest = rest[whole:]
            if batch:
                on_have(batch)
        if rest:
            raise SourceError(f"{peer}: truncated have frame")
    except (ConnectionError, OSError) as exc:
        raise SourceError(f"{peer}: haves stream cut ({type(exc).__name__})") from exc
    finally:
        writer.close()
