"""One file's download: the scheduler's decisions carried out over HTTP.

The scheduler (plain code) decides which source gets which chunk; this module
does the I/O: it asks holders for their have-bitmaps and manifests, pipelines peer
requests on persistent connections (settled by callbacks, the next one started at
once: no task per chunk; upstream requests run as tasks), verifies and writes each
chunk as it lands,
cancels requests the scheduler gave up on (timeouts, endgame losers), and
publishes the file only after its whole-file hash matched its id.

Whom to believe (manifest voting, bans, the verdict after each round) is decided
by swarm/trust.py, which chunk next and how much may be in flight by
swarm/scheduler.py; this module keeps HTTP, the disk and the clock.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import httpx

from swarm.budget import ByteBudget
from swarm.goal import Goal
from swarm.have import claim, follow_haves
from swarm.ids import content_hasher
from swarm.manifest import Manifest
from swarm.scheduler import (
    Request,
    Scheduler,
    SchedulerConfig,
    SourceKind,
    State,
)
from swarm.sources import (
    PeerAddr,
    Source,
    SourceError,
    fetch_have,
    fetch_manifest,
    report_bad_chunk,
    stream_range,
)
from swarm.store import PartialFile, _write_error, part_path
from swarm.transport_client import FileSink, MemorySink, PeerPool, Ticket
from swarm.trust import Action, Trust
from swarm.wire import PeerAuth

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # how often the holder list is asked for (Holders may answer from a cache)
HAVE_REFRESH_SECONDS = 0.5  # how often holders still downloading are asked what they have
NEWS_GAP = 0.25  # news of holders is acted on at most this often (announcements can flood)
TICK_SECONDS = 0.25  # upper bound on how long a timed-out request goes unnoticed
MAX_ROUNDS = 4  # attempts at one file: replans and failed whole-file checks
MEMORY_BUDGET = 64 << 20  # bytes of peer chunks in flight (a file's own budget, when not shared)
PROBE_TIMEOUT = 5.0
HASH_BLOCK = 1 << 20  # the running hash reads this much at a time (fits in L2)
STUCK_GRACE = 2 * REFRESH_SECONDS + PROBE_TIMEOUT  # time for holders to show up
# How long holders that answer "busy" (a cold seed digesting a big blob before it can vouch
# for it: 100 GB on a 100 MB/s disk) may keep a download with nowhere else to go waiting.
BUSY_PATIENCE = 1200.0
BUSY_FRESH = STUCK_GRACE  # a "busy" older than this no longer counts (probes come every 2-6 s)


def gives_up(
    now: float,
    stuck_since: float,
    busy_since: float | None,
    busy_last: float | None,
    grace: float = STUCK_GRACE,
    patience: float = BUSY_PATIENCE,
    fresh: float = BUSY_FRESH,
) -> bool:
    """Whether a download that no source can serve now stops waiting: after ``grace``,
    unless a holder said "busy, ask again" within the last ``fresh`` seconds and holders
    have not kept it waiting so for more than ``patience`` in all."""
    if now - stuck_since <= grace:
        return False
    return not (
        busy_last is not None
        and busy_since is not None
        and now - busy_last <= fresh
        and now - busy_since <= patience
    )


class DownloadError(Exception):
    """The file could not be completed; the message says why, for the user."""


class AccessRefused(DownloadError):
    """An upstream endpoint refused the file (HTTP 401/403) and nobody else had it."""


class DownloadPaused(Exception):
    """Every chunk the goal asked for is held; the rest was not asked for (yet)."""


class Holders(Protocol):
    """Where to learn who holds a file, and how to tell others we do."""

    async def holders(self, file_id: str, *, fresh: bool = False) -> list[PeerAddr]:
        """Who holds ``file_id``; may answer from a cache unless ``fresh`` (every holder
        known failed or left: look again)."""
        ...

    async def news(self, file_id: str, seen: int) -> int:
        """Returns once more holders announced themselves than the ``seen`` count it
        returned last (0 at first), with the new count: a download then looks at once
        instead of at its next refresh."""
        ...

    async def announce_partial(self, file_id: str) -> None: ...


OnBytes = Callable[[str, bool, int], None]  # (source id, upstream?, bytes)
OnChunk = Callable[[int], None]  # a chunk is verified and on disk
OnDrop = Callable[[list[int]], None]  # chunks held before are gone (to be fetched again)


class ChunkObserver(Protocol):
    """Told each chunk's fate and source, for a status page and metrics; the calls are
    synchronous and cheap, and must not raise."""

    def chunk_verified(self, chunk: int, source: str, upstream: bool) -> None: ...
    def chunk_failed(self, chunk: int, source: str, upstream: bool) -> None: ...
    def manifest_vouched(self, hosts: int) -> None:
        """How many distinct peer addresses sent exactly the manifest peer chunks are
        checked against (0: none yet, or the manifest is one no live peer sent)."""


@dataclass
class FileReport:
    file_id: str
    size: int
    bytes_by_source: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    bad_chunks: int = 0
    rounds: int = 1


def hash_threads(cpus: int | None) -> int:
    """Threads that hash whole files for every download of a process: one core is the
    event loop's (recv and write), so the rest, up to 4 (sha256 at ~1.6 GB/s each
    outruns a 25 GbE link), and never fewer than one."""
    return max(1, min(4, (cpus or 2) - 1))


def hash_limiter() -> anyio.CapacityLimiter:
    """The limiter every running hash of one process shares (a download's own, when the
    caller passes none): one hashing thread per file would have a model's shards fight
    over two cores and the GIL."""
    return anyio.CapacityLimiter(hash_threads(os.cpu_count()))


class _RunningHash:
    """The whole-file hash over the held prefix, advanced in worker threads as chunks
    land in order (beside the transfer, on another core), so the check at the end costs
    almost nothing. A dropped chunk voids it (full check then).

    Only the landing of the chunk the hash waits for wakes it (an event on the loop, no
    thread waiting per file); each advance hashes every chunk held in order, reading
    each into one reused block, in a thread of the ``limiter`` all downloads share."""

    def __init__(self, pf: PartialFile, limiter: anyio.CapacityLimiter) -> None:
        self.pf = pf
        self.hasher = content_hasher(pf.file_id, pf.size)
        self.next = 0
        self.drops = pf.drops
        self._view = memoryview(bytearray(HASH_BLOCK))
        self._limiter = limiter
        self._wake = anyio.Event()
        self._stopping = False

    @property
    def valid(self) -> bool:
        return self.drops == self.pf.drops

    def more(self, chunk: int) -> None:
        """``chunk`` landed (called on the event loop). ``next`` may be moving in a
        worker meanwhile: one that moves past a chunk held sees it, and ``run`` looks
        again before it waits, so no landing is missed."""
        if chunk == self.next:
            self._wake.set()

    def stop(self) -> None:
        """Let ``run`` return soon (an advance stops between two chunks)."""
        self._stopping = True
        self._wake.set()

    def _hash_next(self) -> None:
        start, end = self.pf.span(self.next)
        pos = start
        while pos < end:
            n = self.pf.read_into(self._view[: min(len(self._view), end - pos)], pos)
            if n <= 0:
                break
            self.hasher.update(self._view[:n])
            pos += n
        self.next += 1

    def _advance(self) -> None:
        """Blocking: hash every chunk held in order from ``next`` on."""
        pf = self.pf
        while self.next < pf.n_chunks and self.valid and not self._stopping and pf.has(self.next):
            self._hash_next()

    async def run(self) -> None:
        """Hash each chunk once it and all before it are held, until ``stop()`` (which
        may come first: the round can end before this task starts)."""
        pf = self.pf
        while self.next < pf.n_chunks and self.valid and not self._stopping:
            if pf.has(self.next):
                await anyio.to_thread.run_sync(self._advance, limiter=self._limiter)
                continue
            self._wake = anyio.Event()
            if not pf.has(self.next) and not self._stopping:
                await self._wake.wait()

    async def finish(self) -> None:
        """Hash what is held in order and not hashed yet (after the round)."""
        self._stopping = False
        await anyio.to_thread.run_sync(self._advance, limiter=self._limiter)

    def matches(self) -> bool | None:
        """Whether the file matches its id; None when the running hash cannot tell."""
        if not self.valid or self.next < self.pf.n_chunks:
            return None
        return self.hasher.hexdigest() == self.pf.file_id


class _Superseded(Exception):
    """The chunk being streamed was completed by another source meanwhile."""


@dataclass
class _Job:
    """What every round of one file's download shares."""

    pf: PartialFile
    upstream: list[Source]
    client: httpx.AsyncClient
    pool: PeerPool  # persistent, pipelined connections for peer chunks
    peer_auth: PeerAuth  # signs each request to a peer (swarm secret), else a no-op
    report: FileReport
    on_bytes: OnBytes | None
    on_chunk: OnChunk | None
    on_drop: OnDrop | None
    rng: random.Random
    trust: Trust = field(default_factory=Trust)  # holders distrusted for this file
    goal: Goal | None = None  # the chunks asked for; None: the whole file
    observer: ChunkObserver | None = None
    budget: ByteBudget = field(default_factory=lambda: ByteBudget(MEMORY_BUDGET))
    hashers: anyio.CapacityLimiter = field(default_factory=hash_limiter)

    def drop(self, chunks: Iterable[int]) -> None:
        held = [i for i in chunks if self.pf.has(i)]
        self.pf.drop_chunks(held)
        if held and self.on_drop:
            self.on_drop(held)


