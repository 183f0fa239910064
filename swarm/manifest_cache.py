"""Manifests of complete files, kept on disk keyed by id, size and mtime.

The peer server answers manifest requests from here. A download that just verified a
file hands its digests over at publish (``put``), so a seed never digests what it
fetched. A blob nobody handed over (imported, or cached before this existed) is
digested once however many peers ask: a small one at once, a large one in the
background, one at a time. A request that would wait long for it is answered with the
chunks digested so far (``answer``; /have and the haves stream say the same and grow
with the digest), or told "busy, ask again" while there are none, so a downloader's
probe never sits out a cold seed's digest of a 10 GB blob: it takes each chunk right
behind the digest, from the pages that pass just read.

A digest runs in two passes at once: the chunks' xxh3 (about ten times faster than
sha256), which peers hear of chunk by chunk, and the whole file against its id,
trailing it in a second thread (so a blob on a slow disk is read from it once), after
which the manifest is stored. If the whole-file check fails, the seed stops vouching
(and a downloader's own whole-file check rejects what it got meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from swarm.files import atomic_write
from swarm.manifest import (
    ChunkDone,
    Manifest,
    ManifestError,
    Progress,
    check_whole,
    chunk_manifest,
)

log = logging.getLogger(__name__)

SMALL_BLOB = 16 << 20  # digested at once, in the asking request (a fraction of a second)
# How long a request for a larger blob waits for its background digest before "busy":
# answered the moment the digest ends, and well inside a downloader's 5 s probe.
ANSWER_WAIT = 1.5
RETRY_AFTER = 1  # seconds, told to a peer asked to come back
MAX_QUEUED = 64  # blobs waiting for a background digest; more are refused until later
FAILED_MEMO = 256  # blobs known not to match their id (not digested again per request)
_POLL_MAX = 0.05  # how often a waiting request looks at its digest

Key = tuple[str, int, int]  # file id, size, mtime in ns
# The chunks' digests of a blob (telling of each as it goes), and the whole-file check
# (ManifestError unless the blob matches its id; waiting before it reads past a point).
Digester = Callable[[Path, str, ChunkDone], Manifest]
Checker = Callable[[Path, str, Progress], None]


def answer_wait(size: int, small_blob: int = SMALL_BLOB) -> float | None:
    """How long a manifest request waits for a running digest: None, until it ends
    (a small blob's takes milliseconds); else seconds, then the peer is told to retry."""
    return None if size <= small_blob else ANSWER_WAIT


@dataclass(eq=False)
class _Digest:
    """One background digest of one version of a blob; waiters share it."""

    key: Key
    path: Path
    done: threading.Event = field(default_factory=threading.Event)
    digests: list[bytes] = field(default_factory=list)  # the chunk pass's so far, in order
    early: Manifest | None = None  # the chunks' digests, before the whole-file check
    manifest: Manifest | None = None  # the same, once the whole file matched its id
    error: Exception | None = None

    def result(self) -> Manifest:
        if self.error is not None:
            raise self.error
        assert self.manifest is not None
        return self.manifest

    def known(self) -> Manifest | None:
        """The chunks' digests as far as they are vouched for now: all of them once the
        chunk pass ended (or the whole digest), else those digested so far (the rest
        None); None while there is none, or once the blob failed its check. Raises as
        ``result`` does once the digest ended."""
        if self.done.is_set():
            return self.result()
        early = self.early
        if early is not None:
            return early
        so_far = self.digests[:]  # a copy: the digest thread appends meanwhile
        if not so_far or self.error is not None:
            return None
        file_id, size, _ = self.key
        base = Manifest.empty(file_id, size)
        return Manifest(file_id, size, base.chunk_size, (*so_far, *base.digests[len(so_far) :]))


class _Trail:
    """How far the chunk pass has read, which the whole-file pass never gets ahead of."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pos = 0
        self._ended = False
        self._failed = False

    def advance(self, pos: int) -> None:
        with self._cond:
            self._pos = pos
            self._cond.notify_all()

    def end(self, *, failed: bool) -> None:
        with self._cond:
            self._ended, self._failed = True, failed
            self._cond.notify_all()

    def wait_past(self, pos: int) -> None:
        """Until the chunk pass has read up to ``pos`` (or ended: then read alone)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pos >= pos or self._ended)
            if self._failed:
                raise OSError("the chunk pass failed")


