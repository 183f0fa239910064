"""The order in which a downloader takes from upstream the chunks no peer can give it.

Plain code without I/O, used by the scheduler (rule 2 of swarm/scheduler.py). The problem:
several downloaders of one file share a slow upstream (a lab's internet link) and trade
what each fetched. They cannot see each other's requests, only each other's verified
chunks, so every chunk two of them fetch at once is fetched twice. Fetching in file order
keeps the running whole-file hash fed; a random start alone is not enough, since two starts
a few chunks apart make the two fetch the same stretch side by side to the end.

The rule:

1. Keep going: the chunk after the last one this downloader took from upstream, while it
   is a candidate and not *shadowed*.
2. A chunk is shadowed when, among the ``window`` chunks before it, a peer holds one this
   downloader has not verified yet: that peer is probably fetching the chunks just after
   it (``window`` is about its upstream requests in flight). Two downloaders fetching side
   by side find out this way as soon as either verifies a chunk before the other.
3. Otherwise jump into the largest run of candidates that are not shadowed, at a random
   point of its middle half (a fixed midpoint would send two downloaders that jump at the
   same moment to the same chunk), and keep going from there; then the rest of that run.
4. Shadowed candidates last, in file order: they are still fetched if nobody else does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator

__all__ = ["shadow_rule", "upstream_order"]


def shadow_rule(
    is_caster: Callable[[int], object], claimed: Collection[int], window: int
) -> Callable[[int], bool]:
    """Rules 2 and 3 as a predicate: a chunk is shadowed when a peer claims it, or when one
    of the ``window`` chunks before it is a caster (held or claimed by a peer, not yet
    verified here)."""

    def is_shadowed(c: int) -> bool:
        return c in claimed or any(is_caster(x) for x in range(max(0, c - window), c))

    return is_shadowed


def upstream_order(
    candidates: Collection[int],
    follow: int | None,
    is_shadowed: Callable[[int], bool],
    rng: random.Random,
) -> Iterator[int]:
    """Every candidate once, in the order of the module docstring's rule. ``follow`` is the
    chunk after the one last taken from upstream (None before the first). Lazy, and the
    runs are only looked for once the stretch being followed ends: the caller usually takes
    one or two chunks per call."""
    left = set(candidates)
    nxt = follow
    while nxt is not None and nxt in left and not is_shadowed(nxt):
        left.discard(nxt)
        yield nxt
        nxt += 1
    clear = [c for c in sorted(left) if not is_shadowed(c)]
    for start, end in sorted(_runs(clear), key=_longest_first):
        length = end - start
        first = start + length // 4 + rng.randrange(length // 2 + 1) if length > 1 else start
        first = min(first, end - 1)
        for c in (*range(first, end), *range(start, first)):
            left.discard(c)
            yield c
    yield from sorted(left)


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
