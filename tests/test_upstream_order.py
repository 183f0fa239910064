"""The order upstream takes chunks in (swarm/upstream_order.py): the rule alone, then two
schedulers sharing one slow upstream and trading what each verified."""

from __future__ import annotations

import random
import statistics

from swarm.scheduler import Request, Scheduler, SchedulerConfig, SourceKind
from swarm.upstream_order import CLEAR, level_rule, upstream_order

CHUNK = 1 << 20


def never(c: int) -> int:
    return CLEAR


def test_a_stretch_is_followed_in_file_order() -> None:
    order = upstream_order(set(range(20)), 5, never, random.Random(0))
    assert [next(order) for _ in range(6)] == [5, 6, 7, 8, 9, 10]


def test_every_candidate_comes_once() -> None:
    cands = {0, 1, 2, 5, 6, 9, 14, 15, 16, 17}
    for seed in range(20):
        shadow = level_rule(lambda c: c in (4, 13), {13}, 3)
        got = list(upstream_order(cands, 1, shadow, random.Random(seed)))
        assert sorted(got) == sorted(cands)


def test_a_peer_holding_what_comes_just_before_sends_us_elsewhere() -> None:
    # A peer verified chunk 9, which we lack: it is probably fetching 10, 11, ... now.
    shadow = level_rule(lambda c: c == 9, (), 4)
    assert [shadow(c) for c in range(8, 15)] == [0, 0, 1, 1, 1, 1, 0]
    cands = set(range(10, 40))
    for seed in range(20):
        first = next(upstream_order(cands, 10, shadow, random.Random(seed)))
        # the middle half of the largest stretch nobody is near: 14..39
        assert 14 + 26 // 4 <= first <= 14 + 26 // 4 + 13


def test_what_a_peer_fetches_and_the_stretch_after_it_come_last() -> None:
    claimed = {4, 5}  # a peer says it is fetching these from upstream now
    shadow = level_rule(lambda c: False, claimed, 2)
    got = list(upstream_order(set(range(12)), 3, shadow, random.Random(0)))
    assert got[:1] == [3] and set(got[-4:]) == {4, 5, 6, 7} and set(got[-2:]) == claimed


def test_jumps_land_apart_so_two_that_jump_at_once_rarely_meet() -> None:
    firsts = {
        next(upstream_order(set(range(64)), None, never, random.Random(seed))) for seed in range(16)
    }
    assert len(firsts) > 8


def test_shadowed_chunks_still_come_last() -> None:
    # A partial holder that stopped: what follows its chunks is fetched all the same.
    shadow = level_rule(lambda c: c < 5, (), 8)
    firsts = set()
    for seed in range(16):
        got = list(upstream_order(set(range(5, 12)), 5, shadow, random.Random(seed)))
        assert sorted(got) == list(range(5, 12))
        firsts.add(got[0])
    # ... from a random chunk: downloaders left with only such chunks pick different ones
    assert len(firsts) > 3


# ---- two downloaders, one slow upstream ------------------------------------------------------


