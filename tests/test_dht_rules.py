"""The DHT's plain rules alone (swarm.dht_guard, swarm.dht_lookup): no network, no clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node

from swarm.dht_guard import DropLog, RateLimiter, TokenCache, Tokens, fit_reply, mac_input
from swarm.dht_lookup import LookupState, RttEstimator


def test_tokens_bound_to_address_and_expire() -> None:
    t = Tokens(b"k" * 32, period=300)
    tok = t.issue("10.0.0.1", 9009, now=1000)
    assert len(tok) == 8
    assert t.valid(tok, "10.0.0.1", 9009, now=1000)
    assert t.valid(tok, "10.0.0.1", 9009, now=1199)  # the next period still takes it
    assert not t.valid(tok, "10.0.0.1", 9009, now=1500)  # two periods on: gone
    assert not t.valid(tok, "10.0.0.2", 9009, now=1000)  # another address
    assert not t.valid(tok, "10.0.0.1", 9010, now=1000)  # another port
    assert t.valid(t.issue("::ffff:10.0.0.1", 9009, 1000), "10.0.0.1", 9009, 1000)
    assert not Tokens(b"x" * 32).valid(tok, "10.0.0.1", 9009, now=1000)  # another node
    for bad in (None, b"", tok[:7], tok + b"\0", "x" * 8):
        assert not t.valid(bad, "10.0.0.1", 9009, now=1000)
    with pytest.raises(ValueError):
        Tokens(b"short")


def test_token_cache_reuses_while_fresh_and_is_bounded() -> None:
    c = TokenCache(reuse=240, limit=3)
    c.put(("10.0.0.1", 1), b"t" * 8, now=0)
    c.put(("10.0.0.2", 1), b"not-a-token", now=0)
    assert c.get(("10.0.0.1", 1), now=239) == b"t" * 8
    assert c.get(("10.0.0.1", 1), now=240) is None
    assert c.get(("10.0.0.2", 1), now=0) is None
    for i in range(10):
        c.put((f"10.1.0.{i}", 1), b"u" * 8, now=0)
    assert len(c._tokens) == 3
    c.forget(("10.1.0.9", 1))
    assert c.get(("10.1.0.9", 1), now=0) is None


def test_rate_limiter_per_address() -> None:
    r = RateLimiter(rate=10, burst=20, limit=100)
    assert sum(r.allow("a", now=0) for _ in range(100)) == 20  # the burst, then nothing
    assert r.allow("b", now=0)  # another address has its own bucket
    assert sum(r.allow("a", now=1) for _ in range(100)) == 10  # refilled at the rate
    assert sum(r.allow("a", now=1000) for _ in range(100)) == 20  # never above the burst


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 5)), max_size=300))
def test_rate_limiter_never_exceeds_rate_times_time_plus_burst(ops) -> None:
    r = RateLimiter(rate=50, burst=10, limit=8)
    now, allowed = 0.0, {}
    for who, dt in ops:
        now += dt
        if r.allow(str(who % 4), now):
            allowed[who % 4] = allowed.get(who % 4, 0) + 1
    for n in allowed.values():
        assert n <= 10 + 50 * now + 1e-6
    assert len(r._buckets) <= 8


def test_mac_input_binds_ids_addresses_and_time() -> None:
    a, b, c = b"\1" * 20, b"\2" * 20, b"\3" * 20
    base = mac_input(a, b, ("10.0.0.1", 1), ("10.0.0.2", 2), 5, b"m")
    variants = [
        mac_input(a, c, ("10.0.0.1", 1), ("10.0.0.2", 2), 5, b"m"),  # another receiver
        mac_input(c, b, ("10.0.0.1", 1), ("10.0.0.2", 2), 5, b"m"),  # another sender
        mac_input(a, b, ("10.0.0.9", 1), ("10.0.0.2", 2), 5, b"m"),  # from elsewhere
        mac_input(a, b, ("10.0.0.1", 1), ("10.0.0.3", 2), 5, b"m"),  # to elsewhere
        mac_input(a, b, ("10.0.0.1", 1), ("10.0.0.2", 3), 5, b"m"),  # another port
        mac_input(a, b, ("10.0.0.1", 1), ("10.0.0.2", 2), 6, b"m"),
        mac_input(a, b, ("10.0.0.1", 1), ("10.0.0.2", 2), 5, b"n"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    assert base == mac_input(a, b, ("::ffff:10.0.0.1", 1), ("10.0.0.2", 2), 5, b"m")


@given(st.integers(0, 40), st.integers(0, 40), st.integers(60, 3000))
def test_fit_reply_never_exceeds_the_limit_unless_bare(n_nodes, n_prov, limit) -> None:
    def build(p: int, n: int) -> bytes:
        return b"h" * 50 + b"p" * 23 * min(p, n_prov) + b"n" * 42 * min(n, n_nodes)

    data = fit_reply(limit, build, n_nodes, n_prov)
    assert len(data) <= limit or data == build(0, 0)
    if len(build(n_prov, n_nodes)) <= limit:
        assert data == build(n_prov, n_nodes)  # nothing trimmed when it fits


def test_rtt_estimator() -> None:
    e = RttEstimator(max_timeout=5.0, min_timeout=0.5)
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    assert e.timeout(a) == 5.0  # nothing measured yet: the configured maximum
    for _ in range(20):
        e.observe(a, 0.010)
    assert e.timeout(a) == 0.5  # 10 ms round trips: the floor
    assert e.timeout(b) == 1.0  # a stranger: twice what the others take
    for _ in range(30):
        e.observe(a, 0.8)
    assert 0.8 < e.timeout(a) < 5.0
    for _ in range(30):
        e.observe(a, 60.0)
    assert e.timeout(a) == 5.0  # capped
    e.observe(a, float("nan"))
    assert e.timeout(a) == 5.0
    e.forget(a)
    assert e.timeout(a) == min(5.0, 2 * e._rto(e._all))  # type: ignore[arg-type]


def _ids(rng: random.Random, n: int) -> list[Node]:
    return [Node(rng.randbytes(20), f"10.{i // 250}.{i % 250}.1", 9) for i in range(n)]


def test_lookup_state_keeps_alpha_in_flight_and_finds_the_closest() -> None:
    """A simulated network of 300 nodes where each knows 30 others: the lookup must end
    with the true k closest that are alive, never re-admit a failed one, and never
    have more than alpha requests outstanding."""
    rng = random.Random(5)
    nodes = _ids(rng, 300)
    know = {n.id: rng.sample(nodes, 30) for n in nodes}
    dead = {n.id for n in rng.sample(nodes, 60)}
    target = Node(rng.randbytes(20))
    st_ = LookupState(target, rng.sample(nodes, 5), ksize=8, alpha=3)
    outstanding: list[Node] = []
    for _ in range(10_000):
        while (n := st_.next()) is not None:
            outstanding.append(n)
        assert st_.in_flight == len(outstanding) <= 3
        if st_.done() or not outstanding:
            break
        n = outstanding.pop(rng.randrange(len(outstanding)))  # replies in any order
        if n.id in dead:
            st_.failed_to_answer(n)
        else:
            # a reply may name dead nodes and nodes that already failed: never re-admitted
            st_.answered(n, know[n.id])
    got = st_.result()
    assert all(n.id not in dead for n in got) and len(got) == 8
    assert st_.failed <= dead
    seen = {n.id for n in got}
    asked = [c for c in st_._cands.values() if c.state == "answered"]
    # nothing closer than the farthest result answered without being in the result
    worst = max(target.distance_to(n) for n in got)
    assert all(c.node.id in seen or target.distance_to(c.node) > worst for c in asked)
    assert st_.max_depth >= 1 and st_.queried >= 8


def test_lookup_state_failed_node_is_never_asked_again() -> None:
    rng = random.Random(1)
    a, b = _ids(rng, 2)
    st_ = LookupState(Node(b"\0" * 20), [a, b], ksize=4, alpha=2)
    first, second = st_.next(), st_.next()
    assert {first.id, second.id} == {a.id, b.id} and st_.next() is None
    st_.failed_to_answer(a)
    st_.answered(b, [a])  # b names a again
    assert st_.next() is None and st_.done() and st_.result() == [b]


def test_a_slow_contact_gives_up_its_slot_but_a_late_reply_counts() -> None:
    rng = random.Random(2)
    a, b, c = _ids(rng, 3)
    st_ = LookupState(Node(b"\0" * 20), [a, b], ksize=2, alpha=1)
    first = st_.next()
    assert first is not None and st_.next() is None  # alpha 1: one at a time
    st_.slow(first)  # past its soft timeout: the next contact goes out
    second = st_.next()
    assert second is not None and second.id != first.id and st_.in_flight == 1
    st_.answered(second, [c])
    third = st_.next()
    assert third is not None and third.id == c.id  # the slow one ranks as gone
    st_.answered(third, [])
    assert st_.done() and {n.id for n in st_.result()} == {second.id, c.id}
    st_.answered(first, [])  # its late reply still counts
    assert first.id in {n.id for n in st_.result()} or len(st_.result()) == 2
    assert st_.in_flight == 0


def test_soft_timeout_is_twice_the_rtt_within_bounds() -> None:
    e = RttEstimator(max_timeout=5.0)
    assert e.soft_timeout(("10.0.0.1", 1)) == 5.0  # nothing known: the hard timeout
    for _ in range(10):
        e.observe(("10.0.0.1", 1), 0.1)
    assert e.soft_timeout(("10.0.0.1", 1)) == pytest.approx(0.2)
    assert e.soft_timeout(("10.0.0.2", 1)) == pytest.approx(0.2)  # from the overall RTT
    for _ in range(10):
        e.observe(("10.0.0.3", 1), 0.001)
    assert e.soft_timeout(("10.0.0.3", 1)) == 0.05


def test_a_lookup_whose_every_contact_is_slow_waits_for_them() -> None:
    """All seeds past their soft timeout is not "done with nothing": their replies
    are still awaited while fewer than k contacts answered."""
    rng = random.Random(3)
    a, b, c = _ids(rng, 3)
    st_ = LookupState(Node(b"\0" * 20), [a, b], ksize=4, alpha=2)
    first, second = st_.next(), st_.next()
    st_.slow(first)
    st_.slow(second)
    assert st_.next() is None and not st_.done() and st_.slow_pending == 2
    st_.answered(first, [c])
    assert st_.slow_pending == 1 and st_.next() is not None  # c goes out
    st_.answered(c, [])
    assert not st_.done()  # 2 answered < k, and second may still answer
    st_.failed_to_answer(second)
    assert st_.done() and st_.slow_pending == 0 and len(st_.result()) == 2


def test_drop_log_names_each_misbehaving_address_and_caps_a_flood() -> None:
    log = DropLog(per_host=10.0, per_second=5, max_hosts=256)
    # two peers with the wrong secret, their datagrams always in the same second:
    # each is named (a log once a second for all would name only the first, forever)
    named = [h for t in (0.0, 5.0, 10.0) for h in ("a", "b") if log.should_log(h, t)]
    assert named == ["a", "b", "a", "b"]  # again once 10 s have passed
    # a flood from one address: one line per 10 s
    assert sum(log.should_log("flood", 100.0 + i / 1000) for i in range(10_000)) == 1
    # a flood from many addresses: at most 5 lines a second, memory bounded
    lines = sum(
        log.should_log(f"10.0.{i // 256}.{i % 256}", 200.0 + i / 1000) for i in range(10_000)
    )
    assert lines <= 5 * 11
    assert len(log._last) <= 256
