"""The order in which a downloader takes from upstream the chunks no peer can give it.

Plain code without I/O, used by the scheduler (rule 2 of swarm/scheduler.py). The problem:
several downloaders of one file share a slow upstream (a lab's internet link, the nodes of
a cluster starting one model) and trade what each fetched. Every chunk two of them fetch
at once crosses that link twice. Fetching in file order keeps the running whole-file hash
fed; a random start alone is not enough, since two starts a few chunks apart make the two
fetch the same stretch side by side to the end.

Each candidate chunk has a level:

- 2, *claimed*: a peer says it is fetching it from upstream now (swarm/have.py).
- 1, *shadowed*: among the ``window`` chunks before it, a peer holds or claims one this
  downloader lacks: that peer is probably fetching the chunks just after (``window`` is
  about its upstream requests in flight). Two downloaders fetching side by side find out
  this way as soon as either verifies a chunk before the other.
- 0, clear.

The order:

1. Keep going: the chunk after the last one this downloader took from upstream, while it
   is clear.
2. Else jump into the largest run of clear chunks, at a random point of its middle half (a
   fixed midpoint would send two downloaders that jump at the same moment to the same
   chunk), and keep going from there; then the rest of that run; then the next run.
3. Then shadowed chunks, then claimed ones, each in file order from a random chunk (all
   from the first chunk would make every downloader pick the same one). They are still
   fetched if nobody else does. (The scheduler takes a claimed chunk only once the claim
   has outlived a deadline, and does not believe a peer that claims too many: see
   ``Scheduler.set_fetching``.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator

__all__ = ["CLAIMED", "CLEAR", "SHADOWED", "level_rule", "upstream_order"]

CLEAR, SHADOWED, CLAIMED = 0, 1, 2


def level_rule(
    lacks_held: Callable[[int], object], claimed: Collection[int], window: int
) -> Callable[[int], int]:
    """Each chunk's level, as the module docstring says. ``lacks_held(c)``: a peer holds
    ``c`` and this downloader has not verified it."""

    def level(c: int) -> int:
        if c in claimed:
            return CLAIMED
        for x in range(max(0, c - window), c):
            if x in claimed or lacks_held(x):
                return SHADOWED
        return CLEAR

    return level


def upstream_order(
    candidates: Collection[int],
    follow: int | None,
    level: Callable[[int], int],
    rng: random.Random,
) -> Iterator[int]:
    """Every candidate once, in the order of the module docstring. ``follow`` is the chunk
    after the one last taken from upstream (None before the first). Lazy, and the runs are
    only looked for once the stretch being followed ends: the caller usually takes one or
    two chunks per call."""
    left = set(candidates)
    nxt = follow
    while nxt is not None and nxt in left and level(nxt) == CLEAR:
        left.discard(nxt)
        yield nxt
        nxt += 1
    by_level: dict[int, list[int]] = {CLEAR: [], SHADOWED: [], CLAIMED: []}
    for c in sorted(left):
        by_level[level(c)].append(c)
    for start, end in sorted(_runs(by_level[CLEAR]), key=_longest_first):
        length = end - start
        first = start + length // 4 + rng.randrange(length // 2 + 1) if length > 1 else start
        first = min(first, end - 1)
        yield from range(first, end)
        yield from range(start, first)
    for lower in (by_level[SHADOWED], by_level[CLAIMED]):
        if lower:
            pivot = rng.randrange(len(lower))
            yield from lower[pivot:]
            yield from lower[:pivot]


def _runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive chunks of a sorted list, as [start, end) pairs."""
    runs: list[tuple[int, int]] = []
    for c in chunks:
        if runs and runs[-1][1] == c:
            runs[-1] = (runs[-1][0], c + 1)
        else:
            runs.append((c, c + 1))
    return runs


def _longest_first(run: tuple[int, int]) -> tuple[int, int]:
    return (run[0] - run[1], run[0])
