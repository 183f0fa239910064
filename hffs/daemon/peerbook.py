"""The saved peers and the DHT's entry points (one service: the peer book).

Saved peers are re-read and probed every PROBE_PERIOD (or at once when asked);
one that just came up, or an empty routing table, bootstraps the DHT again."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import anyio

from hffs.config import Config, ConfigError, Peer
from hffs.peers import PeerClient
from hffs.runfiles import DaemonSettings
from swarm.dht import DHTNode

log = logging.getLogger("hffs.daemon")

PROBE_PERIOD = 30.0  # saved peers are probed this often
BOOTSTRAP_RETRY = 5.0  # while the routing table is empty
BOOTSTRAP_TIMEOUT = 15.0
QUERY_PARALLEL = 16  # peers asked at once over HTTP

T = TypeVar("T")


@dataclass
class PeerState:
    active: bool | None = None  # None: not probed yet
    last_seen: float | None = None  # unix time of the last good probe


async def resolve(host: str, port: int) -> str | None:
    """An IP literal for host (the DHT never resolves names itself)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        log.warning("cannot resolve %s: %s", host, exc)
        return None
    return str(infos[0][4][0]) if infos else None


async def gather(items: Iterable[T], fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """``fn`` over items, QUERY_PARALLEL at a time, results in order."""
    items = list(items)
    results: list[Any] = [None] * len(items)
    limiter = anyio.CapacityLimiter(QUERY_PARALLEL)

    async def one(i: int, item: T) -> None:
        async with limiter:
            results[i] = await fn(item)

    async with anyio.create_task_group() as tg:
        for i, item in enumerate(items):
            tg.start_soon(one, i, item)
    return results


class PeerBook:
    def __init__(
        self,
        settings: DaemonSettings,
        node: DHTNode,
        http: PeerClient,
        saved: Iterable[Peer],
        is_self: Callable[[str, int], bool],
    ) -> None:
        self.settings = settings
        self.node = node
        self.http = http
        self.is_self = is_self
        self.saved_peers: list[Peer] = list(saved)
        self._config_seen: int | None = self._config_stamp()
        self.states: dict[Peer, PeerState] = {}
        self._wake = anyio.Event()

    def refresh(self) -> None:
        """Re-read and probe the saved peers now."""
        self._wake.set()

    def _config_stamp(self) -> int | None:
        try:
            return (self.settings.home / "config.json").stat().st_mtime_ns
        except OSError:
            return None

    def reload_if_changed(self) -> None:
        """Saved peers as the config file says now (it may be edited while we run: a
        lookup must not miss a peer saved a moment ago)."""
        stamp = self._config_stamp()
        if stamp == self._config_seen:
            return
        self._config_seen = stamp
        with contextlib.suppress(ConfigError):
            self.saved_peers = list(Config.load(self.settings.home).peers)

    def others(self, exclude: Iterable[tuple[str, int]] = ()) -> list[Peer]:
        """Saved peers that are not us and not in ``exclude``."""
        self.reload_if_changed()
        skip = set(exclude)
        return [
            p
            for p in self.saved_peers
            if (p.host, p.port) not in skip and not self.is_self(p.host, p.port)
        ]

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "host": p.host,
                "port": p.port,
                "active": self.states.get(p, PeerState()).active,
                "last_seen": self.states.get(p, PeerState()).last_seen,
            }
            for p in self.saved_peers
        ]

    async def run(self) -> NoReturn:
        await self.bootstrap(self.settings.bootstrap)
        last_probe = -math.inf
        while True:
            if time.monotonic() - last_probe >= PROBE_PERIOD or self._wake.is_set():
                self._wake = anyio.Event()
                last_probe = time.monotonic()
                came_up = await self.probe()
                if came_up:
                    await self.bootstrap([], came_up)
            if self.node.routing_size() == 0:
                await self.bootstrap(self.settings.bootstrap)
            with anyio.move_on_after(BOOTSTRAP_RETRY):
                await self._wake.wait()

    async def bootstrap(
        self, extra: Iterable[tuple[str, int]], peers: Iterable[Peer] | None = None
    ) -> None:
        """Join the DHT through the given nodes and the saved peers (or ``peers``)."""
        wanted = [
            *extra,
            *((p.host, p.port) for p in (self.saved_peers if peers is None else peers)),
        ]
        addrs: list[tuple[str, int]] = []
        for host, port in wanted:
            ip = await resolve(host, port)
            if ip is not None and not self.is_self(ip, port) and (ip, port) not in addrs:
                addrs.append((ip, port))
        if not addrs:
            return
        with anyio.move_on_after(BOOTSTRAP_TIMEOUT):
            size = await self.node.bootstrap(addrs)
            log.info("bootstrapped through %d node(s): %d contact(s)", len(addrs), size)

    async def probe(self) -> list[Peer]:
        """Re-read the saved peers and probe each; return those that just came up."""
        await anyio.to_thread.run_sync(self.reload_if_changed)
        peers = list(self.saved_peers)
        alive = await gather(peers, lambda p: self.http.ping(p.host, p.port))
        came_up = []
        for peer, ok in zip(peers, alive, strict=True):
            state = self.states.setdefault(peer, PeerState())
            if ok and not state.active:
                came_up.append(peer)
            state.active = ok
            if ok:
                state.last_seen = time.time()
        self.states = {p: s for p, s in self.states.items() if p in peers}
        return came_up
