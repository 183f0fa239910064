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

Claims. A follower that sends ``X-HFFS-Claims: 1`` also hears which chunks the holder
is fetching from upstream now: a frame whose index has bit 31 set claims that chunk,
bit 30 releases the claim (a have frame of the chunk ends it too); their digest field
is zero. Downloaders sharing a slow upstream leave each other's claims for last
(swarm/upstream_order.py), so each chunk crosses that link about once. A claim only
orders and delays, by one deadline at most, and a peer claiming more than an honest one
fetches at once is not believed (swarm/scheduler.py, ``set_fetching``). Holders that
predate claims ignore the header and send haves only.

Holders learn of new chunks the moment they are recorded: ``HaveFeed`` hooks
``swarm.store.chunk_hooks`` (a download in this process), so a follower hears of a
chunk as soon as it verifies. For a download in another process (the CLI without a
daemon), the partial file's state is read again every ``LOCAL_CHECK_SECONDS``,
which only this machine's disk sees (never a network poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from swarm import hostport, store
from swarm.manifest import DIGEST_SIZE
from swarm.peer_auth import dest_of
from swarm.sources import PeerAddr, SourceError
from swarm.store import partial_digests
from swarm.wire import PeerAuth

FRAME = struct.Struct(">I16s")
assert FRAME.size == 4 + DIGEST_SIZE
CLAIM = 1 << 31
RELEASE = 1 << 30
_KIND = CLAIM | RELEASE
_NO_DIGEST = bytes(DIGEST_SIZE)
CLAIMS_HEADER = "X-HFFS-Claims"
LOCAL_CHECK_SECONDS = 1.0  # how often the state file is read again (another process)
MAX_FOLLOW_HEAD = 16 * 1024


def encode_frames(chunks: dict[int, bytes]) -> bytes:
    return b"".join(FRAME.pack(i, d) for i, d in sorted(chunks.items()))


def encode_claims(claimed: Iterable[int], released: Iterable[int]) -> bytes:
    return b"".join(
        [FRAME.pack(CLAIM | i, _NO_DIGEST) for i in sorted(claimed)]
        + [FRAME.pack(RELEASE | i, _NO_DIGEST) for i in sorted(released)]
    )


# What each download in this process fetches from upstream now, by (partial root, file
# id), set by the download and read by the haves streams; hooks (HaveFeed's, while
# someone follows) hear of each change. Same rules as swarm.store's chunk hooks.
_claims: dict[tuple[str, str], frozenset[int]] = {}
ClaimHook = Callable[[str, str], None]
claim_hooks: list[ClaimHook] = []


def claim(root: Path, file_id: str, chunks: Iterable[int]) -> None:
    """The download of ``file_id`` in ``root`` now fetches ``chunks`` from upstream."""
    key = (str(root), file_id)
    new = frozenset(chunks)
    if new == _claims.get(key, frozenset()):
        return
    if new:
        _claims[key] = new
    else:
        _claims.pop(key, None)
    for hook in claim_hooks:
        hook(*key)


def claimed(root: str, file_id: str) -> frozenset[int]:
    return _claims.get((root, file_id), frozenset())


@dataclass
class _Topic:
    waiters: set[asyncio.Event] = field(default_factory=set)
    known: dict[int, bytes] = field(default_factory=dict)


