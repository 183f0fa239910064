"""Real DHT nodes on loopback for the DHT test modules, stopped while the loop still runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from swarm.dht import DHTNode

Start = Callable[..., Awaitable[DHTNode]]


@asynccontextmanager
async def node_starter(default_timeout: float) -> AsyncIterator[Start]:
    """`start(ip, **DHTNode kwargs)` listens on ip:<free port>; every node stops on exit."""
    made: list[DHTNode] = []

    async def start(ip: str, **kw: object) -> DHTNode:
        kw.setdefault("timeout", default_timeout)
        node = DHTNode(**kw)  # type: ignore[arg-type]
        await node.listen(0, ip)
        made.append(node)
        return node

    try:
        yield start
    finally:
        for node in made:
            node.stop()
