"""The download scheduler alone: unit tests per rule, then property tests driving it against
simulated sources (random peers, haves, speeds and failures)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from swarm.scheduler import (
    Request,
    Scheduler,
    SchedulerConfig,
    SourceKind,
    SourceState,
    State,
)

CHUNK = 1 << 20


def make(n: int, seed: int = 0, **cfg: object) -> Scheduler:
    return Scheduler(n, CHUNK, rng=random.Random(seed), config=SchedulerConfig(**cfg))  # type: ignore[arg-type]


def by_source(reqs: list[Request]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in reqs:
        out.setdefault(r.source, []).append(r.chunk)
    return out


# ---- simulated sources ---------------------------------------------------------------------

# good: always delivers; flaky: fails a third of requests; blackhole: never answers;
# liar: sends bad data half the time; slow: takes longer than any initial deadline;
# down: refuses at once (a dead mirror).
PEER_KINDS = ("good", "good", "flaky", "blackhole", "liar", "slow")
UPSTREAM_KINDS = ("good", "good", "down", "flaky", "blackhole")


@dataclass
class Sim:
    """Sources that serve their requests one at a time, first in first out: the head finishes
    ``chunk_time`` after reaching the head; an aborted request leaves its queue at once."""

    sched: Scheduler
    kinds: dict[str, str]
    chunk_time: dict[str, float]
    rng: random.Random
    file_size: int
    queues: dict[str, list[Request]] = field(default_factory=dict)
    head_since: dict[str, float] = field(default_factory=dict)
    outcome: dict[Request, str] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)

    def nbytes(self, chunk: int) -> int:
        return min(CHUNK, self.file_size - chunk * CHUNK)

    def duration(self, req: Request) -> float:
        kind = self.kinds[req.source]
        if kind == "blackhole":
            return math.inf
        if kind == "down":
            return 0.01
        if kind == "slow":
            return 1000.0
        return self.chunk_time[req.source]

    def enqueue(self, reqs: list[Request], now: float) -> None:
        for r in reqs:
            self.log.append(r)
            q = self.queues.setdefault(r.source, [])
            if not q:
                self.head_since[r.source] = now
            q.append(r)
            kind = self.kinds[r.source]
            roll = self.rng.random()
            if kind == "down" or (kind == "flaky" and roll < 1 / 3):
                self.outcome[r] = "fail"
            elif kind == "liar" and roll < 0.5:
                self.outcome[r] = "bad"
            else:
                self.outcome[r] = "ok"

    def abort(self, reqs: list[Request], now: float) -> None:
        for r in reqs:
            q = self.queues.get(r.source, [])
            if r in q:
                if q[0] == r:
                    self.head_since[r.source] = now
                q.remove(r)
                del self.outcome[r]

    def next_completion(self) -> tuple[float, str | None]:
        best: tuple[float, str | None] = (math.inf, None)
        for s, q in self.queues.items():
            if q:
                t = self.head_since[s] + self.duration(q[0])
                if t < best[0]:
                    best = (t, s)
        return best

    def deliver(self, source: str, now: float) -> None:
        q = self.queues[source]
        r = q.pop(0)
        self.head_since[source] = now
        outcome = self.outcome.pop(r)
        assert r in self.sched.in_flight, "simulated source holds a request the scheduler dropped"
        if outcome == "ok":
            self.abort(self.sched.on_success(r, now, self.nbytes(r.chunk)), now)
        else:
            self.abort(self.sched.on_failure(r, now, bad_data=outcome == "bad"), now)

    def check_mirrors_scheduler(self) -> None:
        # Every request the scheduler dropped was handed back for aborting, and vice versa.
        held = sorted((r for q in self.queues.values() for r in q), key=lambda r: r.seq)
        assert tuple(held) == self.sched.in_flight


External = tuple[float, Callable[[float], list[Request]]]


def drive(
    sim: Sim,
    externals: Iterable[External] = (),
    *,
    max_steps: int = 5000,
    on_batch: Callable[[list[Request]], None] | None = None,
) -> float:
    """Run until the scheduler is done or stuck and no external event is pending. Returns the
    simulated time taken; fails if it takes more than ``max_steps`` events."""
    sched = sim.sched
    pending = sorted(externals, key=lambda e: e[0])
    now = 0.0
    for _ in range(max_steps):
        while pending and pending[0][0] <= now:
            _, event = pending.pop(0)
            sim.abort(event(now), now)
        sim.abort(sched.expire(now), now)
        batch = sched.next_requests(now)
        if on_batch is not None:
            on_batch(batch)
        sim.enqueue(batch, now)
        sim.check_mirrors_scheduler()
        if sched.state is not State.RUNNING and not pending:
            return now
        t_done, source = sim.next_completion()
        t_deadline = sched.next_deadline if sched.next_deadline is not None else math.inf
        t_ext = pending[0][0] if pending else math.inf
        t = min(t_done, t_deadline, t_ext)
        assert t < math.inf, "running with nothing in flight and nothing to wait for"
        now = max(now, t)
        if t_done == t and source is not None:
            sim.deliver(source, now)
    raise AssertionError(f"no end after {max_steps} steps")


def simple_sim(sched: Scheduler, sources: dict[str, tuple[str, float]], seed: int = 0) -> Sim:
    return Sim(
        sched,
        {s: k for s, (k, _) in sources.items()},
        {s: t for s, (_, t) in sources.items()},
        random.Random(seed),
        sched.num_chunks * CHUNK,
    )


# ---- rarest first --------------------------------------------------------------------------


def test_rarest_first_picks_the_rare_chunk() -> None:
    s = make(3, initial_in_flight=1)
    s.add_peer("a", {0, 1, 2})
    s.add_peer("b", {0, 2})
    s.add_peer("c", {0, 2})
    reqs = s.next_requests(0.0)
    assert by_source(reqs)["a"] == [1]  # only a holds chunk 1
    assert sorted(r.chunk for r in reqs) == [0, 1, 2]


def test_ties_broken_randomly_but_deterministically() -> None:
    def first_pick(seed: int) -> int:
        s = make(16, seed, initial_in_flight=1)
        s.add_peer("p", range(16))
        [req] = s.next_requests(0.0)
        return req.chunk

    picks = [first_pick(seed) for seed in range(30)]
    assert len(set(picks)) > 5  # equally rare chunks are chosen at random...
    assert picks == [first_pick(seed) for seed in range(30)]  # ...reproducibly per seed


def test_done_chunks_are_never_requested() -> None:
    s = Scheduler(4, CHUNK, done=[0, 2], rng=random.Random(0))
    s.add_peer("p", range(4))
    assert sorted(r.chunk for r in s.next_requests(0.0)) == [1, 3]
    assert s.remaining == 2
    assert Scheduler(2, CHUNK, done=[0, 1]).state is State.DONE


# ---- in-flight limits ----------------------------------------------------------------------


def test_in_flight_limit_respected() -> None:
    s = make(10, initial_in_flight=2)
    s.add_peer("p", range(10))
    assert len(s.next_requests(0.0)) == 2
    assert s.next_requests(0.1) == []
    assert s.stats["p"].in_flight == 2


def test_byte_budget_binds_and_every_request_returned_can_start() -> None:
    """8 MiB chunks from 10 peers under a 64 MiB budget: the scheduler hands out only what
    fits, so a driver starting every request it gets never leaves one registered but
    unstarted (such a chunk would sit blocked until its deadline and blame a good peer)."""
    big = 8 << 20
    budget = 64 << 20
    s = Scheduler(
        64,
        big,
        rng=random.Random(1),
        config=SchedulerConfig(initial_in_flight=4, max_unverified_bytes=budget),
    )
    for i in range(10):
        s.add_peer(f"p{i}", range(64))
    started: set[Request] = set()
    now = 0.0
    for step in range(200):
        batch = s.next_requests(now)
        started.update(batch)  # the driver starts all it is given
        # Whatever the scheduler counts as in flight was started, and fits the budget.
        assert set(s.in_flight) <= started
        assert len(s.in_flight) * big <= budget
        if step == 0:
            assert len(batch) == budget // big  # 40 slots wanted: the budget binds
        if s.done:
            break
        now += 0.1
        oldest = s.in_flight[0]
        s.on_success(oldest, now, big)
        started.discard(oldest)
    assert s.done
    assert max(st.chunks for st in s.stats.values()) < 64  # spread over the peers


def test_per_source_byte_budget_and_oversized_chunks() -> None:
    s = Scheduler(
        8,
        CHUNK,
        rng=random.Random(0),
        config=SchedulerConfig(initial_in_flight=8, max_source_bytes=3 * CHUNK),
    )
    s.add_peer("a", range(8))
    s.add_upstream("m")
    assert by_source(s.next_requests(0.0)) == {"a": by_source(s.in_flight)["a"]}
    assert s.stats["a"].in_flight == 3
    # A budget smaller than one chunk still lets one request through at a time.
    t = Scheduler(4, CHUNK, config=SchedulerConfig(max_unverified_bytes=CHUNK // 2))
    t.add_peer("a", range(4))
    t.add_peer("b", range(4))
    assert len(t.next_requests(0.0)) == 1
    assert t.next_requests(0.1) == []


def test_limit_grows_for_fast_peer_not_for_slow_one() -> None:
    s = make(300, target_latency=1.0, max_in_flight=16)
    s.add_peer("fast", range(300))
    s.add_peer("slow", range(300))
    drive(simple_sim(s, {"fast": ("good", 0.05), "slow": ("good", 3.0)}))
    assert s.done
    fast, slow = s.stats["fast"], s.stats["slow"]
    assert fast.limit == 16
    assert slow.limit == 1
    assert fast.chunks > 10 * slow.chunks
    assert fast.throughput == pytest.approx(CHUNK / 0.05)
    assert slow.throughput == pytest.approx(CHUNK / 3.0)


def test_failures_halve_the_limit_and_success_resets_the_streak() -> None:
    s = make(40, initial_in_flight=8, max_consecutive_failures=3)
    s.add_peer("p", range(40))
    reqs = s.next_requests(0.0)
    s.on_failure(reqs[0], 1.0)
    s.on_failure(reqs[1], 1.0)
    assert s.stats["p"].limit == 2
    s.on_success(reqs[2], 1.0, CHUNK)  # streak broken: two more failures do not bench
    s.on_failure(reqs[3], 1.0)
    s.on_failure(reqs[4], 1.0)
    assert s.stats["p"].state is SourceState.LIVE
    assert s.stats["p"].limit == 1
    assert s.on_failure(reqs[5], 1.0) == reqs[6:]  # third in a row: benched, rest returned
    assert s.stats["p"].state is SourceState.BENCHED
    assert s.in_flight == ()
    assert s.add_peer("p", range(40)) is False


# ---- timeouts ------------------------------------------------------------------------------


def test_timeout_reassigns_chunk_to_another_holder() -> None:
    s = make(1, max_duplicates=0)
    s.add_peer("a", {0})
    s.add_peer("b", {0})
    [first] = s.next_requests(0.0)
    assert first.deadline == pytest.approx(s.config.timeout_initial)
    assert s.next_requests(first.deadline - 0.01) == []
    [second] = s.next_requests(first.deadline)
    assert second.chunk == 0 and second.source != first.source
    st_ = s.stats[first.source]
    assert st_.timeouts == 1 and st_.limit == 1 and st_.in_flight == 0


def test_explicit_expire_returns_what_to_abort() -> None:
    s = make(3, initial_in_flight=3, max_consecutive_failures=2)
    s.add_peer("p", range(3))
    reqs = s.next_requests(0.0)
    # Two timeouts bench the peer, which drops the third request too.
    assert sorted(s.expire(100.0), key=lambda r: r.seq) == reqs
    assert s.stats["p"].state is SourceState.BENCHED


def test_deadline_follows_measured_throughput_with_floor() -> None:
    s = make(40, timeout_floor=5.0, timeout_factor=4.0, target_latency=100.0)
    s.add_peer("p", range(40))
    r1, r2 = s.next_requests(0.0)
    s.on_success(r1, 10.0, CHUNK)  # 1 chunk per 10 s
    s.on_success(r2, 20.0, CHUNK)
    reqs = s.next_requests(20.0)  # the first success grew the limit (window was full) to 3
    assert len(reqs) == 3
    for k, r in enumerate(reqs, start=1):  # the k-th queued request waits for k transfers
        assert r.deadline == pytest.approx(20.0 + 4.0 * k * 10.0)
    fast = make(4, timeout_floor=5.0)
    fast.add_peer("p", range(4))
    r1, _ = fast.next_requests(0.0)
    fast.on_success(r1, 0.01, CHUNK)
    assert all(r.deadline == pytest.approx(0.01 + 5.0) for r in fast.next_requests(0.01))


def test_timeouts_stretch_deadlines_until_a_source_can_meet_them() -> None:
    """Two chunks that came back together made the upstream look fast; from then on it needs
    8 s a chunk (a link shared by other downloaders). Each timeout backs the estimate off,
    so a deadline soon outlasts a transfer instead of every request expiring at the floor."""
    s = make(64, upstream_initial_in_flight=2, timeout_floor=1.0, attempts_per_source=20)
    s.add_upstream("hub")
    r1, r2 = s.next_requests(0.0)
    s.on_success(r1, 1.0, CHUNK)
    s.on_success(r2, 1.01, CHUNK)  # a burst: 1 MiB in 10 ms
    now, spans = 1.01, []
    for _ in range(10):  # bounded: each pass is one timeout
        reqs = s.next_requests(now)
        if not reqs:
            break
        first = min(reqs, key=lambda r: r.deadline)
        spans.append(first.deadline - first.issued_at)
        if spans[-1] > 8.0:
            break
        now = first.deadline
        s.expire(now)
    assert spans[-1] > 8.0, spans
    assert len(spans) <= 6, spans


def test_late_success_after_timeout_is_used() -> None:
    s = make(1, max_duplicates=0)
    s.add_peer("a", {0})
    s.add_peer("b", {0})
    [first] = s.next_requests(0.0)
    [second] = s.next_requests(first.deadline)
    assert s.on_success(first, first.deadline + 1, CHUNK) == [second]  # b's copy is now moot
    assert s.done
    assert s.on_success(second, first.deadline + 2, CHUNK) == []
    assert s.stats[first.source].chunks == 1 and s.stats[second.source].chunks == 0


# ---- bad data, peers coming and going ------------------------------------------------------


def test_bad_data_drops_the_peer_and_its_chunks_return() -> None:
    s = make(4, initial_in_flight=2)
    s.add_peer("liar", range(4))
    s.add_peer("honest", range(4))
    reqs = s.next_requests(0.0)
    liar_reqs = [r for r in reqs if r.source == "liar"]
    assert len(liar_reqs) == 2
    assert s.on_failure(liar_reqs[0], 1.0, bad_data=True) == liar_reqs[1:]
    assert s.stats["liar"].state is SourceState.BANNED
    assert s.add_peer("liar", range(4)) is False
    s.set_have("liar", range(4))  # a stale bitmap refresh changes nothing
    for r in [r for r in reqs if r.source == "honest"]:
        s.on_success(r, 2.0, CHUNK)
    again = s.next_requests(2.0)
    assert {r.source for r in again} == {"honest"}
    assert sorted(r.chunk for r in again) == sorted(r.chunk for r in liar_reqs)


def test_peer_joining_mid_download_gets_work() -> None:
    s = make(10, initial_in_flight=2)
    s.add_peer("a", range(10))
    s.next_requests(0.0)
    assert s.add_peer("late", range(10))
    reqs = s.next_requests(1.0)
    assert [r.source for r in reqs] == ["late", "late"]


def test_removed_peer_returns_its_requests_and_may_come_back() -> None:
    s = make(4)
    s.add_peer("a", range(4))
    reqs = s.next_requests(0.0)
    assert s.remove_peer("a") == reqs
    assert s.state is State.STUCK and s.failed_chunks == [0, 1, 2, 3]
    assert s.add_peer("a", {3})
    assert [r.chunk for r in s.next_requests(1.0)] == [3]


def test_no_holder_is_stuck_until_a_bitmap_refresh() -> None:
    s = make(2)
    s.add_peer("a", {0})
    [r] = s.next_requests(0.0)
    s.on_success(r, 1.0, CHUNK)
    assert s.state is State.STUCK and s.failed_chunks == [1]
    s.set_have("a", {0, 1})
    assert s.state is State.RUNNING
    assert [r.chunk for r in s.next_requests(2.0)] == [1]


# ---- upstream ------------------------------------------------------------------------------


def test_unheld_chunks_go_to_mirror_first_and_failures_move_them_to_hub() -> None:
    s = make(4, upstream_initial_in_flight=4, attempts_per_source=1)
    s.add_peer("p", {0})
    s.add_upstream("mirror")
    s.add_upstream("hub")
    reqs = by_source(s.next_requests(0.0))
    assert reqs["p"] == [0] and sorted(reqs["mirror"]) == [1, 2, 3]  # upstream: what no peer holds
    mirror_reqs = [r for r in s.in_flight if r.source == "mirror"]
    s.on_failure(mirror_reqs[0], 1.0)
    assert by_source(s.next_requests(1.0)) == {"hub": [mirror_reqs[0].chunk]}
    assert s.stats["mirror"].state is SourceState.LIVE


def test_chunk_failed_by_every_holder_goes_upstream() -> None:
    s = make(2, attempts_per_source=1, max_duplicates=0)
    s.add_peer("a", {0, 1})
    s.add_peer("b", {0})
    s.add_upstream("mirror")
    reqs = s.next_requests(0.0)
    assert all(r.kind is SourceKind.PEER for r in reqs)
    r0 = next(r for r in reqs if r.chunk == 0)
    s.on_failure(r0, 1.0)
    [retry] = s.next_requests(1.0)
    assert retry.chunk == 0 and retry.kind is SourceKind.PEER and retry.source != r0.source
    s.on_failure(retry, 2.0)
    [up] = s.next_requests(2.0)
    assert (up.source, up.chunk, up.kind) == ("mirror", 0, SourceKind.UPSTREAM)


def test_dead_mirror_is_benched_and_hub_takes_over() -> None:
    s = make(10, upstream_initial_in_flight=4, max_consecutive_failures=3)
    s.add_upstream("mirror")
    s.add_upstream("hub")
    first = s.next_requests(0.0)
    assert {r.source for r in first} == {"mirror"}
    s.on_failure(first[0], 0.1)
    s.on_failure(first[1], 0.1)
    assert s.on_failure(first[2], 0.1) == first[3:]
    assert s.stats["mirror"].state is SourceState.BENCHED
    assert {r.source for r in s.next_requests(0.1)} == {"hub"}


def test_every_source_failing_a_chunk_is_reported_not_looped() -> None:
    s = make(1, attempts_per_source=2)
    s.add_peer("p", {0})
    s.add_upstream("mirror")
    s.add_upstream("hub")
    order = []
    now = 0.0
    while s.state is State.RUNNING:
        [r] = s.next_requests(now)
        order.append(r.source)
        now += 1.0
        s.on_failure(r, now)
    assert order == ["p", "mirror", "hub", "p", "mirror", "hub"]
    assert s.state is State.STUCK
    assert s.failed_chunks == [0]
    assert s.next_requests(now) == []


# ---- endgame -------------------------------------------------------------------------------


def test_endgame_duplicates_and_cancels_losers() -> None:
    s = make(2, initial_in_flight=1, max_duplicates=1)
    s.add_peer("a", {0, 1})
    s.add_peer("b", {0, 1})
    reqs = s.next_requests(0.0)
    assert sorted(r.chunk for r in reqs) == [0, 1]
    assert s.in_endgame  # all remaining chunks in flight; no slot free to duplicate yet
    s.add_peer("c", {0, 1})
    dups = s.next_requests(1.0)
    assert {r.source for r in dups} == {"c"} and sorted(r.chunk for r in dups) == [0]
    s.add_peer("d", {0, 1})
    [dup2] = s.next_requests(1.0)
    assert dup2.chunk == 1  # the chunk with fewer copies
    assert s.next_requests(1.0) == []  # max_duplicates reached for both
    original = next(r for r in reqs if r.chunk == 0)
    assert s.on_success(dups[0], 2.0, CHUNK) == [original]
    assert s.on_success(original, 2.5, CHUNK) == []  # the loser arriving anyway is harmless
    s.on_cancelled(original)
    assert sorted(r.chunk for r in s.in_flight) == [1, 1]


def test_a_late_refusal_counts_against_the_peer_not_the_chunk() -> None:
    s = make(4, initial_in_flight=2, max_consecutive_failures=3)
    s.add_peer("liar", {0, 1, 2, 3})
    s.add_peer("good", {0, 1, 2, 3})
    reqs = s.next_requests(0.0)
    assert s.on_late_refusal("nobody") == []
    assert s.on_late_refusal("liar") == [] and s.on_late_refusal("liar") == []
    assert s.stats["liar"].state is SourceState.LIVE
    theirs = sorted((r for r in reqs if r.source == "liar"), key=lambda r: r.seq)
    # the third refusal in a row benches it; what it still had in flight comes back
    assert sorted(s.on_late_refusal("liar"), key=lambda r: r.seq) == theirs
    assert s.stats["liar"].state is SourceState.BENCHED
    assert s.on_late_refusal("liar") == []  # benched: nothing more to do
    assert all(not s.is_done(r.chunk) for r in theirs)  # the chunks are not blamed


def test_no_endgame_above_threshold_or_while_pool_has_work() -> None:
    s = make(6, initial_in_flight=3, endgame_threshold=2)
    s.add_peer("a", range(6))
    s.add_peer("b", range(6))
    s.next_requests(0.0)
    s.add_peer("c", range(6))
    assert s.next_requests(0.0) == []  # 6 chunks in flight > threshold 2
    assert not s.in_endgame


def test_cancelled_request_returns_chunk_without_blame() -> None:
    s = make(1)
    s.add_peer("p", {0})
    [r] = s.next_requests(0.0)
    s.on_cancelled(r)
    st_ = s.stats["p"]
    assert st_.failures == 0 and st_.limit == 2
    [again] = s.next_requests(1.0)
    assert again.chunk == 0 and again != r


def test_stats_report_bytes_per_source() -> None:
    s = make(3)
    s.add_peer("p", {0})
    s.add_upstream("mirror")
    s.add_upstream("hub")
    for r in s.next_requests(0.0):
        s.on_success(r, 1.0, 100 + r.chunk)
    stats = s.stats
    assert list(stats) == ["p", "mirror", "hub"]
    assert (stats["p"].bytes, stats["mirror"].bytes, stats["hub"].bytes) == (100, 203, 0)
    assert stats["mirror"].kind is SourceKind.UPSTREAM and stats["mirror"].chunks == 2
    assert s.done and s.state is State.DONE


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(initial_in_flight=20, max_in_flight=16)
    s = make(2)
    with pytest.raises(ValueError):
        s.add_peer("p", {2})
    s.add_upstream("m")
    with pytest.raises(ValueError):
        s.add_upstream("m")
    with pytest.raises(ValueError):
        s.add_peer("m")
    with pytest.raises(KeyError):
        s.set_have("nobody", {0})


# ---- properties ----------------------------------------------------------------------------


@dataclass
class PeerSpec:
    kind: str
    chunk_time: float
    have: set[int]
    join_at: float
    gain: set[int]
    gain_at: float
    leave_at: float | None


@dataclass
class Scenario:
    n: int
    size: int
    done: set[int]
    peers: list[PeerSpec]
    upstreams: list[str]
    seed: int
    config: SchedulerConfig


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 24))
    chunk_ids = st.integers(0, n - 1)
    peers = [
        PeerSpec(
            kind=draw(st.sampled_from(PEER_KINDS)),
            chunk_time=draw(st.sampled_from([0.05, 0.3, 1.0, 2.5])),
            have=draw(st.one_of(st.just(set(range(n))), st.sets(chunk_ids))),
            join_at=draw(st.sampled_from([0.0, 0.0, 0.5, 3.0, 40.0])),
            gain=draw(st.sets(chunk_ids, max_size=4)),
            gain_at=draw(st.sampled_from([1.0, 10.0, 100.0])),
            leave_at=draw(st.sampled_from([None, None, None, None, 2.0, 20.0])),
        )
        for _ in range(draw(st.integers(0, 5)))
    ]
    config = SchedulerConfig(
        initial_in_flight=draw(st.integers(1, 3)),
        max_in_flight=draw(st.integers(3, 8)),
        upstream_initial_in_flight=draw(st.integers(1, 3)),
        upstream_max_in_flight=4,
        target_latency=draw(st.sampled_from([0.5, 2.0])),
        endgame_threshold=draw(st.integers(0, 8)),
        max_duplicates=draw(st.integers(0, 2)),
        attempts_per_source=draw(st.integers(1, 2)),
        max_consecutive_failures=draw(st.integers(1, 4)),
        max_unverified_bytes=draw(st.sampled_from([None, CHUNK // 2, 3 * CHUNK])),
        max_source_bytes=draw(st.sampled_from([None, 2 * CHUNK])),
    )
    return Scenario(
        n=n,
        size=n * CHUNK - draw(st.integers(0, CHUNK - 1)),
        done=draw(st.sets(chunk_ids, max_size=n // 2)),
        peers=peers,
        upstreams=draw(st.lists(st.sampled_from(UPSTREAM_KINDS), max_size=2)),
        seed=draw(st.integers(0, 2**32 - 1)),
        config=config,
    )


def run_scenario(sc: Scenario) -> tuple[Scheduler, Sim, dict[str, set[int]]]:
    """Run a scenario, checking the per-batch invariants. Returns the final scheduler, the
    simulation, and each peer's final have-set as reported to the scheduler."""
    sched = Scheduler(sc.n, CHUNK, done=sc.done, rng=random.Random(sc.seed), config=sc.config)
    kinds = {f"peer{i}": p.kind for i, p in enumerate(sc.peers)}
    kinds |= {f"up{i}": k for i, k in enumerate(sc.upstreams)}
    times = {f"peer{i}": p.chunk_time for i, p in enumerate(sc.peers)}
    times |= {f"up{i}": 0.5 for i in range(len(sc.upstreams))}
    sim = Sim(sched, kinds, times, random.Random(sc.seed + 1), sc.size)
    for i in range(len(sc.upstreams)):
        sched.add_upstream(f"up{i}")

    reported: dict[str, set[int]] = {}
    externals: list[External] = []
    for i, p in enumerate(sc.peers):
        pid = f"peer{i}"

        def join(now: float, pid: str = pid, p: PeerSpec = p) -> list[Request]:
            reported[pid] = set(p.have)
            sched.add_peer(pid, p.have)
            return []

        def gain(now: float, pid: str = pid, p: PeerSpec = p) -> list[Request]:
            if pid in reported:
                reported[pid] |= p.gain
                sched.set_have(pid, reported[pid])
            return []

        def leave(now: float, pid: str = pid) -> list[Request]:
            return sched.remove_peer(pid) if pid in reported else []

        externals.append((p.join_at, join))
        externals.append((p.join_at + p.gain_at, gain))
        if p.leave_at is not None:
            externals.append((p.join_at + p.leave_at, leave))

    cfg = sc.config

    def check_batch(batch: list[Request]) -> None:
        stats = sched.stats
        in_flight = sched.in_flight
        copies = Counter(r.chunk for r in in_flight)
        pairs = Counter((r.source, r.chunk) for r in in_flight)
        assert max(pairs.values(), default=1) == 1
        assert max(copies.values(), default=1) <= 1 + cfg.max_duplicates
        peer_reqs = sum(r.kind is SourceKind.PEER for r in in_flight)
        if cfg.max_unverified_bytes is not None:
            assert peer_reqs <= max(1, cfg.max_unverified_bytes // CHUNK)
        if cfg.max_source_bytes is not None:
            per_source = Counter(r.source for r in in_flight)
            assert max(per_source.values(), default=0) <= cfg.max_source_bytes // CHUNK
        for r in batch:
            assert not sched.is_done(r.chunk) and r.chunk not in sc.done
            assert stats[r.source].state is SourceState.LIVE
            assert stats[r.source].in_flight <= stats[r.source].limit
            if r.kind is SourceKind.PEER:
                assert r.chunk in reported[r.source]
        # The walk in rank order picks what keying every candidate picks, and the
        # per-rarity count of the pool it relies on is right.
        levels: dict[int, int | None] = {}
        for src in list(sched._sources.values()):
            if src.kind is SourceKind.PEER and src.state is SourceState.LIVE:
                for room in (1, 2, 5):
                    walked = sched._best_in_rank_order(src, room, -math.inf, levels)
                    assert walked == sched._best_by_scan(src, room, -math.inf, levels)
        assert +sched._pool_rarity == Counter(sched._rarity[c] for c in sched._pool)
        if any(copies[r.chunk] > 1 for r in batch):  # duplicates only in endgame
            event("endgame duplicates")
            unassigned = {c for c in range(sc.n) if not sched.is_done(c) and c not in copies}
            assert unassigned <= set(sched.failed_chunks)
            assert len(copies) <= cfg.endgame_threshold

    steps = 50 + 8 * sc.n * (len(sc.peers) + len(sc.upstreams) + 1) * cfg.attempts_per_source
    drive(sim, externals, max_steps=steps, on_batch=check_batch)
    return sched, sim, reported


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_simulated_downloads_terminate_with_invariants(sc: Scenario) -> None:
    sched, sim, reported = run_scenario(sc)
    state = sched.state
    assert state in (State.DONE, State.STUCK)
    event(f"ended {state.value}")
    for s in sched.stats.values():
        if s.state is not SourceState.LIVE:
            event(f"{s.kind.value} {s.state.value}")
        if s.timeouts:
            event(f"{s.kind.value} timed out")
    remaining = [c for c in range(sc.n) if not sched.is_done(c)]
    assert sched.remaining == len(remaining)
    if state is State.STUCK:
        assert sched.in_flight == ()
        assert sched.failed_chunks == remaining != []
    if "good" in sc.upstreams:
        assert state is State.DONE
    # Every chunk a live honest peer holds gets done, with or without upstream.
    stats = sched.stats
    for pid, have in reported.items():
        if sim.kinds[pid] == "good" and stats[pid].state is SourceState.LIVE:
            assert have <= set(range(sc.n)) - set(remaining)
    # Each fetched chunk is credited to exactly one source.
    fetched = sc.n - len(sc.done) - len(remaining)
    assert sum(s.chunks for s in stats.values()) == fetched
    expected_bytes = sum(
        sim.nbytes(c) for c in range(sc.n) if c not in sc.done and c not in remaining
    )
    assert sum(s.bytes for s in stats.values()) == expected_bytes


@settings(max_examples=25, deadline=None)
@given(scenarios())
def test_simulated_downloads_are_deterministic(sc: Scenario) -> None:
    _, first, _ = run_scenario(sc)
    _, second, _ = run_scenario(sc)
    assert first.log == second.log


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    haves=st.lists(st.sets(st.integers(0, 39)), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_first_batch_is_rarest_first(n: int, haves: list[set[int]], seed: int) -> None:
    s = make(n, seed, initial_in_flight=1, max_duplicates=0)
    haves = [{c for c in h if c < n} for h in haves]
    for i, h in enumerate(haves):
        s.add_peer(f"p{i}", h)
    rarity = Counter(c for h in haves for c in h)
    taken: set[int] = set()
    for r in s.next_requests(0.0):
        # Nothing rarer was available to this peer when it chose.
        options = haves[int(r.source[1:])] - taken
        assert rarity[r.chunk] == min(rarity[c] for c in options)
        taken.add(r.chunk)


def test_upstream_order_differs_between_downloaders() -> None:
    """Two downloaders of one file sharing a slow upstream start on different stretches,
    so each soon holds chunks the other lacks (a shared order leaves nothing to trade)."""
    firsts = set()
    for seed in range(8):
        s = make(64, upstream_initial_in_flight=4, seed=seed)
        s.add_upstream("mirror")
        chunks = [r.chunk for r in s.next_requests(0.0)]
        assert chunks == [(chunks[0] + k) % 64 for k in range(4)]  # a contiguous stretch
        firsts.add(chunks[0])
    assert len(firsts) > 4


def test_the_last_live_upstream_is_never_benched() -> None:
    s = make(6, upstream_initial_in_flight=3, max_consecutive_failures=3, attempts_per_source=2)
    s.add_upstream("mirror")
    first = s.next_requests(0.0)
    for r in first:
        s.on_failure(r, 1.0)  # three failures in a row, on three chunks
    assert s.stats["mirror"].state is SourceState.LIVE
    retry = s.next_requests(2.0)
    assert retry and {r.source for r in retry} == {"mirror"}
    for r in retry:
        s.on_success(r, 3.0, CHUNK)
    assert s.state is not State.STUCK


def test_a_peer_that_stalls_costs_no_timeout_when_another_holder_is_fast() -> None:
    """The rule behind test_faults' staller, on a virtual clock: a holder that takes
    requests and never answers holds nothing up for a request timeout, because the fast
    holder duplicates its chunks in the endgame and the file completes long before."""
    s = make(16)
    s.add_peer("good", set(range(16)))
    s.add_peer("stall", set(range(16)))
    now, step = 0.0, 0.05
    pending: list[Request] = []
    asked_staller = 0
    for _ in range(10_000):  # bounded: each step advances the virtual clock
        new = s.next_requests(now)
        asked_staller += sum(r.source == "stall" for r in new)
        pending += [r for r in new if r.source == "good"]
        if s.done:
            break
        if pending:  # the good holder answers one request per step, oldest first
            req = pending.pop(0)
            for loser in s.on_success(req, now + step, CHUNK):
                if loser in pending:
                    pending.remove(loser)
                s.on_cancelled(loser)
        now += step
    assert s.done, "never completed"
    assert asked_staller >= 1, "the staller was never asked: the test proves nothing"
    assert now < SchedulerConfig().timeout_initial / 2, now


def test_equally_rare_chunks_go_in_file_order_by_windows() -> None:
    """The whole-file hash only advances over a held prefix: with one peer holding all,
    every chunk of a window is asked for before any chunk of the next one, and the order
    inside a window still differs between downloaders."""
    firsts = set()
    for seed in range(6):
        s = make(40, seed, initial_in_flight=1, max_in_flight=1, order_window=8)
        s.add_peer("p", range(40))
        order = []
        for step in range(40):
            [req] = s.next_requests(float(step))
            order.append(req.chunk)
            s.on_success(req, float(step) + 0.5, CHUNK)
        assert [c // 8 for c in order] == sorted(c // 8 for c in order)
        assert sorted(order) == list(range(40))
        firsts.add(order[0])
    assert len(firsts) > 1


def test_a_shared_budget_bounds_what_each_call_adds() -> None:
    """Files of one daemon share one byte budget: a call adds peer requests only up to
    what is spare now, and a file with nothing in flight may still start one chunk."""
    from swarm.budget import ByteBudget

    budget = ByteBudget(5 * CHUNK)
    files = [make(32, seed, initial_in_flight=8) for seed in range(3)]
    for s in files:
        s.add_peer("p", range(32))
        s.add_upstream("mirror")  # upstream streams to disk: not in the peer budget
    started = []
    for s in files:
        reqs = s.next_requests(0.0, spare_bytes=budget.spare)
        assert all(r.kind is SourceKind.PEER for r in reqs)
        budget.take(len(reqs) * CHUNK)
        started.append(reqs)
    assert [len(r) for r in started] == [5, 1, 1]  # the last two: one each, never none
    assert budget.spare == 0
    assert files[0].next_requests(0.1, spare_bytes=budget.spare) == []
    for r in started[0][:4]:
        files[0].on_success(r, 0.2, CHUNK)
        budget.give(CHUNK)
    assert budget.spare == 2 * CHUNK  # 7 were taken (two over, one per file), 4 given back
    assert len(files[0].next_requests(0.3, spare_bytes=budget.spare)) == 2
    assert files[1].next_requests(0.3, spare_bytes=0) == []  # it has one in flight
