"""The bytes of peer chunks in flight that every download of one process shares.

A daemon downloads many files at once (a model is 30-160 shards); a budget per file
would let memory grow with the number of files. One ``ByteBudget`` per daemon is the
scheduler's input instead: each file's scheduler may add only what is spare now
(``Scheduler.next_requests(spare_bytes=...)``), and the driver takes a request's
bytes when it starts and gives them back when it ends. Used from one event loop.
"""

from __future__ import annotations


class ByteBudget:
    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a byte budget must be positive")
        self.limit = limit
        self.used = 0

    @property
    def spare(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)