def share_a_slow_upstream(seed: int, n: int = 32, k: int = 2, claims: bool = False) -> float:
    """``k`` schedulers download one file from a shared upstream serving one chunk per unit
    of time in all (split evenly between the requests in flight, each request a few percent
    more or less work, as no real link is exactly fair) and from each other in
    ``PEER_TIME``; each hears of the others' verified chunks at once, and with ``claims`` of
    what they fetch from upstream. Returns the chunks upstream sent, counting the part of
    any request cancelled midway."""
    rng = random.Random(seed)
    scheds = [
        Scheduler(n, CHUNK, rng=random.Random(rng.random()), config=SchedulerConfig())
        for _ in range(k)
    ]
    for i, s in enumerate(scheds):
        s.add_upstream("hub")
        for j in range(k):
            if j != i:
                s.add_peer(f"d{j}")
    progress: dict[tuple[int, Request], float] = {}  # upstream requests: fraction sent
    peer_due: dict[tuple[int, Request], float] = {}
    sent, now = 0.0, 0.0
    for _ in range(100_000):  # bounded: each pass is an event (a request starts or ends)
        for i, s in enumerate(scheds):
            for r in s.expire(now):  # a timeout aborts the transfer (its bytes were sent)
                progress.pop((i, r), None)
                peer_due.pop((i, r), None)
            for r in s.next_requests(now):
                if r.kind is SourceKind.UPSTREAM:
                    progress[(i, r)] = rng.uniform(-0.05, 0.05)
                else:
                    peer_due[(i, r)] = now + PEER_TIME
        if claims:
            for i, s in enumerate(scheds):
                fetching = [r.chunk for r in s.in_flight if r.kind is SourceKind.UPSTREAM]
                for j, other in enumerate(scheds):
                    if j != i:
                        other.set_fetching(f"d{i}", fetching, now)
        if all(s.done for s in scheds):
            return sent
        # On to the next event: a transfer ends, or a deadline passes.
        events = [due - now for due in peer_due.values()]
        events += [(1.0 - p) * len(progress) for p in progress.values()]
        events += [d - now for s in scheds if (d := s.next_deadline) is not None]
        dt = max(min(events), 1e-6)
        now += dt
        finished: list[tuple[int, Request]] = []
        if progress:
            share = dt / len(progress)
            for key in progress:
                progress[key] += share
                sent += share
                if progress[key] >= 1.0 - 1e-9:
                    finished.append(key)
        finished += [key for key, due in peer_due.items() if due <= now + 1e-9]
        for i, r in finished:
            progress.pop((i, r), None)
            peer_due.pop((i, r), None)
            for lost in scheds[i].on_success(r, now, CHUNK):
                scheds[i].on_cancelled(lost)
                progress.pop((i, lost), None)
                peer_due.pop((i, lost), None)
            held = [c for c in range(n) if scheds[i].is_done(c)]
            for j, other in enumerate(scheds):
                if j != i:
                    other.set_have(f"d{i}", held)
    raise AssertionError("the download did not end")


PEER_TIME = 0.05


def test_two_downloaders_sharing_a_slow_upstream_fetch_each_chunk_about_once() -> None:
    sent = [share_a_slow_upstream(seed) for seed in range(24)]
    # Fetching every chunk twice would be 64; whatever the two random starts, the pair
    # fetches little more than the file's 32.
    assert max(sent) < 1.5 * 32, sent
    assert statistics.mean(sent) < 1.25 * 32, sent


def test_claims_keep_eight_downloaders_off_each_others_chunks() -> None:
    """Eight nodes of a cluster start the same download at once. What the others fetch
    is only known from their claims: without them, each jumps into gaps another is
    already fetching."""
    with_claims = [share_a_slow_upstream(seed, n=64, k=8, claims=True) for seed in range(4)]
    without = [share_a_slow_upstream(seed, n=64, k=8) for seed in range(4)]
    assert statistics.mean(with_claims) < 1.5 * 64, with_claims
    assert statistics.mean(with_claims) < 0.85 * statistics.mean(without), (with_claims, without)


def test_a_claimed_chunk_waits_for_its_claimer_then_for_nobody() -> None:
    s = Scheduler(4, CHUNK, rng=random.Random(0), config=SchedulerConfig(timeout_initial=30.0))
    s.add_upstream("hub")
    s.add_peer("other")
    s.set_fetching("other", [0, 1, 2, 3], 0.0)  # it fetches the whole file already
    assert s.next_requests(0.0) == []  # a second copy would only slow its copy down
    assert s.next_requests(29.0) == []
    late = s.next_requests(31.0)  # older than the deadline of a request of ours
    assert late and all(r.source == "hub" for r in late)


def test_a_peer_claiming_more_than_any_honest_one_fetches_is_not_believed() -> None:
    s = Scheduler(64, CHUNK, rng=random.Random(0), config=SchedulerConfig())
    s.add_upstream("hub")
    s.add_peer("liar")
    s.set_fetching("liar", range(64), 0.0)
    assert s.next_requests(0.0)  # upstream goes ahead at once