class _Round:
    """One pass at filling the missing chunks, driving one Scheduler."""

    def __init__(self, job: _Job, holders: Holders | None, running_hash: _RunningHash) -> None:
        self.holders = holders
        self.running_hash = running_hash
        self.pf, self.upstream, self.client, self.pool = job.pf, job.upstream, job.client, job.pool
        self.job = job
        self.peer_auth, self.report, self.banned = job.peer_auth, job.report, job.trust.banned
        self.on_bytes, self.on_chunk, self.rng = job.on_bytes, job.on_chunk, job.rng
        self.goal = job.goal
        self.observer = job.observer
        self.sources: dict[str, Source] = {s.id: s for s in self.upstream}
        self.peers: dict[str, PeerAddr] = {}
        self.partial_peers: set[str] = set()  # holders still downloading
        # What each holder's manifest says; for a holder still downloading, a transport
        # check only: the whole-file hash is what catches a liar.
        self.peer_digests: dict[str, tuple[bytes | None, ...]] = {}
        self.peer_chunks: dict[int, str] = {}
        # One writer in place per chunk: a peer stream writing into the file, or upstream.
        # Any other copy of the chunk (an endgame twin) is held in memory until verified.
        self.disk_sinks: dict[int, FileSink] = {}
        self.upstream_writing: set[int] = set()
        # Holders still downloading push each chunk they verify (swarm.have); those whose
        # stream cannot be followed (an older daemon) are polled instead.
        self.followed: set[str] = set()
        self.unfollowable: set[str] = set()
        self.pushed: dict[str, set[int]] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.sched: Scheduler | None = None
        self.running: dict[Request, anyio.CancelScope] = {}  # requests run as tasks
        # Requests pipelined on the hot path, with where their bytes go.
        self.tickets: dict[Request, tuple[Ticket, FileSink | MemorySink]] = {}
        self.failure: Exception | None = None  # raised by a settled request (a full disk)
        self.wake = anyio.Event()
        self.restart = False
        self.manifest_suspect = False
        self.refused: dict[str, int] = {}  # upstream id -> 401/403 it answered
        self.bad_reports: dict[str, int] = {}  # holder -> a chunk of it that failed
        # when holders first and last answered a probe "busy" (503): a cold seed digesting
        self.busy_since: float | None = None
        self.busy_last: float | None = None

    # -- holders -------------------------------------------------------------

    async def _probe(self, peer: PeerAddr, found: dict[str, set[int]]) -> None:
        pid = str(peer)
        fid = self.pf.file_id
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                have = await fetch_have(self.client, peer, fid, self.pf.n_chunks, self.peer_auth)
                known = self.peer_digests.get(pid)
                # The manifest only when it can say more: a new holder, or one still
                # downloading that has chunks we hold no digest for (asked after the
                # bitmap, so it covers every chunk the bitmap names).
                if known is None or (
                    self.pf.manifest is None and any(known[i] is None for i in have)
                ):
                    manifest = await fetch_manifest(
                        self.client, peer, fid, self.pf.size, self.peer_auth
                    )
                    self.peer_digests[pid] = manifest.digests
                if self.pf.manifest is None:
                    # Only chunks it vouches for: a cold holder's bitmap may run ahead of
                    # its digest (it holds the whole blob), and a chunk with no digest
                    # to check it by could only fail.
                    vouched = self.peer_digests[pid]
                    have = {i for i in have if i < len(vouched) and vouched[i] is not None}
        except (SourceError, TimeoutError) as exc:
            log.debug("holder %s: %s", pid, exc)
            if isinstance(exc, SourceError) and exc.status == 503:  # e.g. digesting: coming
                self.busy_last = anyio.current_time()
                if self.busy_since is None:
                    self.busy_since = self.busy_last
            return
        if pid not in self.banned:
            self.peers[pid] = peer
            found[pid] = have
            if len(have) < self.pf.n_chunks:
                self.partial_peers.add(pid)
            else:
                self.partial_peers.discard(pid)

    async def _probe_all(self, peers: Iterable[PeerAddr]) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        async with anyio.create_task_group() as tg:
            for peer in peers:
                tg.start_soon(self._probe, peer, found)
        self._trust_a_manifest()
        if self.observer:
            hosts = {self.peers[p].host for p in self.vouchers() if p in self.peers}
            self.observer.manifest_vouched(len(hosts))
        return {pid: have for pid, have in found.items() if self._agrees(pid)}

    def _trust_a_manifest(self) -> None:
        """Adopt the full manifest most holders agree on, if we have none yet.

        A liar can only win by outnumbering honest holders, and then only until the
        whole-file check fails and the round bans whoever vouched for it."""
        if self.pf.manifest is not None:
            return
        digests = self.job.trust.vote(self.peer_digests)
        if digests is None:
            return
        pf = self.pf
        dropped = pf.set_manifest(Manifest(pf.file_id, pf.size, pf.chunk_size, digests))
        if dropped and self.job.on_drop:
            self.job.on_drop(dropped)
        # Chunks the scheduler counts as done are gone: plan again.
        self.restart |= bool(dropped) and self.sched is not None

    def _agrees(self, pid: str) -> bool:
        """A holder whose digests contradict the trusted manifest sits this round out."""
        trusted = self.pf.manifest
        return Trust.agrees(self.peer_digests.get(pid, ()), trusted.digests if trusted else None)

    def vouchers(self) -> set[str]:
        """Holders that vouched for the manifest this round trusted."""
        trusted = self.pf.manifest
        return Trust.vouchers(self.peer_digests, trusted.digests if trusted else None)

    def _no_live_peer(self) -> bool:
        """No peer that answers holds a chunk (one just starting, as we are, holds none):
        the next lookup may ask the DHT afresh."""
        return self.sched is None or not self.sched.live_peer_holds_any()

    async def _discover(self, *, new_only: bool = False) -> dict[str, set[int]]:
        """Ask for holders, probe each (new or known; ``new_only``: those we never
        probed) for its bitmap, keep those we trust."""
        if self.holders is None:
            if self.observer:
                self.observer.manifest_vouched(0)  # no peer this round
            return {}
        fresh = not new_only and self.sched is not None and self._no_live_peer()
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                listed = await self.holders.holders(self.pf.file_id, fresh=fresh)
        except Exception as exc:  # discovery is best effort: upstream still works
            log.warning("looking up holders of %s failed: %s", self.pf.file_id[:12], exc)
            listed = []
        wanted = {str(p): p for p in listed if str(p) not in self.banned}
        if new_only:  # known holders tell their news on their haves streams
            return await self._probe_all(p for k, p in wanted.items() if k not in self.peers)
        wanted.update((k, v) for k, v in self.peers.items() if k not in self.banned)
        # A holder known to hold the whole file has nothing new to say (its answers only
        # set the same bitmap again): asked every REFRESH_SECONDS for every file at once,
        # that cost the event loop, the downloader's busiest thread, ~5 % of its time.
        known_whole = self.peers.keys() - self.partial_peers
        return await self._probe_all(p for k, p in wanted.items() if k not in known_whole)

    def _add_holders(self, found: dict[str, set[int]]) -> None:
        assert self.sched is not None
        for pid, have in found.items():
            have = have | self.pushed.get(pid, set())
            if pid not in self.sources:
                self.sources[pid] = Source(pid, self.peers[pid].blob_url(self.pf.file_id), False)
                self.sched.add_peer(pid, have)
            else:
                self.sched.set_have(pid, have)
            if (
                pid in self.partial_peers
                and pid not in self.followed | self.unfollowable
                and self.tg is not None
            ):
                self.followed.add(pid)
                self.tg.start_soon(self._follow, pid)
        self.wake.set()

    def _on_have(self, pid: str, batch: dict[int, bytes]) -> None:
        """A holder still downloading verified more chunks: trade them at once."""
        if pid in self.banned or self.sched is None:
            return
        digests = list(self.peer_digests.get(pid, (None,) * self.pf.n_chunks))
        for i, digest in batch.items():
            digests[i] = digest
        self.peer_digests[pid] = tuple(digests)
        have = self.pushed.setdefault(pid, set())
        have.update(batch)
        if self._agrees(pid):
            self.sched.set_have(pid, set(have))
            self.wake.set()

    def _on_claims(self, pid: str, claims: frozenset[int]) -> None:
        """A holder still downloading says what it fetches from upstream now: upstream
        here leaves those chunks for last (swarm/upstream_order.py)."""
        if pid in self.banned or self.sched is None or pid not in self.sources:
            return
        self.sched.set_fetching(pid, claims, anyio.current_time())
        self.wake.set()

    async def _follow(self, pid: str) -> None:
        peer = self.peers[pid]
        try:
            await follow_haves(
                peer,
                self.pf.file_id,
                self.pf.n_chunks,
                self.peer_auth,
                lambda batch: self._on_have(pid, batch),
                lambda claims: self._on_claims(pid, claims),
            )
        except SourceError as exc:
            log.debug("haves of %s: %s", pid, exc)
            self.unfollowable.add(pid)
            return
        finally:
            self.followed.discard(pid)
        # The stream ended: the holder completed the file (or dropped it). Ask it once.
        self._add_holders(await self._probe_all([peer]))

    async def _refresh_loop(self) -> None:
        """New holders every REFRESH_SECONDS; what holders still downloading have gained,
        more often (a bitmap is a few hundred bytes), so chunks flow between downloaders
        soon after they verify."""
        rounds = round(REFRESH_SECONDS / HAVE_REFRESH_SECONDS)
        for tick in itertools.count(1):
            if self.holders is None:
                return
            await anyio.sleep(HAVE_REFRESH_SECONDS)
            # Also at the first tick: a downloader that started with us announced itself
            # while we looked, and each second both fetch blind is a second of upstream
            # fetched twice.
            if tick % rounds == 0 or tick == 1:
                self._add_holders(await self._discover())
            elif polled := self.partial_peers & self.unfollowable - self.banned:
                self._add_holders(await self._probe_all([self.peers[p] for p in polled]))

    async def _news_loop(self) -> None:
        """Holders that announced themselves since we looked (downloaders starting with
        us) are probed at once, not at the next refresh: each second two downloaders
        fetch blind is a second of upstream fetched twice. At most every NEWS_GAP."""
        if self.holders is None:
            return
        seen = 0
        while True:
            seen = await self.holders.news(self.pf.file_id, seen)
            self._add_holders(await self._discover(new_only=True))
            await anyio.sleep(NEWS_GAP)

    # -- requests ------------------------------------------------------------

    # Peer chunks on an open connection take the hot path: ``_submit`` pipelines the
    # request at once and ``_landed`` (called by the connection as the last block is
    # read) settles it and starts the next ones, so a pipeline stays full without a task,
    # an event or a loop turn per chunk. Upstream, and a peer's first requests (while its
    # connection opens), run as one task each (``_fetch``).

    def _pump(self) -> None:
        """Start what the scheduler asks for now."""
        assert self.sched is not None
        now = anyio.current_time()
        self._cancel(self.sched.expire(now))
        for req in self.sched.next_requests(now, spare_bytes=self.job.budget.spare):
            if req.kind is SourceKind.PEER:
                self.job.budget.take(self.pf.chunk_size)
                if self._submit(req):
                    continue
            scope = anyio.CancelScope(deadline=req.deadline)
            self.running[req] = scope
            assert self.tg is not None
            self.tg.start_soon(self._fetch, req, scope)

    def _sink(self, chunk: int) -> FileSink | MemorySink:
        """A peer's chunk lands block by block: in place in the file when no other writer
        has the chunk (it counts as held only once its digest matched), else in memory.

        Bytes written in place before verification are only ever in a chunk not marked
        held: nothing serves, hashes or publishes them until ``mark_written``."""
        pf = self.pf
        start, end = pf.span(chunk)
        in_place = chunk not in self.disk_sinks and chunk not in self.upstream_writing
        if in_place and not pf.has(chunk):
            sink = self.disk_sinks[chunk] = FileSink(pf.fileno(), start)
            return sink
        return MemorySink(end - start)

    def _unsink(self, chunk: int, sink: FileSink | MemorySink) -> None:
        if isinstance(sink, FileSink) and self.disk_sinks.get(chunk) is sink:
            del self.disk_sinks[chunk]

    def _submit(self, req: Request) -> bool:
        peer = self.peers[req.source]
        conn = self.pool.ready(peer)
        if conn is None:
            return False
        pf, chunk = self.pf, req.chunk
        start, end = pf.span(chunk)
        sink = self._sink(chunk)

        def done(digest: bytes | None, exc: SourceError | None) -> None:
            self._landed(req, sink, digest, exc)

        self.tickets[req] = (self.pool.send(conn, pf.file_id, start, end, sink, done), sink)
        return True

    def _landed(
        self,
        req: Request,
        sink: FileSink | MemorySink,
        digest: bytes | None,
        exc: SourceError | None,
    ) -> None:
        """A pipelined peer request ended (on the event loop, inside a read): settle it,
        then start what that freed. Never raises: a failure ends the round instead."""
        assert self.sched is not None
        self.tickets.pop(req, None)
        self.job.budget.give(self.pf.chunk_size)
        self._unsink(req.chunk, sink)
        try:
            if exc is not None:
                log.debug("chunk %d from %s: %s", req.chunk, req.source, exc)
                if exc.status == 503:
                    # Busy or choked (swarm/choke.py): no blame, another holder asks.
                    self._cancel(self.sched.on_busy(req, anyio.current_time()))
                else:
                    self._cancel(self.sched.on_failure(req, anyio.current_time()))
                self.wake.set()  # the loop decides whether the file is stuck
            else:
                assert digest is not None
                ok, nbytes = self._check_peer(req, sink, digest)
                self._settled(req, ok, nbytes)
            if self.sched.done or self.restart:
                self.wake.set()
            else:
                self._pump()
        except Exception as failure:  # a full disk: the round raises it
            self.failure = failure
            self.wake.set()

    def _cancel(self, requests: list[Request]) -> None:
        for req in requests:
            scope = self.running.get(req)
            if scope is not None:
                scope.cancel()
            held = self.tickets.pop(req, None)
            if held is not None:
                ticket, sink = held
                self.pool.abandon(ticket, functools.partial(self._late, req))
                self.job.budget.give(self.pf.chunk_size)
                self._unsink(req.chunk, sink)

    def _late(self, req: Request, digest: bytes | None, exc: SourceError | None) -> None:
        """A request given up on (an endgame loser) was answered anyway. "Not held" means
        the peer claimed a chunk it lacks; bytes that match no digest it or the trusted
        manifest vouched for are a bad chunk. Either counts as if its answer came first,
        even once the round is over: a peer whose every copy lost is still found out."""
        if self.sched is None:
            return
        try:
            if exc is not None:
                if exc.status in (404, 416):
                    log.debug("late %d from %s", exc.status, req.source)
                    self._cancel(self.sched.on_late_refusal(req.source))
                return
            if req.source in self.banned or digest is None:
                return
            expected = self._expected(req)
            if expected is not None and digest != expected:
                self._bad(req)
        except Exception as failure:  # as in ``_landed``: the round raises it
            self.failure = failure
            self.wake.set()

    def _expected(self, req: Request) -> bytes | None:
        """The digest ``req``'s chunk must have: the trusted manifest's, else what its peer
        vouched for (None: nobody said)."""
        trusted = self.pf.manifest
        if trusted is not None:
            return trusted.digests[req.chunk]
        vouched = self.peer_digests.get(req.source, ())
        return vouched[req.chunk] if req.chunk < len(vouched) else None

    def _abandon_all(self) -> None:
        self._cancel(list(self.tickets))

    def _settled(self, req: Request, ok: bool, nbytes: int) -> None:
        """What every finished request tells the scheduler and the caller."""
        assert self.sched is not None
        if not ok:
            self._bad(req)
            return
        if not nbytes:  # an endgame twin got here first
            self.sched.on_cancelled(req)
            return
        upstream = req.kind is SourceKind.UPSTREAM
        self.report.bytes_by_source[req.source] += nbytes
        if self.on_chunk:
            self.on_chunk(req.chunk)
        if self.observer:
            self.observer.chunk_verified(req.chunk, req.source, upstream)
        self.running_hash.more(req.chunk)
        self._cancel(self.sched.on_success(req, anyio.current_time(), nbytes))

    async def _fetch(self, req: Request, scope: anyio.CancelScope) -> None:
        assert self.sched is not None
        source = self.sources[req.source]
        before = self.pf.progress(req.chunk)
        try:
            with scope:
                try:
                    if source.upstream:
                        ok, nbytes = await self._stream_upstream(req, source)
                    else:
                        ok, nbytes = await self._fetch_peer(req)
                except SourceError as exc:
                    log.debug("chunk %d from %s: %s", req.chunk, req.source, exc)
                    if source.upstream and exc.status in (401, 403):
                        self.refused[source.id] = exc.status
                    if not source.upstream and exc.status == 503:
                        # Busy or choked (swarm/choke.py): no blame, another holder asks.
                        self._cancel(self.sched.on_busy(req, anyio.current_time()))
                    elif self.pf.progress(req.chunk) > before:
                        # A cut stream that still delivered bytes is progress, not a fault:
                        # the next request resumes where it stopped.
                        self.sched.on_cancelled(req)
                    else:
                        self._cancel(self.sched.on_failure(req, anyio.current_time()))
                    return
                self._settled(req, ok, nbytes)
        finally:
            self.running.pop(req, None)
            if req.kind is SourceKind.PEER:
                self.job.budget.give(self.pf.chunk_size)
            self.wake.set()

    async def _fetch_peer(self, req: Request) -> tuple[bool, int]:
        """A peer's chunk while its connection opens (then the hot path takes over)."""
        pf, chunk = self.pf, req.chunk
        start, end = pf.span(chunk)
        sink = self._sink(chunk)
        try:
            digest = await self.pool.fetch(
                self.peers[req.source],
                pf.file_id,
                start,
                end,
                sink,
                functools.partial(self._late, req),  # if the endgame cancels it
            )
        finally:
            self._unsink(chunk, sink)
        return self._check_peer(req, sink, digest)

    def _check_peer(
        self, req: Request, sink: FileSink | MemorySink, digest: bytes
    ) -> tuple[bool, int]:
        """Whether a peer's chunk is good, and how many bytes it added (0: another copy
        got here first); marks it held."""
        pf, chunk = self.pf, req.chunk
        start, end = pf.span(chunk)
        if isinstance(sink, FileSink) and sink.error is not None:
            raise _write_error(part_path(pf.root, pf.file_id), sink.error)
        if self.on_bytes:
            self.on_bytes(req.source, False, end - start)
        if pf.manifest is None and self._expected(req) != digest:
            return False, 0  # checked against the manifest when marked, else here
        if pf.has(chunk) or (isinstance(sink, FileSink) and sink.stopped):
            return True, 0  # another copy got here first
        if isinstance(sink, FileSink):
            ok = pf.mark_written(chunk, digest)
        else:
            self._stop_disk_writer(chunk)
            # On the event loop, so no in-place writer can touch the chunk meanwhile.
            ok = pf.write_chunk(chunk, sink.data, digest)
        if not ok:
            return False, 0
        self.peer_chunks[chunk] = req.source
        return True, end - start

    def _stop_disk_writer(self, chunk: int) -> None:
        sink = self.disk_sinks.pop(chunk, None)
        if sink is not None:
            sink.stop()

    async def _stream_upstream(self, req: Request, source: Source) -> tuple[bool, int]:
        """Upstream bytes go to disk as they arrive (one writer per chunk: upstream is
        never duplicated), so a kill loses almost nothing and memory stays flat."""
        pf, chunk = self.pf, req.chunk
        start, end = pf.span(chunk)
        done = pf.progress(chunk)

        def sink(block: bytes) -> None:
            if pf.has(chunk):  # a peer delivered it after this request timed out
                raise _Superseded
            self._stop_disk_writer(chunk)  # upstream (one stream, resumable) has the disk
            pf.write_streamed(chunk, pf.progress(chunk), block)
            if self.on_bytes:
                self.on_bytes(req.source, True, len(block))

        self.upstream_writing.add(chunk)
        claim(pf.root, pf.file_id, self.upstream_writing)  # followers fetch other chunks
        try:
            if not pf.has(chunk) and done < end - start:
                await stream_range(self.client, source, start + done, end, sink)
        except _Superseded:
            return True, 0
        finally:
            self.upstream_writing.discard(chunk)
            claim(pf.root, pf.file_id, self.upstream_writing)
        if pf.has(chunk):
            return True, 0
        if pf.finish_streamed(chunk) is None:
            if pf.manifest is not None:
                # Upstream disagrees with what peers vouched for: doubt the peers first.
                self.manifest_suspect = self.restart = True
            return False, 0
        return True, end - start - done

    def _bad(self, req: Request) -> None:
        assert self.sched is not None
        log.warning("chunk %d from %s failed verification", req.chunk, req.source)
        self.report.bad_chunks += 1
        if self.observer:
            self.observer.chunk_failed(req.chunk, req.source, self.sources[req.source].upstream)
        if not self.sources[req.source].upstream:
            self.banned.add(req.source)
            self.bad_reports.setdefault(req.source, req.chunk)
        self._cancel(self.sched.on_failure(req, anyio.current_time(), bad_data=True))

    async def _report_bad(self) -> None:
        """Tell each holder that sent a bad chunk (it may not know its copy rotted)."""
        reports, self.bad_reports = self.bad_reports, {}
        peers = [(self.peers[pid], chunk) for pid, chunk in reports.items() if pid in self.peers]
        if not peers:
            return
        fid, client, auth = self.pf.file_id, self.client, self.peer_auth
        async with anyio.create_task_group() as tg:
            for peer, chunk in peers:
                tg.start_soon(report_bad_chunk, client, peer, fid, chunk, auth)

    async def _drive(self, sched: Scheduler) -> None:
        """Start what the scheduler asks for until the file is done, stuck or replanned."""
        pf, goal = self.pf, self.goal
        goal_seen = goal.version if goal else 0
        stuck_since: float | None = None
        assert self.tg is not None
        while not sched.done and not self.restart:
            if goal is not None and goal.version != goal_seen:
                goal_seen = goal.version  # a request asked for more of the file
                sched.reopen(i for i in goal.wanted() if not pf.has(i))
            if self.failure is not None:
                raise self.failure
            self._pump()
            now = anyio.current_time()
            if sched.state is State.STUCK:
                # Holders may still appear (or gain chunks): give discovery a chance.
                stuck_since = now if stuck_since is None else stuck_since
                if self.holders is None or gives_up(
                    now,
                    stuck_since,
                    self.busy_since,
                    self.busy_last,
                    STUCK_GRACE,
                    BUSY_PATIENCE,
                    BUSY_FRESH,
                ):
                    break
            else:
                stuck_since = None
            self.wake = anyio.Event()
            with anyio.move_on_after(TICK_SECONDS):
                await self.wake.wait()

    async def run(self) -> None:
        if self.holders is not None:
            # Say we are a holder from the start (as a BitTorrent client tells its tracker):
            # peers fetching the same file find us at once and take chunks as they verify.
            await self.holders.announce_partial(self.pf.file_id)
        found = await self._discover()
        pf, goal = self.pf, self.goal
        self.sched = sched = Scheduler(
            pf.n_chunks,
            pf.chunk_size,
            # chunks nobody asked for count as done until someone does
            done=[i for i in range(pf.n_chunks) if pf.has(i) or (goal and not goal.wants(i))],
            rng=self.rng,
            # The memory budget is the scheduler's input: every request it returns starts.
            config=SchedulerConfig(max_unverified_bytes=MEMORY_BUDGET),
        )
        for s in self.upstream:
            sched.add_upstream(s.id)
        async with anyio.create_task_group() as tg:
            self.tg = tg
            self._add_holders(found)
            tg.start_soon(self._refresh_loop)
            tg.start_soon(self._news_loop)
            tg.start_soon(self.running_hash.run)
            try:
                await self._drive(sched)
            finally:
                self._abandon_all()  # requests still pipelined: their bytes go nowhere
                self.running_hash.stop()  # an advance ends between two chunks
                tg.cancel_scope.cancel()
        await self._report_bad()
        if not sched.done and not self.restart:
            missing = sched.failed_chunks or list(range(sched.remaining))
            if self.refused:
                who = ", ".join(f"{s} (HTTP {code})" for s, code in self.refused.items())
                raise AccessRefused(
                    f"{len(missing)} chunk(s) of {pf.file_id[:12]}… are held by no peer and "
                    f"upstream refused access: {who}"
                )
            raise DownloadError(
                f"{len(missing)} chunk(s) of {pf.file_id[:12]}… could not be fetched from any "
                "peer or endpoint (is the mirror or huggingface.co reachable?)"
            )


