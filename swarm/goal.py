"""How much of a file a request makes us fetch (plain rules, no I/O).

A client that asks for a byte range (``Range: bytes=0-0``) and hangs up must not make
the daemon fetch the whole file: a download started for ranged requests fetches the
chunks those requests overlap, and no more. One exception is forced by integrity: a
span that reaches the end of the file has its last block held back until the whole
file passed its hash check (a client must never complete a copy that differs), so it
needs every chunk; such a request asks for as much as a plain GET of the whole file.

A ``Goal`` is the union of what every request for a file asked so far; it only grows
(bytes asked for are fetched even if their client goes away: a retrying client, or the
next one, wants them too, and what is fetched is at most what was asked).
"""

from __future__ import annotations

from swarm.chunking import chunk_count


def span_chunks(start: int, end: int, size: int, chunk_size: int) -> range:
    """The chunks a request for bytes ``[start, end)`` of a ``size``-byte file needs."""
    n = chunk_count(size, chunk_size)
    if end >= size:
        return range(n)  # the last block waits for the whole-file check
    if end <= start:
        return range(0)
    return range(start // chunk_size, min(n, (end - 1) // chunk_size + 1))


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
