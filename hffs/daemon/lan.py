"""The daemon's LAN discovery: advertise over mDNS, join the DHT through whoever answers.

On by default (``--no-mdns`` turns it off). A daemon bound to a loopback address is
reachable from no other machine, so it neither advertises nor browses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable

import anyio

from swarm.lan import LanDiscovery, LanPeer, local_addresses

log = logging.getLogger(__name__)

SERVICE_TYPE = "_hffs._udp.local."
REJOIN_GAP = 10.0  # seconds before the same peer may trigger another join
CHECK_PERIOD = 30.0  # with an empty routing table, rejoin through every peer seen

Join = Callable[[list[tuple[str, int]]], Awaitable[object]]


def lan_enabled(bind_ip: str) -> bool:
    """mDNS is pointless on loopback: no other machine can reach that daemon."""
    return not ipaddress.ip_address(bind_ip).is_loopback


async def run_lan(
    bind_ip: str,
    port: int,
    node_id: str,
    secret: str | None,
    join: Join,
    routing_size: Callable[[], int],
) -> None:
    """Until cancelled: advertise this daemon and ``join`` every daemon found."""
    if not lan_enabled(bind_ip):
        return
    addresses = local_addresses(bind_ip)
    if not addresses:
        log.info("mDNS: no LAN address to advertise; LAN discovery off")
        return
    lan = LanDiscovery(
        SERVICE_TYPE,
        f"hffs-{node_id[:16]}",
        port,
        addresses,
        secret=secret.encode() if secret else None,
    )
    seen: dict[tuple[str, int], float] = {}  # address -> when we last joined through it
    found, wake = anyio.create_memory_object_stream[list[tuple[str, int]]](64)

    def on_peer(peer: LanPeer) -> None:
        now = time.monotonic()
        fresh = [
            (a, peer.port)
            for a in peer.addresses
            if now - seen.get((a, peer.port), -math.inf) >= REJOIN_GAP
        ]
        for addr in fresh:
            seen[addr] = now
        if fresh:
            log.info("mDNS: found %s at %s", peer.name, fresh)
            # when full, a join is already queued; the periodic check covers the rest
            with contextlib.suppress(anyio.WouldBlock):
                found.send_nowait(fresh)

    async def joiner() -> None:
        async with wake:
            while True:
                addrs: list[tuple[str, int]] = []
                with anyio.move_on_after(CHECK_PERIOD):
                    addrs = await wake.receive()
                if not addrs and routing_size() == 0:
                    addrs = list(seen)[-32:]
                if addrs:
                    await join(addrs)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(joiner)
            await tg.start(lan.run, on_peer)
    except OSError as exc:  # no multicast-capable interface, say
        log.warning("mDNS: LAN discovery unavailable: %s", exc)