async def download_file(
    file_id: str,
    size: int,
    *,
    dest: Path,
    store_root: Path,
    upstream: list[Source],
    client: httpx.AsyncClient,
    holders: Holders | None = None,
    peer_auth: PeerAuth | None = None,
    on_bytes: OnBytes | None = None,
    on_chunk: OnChunk | None = None,
    on_drop: OnDrop | None = None,
    on_open: Callable[[list[bool]], None] | None = None,
    rng: random.Random | None = None,
    goal: Goal | None = None,
    observer: ChunkObserver | None = None,
    pool: PeerPool | None = None,
    budget: ByteBudget | None = None,
    hashers: anyio.CapacityLimiter | None = None,
) -> FileReport:
    """Fetch one file into ``dest``, from peers and then ``upstream`` in order.

    Resumes whatever an earlier attempt left in ``store_root``. Raises
    DownloadError when the file cannot be completed and verified. With a ``goal``,
    fetches only the chunks it asks for (more as it grows) and raises DownloadPaused
    once they are all held short of the whole file. ``on_chunk`` and ``on_drop`` tell
    a verified chunk landed and held chunks were given up; ``on_open`` what the
    partial file held (re-checked) when it was opened. ``pool``, ``budget`` and
    ``hashers``, when given, are shared with the caller's other downloads (one
    connection pool, one budget of peer bytes in flight and one set of threads hashing
    whole files per daemon, however many files)."""
    started = anyio.current_time()
    report = FileReport(file_id, size)
    pf = await anyio.to_thread.run_sync(PartialFile, store_root, file_id, size)
    if on_open:
        on_open(pf.have())
    own_pool = pool is None
    job = _Job(
        pf,
        upstream,
        client,
        pool if pool is not None else PeerPool(peer_auth),
        peer_auth if peer_auth is not None else PeerAuth(),
        report,
        on_bytes,
        on_chunk,
        on_drop,
        rng or random.Random(),
        goal=goal,
        observer=observer,
    )
    if budget is not None:
        job.budget = budget
    if hashers is not None:
        job.hashers = hashers
    trust = job.trust
    try:
        for attempt in range(MAX_ROUNDS):
            report.rounds = attempt + 1
            use_peers = trust.uses_peers(attempt, MAX_ROUNDS, bool(upstream))
            running_hash = _RunningHash(pf, job.hashers)
            rnd = _Round(job, holders if use_peers else None, running_hash)
            await rnd.run()
            if goal is not None and not pf.complete and not rnd.restart:
                # What was asked is held; the caller asks again if its goal grew since.
                raise DownloadPaused(f"{file_id[:12]}…: every chunk asked for is held")
            action = trust.after_round(restart=rnd.restart, manifest_suspect=rnd.manifest_suspect)
            if action is Action.REPLAN:
                continue  # a trusted manifest dropped chunks we held: plan again
            whole_ok: bool | None = False
            if action is Action.CHECK:
                if pf.complete and running_hash.valid:
                    await running_hash.finish()  # the last chunks, if the round ended first
                whole_ok = running_hash.matches()
                if whole_ok is None:
                    whole_ok = await anyio.to_thread.run_sync(pf.verify_whole)
            verdict = trust.after_check(
                bool(whole_ok),
                n_chunks=pf.n_chunks,
                peer_chunks=rnd.peer_chunks,
                vouchers=rnd.vouchers(),
                manifest_suspect=rnd.manifest_suspect,
            )
            if verdict.action is Action.PUBLISH:
                await anyio.to_thread.run_sync(pf.publish, dest)
                report.seconds = anyio.current_time() - started
                return report
            # A consistent lie got past the chunk checks.
            log.warning("%s: distrusting %s", file_id[:12], sorted(verdict.ban))
            job.drop(verdict.drop)
            pf.clear_manifest()
        job.drop(range(pf.n_chunks))  # no source agrees with the id: nothing to resume
        raise DownloadError(
            f"{file_id[:12]}… did not match its hash after {report.rounds} attempt(s); "
            "nothing was published"
        )
    finally:
        if own_pool:
            job.pool.close()
        # A partial file that holds nothing is not kept (a fake id or size leaves no trace);
        # one that holds verified chunks stays, to resume from.
        if pf.complete or any(pf.have()):
            pf.close()
        else:
            pf.discard()
