"""Upload fairness rules (swarm/choke.py), alone: no sockets, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.choke import ChokeConfig, Decision, UploadChoker

SEND, WAIT, CHOKE = Decision.SEND, Decision.WAIT, Decision.CHOKE


def test_an_idle_holder_serves_anything_even_a_duplicate() -> None:
    c = UploadChoker(ChokeConfig(slots=2))
    a, d = c.arrive("A", "f", 0, 0.0)
    assert d == {a: SEND}
    c.finish(a, 100, 0.1)
    b, d = c.arrive("B", "f", 0, 0.2)  # given to A just now, but nothing else is asked
    assert d == {b: SEND}


def test_while_busy_a_chunk_just_given_to_another_address_is_choked() -> None:
    c = UploadChoker(ChokeConfig(slots=1, spread_window=5.0))
    a, d = c.arrive("A", "f", 0, 0.0)
    assert d == {a: SEND}
    b, d = c.arrive("B", "f", 0, 0.1)  # A is getting chunk 0: B gets it from A
    assert d == {b: CHOKE}
    again, d = c.arrive("A", "f", 0, 0.2)  # A itself asking again (a retry) waits its turn
    assert d == {}
    fresh, d = c.arrive("B", "f", 1, 0.2)  # a chunk nobody has: waits for the slot
    assert d == {}
    # A's body is done: the slot goes to B (no body leaving, fewer bytes lately).
    assert c.finish(a, 100, 0.3) == {fresh: SEND}
    # After the window the chunk is fresh again: a receiver that never shares cannot
    # starve the others.
    late, d = c.arrive("C", "f", 0, 5.5)
    assert d == {}
    # C has had nothing: it goes first, and A's retry of the chunk C now gets is choked.
    assert c.finish(fresh, 100, 5.6) == {late: SEND, again: CHOKE}


def test_a_waiting_duplicate_is_choked_once_its_chunk_goes_to_someone_else() -> None:
    c = UploadChoker(ChokeConfig(slots=1))
    first, _ = c.arrive("A", "f", 9, 0.0)
    b, d = c.arrive("B", "f", 3, 0.0)
    cc, d2 = c.arrive("C", "f", 3, 0.0)
    assert (d, d2) == ({}, {})
    # The slot frees: B gets chunk 3 (earliest of equals), and C's request for the same
    # chunk is choked rather than left to wait for a duplicate.
    assert c.finish(first, 100, 1.0) == {b: SEND, cc: CHOKE}


def test_round_robin_by_address_not_by_connection() -> None:
    c = UploadChoker(ChokeConfig(slots=1))
    hog, _ = c.arrive("A", "f", None, 0.0)
    many = [c.arrive("A", "f", None, 0.0)[0] for _ in range(20)]
    late, _ = c.arrive("B", "f", None, 0.5)
    # B asked last, but A has had its share: B goes first.
    assert c.finish(hog, 1 << 20, 1.0) == {late: SEND}
    assert c.finish(late, 1 << 20, 2.0) == {many[0]: SEND}


def test_a_body_that_stops_moving_gives_its_slot_back() -> None:
    c = UploadChoker(ChokeConfig(slots=1))
    stuck, _ = c.arrive("A", "f", 0, 0.0)
    b, d = c.arrive("B", "f", 1, 0.0)
    assert d == {}
    assert c.snub(stuck, 2.0) == {b: SEND}
    assert c.snub(stuck, 2.0) == {}  # once
    assert c.finish(stuck, 10, 20.0) == {}  # cut at last: nothing more to free
    assert c.sending == 1


def test_too_many_waiting_are_choked_at_once() -> None:
    c = UploadChoker(ChokeConfig(slots=1, max_waiting=3))
    c.arrive("A", "f", None, 0.0)
    decided = [c.arrive(f"h{i}", "f", None, 0.0)[1] for i in range(5)]
    assert decided[:3] == [{}, {}, {}]
    assert all(list(d.values()) == [CHOKE] for d in decided[3:])
    assert c.waiting == 3


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        ChokeConfig(slots=0)
    with pytest.raises(ValueError):
        ChokeConfig(fair_halflife=0)


# -- properties over random event sequences -------------------------------------------------

HOSTS = [f"10.0.0.{i}" for i in range(6)]
events = st.lists(
    st.one_of(
        st.tuples(
            st.just("arrive"),
            st.sampled_from(HOSTS),
            st.sampled_from(["f", "g"]),
            st.one_of(st.none(), st.integers(0, 7)),
        ),
        st.tuples(st.just("finish"), st.integers(0, 40), st.integers(0, 1 << 20)),
        st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
        st.tuples(st.just("snub"), st.integers(0, 40)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 4), st.floats(0.5, 8.0))
def test_invariants(evs: list[tuple], slots: int, window: float) -> None:
    cfg = ChokeConfig(slots=slots, spread_window=window, max_waiting=10, max_files=2, max_hosts=4)
    c = UploadChoker(cfg)
    now = 0.0
    state: dict[int, Decision] = {}  # every ticket's current decision
    asks: dict[int, tuple[str, str, int | None]] = {}
    last_given: dict[tuple[str, int], tuple[str, float]] = {}
    snubbed: set[int] = set()

    def apply(decisions: dict[int, Decision]) -> None:
        for t, d in decisions.items():
            assert state.get(t) in (None, WAIT), "a decided request is never decided again"
            state[t] = d
            if d is SEND:
                host, f, chunk = asks[t]
                if chunk is not None:
                    prev = last_given.get((f, chunk))
                    waiting_fresh = any(
                        s is WAIT and not _dup(asks[u], last_given, now, window)
                        for u, s in state.items()
                        if u != t
                    )
                    # Super-seeding: no duplicate goes out while a fresh request waits.
                    if prev is not None and prev[0] != host and now - prev[1] < window:
                        assert not waiting_fresh
                    last_given[(f, chunk)] = (host, now)

    for ev in evs:
        if ev[0] == "arrive":
            _, host, f, chunk = ev
            ticket, decisions = c.arrive(host, f, chunk, now)
            asks[ticket] = (host, f, chunk)
            state[ticket] = WAIT
            apply(decisions)
        elif ev[0] == "finish":
            live = [t for t, s in state.items() if s in (SEND, WAIT)]
            if live:  # a body done, or a request withdrawn while waiting
                t = live[ev[1] % len(live)]
                del state[t]
                snubbed.discard(t)
                apply(c.finish(t, ev[2], now))
        elif ev[0] == "snub":
            live = [t for t, s in state.items() if s is SEND]
            if live:
                t = live[ev[1] % len(live)]
                snubbed.add(t)
                apply(c.snub(t, now))
        else:
            now += ev[1]
        assert c.sending <= slots
        assert sum(s is SEND for t, s in state.items() if t not in snubbed) == c.sending
        assert sum(s is WAIT for s in state.values()) == c.waiting
        # Work conserving: no free slot while a request waits.
        assert c.sending == slots or c.waiting == 0
        files, chunks, hosts = c.state_sizes()
        assert files <= cfg.max_files and hosts <= cfg.max_hosts and c.waiting <= cfg.max_waiting
        assert chunks <= cfg.max_files * 8


def _dup(
    ask: tuple[str, str, int | None],
    last_given: dict[tuple[str, int], tuple[str, float]],
    now: float,
    window: float,
) -> bool:
    host, f, chunk = ask
    if chunk is None:
        return False
    prev = last_given.get((f, chunk))
    return prev is not None and prev[0] != host and now - prev[1] < window


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 8), st.integers(1, 4))
def test_every_address_is_served_whatever_the_others_ask(n_hosts: int, slots: int) -> None:
    """Many addresses each keeping many requests waiting, bodies finishing one by one:
    every address gets a slot within a round of the others (no starvation)."""
    c = UploadChoker(ChokeConfig(slots=slots, max_waiting=1000))
    owner: dict[int, str] = {}
    sending: list[int] = []
    for i in range(n_hosts):
        host = f"h{i}"
        for _ in range(10 * (i + 1)):  # later addresses ask more
            t, d = c.arrive(host, "f", None, 0.0)
            owner[t] = host
            sending += [x for x, v in d.items() if v is SEND]
    served: list[str] = []
    now = 0.0
    for _ in range(slots + 3 * n_hosts):
        now += 1.0
        t = sending.pop(0)
        served.append(owner[t])
        sending += [x for x, v in c.finish(t, 1 << 20, now).items() if v is SEND]
    # Past the bodies that were already leaving, every address had its turn within a
    # round of the others.
    assert set(served[: slots + n_hosts]) == {f"h{i}" for i in range(n_hosts)}
