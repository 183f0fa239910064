"""Download scheduler for one file: which chunk to ask of which source, and when to give up.

Plain code with no I/O and no clock of its own: every event passes ``now`` (seconds, any
monotonic origin), and ties are broken by an injected ``random.Random``, so a run is fully
determined by its inputs and the rules are tested alone, like h11's state machine. The caller
does the transfers, verifies each chunk against the manifest, and reports back.

Sources are opaque string ids of two kinds: *peers*, which hold the chunks in their have-set,
and *upstream* HTTP endpoints (mirror, then huggingface.co, in the order added), which hold all.

Rules
-----
Assignment, each :meth:`Scheduler.next_requests` call, in this order:

1. Peers, rarest first. Each live peer with a free slot (fastest first) takes the unassigned
   chunks it holds that have the fewest live holders; ties go by an order drawn once per
   download: file order by windows of ``order_window`` chunks, random within a window. The
   randomness spreads different downloaders over different chunks; the file order lets the
   whole-file hash (which only advances over a held prefix) keep pace with the transfer
   instead of running at the end.
2. Upstream. A chunk that no live peer can serve at the chunk's lowest failure level (below)
   goes to the first endpoint, in priority order, at that level: chunks no peer holds go to the
   mirror, chunks the mirror failed go to huggingface.co. Upstream never takes a chunk a live
   peer could serve, even if that peer is busy: it is the costly last resort. It takes them in
   stretches of file order kept away from other downloaders' (swarm/upstream_order.py).
3. Endgame. Once no unassigned chunk can be served by anyone and at most
   ``endgame_threshold`` chunks are in flight, free peer slots duplicate in-flight chunks they
   hold and never failed (fewest copies first, then the longest outstanding), up to
   ``max_duplicates`` extra copies per chunk. The first copy to succeed makes
   :meth:`Scheduler.on_success` return the others for the caller to cancel. Endgame never
   duplicates to upstream.

Outside endgame a chunk is never requested twice at once. In-flight limits always hold when a
request is issued (a shrink may leave a source above its new limit until requests finish).

Byte budget (an input, as anacrolix/torrent's request strategy takes MaxUnverifiedBytes).
``max_unverified_bytes`` bounds the bytes of peer requests in flight (a peer's chunk is held
in memory until verified; upstream streams to disk and is not counted), and
``max_source_bytes`` bounds the bytes in flight per source of any kind. Every request
:meth:`Scheduler.next_requests` returns fits both, so the caller starts all of them; only
when nothing is in flight (of the file, or of that source) may one request exceed a budget,
so a chunk larger than the budget still moves. A third budget, shared by every file of a
daemon (``swarm.budget``), comes with each call (``next_requests(spare_bytes=...)``) and
bounds the peer requests that call adds, on the same terms.

Failure levels. Each (chunk, source) pair counts failures (errors and timeouts). A chunk goes
to the sources that failed it least, peers before upstream at equal counts, so it moves to the
mirror once every live holder has failed it, then to the hub, then round again, until every
source has failed it ``attempts_per_source`` times. Such a chunk is listed in
:attr:`Scheduler.failed_chunks`, and once nothing is in flight :attr:`Scheduler.state` is
``STUCK``: the caller reports a clear error (or adds sources) instead of looping.

Busy. A peer that answers "busy" (choked: swarm/choke.py) is not blamed: the chunk returns
to the pool, and that peer is not asked for it again for ``busy_backoff`` seconds, so the
chunk goes to another holder that has it (or back to the same one later). Only
``max_busy`` such answers per chunk and peer: then it counts as a failure, so a peer that
is always "busy" cannot keep a chunk from the other sources (upstream included).

Sources leave the file's download three ways: the caller removes a peer (it may come back),
``max_consecutive_failures`` failures in a row bench a source (never the last live
endpoint: with nowhere else to go, benching would only turn a flaky mirror into a
failure), and a chunk that fails verification (``bad_data=True``) bans it. Benched and
banned sources never come back for this file; their in-flight requests return to the pool.

In-flight limit (per source, delay-based). Each completed request's latency (issue to success)
measures how long the source takes to turn around its whole queue: on a shared bottleneck
``latency ~ limit * chunk_size / throughput``. A success with ``latency <= target_latency``
while the source used its whole window adds one slot (up to the kind's maximum); a success
slower than ``2 * target_latency`` removes one; a failure or timeout halves the limit
(never below 1). So a source settles near ``throughput * target_latency / chunk_size`` slots:
faster sources get proportionally more, and a slow one holds few chunks hostage at the end.

Throughput. EWMA of delivery-rate samples: each success contributes its bytes over the time
since the later of its issue and the source's previous delivery, which measures the source's
aggregate rate even when it serves several requests concurrently.

Timeouts. A request's deadline is fixed when issued: ``timeout_initial`` until the source has
a throughput estimate, then ``timeout_factor`` times the time the source needs for everything
queued on it including this request (``k * chunk_size / throughput``), clamped to
``[timeout_floor, timeout_max]``. :meth:`Scheduler.expire` (also run by ``next_requests``)
fails overdue requests: the chunk returns to the pool for another source and the limit halves.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from swarm.upstream_order import level_rule, upstream_order

__all__ = [
    "Request",
    "Scheduler",
    "SchedulerConfig",
    "SourceKind",
    "SourceState",
    "SourceStats",
    "State",
]


class SourceKind(Enum):
    PEER = "peer"
    UPSTREAM = "upstream"


class SourceState(Enum):
    LIVE = "live"
    REMOVED = "removed"  # by the caller; add_peer may bring it back
    BENCHED = "benched"  # too many consecutive failures; final for this file
    BANNED = "banned"  # sent data that failed verification; final for this file


class State(Enum):
    RUNNING = "running"
    DONE = "done"
    STUCK = "stuck"  # nothing in flight and no current source can serve what remains


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    initial_in_flight: int = 2
    max_in_flight: int = 16
    upstream_initial_in_flight: int = 2
    upstream_max_in_flight: int = 8
    # Growth/shrink threshold of the delay-based in-flight rule (seconds).
    target_latency: float = 2.0
    # Deadline before a source has any throughput estimate.
    timeout_initial: float = 30.0
    timeout_floor: float = 5.0
    timeout_max: float = 300.0
    # Slack over the expected transfer time before a request counts as lost.
    timeout_factor: float = 4.0
    throughput_alpha: float = 0.3
    # Endgame duplicates only the last few chunks, once: more copies cost upload
    # bandwidth across the swarm (bench/load.py: 44 % bytes over need at 32 and 2, 29 % here).
    endgame_threshold: int = 8
    max_duplicates: int = 1
    # How often one source may fail one chunk before it is not asked for it again.
    attempts_per_source: int = 2
    max_consecutive_failures: int = 3
    # Byte budgets of requests in flight (None: unbounded); see "Byte budget" above.
    max_unverified_bytes: int | None = None
    max_source_bytes: int | None = None
    # How long a peer that answered "busy" for a chunk is not asked for it again.
    busy_backoff: float = 1.0
    max_busy: int = 20
    # Equally rare chunks go in file order by windows of this many chunks, random within one.
    # 8 spreads downloaders enough (the seed's choke rule does the rest) while the running
    # hash reads back chunks that landed a few MiB ago, still in the CPU's cache.
    order_window: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.initial_in_flight <= self.max_in_flight:
            raise ValueError("need 1 <= initial_in_flight <= max_in_flight")
        if not 1 <= self.upstream_initial_in_flight <= self.upstream_max_in_flight:
            raise ValueError("need 1 <= upstream_initial_in_flight <= upstream_max_in_flight")
        if not 0 < self.timeout_floor <= self.timeout_max:
            raise ValueError("need 0 < timeout_floor <= timeout_max")
        if self.timeout_initial <= 0 or self.timeout_factor <= 0 or self.target_latency <= 0:
            raise ValueError("timeouts and target_latency must be positive")
        if self.busy_backoff < 0 or self.max_busy < 1:
            raise ValueError("need busy_backoff >= 0 and max_busy >= 1")
        if not 0 < self.throughput_alpha <= 1:
            raise ValueError("need 0 < throughput_alpha <= 1")
        if self.endgame_threshold < 0 or self.max_duplicates < 0:
            raise ValueError("endgame_threshold and max_duplicates must be >= 0")
        if self.attempts_per_source < 1 or self.max_consecutive_failures < 1:
            raise ValueError("attempts_per_source and max_consecutive_failures must be >= 1")
        if self.order_window < 1:
            raise ValueError("order_window must be >= 1")
        for budget in (self.max_unverified_bytes, self.max_source_bytes):
            if budget is not None and budget <= 0:
                raise ValueError("byte budgets must be positive")


@dataclass(frozen=True, slots=True)
class Request:
    """Ask ``source`` for ``chunk``. The caller may enforce ``deadline`` itself (e.g. with a
    cancel scope); ``seq`` is unique per scheduler, telling a retry from the request it
    replaces."""

    source: str
    chunk: int
    kind: SourceKind
    issued_at: float
    deadline: float
    seq: int


@dataclass(frozen=True, slots=True)
class SourceStats:
    source: str
    kind: SourceKind
    state: SourceState
    bytes: int  # verified bytes used from this source
    chunks: int
    failures: int  # including timeouts and bad data
    timeouts: int
    throughput: float | None  # bytes/s estimate, None before the first success
    limit: int
    in_flight: int


@dataclass(eq=False, slots=True)
class _Source:
    id: str
    kind: SourceKind
    order: float  # random tie-break between equally fast peers
    limit: int
    max_limit: int
    have: set[int] = field(default_factory=set)
    # A peer's upstream requests, as it says: chunk -> when first claimed.
    fetching: dict[int, float] = field(default_factory=dict)
    state: SourceState = SourceState.LIVE
    in_flight: dict[Request, None] = field(default_factory=dict)  # ordered set
    bytes: int = 0
    chunks: int = 0
    failures: int = 0
    timeouts: int = 0
    consecutive_failures: int = 0
    throughput: float | None = None
    last_delivery: float = -math.inf
    unsampled_bytes: int = 0  # bytes delivered at the same instant as the previous sample
    busy: dict[int, float] = field(default_factory=dict)  # chunk -> not asked before then
    busy_answers: dict[int, int] = field(default_factory=dict)  # chunk -> "busy" answers


class Scheduler:
    """Schedules the chunks of one file; see the module docstring for the rules."""

    def __init__(
        self,
        num_chunks: int,
        chunk_size: int,
        *,
        done: Iterable[int] = (),
        rng: random.Random | None = None,
        config: SchedulerConfig | None = None,
    ) -> None:
        if num_chunks < 0:
            raise ValueError(f"negative chunk count: {num_chunks}")
        if chunk_size <= 0:
            raise ValueError(f"chunk size must be positive: {chunk_size}")
        self.num_chunks = num_chunks
        self.chunk_size = chunk_size
        self.config = config if config is not None else SchedulerConfig()
        self._rng = rng if rng is not None else random.Random()
        self._done = bytearray(num_chunks)
        for c in done:
            self._check_chunk(c)
            self._done[c] = 1
        self._remaining = num_chunks - sum(self._done)
        # Chunks neither done nor in flight.
        self._pool = {c for c in range(num_chunks) if not self._done[c]}
        order: list[int] = []
        w = self.config.order_window
        for base in range(0, num_chunks, w):
            window = list(range(base, min(base + w, num_chunks)))
            self._rng.shuffle(window)
            order += window
        self._by_rank = order  # tie-break among equally rare chunks (see rule 1)
        # Where upstream goes next (swarm/upstream_order.py); the first stretch starts at
        # random, so downloaders that start together begin apart.
        self._upstream_follow = self._rng.randrange(num_chunks) if num_chunks else 0
        self._rank = [0] * num_chunks
        for pos, c in enumerate(order):
            self._rank[c] = pos
        self._rarity = [0] * num_chunks  # live peers holding each chunk
        # How many pool chunks have each rarity, and the first rank still in the pool:
        # with them a peer holding most chunks takes the best ones without a full scan.
        self._pool_rarity: Counter[int] = Counter({0: len(self._pool)})
        self._cursor = 0
        self._unheld = set(range(num_chunks))  # chunks with rarity 0
        self._fails: dict[int, dict[str, int]] = {}  # chunk -> source -> failures
        self._in_flight: dict[int, list[Request]] = {}  # chunk -> copies, oldest first
        self._sources: dict[str, _Source] = {}
        self._upstreams: list[_Source] = []  # priority order
        self._seq = 0
        self._peer_requests = 0  # peer requests in flight: unverified bytes held
        self._spare: int | None = None  # the shared budget's room, during one next_requests

    # ---- sources -------------------------------------------------------------------------

    def add_peer(self, peer: str, have: Iterable[int] = ()) -> bool:
        """Add a peer (or bring back a removed one) holding ``have``. Returns False, doing
        nothing, for a peer benched or banned for this file. Adding a live peer again only
        replaces its have-set."""
        src = self._sources.get(peer)
        if src is None:
            cfg = self.config
            src = _Source(
                peer,
                SourceKind.PEER,
                self._rng.random(),
                cfg.initial_in_flight,
                cfg.max_in_flight,
            )
            self._sources[peer] = src
        elif src.kind is not SourceKind.PEER:
            raise ValueError(f"{peer!r} is an upstream endpoint")
        elif src.state in (SourceState.BENCHED, SourceState.BANNED):
            return False
        elif src.state is SourceState.REMOVED:
            src.state = SourceState.LIVE
            src.have = set()
            src.limit = self.config.initial_in_flight
            src.consecutive_failures = 0
        self.set_have(peer, have)
        return True

    def set_have(self, peer: str, chunks: Iterable[int]) -> None:
        """Replace a peer's have-set (its bitmap refreshed). Ignored for a peer that is not
        live. Requests already in flight are left alone even if the chunk disappeared."""
        src = self._peer(peer)
        new = set(chunks)
        for c in new:
            self._check_chunk(c)
        if src.state is not SourceState.LIVE:
            return
        for c in src.have - new:
            self._add_rarity(c, -1)
        for c in new - src.have:
            self._add_rarity(c, 1)
        src.have = new

    def set_fetching(self, peer: str, chunks: Iterable[int], now: float) -> None:
        """Replace the chunks a peer says it is fetching from upstream now. Upstream here
        leaves them, and the stretch after them, for last (swarm/upstream_order.py), and
        takes a claimed chunk only once the claim is older than the deadline it would give
        a request queued behind every claimed chunk: on a shared link a second copy only
        slows the first. A claim only orders and delays: a peer claiming more than twice
        the upstream requests this scheduler would make at once breaks the rules those
        peers follow, and its claims are ignored, so the delay stays bounded."""
        src = self._peer(peer)
        new = set(chunks)
        for c in new:
            self._check_chunk(c)
        if len(new) > 2 * self.config.upstream_max_in_flight:
            new = set()
        if src.state is SourceState.LIVE:
            src.fetching = {c: src.fetching.get(c, now) for c in new}

    def remove_peer(self, peer: str) -> list[Request]:
        """Stop using a peer; returns its in-flight requests (back in the pool) to cancel."""
        src = self._peer(peer)
        if src.state is not SourceState.LIVE:
            return []
        return self._deactivate(src, SourceState.REMOVED)

    def add_upstream(self, endpoint: str) -> None:
        """Add an HTTP endpoint holding every chunk, after those already added in priority."""
        if endpoint in self._sources:
            raise ValueError(f"source {endpoint!r} already added")
        cfg = self.config
        src = _Source(
            endpoint,
            SourceKind.UPSTREAM,
            0.0,
            cfg.upstream_initial_in_flight,
            cfg.upstream_max_in_flight,
        )
        self._sources[endpoint] = src
        self._upstreams.append(src)

    # ---- scheduling ----------------------------------------------------------------------

    def next_requests(self, now: float, *, spare_bytes: int | None = None) -> list[Request]:
        """The next assignments to start now. Expires overdue requests first; a caller that
        does not enforce ``Request.deadline`` itself should call :meth:`expire` just before
        to learn which transfers to abort. ``spare_bytes`` is what a wider budget (shared by
        every file of a daemon) still allows of peer requests now; None: no such budget."""
        self.expire(now)
        if not self._remaining:
            return []
        self._spare = spare_bytes
        try:
            return self._assign(now)
        finally:
            self._spare = None

    def _assign(self, now: float) -> list[Request]:
        out: list[Request] = []
        levels: dict[int, int | None] = {}  # valid for this call: failures change on events only

        # 1. Peers, rarest first.
        # Hot loop: one integer key per candidate (rarity, then random rank) keeps it cheap.
        pool = self._pool
        for src in self._free_peers():
            room = self._room(src)
            if not room:
                continue
            if len(src.have) > len(pool):
                picked = self._best_in_rank_order(src, room, now, levels)
            else:
                picked = self._best_by_scan(src, room, now, levels)
            for c in picked:
                out.append(self._issue(src, c, now))

        # 2. Upstream: what no live peer can serve at the chunk's lowest failure level.
        ups = [u for u in self._upstreams if u.state is SourceState.LIVE]
        if any(self._room(u) for u in ups):
            # Stretches in file order, away from what other downloaders are fetching
            # (swarm/upstream_order.py), so those sharing a slow upstream have chunks to trade.
            done, rarity = self._done, self._rarity
            claimed: dict[int, float] = {}  # chunk -> since when
            for p in self._sources.values():
                if p.fetching and p.state is SourceState.LIVE:
                    for c, since in p.fetching.items():
                        claimed[c] = min(since, claimed.get(c, since))
            cands = upstream_order(
                (self._pool & self._unheld) | self._pool.intersection(self._fails),
                self._upstream_follow,
                level_rule(
                    lambda c: rarity[c] and not done[c],
                    claimed,
                    self.config.upstream_max_in_flight,
                ),
                self._rng,
            )
            for c in cands:
                level = self._level(c, levels)
                if level is None or self._peer_at_level(c, level):
                    continue
                chunk_fails = self._fails.get(c, {})
                u = next(u for u in ups if chunk_fails.get(u.id, 0) == level)
                if c in claimed and now - claimed[c] < self._timeout(u, len(claimed) + 1):
                    # Another is fetching it, and the link has not had the time it needs for
                    # every claimed chunk (and one of ours) yet: a copy would only slow both.
                    continue
                if self._room(u):
                    out.append(self._issue(u, c, now))
                    self._upstream_follow = c + 1
                    if not any(self._room(x) for x in ups):
                        break

        # 3. Endgame: duplicate the last outstanding chunks onto idle peer slots.
        if self._endgame(levels):
            self._duplicate(now, out)
        return out

    def _eligible(
        self, src: _Source, c: int, busy: dict[int, float], levels: dict[int, int | None]
    ) -> bool:
        return (
            c in src.have
            and (c not in self._fails or self._peer_may_serve(src, c, levels))
            and c not in busy
        )

    def _best_by_scan(
        self, src: _Source, room: int, now: float, levels: dict[int, int | None]
    ) -> list[int]:
        """The ``room`` pool chunks ``src`` may serve with the lowest (rarity, rank): every
        candidate keyed, the smallest kept. The rule itself, for a peer holding few chunks."""
        n, pool, rarity, rank = self.num_chunks, self._pool, self._rarity, self._rank
        busy = self._busy(src, now)
        scan = src.have if len(src.have) <= len(pool) else pool
        keys = [
            rarity[c] * n + rank[c]
            for c in scan
            if c in pool and self._eligible(src, c, busy, levels)
        ]
        return [self._by_rank[key % n] for key in heapq.nsmallest(room, keys)]

    def _best_in_rank_order(
        self, src: _Source, room: int, now: float, levels: dict[int, int | None]
    ) -> list[int]:
        """What ``_best_by_scan`` picks, found by walking the pool in rank order: once
        ``room`` candidates of the lowest rarity any pool chunk held by a peer has are
        found, no later chunk can beat them (the common case: every holder has every chunk,
        so the walk stops after a few steps instead of keying the whole pool)."""
        n, pool, rarity, by_rank = self.num_chunks, self._pool, self._rarity, self._by_rank
        busy = self._busy(src, now)
        floor = min((r for r, k in self._pool_rarity.items() if k and r), default=0)
        while self._cursor < n and by_rank[self._cursor] not in pool:
            self._cursor += 1
        best: list[int] = []
        keys: list[int] = []
        for pos in range(self._cursor, n):
            c = by_rank[pos]
            if c not in pool or not self._eligible(src, c, busy, levels):
                continue
            if rarity[c] == floor:
                best.append(c)
                if len(best) == room:
                    return best
            keys.append(rarity[c] * n + pos)
        return [by_rank[key % n] for key in heapq.nsmallest(room, keys)]

    def expire(self, now: float) -> list[Request]:
        """Fail every request whose deadline has passed (as timeouts). Returns the requests to
        abort: the expired ones and those of any source benched as a result."""
        due = sorted(
            (r for copies in self._in_flight.values() for r in copies if r.deadline <= now),
            key=lambda r: (r.deadline, r.seq),
        )
        out: list[Request] = []
        for r in due:
            if self._tracked(r):  # else already dropped with its benched source, and in out
                out.append(r)
                self._back_off(r, now)
                out.extend(self._fail(r, timeout=True))
        return out

    def _back_off(self, req: Request, now: float) -> None:
        """``req`` timed out: its source's estimate ran ahead of it (completions that come in
        bursts, as on a link shared with other downloaders, look fast). Back off as TCP's
        timer does, to at most what the source can have sent since ``req`` was issued, so
        deadlines catch up with the source instead of expiring every request it serves."""
        src = self._sources[req.source]
        if src.throughput is not None:
            could = len(src.in_flight) * self.chunk_size / max(now - req.issued_at, 1e-9)
            src.throughput = min(src.throughput / 2, could)

    # ---- events --------------------------------------------------------------------------

    def on_success(self, req: Request, now: float, nbytes: int) -> list[Request]:
        """``req`` delivered ``nbytes`` that passed verification. Returns the other copies of
        the chunk still in flight (endgame losers) for the caller to cancel. A late success of
        a request already expired or cancelled is still used if the chunk is not done yet."""
        c = req.chunk
        src = self._sources[req.source]
        if self._done[c]:
            return []
        tracked = req in src.in_flight
        was_full = len(src.in_flight) >= src.limit
        self._done[c] = 1
        self._remaining -= 1
        self._pool_discard(c)
        self._fails.pop(c, None)
        copies = list(self._in_flight.get(c, ()))
        for r in copies:
            self._release(r)
        src.bytes += nbytes
        src.chunks += 1
        if tracked:
            src.consecutive_failures = 0
            self._sample_throughput(src, req, now, nbytes)
            self._adapt_limit(src, req, now, was_full)
        return [r for r in copies if r != req]

    def on_failure(self, req: Request, now: float, *, bad_data: bool = False) -> list[Request]:
        """``req`` failed (error, refused, short read). With ``bad_data`` the source sent a
        chunk that failed verification and is banned for this file. Returns further requests
        to cancel: those of a source banned or benched by this failure. ``now`` is accepted for
        symmetry with the other events; the failure rules do not depend on it."""
        del now
        src = self._sources[req.source]
        if bad_data:
            if self._tracked(req):
                self._release(req)
            src.failures += 1
            if src.state is SourceState.BANNED:
                return []
            return self._deactivate(src, SourceState.BANNED)
        if not self._tracked(req):
            return []  # already expired, cancelled or dropped with its source
        return self._fail(req, timeout=False)

    def on_busy(self, req: Request, now: float) -> list[Request]:
        """``req``'s peer answered busy (choked): no blame; the chunk returns to the pool
        and that peer is not asked for it for ``busy_backoff`` seconds. The
        ``max_busy``-th such answer for one chunk counts as a failure (returns requests
        to cancel, as ``on_failure``)."""
        if not self._tracked(req):
            return []
        src = self._sources[req.source]
        answers = src.busy_answers[req.chunk] = src.busy_answers.get(req.chunk, 0) + 1
        if answers >= self.config.max_busy or src.kind is not SourceKind.PEER:
            del src.busy_answers[req.chunk]
            return self._fail(req, timeout=False)
        self._release(req)
        src.busy[req.chunk] = now + self.config.busy_backoff
        return []

    def on_cancelled(self, req: Request) -> None:
        """The caller dropped ``req`` for its own reasons; the chunk returns to the pool and the
        source is not blamed. Cancelling a request the scheduler already dropped is a no-op."""
        if self._tracked(req):
            self._release(req)

    def reopen(self, chunks: Iterable[int]) -> None:
        """Chunks the caller counted as done without fetching them (not wanted yet) that
        are wanted now: back in the pool. A chunk really done or in flight is left alone."""
        for c in chunks:
            self._check_chunk(c)
            if self._done[c] and c not in self._in_flight:
                self._done[c] = 0
                self._remaining += 1
                self._pool_add(c)

    # ---- observation ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self._remaining

    @property
    def remaining(self) -> int:
        return self._remaining

    def is_done(self, chunk: int) -> bool:
        self._check_chunk(chunk)
        return bool(self._done[chunk])

    @property
    def in_flight(self) -> tuple[Request, ...]:
        return tuple(sorted((r for cs in self._in_flight.values() for r in cs), key=_by_seq))

    @property
    def next_deadline(self) -> float | None:
        """Earliest deadline in flight: when the caller should next call ``next_requests``
        even if nothing else happens."""
        return min((r.deadline for cs in self._in_flight.values() for r in cs), default=None)

    @property
    def failed_chunks(self) -> list[int]:
        """Unassigned chunks no current source can serve: held by no live peer that has not
        used up its attempts, and failed by every upstream (or there is none)."""
        levels: dict[int, int | None] = {}
        return sorted(c for c in self._pool if self._level(c, levels) is None)

    @property
    def state(self) -> State:
        if not self._remaining:
            return State.DONE
        if not self._in_flight and not self._pool_servable({}):
            return State.STUCK
        return State.RUNNING

    @property
    def in_endgame(self) -> bool:
        return self._endgame({})

    def live_peer_holds_any(self) -> bool:
        """Whether a live peer holds a chunk (a downloader just starting holds none)."""
        return any(
            s.kind is SourceKind.PEER and s.state is SourceState.LIVE and s.have
            for s in self._sources.values()
        )

    @property
    def stats(self) -> dict[str, SourceStats]:
        """Per-source counters, in the order sources were added."""
        return {
            s.id: SourceStats(
                s.id,
                s.kind,
                s.state,
                s.bytes,
                s.chunks,
                s.failures,
                s.timeouts,
                s.throughput,
                s.limit,
                len(s.in_flight),
            )
            for s in self._sources.values()
        }

    # ---- internals -----------------------------------------------------------------------

    def _check_chunk(self, c: int) -> None:
        if not 0 <= c < self.num_chunks:
            raise ValueError(f"chunk {c} out of range for {self.num_chunks} chunks")

    def _peer(self, peer: str) -> _Source:
        src = self._sources[peer]
        if src.kind is not SourceKind.PEER:
            raise ValueError(f"{peer!r} is an upstream endpoint")
        return src

    def _tracked(self, req: Request) -> bool:
        src = self._sources.get(req.source)
        return src is not None and req in src.in_flight

    def _room(self, src: _Source) -> int:
        """How many more requests ``src`` may take now: its slot limit and both byte
        budgets (one request is always allowed when nothing is in flight to wait for)."""
        cfg, size = self.config, self.chunk_size
        room = src.limit - len(src.in_flight)
        if cfg.max_source_bytes is not None:
            fit = (cfg.max_source_bytes - len(src.in_flight) * size) // size
            room = min(room, fit if src.in_flight else max(1, fit))
        if cfg.max_unverified_bytes is not None and src.kind is SourceKind.PEER:
            fit = (cfg.max_unverified_bytes - self._peer_requests * size) // size
            room = min(room, fit if self._peer_requests else max(1, fit))
        if self._spare is not None and src.kind is SourceKind.PEER:
            fit = self._spare // size
            room = min(room, fit if self._peer_requests else max(1, fit))
        return max(0, room)

    def _busy(self, src: _Source, now: float) -> dict[int, float]:
        """``src``'s chunks it answered busy for, still backed off (expired ones dropped)."""
        if src.busy:
            src.busy = {c: t for c, t in src.busy.items() if t > now}
        return src.busy

    def _free_peers(self) -> list[_Source]:
        """Live peers with a free slot, fastest first (unmeasured ones last)."""
        free = [
            s
            for s in self._sources.values()
            if s.kind is SourceKind.PEER
            and s.state is SourceState.LIVE
            and len(s.in_flight) < s.limit
        ]
        free.sort(key=lambda s: (-(s.throughput or 0.0), s.order, s.id))
        return free

    def _level(self, c: int, cache: dict[int, int | None]) -> int | None:
        """Fewest failures of chunk ``c`` among live sources that may still be asked for it;
        None when there is no such source."""
        if c in cache:
            return cache[c]
        fails = self._fails.get(c)
        best: int | None = None
        if fails is None:  # fast path: nobody failed it yet
            if self._rarity[c] or any(u.state is SourceState.LIVE for u in self._upstreams):
                best = 0
        else:
            limit = self.config.attempts_per_source
            for s in self._sources.values():
                if s.state is not SourceState.LIVE:
                    continue
                if s.kind is SourceKind.PEER and c not in s.have:
                    continue
                n = fails.get(s.id, 0)
                if n < limit and (best is None or n < best):
                    best = n
        cache[c] = best
        return best

    def _peer_may_serve(self, src: _Source, c: int, levels: dict[int, int | None]) -> bool:
        fails = self._fails.get(c)
        if fails is None:
            return True
        n = fails.get(src.id, 0)
        return n < self.config.attempts_per_source and n == self._level(c, levels)

    def _peer_at_level(self, c: int, level: int) -> bool:
        fails = self._fails.get(c)
        if fails is None:
            return self._rarity[c] > 0
        return any(
            s.kind is SourceKind.PEER
            and s.state is SourceState.LIVE
            and c in s.have
            and fails.get(s.id, 0) == level
            for s in self._sources.values()
        )

    def _pool_servable(self, levels: dict[int, int | None]) -> bool:
        return any(self._level(c, levels) is not None for c in self._pool)

    def _endgame(self, levels: dict[int, int | None]) -> bool:
        return (
            bool(self._remaining)
            and bool(self._in_flight)
            and len(self._in_flight) <= self.config.endgame_threshold
            and not self._pool_servable(levels)
        )

    def _duplicate(self, now: float, out: list[Request]) -> None:
        cfg = self.config
        for src in self._free_peers():
            busy = self._busy(src, now)
            cands = [
                c
                for c, copies in self._in_flight.items()
                if c in src.have
                and c not in busy
                and len(copies) <= cfg.max_duplicates
                and src.id not in self._fails.get(c, ())
                and all(r.source != src.id for r in copies)
            ]
            free = self._room(src)
            if not free:
                continue
            picks = heapq.nsmallest(
                free,
                cands,
                key=lambda c: (
                    len(self._in_flight[c]),
                    self._in_flight[c][0].issued_at,
                    self._rank[c],
                ),
            )
            for c in picks:
                out.append(self._issue(src, c, now))

    def _timeout(self, src: _Source, queued: int) -> float:
        cfg = self.config
        if src.throughput is None:
            return cfg.timeout_initial
        expected = queued * self.chunk_size / src.throughput
        return min(cfg.timeout_max, max(cfg.timeout_floor, cfg.timeout_factor * expected))

    def _issue(self, src: _Source, c: int, now: float) -> Request:
        deadline = now + self._timeout(src, len(src.in_flight) + 1)
        req = Request(src.id, c, src.kind, now, deadline, self._seq)
        self._seq += 1
        src.in_flight[req] = None
        self._peer_requests += src.kind is SourceKind.PEER
        if self._spare is not None and src.kind is SourceKind.PEER:
            self._spare -= self.chunk_size
        self._in_flight.setdefault(c, []).append(req)
        self._pool_discard(c)
        return req

    def _release(self, req: Request) -> None:
        """Forget a tracked request; its chunk returns to the pool unless done or still in
        flight elsewhere."""
        del self._sources[req.source].in_flight[req]
        self._peer_requests -= req.kind is SourceKind.PEER
        copies = self._in_flight[req.chunk]
        copies.remove(req)
        if not copies:
            del self._in_flight[req.chunk]
            if not self._done[req.chunk]:
                self._pool_add(req.chunk)

    def _pool_add(self, c: int) -> None:
        if c not in self._pool:
            self._pool.add(c)
            self._pool_rarity[self._rarity[c]] += 1
            self._cursor = min(self._cursor, self._rank[c])

    def _pool_discard(self, c: int) -> None:
        if c in self._pool:
            self._pool.remove(c)
            self._pool_rarity[self._rarity[c]] -= 1

    def _add_rarity(self, c: int, delta: int) -> None:
        old = self._rarity[c]
        self._rarity[c] = new = old + delta
        if c in self._pool:
            self._pool_rarity[old] -= 1
            self._pool_rarity[new] += 1
        if not new:
            self._unheld.add(c)
        elif not old:
            self._unheld.discard(c)

    def on_late_refusal(self, source: str) -> list[Request]:
        """``source`` answered "not held" to a request the caller had already given up on
        (an endgame copy that lost the race, cancelled before its answer came): a failure
        of the source, not of a chunk, so a peer claiming chunks it lacks is benched as it
        would have been had its answer come first. Returns its requests to cancel then."""
        src = self._sources.get(source)
        if src is None or src.state is not SourceState.LIVE:
            return []
        return self._blame(src, timeout=False)

    def _fail(self, req: Request, *, timeout: bool) -> list[Request]:
        src = self._sources[req.source]
        self._release(req)
        fails = self._fails.setdefault(req.chunk, {})
        fails[src.id] = fails.get(src.id, 0) + 1
        return self._blame(src, timeout=timeout)

    def _blame(self, src: _Source, *, timeout: bool) -> list[Request]:
        src.failures += 1
        src.timeouts += timeout
        src.consecutive_failures += 1
        src.limit = max(1, src.limit // 2)
        if src.consecutive_failures >= self.config.max_consecutive_failures and not (
            src.kind is SourceKind.UPSTREAM and self._last_live_upstream(src)
        ):
            return self._deactivate(src, SourceState.BENCHED)
        return []

    def _last_live_upstream(self, src: _Source) -> bool:
        """Benching moves work elsewhere; the last live endpoint has no elsewhere, so it
        keeps serving (each chunk still fails for good after ``attempts_per_source``)."""
        return all(u is src or u.state is not SourceState.LIVE for u in self._upstreams)

    def _deactivate(self, src: _Source, state: SourceState) -> list[Request]:
        if src.state is SourceState.LIVE and src.kind is SourceKind.PEER:
            for c in src.have:
                self._add_rarity(c, -1)
        src.fetching = {}
        src.state = state
        dropped = list(src.in_flight)
        for r in dropped:
            self._release(r)
        return dropped

    def _sample_throughput(self, src: _Source, req: Request, now: float, nbytes: int) -> None:
        start = max(req.issued_at, src.last_delivery)
        src.last_delivery = max(src.last_delivery, now)
        src.unsampled_bytes += nbytes
        interval = now - start
        if interval <= 0:
            return  # delivered together with the previous one: fold into the next sample
        sample = src.unsampled_bytes / interval
        src.unsampled_bytes = 0
        a = self.config.throughput_alpha
        src.throughput = sample if src.throughput is None else a * sample + (1 - a) * src.throughput

    def _adapt_limit(self, src: _Source, req: Request, now: float, was_full: bool) -> None:
        latency = now - req.issued_at
        if latency <= self.config.target_latency:
            # Only a source that used its whole window has shown it can take more.
            if was_full:
                src.limit = min(src.max_limit, src.limit + 1)
        elif latency > 2 * self.config.target_latency:
            src.limit = max(1, src.limit - 1)


def _by_seq(r: Request) -> int:
    return r.seq
