"""How much of a file a request makes us fetch (plain rules, no I/O).

A client that asks for a byte range (``Range: bytes=0-0``) and hangs up must not make
the daemon fetch the whole file: a download started for ranged requests fetches the
chunks those requests overlap, and no more.

A span that reaches the end of the file completes the client's copy, so its bytes must
be vouched for before its last block goes out (a client must never complete a copy that
differs). Either the whole file passes its hash check (which needs every chunk), or
upstream, the authority the client would otherwise have asked, vouches for them: bytes
that came from upstream are its own, and bytes that came from peers (checked only
against a peer's manifest) are compared with upstream's before the last block.
:func:`tail_needs_whole` picks the cheaper: the whole file when what is missing outside
the span is no more than the span (a resume near the start, or of a file mostly held),
else upstream's word. Either way what a request costs upstream is bounded by what it
asked (``bytes=-1`` of a 40 GB file fetches one chunk, not the file).

A ``Goal`` is the union of what every request for a file asked so far; it only grows
(bytes asked for are fetched even if their client goes away: a retrying client, or the
next one, wants them too, and what is fetched is at most what was asked).
"""

from __future__ import annotations

from collections.abc import Sequence

from swarm.chunking import chunk_count


def span_chunks(start: int, end: int, size: int, chunk_size: int) -> range:
    """The chunks a request for bytes ``[start, end)`` of a ``size``-byte file overlaps."""
    n = chunk_count(size, chunk_size)
    if end <= start:
        return range(0)
    return range(start // chunk_size, min(n, (end - 1) // chunk_size + 1))


def tail_needs_whole(
    start: int, end: int, size: int, chunk_size: int, have: Sequence[bool], upstream: bool
) -> bool:
    """Whether a request for ``[start, end)`` must wait for the whole file's check: a span
    that reaches the end, with no upstream to vouch for it, or with less missing outside
    it than the span itself (then fetching the rest costs no more than asking upstream)."""
    if end < size:
        return False
    if not upstream:
        return True
    inside = span_chunks(start, end, size, chunk_size)
    missing = sum(
        min(chunk_size, size - i * chunk_size)
        for i in range(chunk_count(size, chunk_size))
        if i not in inside and not have[i]
    )
    return missing <= end - start


class Goal:
    """The chunks of one file that requests asked for; ``version`` counts changes."""

    def __init__(self, size: int, chunk_size: int) -> None:
        self.size = size
        self.chunk_size = chunk_size
        self.n_chunks = chunk_count(size, chunk_size)
        self._wanted = bytearray(self.n_chunks)
        self._count = 0
        self.version = 0

    def add(self, start: int, end: int) -> None:
        """A request for ``[start, end)`` arrived."""
        if self.whole:
            return
        grew = False
        for c in span_chunks(start, end, self.size, self.chunk_size):
            if not self._wanted[c]:
                self._wanted[c] = 1
                self._count += 1
                grew = True
        self.version += grew

    def wants(self, chunk: int) -> bool:
        return bool(self._wanted[chunk])

    @property
    def whole(self) -> bool:
        return self._count == self.n_chunks

    def wanted(self) -> list[int]:
        return [c for c in range(self.n_chunks) if self._wanted[c]]
