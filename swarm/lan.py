"""LAN discovery over mDNS/DNS-SD (python-zeroconf): advertise this node, find others.

Generic: a service type, an instance name, a port and a few TXT properties go out;
peers of the same type come back as :class:`LanPeer` (validated addresses and port).
Nothing here knows what the service is for; the caller joins whatever it finds.

With a swarm secret, the TXT record carries a tag derived from it (a keyed hash, never
the secret): peers of another swarm on the same LAN are skipped without a word. The tag
only filters; membership is proven by the caller's own authenticated handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import anyio
import ifaddr
from anyio.abc import TaskStatus
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from swarm.providers import normalize_host, valid_port

log = logging.getLogger(__name__)

TAG_PROPERTY = "swarm"  # TXT key of the secret-derived tag
RESOLVE_MS = 3000  # how long one resolution of a found instance may take
MAX_ADDRESSES = 8  # per instance: more is noise, or an attempt to make us send widely
MAX_PENDING = 256  # found-but-unresolved instances queued; more are dropped


@dataclass(frozen=True, slots=True)
class LanPeer:
    name: str
    addresses: tuple[str, ...]
    port: int


def swarm_tag(secret: bytes | None) -> str:
    """What a node of this swarm advertises ("" without a secret): a keyed hash that
    tells members from strangers and reveals nothing usable about the secret."""
    if not secret:
        return ""
    return hmac.new(secret, b"lan-swarm-tag-v1", hashlib.sha256).hexdigest()[:16]


def parse_peer(
    name: str,
    addresses: Iterable[str],
    port: object,
    properties: Mapping[bytes, bytes | None],
    *,
    own_name: str,
    tag: str,
) -> LanPeer | None:
    """The peer an mDNS answer describes, or None: ourselves, another swarm (tag
    mismatch), or nothing reachable (no valid unicast address, bad port)."""
    if name == own_name or not valid_port(port):
        return None
    theirs = properties.get(TAG_PROPERTY.encode())
    if (theirs or b"").decode("ascii", "replace") != tag:
        return None
    good: list[str] = []
    for raw in addresses:
        host = normalize_host(raw)
        if host is None or host in good:
            continue
        ip = ipaddress.ip_address(host)
        if ip.is_loopback or ip.is_link_local:  # another machine's loopback is not ours
            continue
        good.append(host)
        if len(good) == MAX_ADDRESSES:
            break
    if not good:
        return None
    assert isinstance(port, int)
    return LanPeer(name, tuple(good), port)


def local_addresses(bind_ip: str) -> list[str]:
    """The addresses to advertise: the bound one, or every non-loopback IPv4 address
    of this machine when bound to all interfaces."""
    ip = ipaddress.ip_address(bind_ip)
    if not ip.is_unspecified:
        return [str(ip)]
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for addr in adapter.ips:
            if not isinstance(addr.ip, str):
                continue  # IPv6 entries are tuples; the DHT socket here is IPv4
            a = ipaddress.ip_address(addr.ip)
            if not (a.is_loopback or a.is_link_local or a.is_unspecified) and addr.ip not in found:
                found.append(addr.ip)
    return found


class LanDiscovery:
    """Advertise ``instance`` of ``service_type`` on ``port`` and report peers.

    Run :meth:`run` in a task group; ``on_peer`` is called (in the event loop) for
    every peer found or updated, as often as it re-appears.
    """

    def __init__(
        self,
        service_type: str,
        instance: str,
        port: int,
        addresses: list[str],
        *,
        secret: bytes | None = None,
    ) -> None:
        if not service_type.endswith("._udp.local.") and not service_type.endswith("._tcp.local."):
            raise ValueError("service type must look like _name._udp.local.")
        if not valid_port(port) or not addresses:
            raise ValueError("need a port and at least one address to advertise")
        self.service_type = service_type
        self.name = f"{instance}.{service_type}"
        self.port = port
        self.addresses = addresses
        self.tag = swarm_tag(secret)

    def _info(self) -> AsyncServiceInfo:
        props = {TAG_PROPERTY: self.tag} if self.tag else {}
        host = self.name.split(".", 1)[0]
        return AsyncServiceInfo(
            self.service_type,
            self.name,
            addresses=[socket.inet_aton(a) for a in self.addresses],
            port=self.port,
            properties=props,
            server=f"{host}.local.",
        )

    async def run(
        self,
        on_peer: Callable[[LanPeer], object],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled: advertise, browse, resolve what appears, call ``on_peer``."""
        azc = AsyncZeroconf(interfaces=list(self.addresses), ip_version=IPVersion.V4Only)
        send, receive = anyio.create_memory_object_stream[str](MAX_PENDING)
        info = self._info()

        def changed(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change is ServiceStateChange.Removed or name == self.name:
                return
            try:
                send.send_nowait(name)
            except anyio.WouldBlock:
                log.debug("mDNS: dropped %s (too many pending)", name)

        browser: AsyncServiceBrowser | None = None
        try:
            await azc.async_register_service(info)
            browser = AsyncServiceBrowser(azc.zeroconf, [self.service_type], handlers=[changed])
            log.info(
                "mDNS: advertising %s on %s port %d",
                self.name,
                ", ".join(self.addresses),
                self.port,
            )
            task_status.started()
            async with receive:
                async for name in receive:
                    peer = await self._resolve(azc, name)
                    if peer is not None:
                        on_peer(peer)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                if browser is not None:
                    await browser.async_cancel()
                await azc.async_unregister_service(info)
                await azc.async_close()

    async def _resolve(self, azc: AsyncZeroconf, name: str) -> LanPeer | None:
        if not name.endswith("." + self.service_type):
            return None
        info = AsyncServiceInfo(self.service_type, name)
        if not await info.async_request(azc.zeroconf, RESOLVE_MS):
            return None
        theirs = info.properties.get(TAG_PROPERTY.encode()) or b""
        if theirs.decode("ascii", "replace") != self.tag:
            log.info("mDNS: %s is not of this swarm: not joined", name)
            return None
        return parse_peer(
            name,
            info.parsed_addresses(IPVersion.V4Only),
            info.port,
            info.properties,
            own_name=self.name,
            tag=self.tag,
        )
