"""The order upstream takes chunks in (swarm/upstream_order.py): the rule alone, then two
schedulers sharing one slow upstream and trading what each verified."""

from __future__ import annotations

import random
import statistics

from swarm.scheduler import Request, Scheduler, SchedulerConfig, SourceKind
from swarm.upstream_order import shadow_rule, upstream_order

CHUNK = 1 << 20


def never(c: int) -> bool:
    return False


def test_a_stretch_is_followed_in_file_order() -> None:
    order = upstream_order(set(range(20)), 5, never, random.Random(0))
    assert [next(order) for _ in range(6)] == [5, 6, 7, 8, 9, 10]


def test_every_candidate_comes_once() -> None:
    cands = {0, 1, 2, 5, 6, 9, 14, 15, 16, 17}
    for seed in range(20):
        shadow = shadow_rule(lambda c: c in (4, 13), {13}, 3)
        got = list(upstream_order(cands, 1, shadow, random.Random(seed)))
        assert sorted(got) == sorted(cands)


def test_a_peer_holding_what_comes_just_before_sends_us_elsewhere() -> None:
    # A peer verified chunk 9, which we lack: it is probably fetching 10, 11, ... now.
    shadow = shadow_rule(lambda c: c == 9, (), 4)
    assert [shadow(c) for c in range(8, 15)] == [False, False, True, True, True, True, False]
    cands = set(range(10, 40))
    for seed in range(20):
        first = next(upstream_order(cands, 10, shadow, random.Random(seed)))
        # the middle half of the largest stretch nobody is near: 14..39
        assert 14 + 26 // 4 <= first <= 14 + 26 // 4 + 13


def test_what_a_peer_fetches_and_the_stretch_after_it_come_last() -> None:
    claimed = {4, 5}  # a peer says it is fetching these from upstream now
    shadow = shadow_rule(lambda c: c in claimed, claimed, 2)
    got = list(upstream_order(set(range(12)), 3, shadow, random.Random(0)))
    assert got[:1] == [3] and set(got[-4:]) == {4, 5, 6, 7}


def test_jumps_land_apart_so_two_that_jump_at_once_rarely_meet() -> None:
    firsts = {
        next(upstream_order(set(range(64)), None, never, random.Random(seed))) for seed in range(16)
    }
    assert len(firsts) > 8


def test_shadowed_chunks_still_come_last() -> None:
    # A partial holder that stopped: what follows its chunks is fetched all the same.
    shadow = shadow_rule(lambda c: c < 5, (), 8)
    assert list(upstream_order({5, 6, 7}, 5, shadow, random.Random(0))) == [5, 6, 7]


# ---- two downloaders, one slow upstream ------------------------------------------------------


def share_a_slow_upstream(seed: int, n: int = 32) -> float:
    """Two schedulers download one file from a shared upstream serving one chunk per unit of
    time in all (split evenly between the requests in flight, each request a few percent
    more or less work, as no real link is exactly fair) and from each other in
    ``PEER_TIME``; each hears of the other's verified chunks at once. Returns the chunks
    upstream sent, counting the part of any request cancelled midway."""
    rng = random.Random(seed)
    scheds = [
        Scheduler(n, CHUNK, rng=random.Random(rng.random()), config=SchedulerConfig())
        for _ in range(2)
    ]
    for i, s in enumerate(scheds):
        s.add_upstream("hub")
        s.add_peer(f"d{1 - i}")
    progress: dict[tuple[int, Request], float] = {}  # upstream requests: fraction sent
    peer_due: dict[tuple[int, Request], float] = {}
    sent, now, dt = 0.0, 0.0, 0.01
    for _ in range(100_000):  # bounded: 32 chunks at 1 per unit take ~3200 steps
        for i, s in enumerate(scheds):
            for r in s.next_requests(now):
                if r.kind is SourceKind.UPSTREAM:
                    progress[(i, r)] = rng.uniform(-0.05, 0.05)
                else:
                    peer_due[(i, r)] = now + PEER_TIME
        if all(s.done for s in scheds):
            return sent
        now += dt
        finished: list[tuple[int, Request]] = []
        if progress:
            share = dt / len(progress)
            for key in progress:
                progress[key] += share
                sent += share
                if progress[key] >= 1.0:
                    finished.append(key)
        finished += [key for key, due in peer_due.items() if due <= now]
        for i, r in finished:
            progress.pop((i, r), None)
            peer_due.pop((i, r), None)
            for lost in scheds[i].on_success(r, now, CHUNK):
                scheds[i].on_cancelled(lost)
                progress.pop((i, lost), None)
                peer_due.pop((i, lost), None)
            other = scheds[1 - i]
            other.set_have(f"d{i}", [c for c in range(n) if scheds[i].is_done(c)])
    raise AssertionError("the download did not end")


PEER_TIME = 0.05


def test_two_downloaders_sharing_a_slow_upstream_fetch_each_chunk_about_once() -> None:
    sent = [share_a_slow_upstream(seed) for seed in range(24)]
    # Fetching every chunk twice would be 64; whatever the two random starts, the pair
    # fetches little more than the file's 32.
    assert max(sent) < 1.5 * 32, sent
    assert statistics.mean(sent) < 1.25 * 32, sent
