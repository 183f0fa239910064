"""The daemon's own downloads, for HF clients served through its hub endpoint.

One swarm download (``swarm.download.download_file``) per file id, however many
clients ask for the file at once; each client gets a ``SpanReader`` that streams
its byte range in order, chunk by chunk as chunks verify, from the partial file
on disk (memory stays at one block per client, whatever the file size).

A download started for a client runs to completion even if that client goes
away: the bytes already fetched are paid for, a retrying client (huggingface_hub
resumes with a Range request) or another client usually wants the rest, and the
finished file lands in the HF cache where the swarm shares it. It is bounded by
the daemon's lifetime; a stopped daemon resumes the partial file next time.

A file that another process (``hffs model add``) is already downloading is not
fetched twice: its progress is followed through the partial store's on-disk
state until that process publishes the blob, or gives up and we take over.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx
import xxhash

from hffs.cache import HubCache
from hffs.daemon.activity import Activity
from swarm import portable
from swarm.chunking import chunk_count, chunk_size_for
from swarm.download import DownloadError, DownloadPaused, download_file
from swarm.goal import Goal
from swarm.sources import PeerAddr, Source
from swarm.store import PartialFile, StoreError, read_partial_state

log = logging.getLogger(__name__)

BLOCK = 256 * 1024  # bytes per read and send: bounds memory per client
POLL = 0.5  # how often a running download's on-disk state is re-read
FOLLOW_STALL = 120.0  # another process's download idle this long: stop waiting for it
MAX_STORE_ERRORS = 3
FILES_AT_ONCE = 8  # downloads running at once (huggingface_hub asks for 8 files at a time)


class TransferFailed(Exception):
    """The bytes a reader waits for will not come; the message says why."""


class SwarmView(Protocol):
    """What the manager needs of the daemon (``service.Daemon`` provides it)."""

    async def find_providers(self, query: tuple[str, ...]) -> list[dict[str, Any]]: ...
    async def announce(
        self, file_ids: list[str], repos: list[tuple[str, str, str]], wait: bool
    ) -> int | None: ...
    def report_transfer(self, from_peers: int, from_upstream: int) -> None: ...


class DaemonHolders:
    """``swarm.download.Holders`` inside the daemon: its own DHT node and saved peers."""

    def __init__(self, view: SwarmView) -> None:
        self.view = view

    async def holders(self, file_id: str) -> list[PeerAddr]:
        found = await self.view.find_providers(("file", file_id))
        return list(dict.fromkeys(PeerAddr(p["host"], p["port"]) for p in found))

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
        self.blob: Path | None = None  # set once the whole file is verified and published
        self.error: str | None = None
        self.paused = False
        self.jobs: list[FileJob] = []  # every (repo, path) to link once complete
        self.goal = Goal(size, self.chunk_size)  # what requests asked for: fetched, no more
        self._changed = anyio.Event()

    @property
    def finished(self) -> bool:
        return self.blob is not None or self.error is not None or self.paused

    def pause(self) -> None:
        """Every chunk requests asked for is held; nothing more is fetched for them."""
        self.paused = True
        self._notify()

    def changed(self) -> anyio.Event:
        """Set at the next change; take it before checking the state it guards."""
        return self._changed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def chunk_verified(self, index: int) -> None:
        self.have[index] = True
        self.epoch[index] += 1
        self._notify()

    def set_flags(self, flags: list[bool], *, rising: bool) -> None:
        """Apply on-disk verified flags: drops always, new chunks only if ``rising``
        (our own download reports those through ``chunk_verified``)."""
        if len(flags) != self.n_chunks:
            return
        changed = False
        for i, flag in enumerate(flags):
            if flag != self.have[i] and (rising or not flag):
                self.have[i] = flag
                self.epoch[i] += flag
                changed = True
        if changed:
            self._notify()

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
    file has passed its hash check; and if a chunk it sent was verified again since
    (dropped and refetched), what was sent is compared with the final file first. So
    a client never gets a complete copy that differs from the verified file."""

    def __init__(
        self,
        start: int,
        end: int,
        *,
        blob: Path | None = None,
        transfer: Transfer | None = None,
        partial: Path | None = None,
    ) -> None:
        assert (blob is None) != (transfer is None)
        self.pos = start
        self.end = end
        self._blob = blob
        self._transfer = transfer
        self._partial = partial
        self._fd: int | None = None
        self._sent: dict[int, _Sent] = {}

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
            if t.have[self.pos // t.chunk_size] and not (last and self.end == t.size):
                return
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
        self.pos += n
        return data

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


def first_leaf(exc: Exception) -> Exception:
    """The first real failure inside nested task-group errors, for a one-line message."""
    while isinstance(exc, ExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _same_bytes(path: Path, spans: list[_Sent]) -> bool:
    """Blocking: whether each span of ``path`` hashes to what was sent."""
    with path.open("rb") as f:
        for s in spans:
            f.seek(s.start)
            hasher, left = xxhash.xxh3_128(), s.end - s.start
            while left > 0 and (block := f.read(min(BLOCK, left))):
                hasher.update(block)
                left -= len(block)
            if left or hasher.digest() != s.hasher.digest():
                return False
    return True


def _open_flags(root: Path, file_id: str, size: int) -> list[bool]:
    """Blocking: open the partial file once (re-checking what a past run left) and close
    it; StoreError when another process holds it."""
    with PartialFile(root, file_id, size) as pf:
        return pf.have()


class DownloadManager:
    """The daemon's downloads; ``run()`` owns their task group for the daemon's life."""

    def __init__(
        self,
        cache: HubCache,
        partial_dir: Path,
        view: SwarmView,
        client: httpx.AsyncClient,
        peer_headers: dict[str, str],
        activity: Activity | None = None,
    ) -> None:
        self.activity = activity or Activity()  # what the status page and metrics show
        self.cache = cache
        self.partial_dir = partial_dir
        self.view = view
        self.client = client
        self.peer_headers = peer_headers
        self.holders = DaemonHolders(view)
        self._transfers: dict[str, Transfer] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._ready = anyio.Event()
        self._limiter = anyio.CapacityLimiter(FILES_AT_ONCE)

    async def run(self) -> None:
        """Serve downloads until cancelled (which cancels them; partial files stay)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._ready.set()
            await anyio.sleep_forever()

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
        if transfer.size != job.size:
            raise TransferFailed("two listings disagree on this file's size")
        transfer.goal.add(start, end)  # Range: bytes=0-0 fetches one chunk, not the file
        return SpanReader(
            start, end, transfer=transfer, partial=self.partial_dir / f"{job.file_id}.part"
        )

    async def _transfer(self, job: FileJob) -> Transfer:
        await self._ready.wait()
        assert self._tg is not None
        t = self._transfers.get(job.file_id)
        if t is None or t.finished:
            t = Transfer(job.file_id, job.size)
            self._transfers[job.file_id] = t
            self._tg.start_soon(self._drive, t, job)
        if job not in t.jobs:
            t.jobs.append(job)
        return t

    async def _drive(self, t: Transfer, job: FileJob) -> None:
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
        except Exception as exc:  # one file's failure must never take the daemon down
            leaf = first_leaf(exc)
            log.warning("download of %s… failed: %s", t.file_id[:12], leaf)
            t.fail(str(leaf) or type(leaf).__name__)
        finally:
            t.fail("the daemon is stopping")  # if cancelled; no-op once finished
            self.activity.file_finished(t.file_id, t.error)
            if self._transfers.get(t.file_id) is t:
                del self._transfers[t.file_id]
        if t.blob is not None:
            revisions = list(dict.fromkeys((j.repo_type, j.repo_id, j.commit) for j in t.jobs))
            with contextlib.suppress(Exception):  # announcing is best effort
                await self.view.announce([t.file_id], revisions, False)

    async def _fetch(self, t: Transfer, job: FileJob) -> Path | None:
        """Download, or wait for another process's download; returns the published blob,
        or None once every chunk requests asked for is held (the rest was not asked)."""
        dest = self.cache.blob_path(job.repo_type, job.repo_id, job.file_id)
        store_errors = 0
        idle_since = anyio.current_time()
        while True:
            blob = await anyio.to_thread.run_sync(self.complete_blob, t.file_id, t.size)
            if blob is not None:
                return blob
            try:
                flags = await anyio.to_thread.run_sync(
                    _open_flags, self.partial_dir, t.file_id, t.size
                )
            except StoreError:  # someone else is downloading it: follow their progress
                flags = None
            if flags is None:
                before = sum(t.have)
                await self._follow(t)
                now = anyio.current_time()
                if sum(t.have) != before:
                    idle_since = now
                elif now - idle_since > FOLLOW_STALL:
                    raise DownloadError("another process's download of this file stalled")
                continue
            t.set_flags(flags, rising=True)
            watch = self.activity.file_started(
                t.file_id, f"{job.repo_id}/{job.path}", t.size, list(t.have)
            )
            failure: Exception | None = None
            paused = False
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_drops, t)
                try:
                    await download_file(
                        t.file_id,
                        t.size,
                        dest=dest,
                        store_root=self.partial_dir,
                        upstream=list(job.upstream),
                        client=self.client,
                        holders=self.holders,
                        peer_headers=self.peer_headers,
                        on_bytes=self._count,
                        on_chunk=t.chunk_verified,
                        goal=t.goal,
                        observer=watch,
                    )
                except DownloadPaused:
                    paused = True
                except Exception as exc:  # raised below, not wrapped in this group's error
                    failure = first_leaf(exc)
                tg.cancel_scope.cancel()
            if isinstance(failure, StoreError) and store_errors < MAX_STORE_ERRORS - 1:
                store_errors += 1  # lost a race for the lock, or the disk failed: look again
                continue
            if failure is not None:
                raise failure
            if paused:
                return None
            return dest

    async def _follow(self, t: Transfer) -> None:
        """One poll period of following another process's download."""
        for _ in range(4):
            state = await anyio.to_thread.run_sync(read_partial_state, self.partial_dir, t.file_id)
            if state is not None and state[0] == t.size:
                t.set_flags(state[1], rising=True)
            await anyio.sleep(POLL)

    async def _watch_drops(self, t: Transfer) -> None:
        """Chunks the downloader drops (a failed whole-file check, a new manifest) must be
        waited for again: only the on-disk state tells."""
        while True:
            await anyio.sleep(POLL)
            state = await anyio.to_thread.run_sync(read_partial_state, self.partial_dir, t.file_id)
            if state is not None and state[0] == t.size:
                t.set_flags(state[1], rising=False)

    def _count(self, source: str, upstream: bool, n: int) -> None:
        self.view.report_transfer(0 if upstream else n, n if upstream else 0)
        self.activity.bytes_in(source, upstream, n)

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
