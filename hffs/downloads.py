"""The one download manager of a host: the daemon (for its HF endpoint and for
``hffs model add`` jobs), or the CLI process when no daemon runs.

One swarm download (``swarm.download.download_file``) per file id, whoever asks
and however many at once. A job (``fetch``) waits for the file and hears its bytes;
an HF client gets a ``SpanReader`` that streams its byte range in order, chunk by
chunk as chunks verify, from the partial file on disk (memory stays at one block
per client, whatever the file size).

A download an HF client started runs to completion even if that client goes away:
the bytes already fetched are paid for, a retrying client (huggingface_hub resumes
with a Range request) or another client usually wants the rest. A download only
jobs wait for stops when the last of them is cancelled (Ctrl-C on ``model add``);
the partial file stays, so a rerun resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx
import xxhash

from hffs import space
from hffs.activity import Activity
from hffs.cache import CacheError, HubCache
from hffs.errors import HffsError
from hffs.trust import may_stream_unchecked
from swarm import portable, store
from swarm.budget import ByteBudget
from swarm.chunking import chunk_count, chunk_size_for
from swarm.download import (
    AccessRefused,
    ChunkObserver,
    DownloadError,
    DownloadPaused,
    OnBytes,
    download_file,
    hash_limiter,
)
from swarm.files import hash_range, pread_of
from swarm.goal import Goal, tail_needs_whole
from swarm.manifest import Manifest
from swarm.manifest_cache import ManifestCache
from swarm.sources import PeerAddr, Source, SourceError, stream_range
from swarm.store import StoreError, part_path
from swarm.transport_client import PeerPool
from swarm.wire import PeerAuth

log = logging.getLogger(__name__)

# How long a client sharing the cache may wait on huggingface_hub's lock for a download
# this daemon runs: it shows no progress meanwhile, so a slow one (a mirror at 20 MB/s)
# lets it go on with its own GET, which streams what is verified, after this long.
CLIENT_LOCK_HOLD = 60.0
BLOCK = 256 * 1024  # bytes per read and send: bounds memory per client
FILES_AT_ONCE = 8  # downloads running at once (huggingface_hub asks for 8 files at a time)
# Bytes of peer chunks in flight across every download of the host (the schedulers'
# shared budget): memory stays flat however many files run at once.
BYTES_IN_FLIGHT = 64 << 20
MAX_SUSPECT = 1024  # file ids whose peer bytes upstream contradicted, remembered

Span = tuple[int, int, bytes]  # [start, end) and the xxh3-128 of the bytes sent
Confirm = Callable[[list[Span]], Awaitable[bool]]  # upstream vouches for these bytes


class TransferFailed(HffsError):
    """The bytes a reader or job waits for will not come; the message says why."""


class UpstreamRefused(TransferFailed):
    """No peer held the missing chunks and upstream refused them (HTTP 401/403)."""


class SwarmView(Protocol):
    """What the manager needs of the daemon (``service.Daemon`` provides it)."""

    async def holders(self, file_id: str, *, fresh: bool) -> list[dict[str, Any]]:
        """Who holds a file, for a download (``{"host", "port"}`` each); may be cached."""
        ...

    async def holder_news(self, file_id: str, seen: int) -> int:
        """Returns once more holders of the file announced themselves than the ``seen``
        it returned last (0 at first): ``holders`` names them now. The new count."""
        ...

    async def announce(
        self, file_ids: list[str], repos: list[tuple[str, str, str]], wait: bool
    ) -> int | None: ...
    def report_transfer(self, from_peers: int, from_upstream: int) -> None: ...


class DaemonHolders:
    """``swarm.download.Holders`` inside the daemon: its own DHT node and saved peers."""

    def __init__(self, view: SwarmView) -> None:
        self.view = view

    async def holders(self, file_id: str, *, fresh: bool = False) -> list[PeerAddr]:
        found = await self.view.holders(file_id, fresh=fresh)
        return list(dict.fromkeys(PeerAddr(p["host"], p["port"]) for p in found))

    async def news(self, file_id: str, seen: int) -> int:
        return await self.view.holder_news(file_id, seen)

    async def announce_partial(self, file_id: str) -> None:
        await self.view.announce([file_id], [], False)


@dataclass(frozen=True)
class FileJob:
    """One file of one revision a client asked for, and where to get it upstream."""

    repo_type: str
    repo_id: str
    commit: str
    path: str
    file_id: str
    size: int
    upstream: tuple[Source, ...]
    ref: str | None = None  # a ref upstream resolved to ``commit``: recorded in the cache
    # the id came from upstream's listing, so upstream can vouch for the bytes (when the
    # hub is down the names come from peers, and only the whole-file check can)
    hub_listed: bool = True


class Transfer:
    """What is known of one file's download; readers wait on ``changed()``.

    ``epoch[i]`` counts how often chunk i was verified: a chunk verified again
    (dropped and refetched, or by two racing requests) may hold other bytes than a
    reader already sent."""

    def __init__(self, file_id: str, size: int) -> None:
        self.file_id = file_id
        self.size = size
        self.chunk_size = chunk_size_for(size)
        self.n_chunks = chunk_count(size, self.chunk_size)
        self.have = [False] * self.n_chunks
        self.epoch = [0] * self.n_chunks
        # the epoch at which each chunk was verified from upstream (-1: from a peer, or
        # found on disk): bytes upstream gave need no second word from it
        self.upstream_epoch = [-1] * self.n_chunks
        # addresses that sent the manifest peer chunks are checked against (None: not
        # known until the download first asked its holders)
        self.vouching_hosts: int | None = None
        self.blob: Path | None = None  # set once the whole file is verified and published
        self.error: str | None = None
        self.refused = False  # the error is upstream's 401/403
        self.paused = False  # every chunk asked for is held; the rest was not asked
        self.goal = Goal(size, self.chunk_size)  # what requests asked for: fetched, no more
        self.jobs: list[FileJob] = []  # every (repo, path) an HF client asked: linked once complete
        self.listeners: dict[object, OnBytes] = {}  # jobs waiting for this file
        self.keep = False  # an HF client asked: run to completion whoever leaves
        self.by_source: dict[str, int] = {}  # verified bytes per source, once complete
        self.scope = anyio.CancelScope()
        self._changed = anyio.Event()
        self._watched = False  # whether ``_changed`` was handed out since it was made

    @property
    def finished(self) -> bool:
        return self.blob is not None or self.error is not None or self.paused

    def pause(self) -> None:
        """Every chunk requests asked for is held; nothing more is fetched for them."""
        self.paused = True
        self._notify()

    def changed(self) -> anyio.Event:
        """Set at the next change; take it before checking the state it guards."""
        self._watched = True
        return self._changed

    async def until_finished(self) -> None:
        while True:
            changed = self.changed()
            if self.finished:
                return
            await changed.wait()

    def _notify(self) -> None:
        # Every verified chunk notifies; an event nobody took needs no setting or
        # replacing (that was a new event per chunk, on the event loop).
        if self._watched:
            self._changed.set()
            self._changed = anyio.Event()
            self._watched = False

    def chunk_verified(self, index: int) -> None:
        self.have[index] = True
        self.epoch[index] += 1
        self._notify()

    def manifest_vouched(self, hosts: int) -> None:
        if hosts != self.vouching_hosts:  # told after every probe: wake readers on news only
            self.vouching_hosts = hosts
            self._notify()

    def from_upstream(self, index: int) -> bool:
        return self.upstream_epoch[index] == self.epoch[index]

    def chunks_dropped(self, indexes: list[int]) -> None:
        """The downloader gave these chunks up (a failed whole-file check, a new
        manifest): readers wait for them again."""
        for i in indexes:
            self.have[i] = False
        self._notify()

    def opened(self, flags: list[bool]) -> None:
        """What the partial file held (re-checked) when the download opened it."""
        for i, flag in enumerate(flags[: self.n_chunks]):
            if flag and not self.have[i]:
                self.have[i] = True
                self.epoch[i] += 1
        self._notify()

    def on_bytes(self, source: str, upstream: bool, n: int) -> None:
        for listener in list(self.listeners.values()):
            listener(source, upstream, n)

    def complete(self, blob: Path) -> None:
        self.blob = blob
        self._notify()

    def fail(self, reason: str) -> None:
        if not self.finished:
            self.error = reason
            self._notify()


@dataclass
class _Sent:
    """What a reader sent of one chunk before the whole file was verified."""

    epoch: int
    start: int
    end: int
    hasher: Any = field(default_factory=xxhash.xxh3_128)


class SpanReader:
    """Bytes ``[start, end)`` of a file: from its complete blob, or from a transfer as
    its chunks verify.

    A span that runs to the end of the file holds back its last block until the whole
    file has passed its hash check, or, with ``confirm``, until upstream vouched for
    every byte it sent that did not come from upstream (``swarm.goal``); and if a chunk
    it sent was verified again since (dropped and refetched), what was sent is compared
    with the final file first. So a client never gets a complete copy that differs from
    the verified file, or from upstream's."""

    def __init__(
        self,
        start: int,
        end: int,
        *,
        blob: Path | None = None,
        transfer: Transfer | None = None,
        partial: Path | None = None,
        confirm: Confirm | None = None,
        hold: bool = False,
        may_stream: Callable[[int], bool] | None = None,
        tail_confirm: bool = False,
    ) -> None:
        assert (blob is None) != (transfer is None)
        self._confirm = confirm
        # chunk -> whether its bytes may go out before the whole-file check or upstream's
        # word (hffs.trust.may_stream_unchecked); None: every chunk may
        self._may_stream = may_stream
        self._tail_confirm = tail_confirm  # a span to the end, vouched for by upstream
        self._hold = hold  # nothing goes out before the whole file is checked
        self.pos = start
        self.end = end
        self._blob = blob
        self._transfer = transfer
        self._partial = partial
        self._fd: int | None = None
        self._sent: dict[int, _Sent] = {}
        self._vouched: dict[int, int] = {}  # chunk -> the epoch upstream vouched for

    def _block(self) -> int:
        n = min(BLOCK, self.end - self.pos)
        t = self._transfer
        if t is not None and t.blob is None:  # never read across into an unverified chunk
            n = min(n, (self.pos // t.chunk_size + 1) * t.chunk_size - self.pos)
        return n

    async def ready(self) -> None:
        """Wait until the next block can be read; TransferFailed if it never will."""
        t = self._transfer
        if t is None or self.pos >= self.end:
            return
        while True:
            changed = t.changed()
            if t.error is not None:
                raise TransferFailed(t.error)
            if t.blob is not None:
                return
            last = self.pos + self._block() >= self.end
            whole_check = self._hold or (last and self.end == t.size and not self._tail_confirm)
            chunk = self.pos // t.chunk_size
            if t.have[chunk] and not whole_check:
                if self._tail_confirm:
                    await self._vouch_chunk(t)
                    return
                if self._may_stream is None or self._may_stream(chunk):
                    return
                if self._confirm is not None and t.vouching_hosts is not None:
                    await self._vouch_chunk(t)  # a span inside the file: upstream's word
                    return
                # else the holders' word (on its way), or the whole-file check (the span
                # is the whole file: its goal)
            if t.paused:  # not a chunk this reader asked for: cannot happen, never hang
                raise TransferFailed("this part of the file was not asked for")
            await changed.wait()

    async def read(self) -> bytes:
        """The next block, b"" at the end of the span."""
        await self.ready()
        if self.pos >= self.end:
            return b""
        t = self._transfer
        n = self._block()
        if t is not None and t.blob is not None and self._sent and self.pos + n >= self.end:
            await self._check_sent(t, t.blob)
        fd = await self._open()
        data = await anyio.to_thread.run_sync(portable.pread, fd, n, self.pos)
        if len(data) != n:
            raise TransferFailed("the file is shorter on disk than expected")
        if t is not None and t.blob is None:
            chunk = self.pos // t.chunk_size
            sent = self._sent.setdefault(chunk, _Sent(t.epoch[chunk], self.pos, self.pos))
            sent.hasher.update(data)
            sent.end += n
            if self._tail_confirm and self.pos + n >= self.end == t.size:  # upstream's word first
                await self._vouch(t)
        self.pos += n
        return data

    def _vouched_for(self, t: Transfer, chunk: int, epoch: int) -> bool:
        """Whether upstream vouches for this chunk's bytes as of ``epoch``: it gave them,
        or it was asked and agreed."""
        if t.epoch[chunk] != epoch:
            return False
        return t.from_upstream(chunk) or self._vouched.get(chunk) == epoch

    async def _vouch_chunk(self, t: Transfer) -> None:
        """In a span to the end of a file not yet checked whole, before the first byte of
        a chunk peers gave goes out: upstream must give the same bytes (a client that
        resumes after a cut connection keeps what it got, so nothing is sent unvouched)."""
        chunk = self.pos // t.chunk_size
        if chunk in self._sent or self._vouched_for(t, chunk, t.epoch[chunk]):
            return
        epoch = t.epoch[chunk]
        lo, hi = self.pos, min(self.end, (chunk + 1) * t.chunk_size)
        hasher = xxhash.xxh3_128()
        fd = await self._open()
        got = await anyio.to_thread.run_sync(hash_range, pread_of(fd), lo, hi, hasher)
        if got != hi - lo:
            raise TransferFailed("the file is shorter on disk than expected")
        assert self._confirm is not None
        if not await self._confirm([(lo, hi, hasher.digest())]):
            raise TransferFailed("upstream's bytes differ from what peers gave; retry")
        self._vouched[chunk] = epoch

    async def _vouch(self, t: Transfer) -> None:
        """Before the last block of a span to the end of a file not yet checked whole:
        every byte sent must be vouched for by upstream as sent (a chunk verified again
        while it was being sent is asked about again)."""
        assert self._confirm is not None and self._tail_confirm  # else ready() waited
        spans = [
            (s.start, s.end, s.hasher.digest())
            for c, s in sorted(self._sent.items())
            if not self._vouched_for(t, c, s.epoch)
        ]
        if spans and not await self._confirm(spans):
            raise TransferFailed("upstream's bytes differ from what peers gave; retry")

    async def _check_sent(self, t: Transfer, blob: Path) -> None:
        """Before the last block: chunks verified again since we sent them must not
        have changed (a second verification of the same bytes is harmless)."""
        again = [s for c, s in self._sent.items() if t.epoch[c] != s.epoch]
        self._sent.clear()
        if again and not await anyio.to_thread.run_sync(_same_bytes, blob, again):
            raise TransferFailed("a chunk changed after it was sent; retry the download")

    async def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        t = self._transfer
        path = self._blob if t is None else (t.blob or self._partial)
        assert path is not None
        try:
            # An fd on the partial file stays valid when it is published (renamed or copied).
            self._fd = os.open(path, os.O_RDONLY | portable.O_BINARY)
        except OSError as exc:
            if t is None or t.blob is not None:
                raise TransferFailed(f"cannot read {path.name}: {exc.strerror}") from None
            while not t.finished:  # published between our check and the open
                await t.changed().wait()
            return await self._open()
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _SourceTap:
    """Passes each chunk's fate on to the status page's observer, and notes on the
    transfer which chunks upstream gave (their bytes need no second word from it)."""

    def __init__(self, t: Transfer, inner: ChunkObserver) -> None:
        self.t, self.inner = t, inner

    def chunk_verified(self, chunk: int, source: str, upstream: bool) -> None:
        # on_chunk (the epoch's bump) comes first; were it ever later, the epochs would
        # differ and the chunk would be asked of upstream again: slower, never unsafe
        self.t.upstream_epoch[chunk] = self.t.epoch[chunk] if upstream else -1
        self.inner.chunk_verified(chunk, source, upstream)

    def chunk_failed(self, chunk: int, source: str, upstream: bool) -> None:
        self.inner.chunk_failed(chunk, source, upstream)

    def manifest_vouched(self, hosts: int) -> None:
        self.t.manifest_vouched(hosts)
        self.inner.manifest_vouched(hosts)


def first_leaf(exc: Exception) -> Exception:
    """The first real failure inside nested task-group errors, for a one-line message."""
    while isinstance(exc, ExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _same_bytes(path: Path, spans: list[_Sent]) -> bool:
    """Blocking: whether each span of ``path`` hashes to what was sent."""
    with path.open("rb") as f:
        for s in spans:
            hasher = xxhash.xxh3_128()
            n = hash_range(pread_of(f.fileno()), s.start, s.end, hasher)
            if n != s.end - s.start or hasher.digest() != s.hasher.digest():
                return False
    return True


class DownloadManager:
    """The daemon's downloads; ``run()`` owns their task group for the daemon's life."""

    def __init__(
        self,
        cache: HubCache,
        partial_dir: Path,
        view: SwarmView,
        client: httpx.AsyncClient,
        peer_auth: PeerAuth,
        activity: Activity | None = None,
        manifests: ManifestCache | None = None,
    ) -> None:
        self.activity = activity or Activity()  # what the status page and metrics show
        # Where the seed side keeps manifests: each file published here hands over the
        # digests its download verified (``_published``), so it is never digested again.
        self.manifests = manifests
        self.cache = cache
        self.partial_dir = partial_dir
        self.view = view
        self.client = client
        self.peer_auth = peer_auth  # signs requests to peers (swarm secret)
        self.holders = DaemonHolders(view)
        self._transfers: dict[str, Transfer] = {}
        self.completed: set[str] = set()  # file ids this manager published (for status)
        self._tg: anyio.abc.TaskGroup | None = None
        self._ready = anyio.Event()
        self._limiter = anyio.CapacityLimiter(FILES_AT_ONCE)
        # One set of persistent connections per peer for every file (not per file), and
        # one budget of bytes in flight.
        self.pool = PeerPool(peer_auth)
        self.budget = ByteBudget(BYTES_IN_FLIGHT)
        self.hashers = hash_limiter()  # and one set of threads hashing whole files
        # files whose peer bytes upstream contradicted (bounded, oldest forgotten)
        self._suspect: dict[str, None] = {}

    @property
    def running(self) -> set[str]:
        """File ids being downloaded now."""
        return set(self._transfers)

    async def run(self) -> None:
        """Serve downloads until cancelled (which cancels them; partial files stay)."""
        store.publish_hooks.append(self._published)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._ready.set()
                await anyio.sleep_forever()
        finally:
            with contextlib.suppress(ValueError):
                store.publish_hooks.remove(self._published)
            self.pool.close()

    def _published(self, root: Path, manifest: Manifest, dest: Path) -> None:
        """A store hook (in the publishing thread): a file this manager downloaded is at
        ``dest``, every chunk and the whole verified; its digests are its manifest."""
        if self.manifests is None or root != self.partial_dir:
            return
        try:
            self.manifests.put(manifest, dest)
        except OSError as exc:  # the seed side digests it on request instead
            log.warning("cannot keep the manifest of %s…: %s", manifest.file_id[:12], exc)

    def complete_blob(self, file_id: str, size: int) -> Path | None:
        """Blocking: a complete blob of this id anywhere in the cache."""
        path = self.cache.find_blob(file_id)
        try:
            return path if path is not None and path.stat().st_size == size else None
        except OSError:
            return None

    async def reader(self, job: FileJob, start: int, end: int) -> SpanReader:
        """A reader of ``[start, end)``; starts (or joins) the file's download if needed."""
        blob = await anyio.to_thread.run_sync(self.complete_blob, job.file_id, job.size)
        if blob is not None:
            entry = self.cache.snapshot_dir(job.repo_type, job.repo_id, job.commit) / job.path
            if not entry.exists():  # held for another repo or revision: record this one too
                await anyio.to_thread.run_sync(self._link, blob, [job])
                with contextlib.suppress(Exception):  # best effort, as after a download
                    await self.view.announce([], [(job.repo_type, job.repo_id, job.commit)], False)
            return SpanReader(start, end, blob=blob)
        transfer = await self._transfer(job)
        transfer.keep = True
        transfer.goal.add(start, end)  # Range: bytes=0-0 fetches one chunk, not the file
        t = transfer
        upstream = job.hub_listed and bool(job.upstream)
        private = self.peer_auth.enabled

        def may_stream(chunk: int) -> bool:
            hosts = t.vouching_hosts or 0
            return may_stream_unchecked(t.from_upstream(chunk), hosts, upstream, private)

        # Upstream's word on a span's bytes, for chunks that may not go out unchecked.
        confirm = (lambda spans: self._confirm(job, spans)) if upstream else None
        tail_confirm = False
        # Upstream contradicted what peers gave for this file: nothing unchecked goes out
        # until the whole file passed its check (which finds and distrusts the forger),
        # once: then the file is whole and every span is served from it.
        hold = job.file_id in self._suspect
        if hold:
            transfer.goal.add(0, transfer.size)
        elif end >= job.size:  # the span completes a copy: who vouches for it (swarm.goal)
            if t.goal.whole or tail_needs_whole(start, end, t.size, t.chunk_size, t.have, upstream):
                t.goal.add(0, t.size)
                confirm = None  # the whole-file check vouches
            else:
                tail_confirm = True
        if job not in transfer.jobs:
            transfer.jobs.append(job)
        return SpanReader(
            start,
            end,
            transfer=transfer,
            partial=part_path(self.partial_dir, job.file_id),
            confirm=confirm,
            hold=hold,
            may_stream=may_stream,
            tail_confirm=tail_confirm,
        )

    async def _confirm(self, job: FileJob, spans: list[Span]) -> bool:
        """Whether upstream (the first endpoint that answers) gives the same bytes for
        each span; False when one differs, or no endpoint answers."""
        for source in job.upstream:
            try:
                for start, end, digest in spans:
                    hasher = xxhash.xxh3_128()

                    def sink(block: bytes, source: Source = source, hasher: Any = hasher) -> None:
                        hasher.update(block)
                        self.view.report_transfer(0, len(block))
                        self.activity.bytes_in(source.id, True, len(block))

                    await stream_range(self.client, source, start, end, sink)
                    if hasher.digest() != digest:
                        log.warning(
                            "%s…: bytes %d-%d from peers differ from %s's; not served",
                            job.file_id[:12],
                            start,
                            end,
                            source.id,
                        )
                        self._suspect[job.file_id] = None
                        while len(self._suspect) > MAX_SUSPECT:
                            del self._suspect[next(iter(self._suspect))]
                        return False
                return True
            except SourceError as exc:
                log.info("%s could not vouch for %s…: %s", source.id, job.file_id[:12], exc)
        return False

    async def _transfer(self, job: FileJob) -> Transfer:
        """The download of ``job``'s file, started or joined; TransferFailed when the one
        running was started for another size (two listings disagree)."""
        await self._ready.wait()
        assert self._tg is not None
        t = self._transfers.get(job.file_id)
        if t is None or t.finished:
            try:  # a job checked its whole plan; an HF client's GET is checked here
                await anyio.to_thread.run_sync(self._check_room, job)
            except space.NoSpace as exc:
                raise TransferFailed(str(exc)) from None
            t = self._transfers.get(job.file_id)  # started meanwhile?
        if t is None or t.finished:
            t = Transfer(job.file_id, job.size)
            self._transfers[job.file_id] = t
            self._tg.start_soon(self._drive, t, job)
        if t.size != job.size:
            raise TransferFailed("two listings disagree on this file's size")
        return t

    def _check_room(self, job: FileJob) -> None:
        """Blocking: NoSpace unless the disk can hold the rest of ``job``'s file."""
        space.check_downloads([(job.file_id, job.size)], self.partial_dir, self.cache.root)

    async def prefetch(self, job: FileJob, wait: float) -> bool:
        """Start (or join) the download of ``job``'s whole file, run to completion whoever
        leaves (as for an HF client's GET), and wait up to ``wait`` seconds for it: True
        once the file is complete in the cache. TransferFailed if it failed meanwhile."""
        if await anyio.to_thread.run_sync(self.complete_blob, job.file_id, job.size):
            return True
        t = await self._transfer(job)
        t.keep = True
        t.goal.add(0, t.size)  # the whole file, checked whole: no span of it goes unvouched
        if job not in t.jobs:
            t.jobs.append(job)  # linked in the snapshot once complete
        # Hold huggingface_hub's lock on the blob until the download ends (up to
        # CLIENT_LOCK_HOLD): a client that shares this cache waits on it, then finds the
        # blob, instead of copying it again through HTTP.
        lock = await anyio.to_thread.run_sync(self._lock_blob_for_clients, job)
        if lock is not None:
            assert self._tg is not None
            self._tg.start_soon(self._unlock_when_finished, t, lock)
        with anyio.move_on_after(wait):
            await t.until_finished()
        if t.error is not None:
            raise TransferFailed(t.error)
        return t.blob is not None

    def _lock_blob_for_clients(self, job: FileJob) -> int | None:
        """huggingface_hub's lock on ``job``'s blob in this cache, if free (None: a client
        holds it, downloading the file itself)."""
        try:
            path = self.cache.blob_lock_path(job.repo_type, job.repo_id, job.file_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            return portable.lock_file(path, 0o664)  # the mode huggingface_hub gives it
        except (OSError, CacheError):
            return None

    @staticmethod
    async def _unlock_when_finished(t: Transfer, lock: int) -> None:
        try:
            with anyio.move_on_after(CLIENT_LOCK_HOLD):
                await t.until_finished()
        finally:
            portable.unlock_file(lock)

    async def fetch(
        self, job: FileJob, on_bytes: OnBytes | None = None
    ) -> tuple[Path, dict[str, int]]:
        """The file of ``job`` complete in the cache (started, or joined if another job or
        client asked first): its blob and the verified bytes per source. Cancelling the
        caller stops the download unless another job or an HF client still wants it."""
        blob = await anyio.to_thread.run_sync(self.complete_blob, job.file_id, job.size)
        if blob is not None:
            return blob, {}
        t = await self._transfer(job)
        me = object()
        t.listeners[me] = on_bytes or (lambda source, upstream, n: None)
        t.goal.add(0, t.size)  # a job wants the whole file
        try:
            await t.until_finished()
        finally:
            del t.listeners[me]
            if not t.listeners and not t.keep and not t.finished:
                t.scope.cancel()  # nobody wants the rest now; the partial file stays
        if t.error is not None:
            raise (UpstreamRefused if t.refused else TransferFailed)(t.error)
        if t.blob is None:  # paused before this job's goal was seen: go again
            return await self.fetch(job, on_bytes)
        return t.blob, dict(t.by_source)

    async def _drive(self, t: Transfer, job: FileJob) -> None:
        with t.scope:
            try:
                async with self._limiter:
                    blob = await self._fetch(t, job)
                    while blob is None and not all(t.have[i] for i in t.goal.wanted()):
                        blob = await self._fetch(t, job)  # asked for more meanwhile
                    if blob is None:
                        t.pause()  # what was asked is held; the next request starts again
                        return
                await anyio.to_thread.run_sync(self._link, blob, list(t.jobs))
                t.complete(blob)
                self.completed.add(t.file_id)
            except Exception as exc:  # one file's failure must never take the host down
                leaf = first_leaf(exc)
                log.warning("download of %s… failed: %s", t.file_id[:12], leaf)
                t.refused = isinstance(leaf, UpstreamRefused)
                t.fail(str(leaf) or type(leaf).__name__)
            finally:
                t.fail("the download was stopped")  # if cancelled; no-op once finished
                self.activity.file_finished(t.file_id, t.error)
            if self._transfers.get(t.file_id) is t:
                del self._transfers[t.file_id]
        if t.blob is not None:
            revisions = list(dict.fromkeys((j.repo_type, j.repo_id, j.commit) for j in t.jobs))
            with contextlib.suppress(Exception):  # announcing is best effort
                await self.view.announce([t.file_id], revisions, False)

    async def _fetch(self, t: Transfer, job: FileJob) -> Path | None:
        """Download the file; returns the published blob, or None once every chunk
        requests asked for is held (the rest was not asked for)."""
        dest = self.cache.blob_path(job.repo_type, job.repo_id, job.file_id)
        blob = await anyio.to_thread.run_sync(self.complete_blob, t.file_id, t.size)
        if blob is not None:
            return blob

        def on_bytes(source: str, upstream: bool, n: int) -> None:
            self.view.report_transfer(0 if upstream else n, n if upstream else 0)
            self.activity.bytes_in(source, upstream, n)
            t.on_bytes(source, upstream, n)

        watch = self.activity.file_started(
            t.file_id, f"{job.repo_id}/{job.path}", t.size, list(t.have)
        )

        try:
            report = await download_file(
                t.file_id,
                t.size,
                dest=dest,
                store_root=self.partial_dir,
                upstream=list(job.upstream),
                client=self.client,
                holders=self.holders,
                peer_auth=self.peer_auth,
                on_bytes=on_bytes,
                on_open=t.opened,
                on_chunk=t.chunk_verified,
                on_drop=t.chunks_dropped,
                goal=t.goal,
                observer=_SourceTap(t, watch),
                pool=self.pool,
                budget=self.budget,
                hashers=self.hashers,
            )
        except DownloadPaused:
            return None
        except AccessRefused as exc:
            raise UpstreamRefused(str(exc)) from None
        except (DownloadError, StoreError) as exc:
            raise TransferFailed(str(exc)) from None
        t.by_source = dict(report.bytes_by_source)
        return dest

    def _link(self, blob: Path, jobs: list[FileJob]) -> None:
        """Blocking: the HF cache layout for every revision that asked for this file."""
        for j in jobs:
            try:
                own = self.cache.blob_path(j.repo_type, j.repo_id, j.file_id)
                if own != blob and not own.is_file():
                    self.cache.adopt(j.repo_type, j.repo_id, j.file_id, blob, "hardlink")
                self.cache.link(j.repo_type, j.repo_id, j.commit, j.path, j.file_id)
                if j.ref is not None:
                    self.cache.write_ref(j.repo_type, j.repo_id, j.ref, j.commit)
            except Exception as exc:  # the blob is good; a layout problem only costs sharing
                log.warning("cannot link %s into %s: %s", j.path, j.repo_id, exc)