class HaveFeed:
    """Verified chunks per (partial root, file), pushed by the store's hook as they are
    recorded and read by the haves streams. Hooked only while someone follows."""

    def __init__(self) -> None:
        self._topics: dict[tuple[str, str], _Topic] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def publish(self, root: Path, file_id: str, index: int, digest: bytes) -> None:
        """A chunk of ``root``'s partial ``file_id`` is held (``swarm.store`` hook)."""
        self._on_loop(self._publish, str(root), file_id, index, digest)

    def _claims_changed(self, root: str, file_id: str) -> None:
        """What a download fetches from upstream changed (``claim`` hook)."""
        self._on_loop(self._wake, root, file_id)

    def _on_loop(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            # A download writing from a worker thread: hand over to the loop.
            with contextlib.suppress(RuntimeError):  # loop closed: nobody follows
                loop.call_soon_threadsafe(fn, *args)
            return
        fn(*args)

    def _publish(self, root: str, file_id: str, index: int, digest: bytes) -> None:
        topic = self._topics.get((root, file_id))
        if topic is None:
            return  # nobody follows this file
        topic.known[index] = digest
        self._wake(root, file_id)

    def _wake(self, root: str, file_id: str) -> None:
        topic = self._topics.get((root, file_id))
        if topic is not None:
            for event in topic.waiters:
                event.set()

    def _subscribe(self, key: tuple[str, str]) -> _Topic:
        if not self._topics:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            store.chunk_hooks.append(self.publish)
            claim_hooks.append(self._claims_changed)
        return self._topics.setdefault(key, _Topic())

    def _unsubscribe(self, key: tuple[str, str], event: asyncio.Event) -> None:
        topic = self._topics.get(key)
        if topic is not None:
            topic.waiters.discard(event)
            if not topic.waiters:
                del self._topics[key]
        if not self._topics:
            with contextlib.suppress(ValueError):
                store.chunk_hooks.remove(self.publish)
            with contextlib.suppress(ValueError):
                claim_hooks.remove(self._claims_changed)

    async def follow(
        self,
        file_id: str,
        partial_root: Path,
        n_chunks: int,
        send: Callable[[bytes], None],
        alive: Callable[[], bool],
        *,
        claims: bool = False,
    ) -> None:
        """Send frames for every chunk verified until all ``n_chunks`` are, the partial
        file is gone (published or dropped: the follower asks again), or ``alive()`` fails;
        with ``claims``, claim frames too."""
        key = (str(partial_root), file_id)
        topic = self._subscribe(key)
        event = asyncio.Event()
        topic.waiters.add(event)
        sent: set[int] = set()
        told: frozenset[int] = frozenset()  # claims the follower holds from us
        reread = True  # the state file: what was held before we hooked, or another writer's
        try:
            while alive() and len(sent) < n_chunks:
                event.clear()
                new: dict[int, bytes] = {}
                if reread:
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
                if claims:
                    now = frozenset(i for i in claimed(*key) if i < n_chunks and i not in sent)
                    if now != told:
                        send(encode_claims(now - told, told - now - sent))
                        told = now
                reread = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOCAL_CHECK_SECONDS):
                        await event.wait()
                        reread = False  # pushed: the state file has nothing newer to say
        finally:
            self._unsubscribe(key, event)


# -- the follower's side ------------------------------------------------------------


async def follow_haves(
    peer: PeerAddr,
    file_id: str,
    n_chunks: int,
    auth: PeerAuth,
    on_have: Callable[[dict[int, bytes]], None],
    on_claims: Callable[[frozenset[int]], None] | None = None,
) -> None:
    """Follow ``peer``'s haves stream of ``file_id``, calling ``on_have`` with each batch
    of (chunk -> digest), and ``on_claims`` (when given) with the chunks it fetches from
    upstream whenever they change, until the stream ends. SourceError when it cannot be
    followed or sends a frame outside the file."""
    try:
        reader, writer = await asyncio.open_connection(
            peer.host, peer.port, limit=1 << 16, local_addr=hostport.source_addr(peer.host)
        )
    except OSError as exc:
        raise SourceError(f"{peer}: cannot connect ({type(exc).__name__})") from exc
    try:
        path = f"/v1/blobs/{file_id}/haves"
        dest = dest_of(writer.get_extra_info("peername")) or (peer.host, peer.port)
        lines = [f"GET {path} HTTP/1.1", f"Host: {peer}", *auth.head_lines("GET", path, dest)]
        if on_claims is not None:
            lines.append(f"{CLAIMS_HEADER}: 1")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise SourceError(f"{peer}: bad haves answer") from exc
        if len(head) > MAX_FOLLOW_HEAD or not head.startswith(b"HTTP/1.1 200 "):
            raise SourceError(f"{peer}: haves answered {head[:40]!r}")
        rest = b""
        claims: set[int] = set()
        while data := await reader.read(1 << 16):
            rest += data
            whole = len(rest) - len(rest) % FRAME.size
            batch = {}
            before = frozenset(claims)
            for raw, digest in FRAME.iter_unpack(rest[:whole]):
                kind, index = raw & _KIND, raw & ~_KIND
                if index >= n_chunks or kind == _KIND or (kind and on_claims is None):
                    raise SourceError(f"{peer}: frame {raw:#x} of a {n_chunks}-chunk file")
                if kind == CLAIM:
                    claims.add(index)
                else:
                    claims.discard(index)
                    if not kind:
                        batch[index] = digest
            rest = rest[whole:]
            if batch:
                on_have(batch)
            if on_claims is not None and before != claims:
                on_claims(frozenset(claims))
        if rest:
            raise SourceError(f"{peer}: truncated have frame")
    except (ConnectionError, OSError) as exc:
        raise SourceError(f"{peer}: haves stream cut ({type(exc).__name__})") from exc
    finally:
        writer.close()