class ManifestCache:
    """Manifests by (id, size, mtime) under ``root``; digests run in one worker thread.

    ``digests_run`` counts the blobs this cache read to digest (what a hand-over saves)."""

    def __init__(
        self,
        root: Path,
        *,
        chunks: Digester = chunk_manifest,  # the real ones; tests slow them down
        whole: Checker = check_whole,
        max_queued: int = MAX_QUEUED,
        small_blob: int = SMALL_BLOB,
    ) -> None:
        self.root = root
        self.small_blob = small_blob
        self._chunks = chunks
        self._whole = whole
        self._max_queued = max_queued
        self._mutex = threading.Lock()
        self._jobs: dict[Key, _Digest] = {}  # queued or running: one per blob version
        self._queue: deque[_Digest] = deque()
        self._worker: threading.Thread | None = None
        self._failed: OrderedDict[Key, Exception] = OrderedDict()
        self.digests_run = 0
        self.busy_answers = 0  # requests told to come back (a digest was running)

    # -- entries on disk ---------------------------------------------------------

    def _entry(self, key: Key) -> Path:
        file_id, size, mtime_ns = key
        return self.root / f"{file_id}-{size}-{mtime_ns}.json"

    @staticmethod
    def key_of(file_id: str, path: Path) -> Key:
        st = path.stat()
        return file_id, st.st_size, st.st_mtime_ns

    def cached(self, file_id: str, path: Path) -> Manifest | None:
        """Blocking: the stored manifest of this version of the blob, if any."""
        key = self.key_of(file_id, path)
        return self._read(key)

    def _read(self, key: Key) -> Manifest | None:
        with contextlib.suppress(OSError, ManifestError):
            raw = self._entry(key).read_bytes()
            return Manifest.from_json(raw, file_id=key[0], size=key[1])
        return None

    def put(self, manifest: Manifest, path: Path) -> bool:
        """Blocking: remember ``manifest`` for the blob now at ``path`` (its stat is the
        key, so call it once the blob is where it stays). The caller vouches that the
        digests are the blob's (a download that verified every chunk and the whole).
        False when ``path`` is not a blob of the manifest's size."""
        key = self.key_of(manifest.file_id, path)
        if key[1] != manifest.size or not manifest.complete:
            return False
        self._drop_entries(manifest.file_id)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self._entry(key), manifest.to_json())
        return True

    def _drop_entries(self, file_id: str) -> None:
        for stale in self.root.glob(f"{file_id}-*.json"):
            stale.unlink(missing_ok=True)

    def prune(self, held: Callable[[str], bool]) -> int:
        """Blocking: drop the entries of files no longer ``held`` (removed from the cache);
        how many went. Without this, each file ever held would leave its manifest behind."""
        gone = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in self.root.glob("*.json"):
                file_id = entry.name.partition("-")[0]
                if not held(file_id):
                    entry.unlink(missing_ok=True)
                    gone += 1
        return gone

    def forget(self, file_id: str) -> None:
        """Drop what is known of ``file_id``: the next request digests it again."""
        self._drop_entries(file_id)
        with self._mutex:
            for key in [k for k in self._failed if k[0] == file_id]:
                del self._failed[key]

    # -- digesting -----------------------------------------------------------------

    def _lookup(
        self, file_id: str, path: Path, *, queue_full_ok: bool
    ) -> Manifest | _Digest | None:
        """Blocking: the stored manifest, or the digest (queued now if none runs) to wait
        for; None when the queue is full. Raises what a failed digest of this version
        raised (a blob that does not match its id is not digested on every request)."""
        key = self.key_of(file_id, path)
        manifest = self._read(key)
        if manifest is not None:
            return manifest
        with self._mutex:
            failed = self._failed.get(key)
            if failed is not None:
                raise failed
            job = self._jobs.get(key)
            if job is not None:
                return job
            # A digest that ended since the read above stored its entry before leaving
            # ``_jobs``: look again, or this request would digest the blob a second time.
            manifest = self._read(key)
            if manifest is not None:
                return manifest
            inline = key[1] <= self.small_blob
            if not inline and len(self._queue) >= self._max_queued and not queue_full_ok:
                return None
            job = _Digest(key, path)
            self._jobs[key] = job
            if not inline:
                self._queue.append(job)
                if self._worker is None:
                    self._worker = threading.Thread(
                        target=self._work, name="hffs-manifest-digest", daemon=True
                    )
                    self._worker.start()
                return job
        # A small blob is digested here and now (milliseconds), never queued behind a
        # large one; whoever else asks meanwhile waits for this digest.
        self._run(job)
        return job

    def _run(self, job: _Digest) -> None:
        try:
            job.manifest = self._build(job)
        except Exception as exc:  # a digest's failure is its waiters', never the thread's
            job.error = exc if isinstance(exc, (OSError, ManifestError)) else OSError(exc)
            job.early = None  # vouched for no longer
        with self._mutex:
            self._jobs.pop(job.key, None)
            if isinstance(job.error, ManifestError):
                self._failed[job.key] = job.error
                while len(self._failed) > FAILED_MEMO:
                    self._failed.popitem(last=False)
        job.done.set()

    def _work(self) -> None:
        """The one digest thread: runs queued digests in order, exits when none is left."""
        while True:
            with self._mutex:
                if not self._queue:
                    self._worker = None
                    return
                job = self._queue.popleft()
            self._run(job)

    def _build(self, job: _Digest) -> Manifest:
        file_id = job.key[0]
        self._unchanged(job, "before its digest began")
        self._drop_entries(file_id)  # another version's: it no longer vouches for anything
        with self._mutex:  # small blobs are digested in several request threads at once
            self.digests_run += 1
        trail = _Trail()
        checked: list[BaseException] = []

        def check() -> None:
            try:
                self._whole(job.path, file_id, trail.wait_past)
            except BaseException as exc:  # handed to the digest thread below
                checked.append(exc)

        checker = threading.Thread(target=check, name="hffs-manifest-check", daemon=True)
        checker.start()

        def chunk_done(end: int, digest: bytes) -> None:
            job.digests.append(digest)  # vouched for from now on (``known``)
            trail.advance(end)

        try:
            manifest = self._chunks(job.path, file_id, chunk_done)
            self._unchanged(job, "while being digested")
        except BaseException:
            trail.end(failed=True)
            checker.join()
            raise
        trail.end(failed=False)
        job.early = manifest  # peers hear it now; the whole-file check goes on
        checker.join()
        if checked:
            raise checked[0]  # refuses a blob that does not match its id
        self._unchanged(job, "while being digested")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self._entry(job.key), manifest.to_json())
        return manifest

    def _unchanged(self, job: _Digest, when: str) -> None:
        if self.key_of(job.key[0], job.path) != job.key:
            raise OSError(f"{job.key[0][:12]}… changed {when}")

    @staticmethod
    async def _wait(job: _Digest, timeout: float | None, *, early: bool = False) -> bool:
        """Whether ``job`` ended (or, with ``early``, has its chunks' digests) in time."""

        def ready() -> bool:
            return job.done.is_set() or (early and job.early is not None)

        delay = 0.002
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while not ready():
                await anyio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
        return ready()

    async def get(self, file_id: str, path: Path) -> Manifest:
        """The manifest, digesting the blob if needed and waiting however long it takes
        (joining a digest already running). OSError or ManifestError when the blob
        vanished, changed or does not match its id."""
        found = await anyio.to_thread.run_sync(
            lambda: self._lookup(file_id, path, queue_full_ok=True)
        )
        if isinstance(found, Manifest):
            return found
        assert found is not None
        await self._wait(found, None)
        return found.result()

    async def answer(self, file_id: str, path: Path, size: int) -> Manifest | None:
        """What a peer's manifest request gets: the manifest (the chunks' digests as soon
        as they are known, while the whole-file check runs), or None (busy: ask again
        after ``RETRY_AFTER``) while the blob is digested in the background. Raises as
        ``get`` does."""
        found = await anyio.to_thread.run_sync(
            lambda: self._lookup(file_id, path, queue_full_ok=False)
        )
        if isinstance(found, Manifest):
            return found
        wait = answer_wait(size, self.small_blob)
        if found is not None and await self._wait(found, wait, early=True):
            early = found.early
            if early is not None and not found.done.is_set():
                return early  # the whole-file check still runs
            await self._wait(found, None)  # ended, or failing right now
            return found.result()
        if found is not None and (so_far := found.known()) is not None:
            return so_far  # the chunks digested so far: a downloader starts on them
        self.busy_answers += 1
        return None

    def running(self, file_id: str) -> _Digest | None:
        """The digest of ``file_id`` queued or running now, if any (no I/O)."""
        with self._mutex:
            return next((job for key, job in self._jobs.items() if key[0] == file_id), None)

    async def follow(
        self, file_id: str, path: Path, alive: Callable[[], bool]
    ) -> AsyncIterator[dict[int, bytes]]:
        """The chunks' digests of this blob as its digest goes: what is known now, then
        each batch the chunk pass adds (a cold holder's haves stream); ends once every
        chunk is known, or once ``alive()`` is false. Raises as ``get`` does, also midway
        (vouched for no longer)."""
        found = await anyio.to_thread.run_sync(
            lambda: self._lookup(file_id, path, queue_full_ok=True)
        )
        if isinstance(found, Manifest):
            yield {i: d for i, d in enumerate(found.digests) if d is not None}
            return
        assert found is not None
        sent, delay = 0, 0.002
        while alive():
            ended = found.done.is_set() or found.early is not None
            known = found.known()
            if known is not None:
                new = {i: d for i, d in enumerate(known.digests[sent:], sent) if d is not None}
                if new:
                    yield new
                    sent = max(new) + 1
                    delay = 0.002
            if ended and known is not None and sent >= known.n_chunks:
                return
            if ended and known is None:
                found.result()  # raises: it failed (a rotten or changed blob)
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
