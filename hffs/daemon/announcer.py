"""Keeping the swarm told what we hold (one service: the announcer).

Every key we hold is announced to the DHT before its records expire, and again,
in a small swarm, whenever the routing table grew (the newcomer may be the node
closest to our keys, and a lone node's first announce reached nobody); keys that
became held meanwhile are announced as soon as there is somebody to tell.
This is the loop the daemon runs; tests run it too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import NoReturn

import anyio

from swarm.dht import DHTNode

log = logging.getLogger("hffs.daemon")

TICK = 1.0  # how often the loop looks at the routing table
ANNOUNCE_MIN_GAP = 2.0  # between full announces triggered by new contacts
SMALL_SWARM = 20  # below this many contacts, every newcomer triggers a re-announce
REFRESH_TIMEOUT = 15.0  # one round of bucket refreshes


def announce_due(now: float, last_at: float, last_size: int, size: int, period: float) -> bool:
    """Whether to re-announce everything now (plain rule; see the module docstring)."""
    if size == 0:
        return False
    if now - last_at >= period:
        return True
    return now - last_at >= ANNOUNCE_MIN_GAP and size > last_size and last_size < SMALL_SWARM


class Announcer:
    def __init__(
        self,
        node: DHTNode,
        port: int,
        keys: Callable[[], Iterable[bytes]],
        *,
        period: float | None = None,
        tick: float = TICK,
    ) -> None:
        self.node = node
        self.port = port
        self.keys = keys  # re-read every round, so cache changes show
        self.period = node.ttl / 3 if period is None else period  # survives two lost rounds
        self.tick = tick
        self.announced_at: float | None = None  # unix time of the last full round
        self.rounds = 0
        self._pending: set[bytes] = set()
        self._wake = anyio.Event()

    def queue(self, keys: Iterable[bytes]) -> None:
        """Announce these soon (newly held)."""
        self._pending.update(keys)
        self._wake.set()

    async def provide(self, keys: Iterable[bytes]) -> int:
        """Announce now; returns how many keys reached a node."""
        keys = list(keys)
        if not keys or self.node.routing_size() == 0:
            return 0
        reached = await self.node.announce(keys, self.port)
        log.info("announced %d key(s), %d reached the DHT", len(keys), reached)
        return reached

    async def run(self) -> NoReturn:
        last_at, last_size = -math.inf, 0
        while True:
            with anyio.move_on_after(self.tick):
                await self._wake.wait()
            self._wake = anyio.Event()
            pending, self._pending = self._pending, set()
            size, now = self.node.routing_size(), time.monotonic()
            if announce_due(now, last_at, last_size, size, self.period):
                last_at, last_size = now, size
                await self.provide(self.keys())
                self.announced_at = time.time()
                self.rounds += 1
                self.node.store.expire(time.monotonic())
                with anyio.move_on_after(REFRESH_TIMEOUT):
                    await self.node.refresh()
            elif pending:  # with nobody to tell, the next full round covers them
                await self.provide(pending)
