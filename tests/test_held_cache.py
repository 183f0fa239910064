"""The rules of swarm.held_cache alone: how long a lookup is reused, what forgets it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.held_cache import HeldCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lookup_is_reused_for_ttl_then_looked_up_again() -> None:
    clock = Clock()
    cache: HeldCache[str] = HeldCache(ttl=1.0, clock=clock)
    assert cache.get("a") is None
    cache.put("a", "held", cache.generation)
    clock.now += 0.999
    assert cache.get("a") == "held"
    clock.now += 0.001
    assert cache.get("a") is None
    assert len(cache) == 0  # an expired entry is dropped when met


def test_not_held_is_never_remembered() -> None:
    clock = Clock()
    cache: HeldCache[str] = HeldCache(ttl=10.0, clock=clock)
    cache.put("a", "held", cache.generation)
    cache.put("a", None, cache.generation)  # looked up again: gone now
    assert cache.get("a") is None and len(cache) == 0


def test_forget_takes_effect_at_once_and_beats_a_lookup_running_across_it() -> None:
    cache: HeldCache[str] = HeldCache(ttl=10.0, clock=Clock())
    cache.put("a", "held", cache.generation)
    cache.put("b", "held", cache.generation)
    cache.forget("a")
    assert cache.get("a") is None and cache.get("b") == "held"
    started = cache.generation  # a lookup of "a" begins (in a thread)...
    cache.forget()  # ...the owner stops sharing everything meanwhile...
    cache.put("a", "stale answer", started)  # ...and its answer comes back late
    assert cache.get("a") is None and cache.get("b") is None
    cache.put("a", "fresh", cache.generation)
    assert cache.get("a") == "fresh"


@given(st.lists(st.text(min_size=1, max_size=3), max_size=200), st.integers(1, 8))
def test_memory_is_bounded_and_keeps_the_latest_lookups(keys: list[str], cap: int) -> None:
    cache: HeldCache[str] = HeldCache(ttl=10.0, max_entries=cap, clock=Clock())
    for k in keys:
        cache.put(k, k, cache.generation)
        assert len(cache) <= cap
    latest = list(dict.fromkeys(reversed(keys)))[:cap]
    assert all(cache.get(k) == k for k in latest)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        HeldCache(ttl=-1)
    with pytest.raises(ValueError):
        HeldCache(max_entries=0)
