"""A short memory of "what do we hold of this id", so a blob request needs no thread hop.

Looking a file up (sharing rules, the cache index, a stat, a partial's state file) is
blocking work done in a worker thread; at 1 MiB per request that round trip costs more
than sending the chunk. The sendfile front asks this memory first.

The rules (plain code; the caller supplies the clock):

- An entry is used for at most ``ttl`` seconds after its lookup; after that the file is
  looked up again. So whatever happens behind the daemon's back (a blob deleted, a repo
  made private by another process) takes effect within ``ttl``.
- The owner calls ``forget`` when it changes what it shares (a rescan, a rotten file
  dropped): that takes effect at once. A lookup that started before a ``forget`` and ends
  after it is not stored (``generation``), so it cannot bring back what was forgotten.
- Nothing negative is remembered: "not held" is always looked up again, so content
  newly shared or a chunk verified a moment ago is served at once.
- What an entry may answer is the caller's rule (``swarm.peer_server``): a complete
  file's size and path, or a partial file's bitmap only to say YES for chunks it shows.
- At most ``max_entries`` ids are remembered (the oldest lookup is dropped first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["TTL", "HeldCache"]

TTL = 1.0  # seconds a lookup is reused for
MAX_ENTRIES = 256

T = TypeVar("T")


class HeldCache(Generic[T]):
    def __init__(
        self,
        ttl: float = TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("need ttl >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[T, float]] = OrderedDict()
        self._generation = 0

    @property
    def generation(self) -> int:
        """Read before a lookup, given back to ``put`` after it."""
        return self._generation

    def get(self, key: str) -> T | None:
        """The value looked up for ``key`` less than ``ttl`` ago, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, at = entry
        if self.clock() - at >= self.ttl:
            del self._entries[key]
            return None
        return value

    def put(self, key: str, value: T | None, generation: int) -> None:
        """Remember a lookup that began at ``generation``; a None (not held) forgets."""
        if generation != self._generation:
            return  # a forget came in between: this answer may be what was forgotten
        self._entries.pop(key, None)
        if value is None:
            return
        self._entries[key] = (value, self.clock())
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: str | None = None) -> None:
        """Drop ``key`` (every entry if None); lookups running now are not stored."""
        self._generation += 1
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
