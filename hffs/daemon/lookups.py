"""Holder lookups for the daemon's downloads, cached per key (one service: lookups).

A download asks who holds its file every few seconds; a DHT crawl per ask would
flood the swarm (a BitTorrent client asks its tracker every few minutes and then
trades have-messages). So an answer is kept for LOOKUP_TTL (EMPTY_TTL when nobody
was found: a holder may announce any moment), and a download whose holders all
failed may ask for a fresh one, at most every MIN_GAP. The control API's own
lookups (``hffs model search``) stay uncached: a person asked.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

LOOKUP_TTL = 60.0
EMPTY_TTL = 5.0
MIN_GAP = 5.0
MAX_KEYS = 4096

Query = tuple[str, ...]
Found = list[dict[str, Any]]


def lookup_due(looked_at: float | None, found: int, now: float, *, fresh: bool) -> bool:
    """Whether to look a key up again (plain rule, see the module docstring)."""
    if looked_at is None:
        return True
    age = now - looked_at
    if fresh:
        return age >= MIN_GAP
    return age >= (LOOKUP_TTL if found else EMPTY_TTL)


class Lookups:
    """Cached answers of ``find`` per query; ``crawls`` counts the lookups made."""

    def __init__(
        self, find: Callable[[Query], Awaitable[Found]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._find = find
        self._clock = clock
        self._cache: dict[Query, tuple[float, Found]] = {}
        self._locks: dict[Query, anyio.Lock] = {}
        self.crawls = 0  # lookups made
        self.asks = 0  # answers given, cached or not

    async def get(self, query: Query, *, fresh: bool = False) -> Found:
        self.asks += 1
        lock = self._locks.setdefault(query, anyio.Lock())
        async with lock:  # concurrent asks for one key share one lookup
            hit = self._cache.get(query)
            if hit is not None and not lookup_due(hit[0], len(hit[1]), self._clock(), fresh=fresh):
                return hit[1]
            found = await self._find(query)
            self.crawls += 1
            self._cache[query] = (self._clock(), found)
        if len(self._cache) > MAX_KEYS:  # forget the oldest answers
            for key, _ in sorted(self._cache.items(), key=lambda kv: kv[1][0])[: MAX_KEYS // 2]:
                del self._cache[key]
                self._locks.pop(key, None)
        return found

    def forget(self, query: Query) -> None:
        """A holder announced itself for this key: the next ask looks again."""
        self._cache.pop(query, None)
