"""The scheduler's answer to a peer that says "busy" (choked, swarm/choke.py): no blame,
the chunk goes to another holder, and an always-busy peer cannot hold a chunk forever."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.scheduler import Scheduler, SchedulerConfig, SourceState

CHUNK = 1 << 20


def make(n: int, **cfg: object) -> Scheduler:
    return Scheduler(n, CHUNK, rng=random.Random(1), config=SchedulerConfig(**cfg))  # type: ignore[arg-type]


def test_a_choked_chunk_goes_to_another_holder_and_back_later() -> None:
    s = make(1, busy_backoff=1.0)
    s.add_peer("seed", [0])
    [req] = s.next_requests(0.0)
    assert req.source == "seed"
    s.add_peer("peer", [0])  # a downloader that got chunk 0 from the seed
    assert s.on_busy(req, 0.1) == []
    [again] = s.next_requests(0.1)
    assert again.source == "peer"  # not the seed, for the backoff
    s.on_busy(again, 0.2)  # the peer is busy too
    assert s.next_requests(0.3) == []  # both backed off: nobody asked, nothing failed
    assert [r.source for r in s.next_requests(1.15)] == ["seed"]
    stats = s.stats
    assert stats["seed"].failures == stats["peer"].failures == 0
    assert stats["seed"].state is SourceState.LIVE
    assert stats["seed"].limit == SchedulerConfig().initial_in_flight


def test_an_always_busy_peer_cannot_keep_a_chunk_from_upstream() -> None:
    s = make(1, busy_backoff=0.5, max_busy=5)
    s.add_peer("liar", [0])
    s.add_upstream("mirror")
    now, sources = 0.0, []
    for _ in range(40):
        reqs = s.next_requests(now)
        sources += [r.source for r in reqs]
        for r in reqs:
            if r.source == "liar":
                s.on_busy(r, now)
        if "mirror" in sources:
            break
        now += 0.5
    assert sources.count("liar") == 5
    assert sources[-1] == "mirror"


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=80))
def test_busy_answers_never_blame_nor_lose_a_chunk(n: int, script: list[tuple[int, bool]]) -> None:
    """Whatever mix of "busy" and deliveries, with no failure: nobody is benched, every
    chunk is in exactly one of done / in flight / waiting, and the file completes."""
    s = make(n, busy_backoff=0.25, max_busy=1000)
    peers = ["a", "b", "c"]
    for p in peers:
        s.add_peer(p, range(n))
    now = 0.0
    steps = iter(script)
    for _ in range(2000):
        if s.done:
            break
        now += 0.1
        for req in s.next_requests(now):
            step = next(steps, (0, False))
            if step[1] and req.source == peers[step[0]]:
                s.on_busy(req, now)
            else:
                s.on_success(req, now + 0.01, CHUNK)
        for st_ in s.stats.values():
            assert st_.state is SourceState.LIVE and st_.failures == 0
    assert s.done
