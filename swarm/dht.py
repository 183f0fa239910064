"""The DHT node: kademlia 2.2.3 extended with provider records.

The only module that sees asyncio and kademlia; its public coroutines run under
``anyio.run(..., backend="asyncio")``. It depends on the package and overrides,
by subclassing, what kademlia gets wrong for us (see DESIGN.md):

- Many holders per key: ``add_provider`` / ``get_providers`` RPCs backed by
  :class:`swarm.providers.ProviderStore`, and a crawl that unions holders across
  the k closest nodes instead of stopping at the first value.
- A record is the UDP source of its announcement (address and port, one per
  address and key), never a message field; announcing needs a token.
- Tokens (swarm.dht_guard, BEP 5 style): every reply hands the asker a token bound
  to its (ip, port). A request without a valid one is padded by honest senders,
  and its reply is cut to the request's size: no address that has not proven it
  receives there gets more bytes than it sent (no reflection/amplification).
  Only proven senders enter the routing table, at most MAX_CONTACTS_PER_IP per IP.
- Datagrams wait in a bounded queue drained within a time budget per event-loop
  turn (overload drops, never starves the HTTP side); a token bucket per source
  address bounds its requests. Garbage, bad msgpack, oversized datagrams, unknown
  RPCs and bad arguments are dropped with a (rate-limited) log line and counted in
  ``protocol.drops``; nothing raises in an unawaited task.
- Every reply names its sender's id, so a node id learnt from a third party is
  checked when that node answers; one id per (ip, port) in the routing table.
- ``find_neighbors`` ranks every known contact (kademlia walks buckets outwards
  and can miss the true closest); ``welcome_if_new`` hashed an already hashed
  key and pushed values to newcomers: here owners re-announce instead.
- Lookups (swarm.dht_lookup) keep alpha requests in flight and send the next as
  soon as one ends; timeouts come from measured RTTs (RFC 6298), so a dead contact
  costs one short timeout in one slot; it is never re-admitted by the crawl and
  is skipped for a while by every later request.
- Replies hold at most 20 holders and 20 nodes (~1.4 KB), and every datagram
  over 8192 bytes, either way, is refused.
- No pickle: state files are never written nor loaded; callers bootstrap.
- Optional swarm secret: each datagram carries a truncated HMAC-SHA256 over both
  node ids, both addresses, a timestamp and the message; requests out of the time
  window or seen before are dropped. A datagram captured on its way to one node is
  worthless to another node or from another address, and the same one again is a
  replay: only machines that know the secret may announce or look up.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import logging
import math
import secrets
import socket
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import umsgpack
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable

from swarm import dht_guard
from swarm.dht_lookup import LookupState, RttEstimator
from swarm.providers import (
    DEFAULT_TTL,
    KEY_LEN,
    REPLY_LIMIT,
    Addr,
    Provider,
    ProviderStore,
    merge,
    normalize_host,
    valid_key,
    valid_port,
)

__all__ = [
    "DEFAULT_TTL",
    "DHTNode",
    "DHTProtocol",
    "Lookup",
    "NodeCrawl",
    "Provider",
    "ProviderCrawl",
    "dht_key",
]

log = logging.getLogger(__name__)

MAX_DATAGRAM = 8192  # rpcudp's request limit, now enforced on every datagram both ways
MAX_NODES_PER_REPLY = 20  # with REPLY_LIMIT holders a reply stays ~1.5 KB over IPv4
TAG_LEN = 16  # bytes of HMAC-SHA256 kept: 128 bits is plenty against forgery
MAX_SKEW = 120.0  # seconds of clock difference tolerated between secret holders
REPLAY_CACHE_MAX = 100_000  # request ids remembered within the time window
# After a timeout, skip that address for a while: peers keep naming a dead node
# until they notice, and each lookup waiting out its timeout again is what makes
# lookups slow after churn. Any datagram from it clears the mark.
UNRESPONSIVE_FOR = 30.0
UNRESPONSIVE_MAX = 4096
# A request without a valid token (an unproven address) is padded to this size, so the
# full reply (at most ~1.4 KB) is never bigger than the request that asked for it.
PAD_TO = 1400
MAX_CONTACTS_PER_IP = 2  # routing-table entries one IP may hold, whatever its ports
# Datagrams wait in a bounded queue and are handled at most DRAIN_BUDGET seconds per
# event-loop turn: a flood costs dropped datagrams, never the loop that serves HTTP.
QUEUE_MAX = 2048
DRAIN_BUDGET = 0.004
REQUEST, RESPONSE = b"\x00", b"\x01"  # rpcudp's framing: kind, 20-byte msg id, msgpack
_HEADER = 1 + 20
_STAMP = struct.Struct(">Q")
_NO_ID = b"\0" * KEY_LEN  # receiver id of a first ping, before we know who answers
# secret header: tag, stamp, sender id, receiver id, receiver IP as the sender addressed it
_MAC_HEADER = TAG_LEN + _STAMP.size + 2 * KEY_LEN + 16
# RPC name -> argument count after the sender's address; nothing else is served
# (kademlia's store/find_value would keep one foreign value per key: unused here).
_ARITY = {"ping": 1, "find_node": 2, "add_provider": 2, "get_providers": 2}


def dht_key(*parts: str | bytes) -> bytes:
    """160-bit DHT key: sha1 over a length-prefixed encoding of the parts, so
    ("ab", "c") and ("a", "bc") differ; a str counts as its UTF-8 bytes."""
    h = hashlib.sha1(b"hffs-dht-key-v1\0")
    for part in parts:
        if isinstance(part, str):
            part = part.encode("utf-8")
        elif not isinstance(part, bytes):
            raise TypeError(f"dht_key parts must be str or bytes, not {type(part).__name__}")
        h.update(len(part).to_bytes(8, "big") + part)
    return h.digest()


def _check_addr(addr: tuple[str, int]) -> Addr:
    """A caller-supplied (ip, port); names are refused so sendto never resolves DNS."""
    host, port = addr
    ipaddress.ip_address(host)  # raises ValueError for names
    if not valid_port(port):
        raise ValueError(f"bad port in {addr!r}")
    return (host, port)


def _same_addr(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[1] == b[1] and normalize_host(a[0]) == normalize_host(b[0])


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one provider lookup found, and what it cost."""

    providers: list[Provider]
    rounds: int = 0  # crawl iterations (each queries up to alpha nodes in parallel)
    queried: int = 0  # get_providers RPCs sent
    first_hit_round: int | None = None  # round whose replies first held a holder


class _RoutingTable(RoutingTable):
    """kademlia's table with its lookup and bucket-index defects fixed, and at most
    MAX_CONTACTS_PER_IP entries per IP (one machine cannot fill it from many ports)."""

    protocol: DHTProtocol

    def __init__(self, protocol: DHTProtocol, ksize: int, node: Node) -> None:
        super().__init__(protocol, ksize, node)
        self._pinging: set[bytes] = set()

    def contacts(self) -> list[Node]:
        return [n for b in self.buckets for n in b.nodes.values()]

    def get_bucket_for(self, node: Node) -> int:
        # kademlia uses `<`, disagreeing with KBucket.split about a bucket's upper bound
        for index, bucket in enumerate(self.buckets):
            if node.long_id <= bucket.range[1]:
                return index
        return len(self.buckets) - 1

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        # rank every contact: a few hundred at most, and never misses the true closest
        self.buckets[self.get_bucket_for(node)].touch_last_updated()
        candidates = self.contacts()
        if exclude is not None:
            port, ip = exclude.port, exclude.ip
            candidates = [n for n in candidates if n.port != port or n.ip != ip]
        return heapq.nsmallest(k or self.ksize, candidates, key=node.distance_to)

    def forget_address(self, node: Node) -> None:
        """Drop contacts at node's address under another id (a restarted peer)."""
        port, ip, nid = node.port, node.ip, node.id
        stale = [n for n in self.contacts() if n.port == port and n.ip == ip and n.id != nid]
        for other in stale:
            self.remove_contact(other)

    def ip_count(self, ip: str) -> int:
        """Entries (replacements included) at ip."""
        return sum(
            n.ip == ip
            for b in self.buckets
            for n in itertools.chain(b.nodes.values(), b.replacement_nodes.values())
        )

    def add_contact(self, node: Node) -> None:
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if (
            node.id not in bucket.nodes
            and node.id not in bucket.replacement_nodes
            and self.ip_count(node.ip) >= MAX_CONTACTS_PER_IP
        ):
            return
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
            return
        # Full: ping the least recently seen; if it is gone a replacement takes its
        # place. Tracked, deduplicated task instead of kademlia's bare ensure_future.
        head = bucket.head()
        if head.id not in self._pinging:
            self._pinging.add(head.id)
            self.protocol.spawn(self._ping_head(head))

    async def _ping_head(self, head: Node) -> None:
        try:
            await self.protocol.call_ping(head)
        finally:
            self._pinging.discard(head.id)


class DHTProtocol(KademliaProtocol):
    """Kademlia protocol with provider RPCs, strict parsing, address tokens,
    per-address limits, adaptive timeouts and an optional swarm MAC."""

    router: _RoutingTable

    def __init__(
        self,
        source_node: Node,
        store: ProviderStore,
        ksize: int,
        *,
        secret: bytes | None = None,
        timeout: float = 5.0,
        rate: float = dht_guard.RATE,
        burst: float = dht_guard.BURST,
    ) -> None:
        super().__init__(source_node, store, ksize)
        self.router = _RoutingTable(self, ksize, source_node)
        self.providers = store
        self._wait_timeout = timeout
        self._mac_key = (
            None if secret is None else hashlib.sha256(b"hffs-dht-mac-v2\0" + secret).digest()
        )
        self._pending: dict[bytes, tuple[asyncio.Future[Any], asyncio.TimerHandle, Addr]] = {}
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # replay cache, oldest first
        self._tasks: set[asyncio.Task[Any]] = set()
        self.drops: Counter[str] = Counter()
        # Told of each key that gained a holder here (not a re-announcement); on_holder
        # also names it (the proven address and port), so lookups can use it at once.
        self.on_new_holder: Callable[[bytes], None] | None = None
        self.on_holder: Callable[[bytes, str, int], None] | None = None
        self.handled: Counter[str] = Counter()  # requests answered or refused, by rpc
        self._drop_log = dht_guard.DropLog()
        self._unresponsive: OrderedDict[Addr, float] = OrderedDict()
        self._family = socket.AF_INET
        self._bound: Addr = ("0.0.0.0", 0)
        self.tokens = dht_guard.Tokens(secrets.token_bytes(32))
        self.peer_tokens = dht_guard.TokenCache()
        self.limiter = dht_guard.RateLimiter(rate, burst)
        self.rtt = RttEstimator(timeout)
        self.timeouts: collections.deque[tuple[Addr, float]] = collections.deque(maxlen=256)
        self.bytes_sent = 0
        self.bytes_received = 0
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._draining = False
        self._local_ips: dict[str, bool] = {}
        self._route_ips: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        # rpcudp turns any unknown attribute into a remote call; here a typo is an error
        raise AttributeError(name)

    # -- lifecycle -----------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Track a task someone else started, so shutdown() cancels it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def shutdown(self) -> None:
        """Cancel our tasks and fail every pending request, so no caller waits on
        a closed socket and nothing outlives the node."""
        for task in list(self._tasks):
            task.cancel()
        self._queue.clear()
        pending, self._pending = self._pending, {}
        for fut, timer, _ in pending.values():
            timer.cancel()
            if not fut.done():
                fut.set_result((False, None))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._family = sock.family if sock is not None else socket.AF_INET
        name = transport.get_extra_info("sockname")
        if name:
            self._bound = (normalize_host(name[0]) or name[0], name[1])

    def connection_lost(self, exc: Exception | None) -> None:
        self.shutdown()

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)

    # -- framing -------------------------------------------------------------

    def _drop(self, reason: str, addr: Any) -> None:
        """Count and log a dropped datagram (``DropLog``: each address soon, a flood
        a few lines a second)."""
        self.drops[reason] += 1
        host = str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
        if self._drop_log.should_log(host, time.monotonic()):
            log.warning(
                "dropped datagram from %s: %s (%d so far)", addr, reason, self.drops.total()
            )
        else:
            log.debug("dropped datagram from %s: %s", addr, reason)

    def _tag(self, data: bytes) -> bytes:
        assert self._mac_key is not None
        return hmac.new(self._mac_key, data, hashlib.sha256).digest()[:TAG_LEN]

    def _own_ip_towards(self, host: str) -> str:
        """Our source IP for datagrams to host: the bound one, or the route's."""
        if not ipaddress.ip_address(self._bound[0]).is_unspecified:
            return self._bound[0]
        ip = self._route_ips.get(host)
        if ip is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((host, 9))  # no packet: picks the route's source address
                    ip = normalize_host(probe.getsockname()[0]) or self._bound[0]
            except OSError:
                ip = self._bound[0]
            if len(self._route_ips) >= UNRESPONSIVE_MAX:
                self._route_ips.clear()
            self._route_ips[host] = ip
        return ip

    def _is_own_ip(self, host: str) -> bool:
        if not ipaddress.ip_address(self._bound[0]).is_unspecified:
            return host == self._bound[0]
        known = self._local_ips.get(host)
        if known is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.bind((host, 0))  # succeeds only for an address of this machine
                known = True
            except OSError:
                known = False
            if len(self._local_ips) >= UNRESPONSIVE_MAX:
                self._local_ips.clear()
            self._local_ips[host] = known
        return known

    def _frame(
        self,
        kind: bytes,
        msg_id: bytes,
        payload: bytes,
        addr: Addr,
        receiver_id: bytes,
        own_ip: str | None = None,
    ) -> bytes:
        body = kind + msg_id + payload
        if self._mac_key is None:
            return body
        dst = (normalize_host(addr[0]) or addr[0], addr[1])
        src = (own_ip or self._own_ip_towards(dst[0]), self._bound[1])
        stamp = int(time.time())
        sender_id = self.source_node.id
        mac = dht_guard.mac_input(sender_id, receiver_id, src, dst, stamp, body)
        return self._tag(mac) + _STAMP.pack(stamp) + sender_id + receiver_id + _ip16(dst[0]) + body

    def _unframe(self, data: bytes, addr: Any) -> tuple[bytes, bytes, bytes, str] | None:
        """(rpcudp frame, sender id, receiver id, our IP as the sender addressed it)
        from an authenticated datagram, or None (dropped). Without a secret the ids
        come from the message itself."""
        if self._mac_key is None:
            return (data, b"", b"", self._bound[0])
        if len(data) < _MAC_HEADER:
            self._drop("no tag", addr)
            return None
        tag = data[:TAG_LEN]
        (stamp,) = _STAMP.unpack_from(data, TAG_LEN)
        at = TAG_LEN + _STAMP.size
        sender_id, receiver_id = data[at : at + KEY_LEN], data[at + KEY_LEN : at + 2 * KEY_LEN]
        dst_ip = str(ipaddress.IPv6Address(data[at + 2 * KEY_LEN : _MAC_HEADER]))
        dst_ip = normalize_host(dst_ip) or ""
        src = (normalize_host(addr[0]) or "", addr[1])
        body = data[_MAC_HEADER:]
        if not src[0] or not dst_ip:
            self._drop("bad tag", addr)
            return None
        mac = dht_guard.mac_input(
            sender_id, receiver_id, src, (dst_ip, self._bound[1]), stamp, body
        )
        if not hmac.compare_digest(tag, self._tag(mac)):
            self._drop("bad tag", addr)  # forged, or meant for another node or address
            return None
        if receiver_id not in (self.source_node.id, _NO_ID) or not self._is_own_ip(dst_ip):
            self._drop("not for this node", addr)
            return None
        if abs(time.time() - stamp) > MAX_SKEW:
            self._drop("stale timestamp", addr)
            return None
        return (body, sender_id, receiver_id, dst_ip)

    def _is_replay(self, msg_id: bytes) -> bool:
        now = time.monotonic()
        seen = self._seen
        while seen and (next(iter(seen.values())) < now or len(seen) >= REPLAY_CACHE_MAX):
            seen.popitem(last=False)
        if msg_id in seen:
            return True
        seen[msg_id] = now + 2 * MAX_SKEW
        return False

    def _emit(self, data: bytes, addr: Any) -> bool:
        if len(data) > MAX_DATAGRAM:
            log.error("not sending %d-byte datagram to %s: over %d", len(data), addr, MAX_DATAGRAM)
            return False
        if self.transport is None or self.transport.is_closing():
            return False
        ipv6 = ":" in addr[0]
        if self._family == socket.AF_INET6 and not ipv6:
            # hosts are kept in canonical (plain IPv4) form; a dual-stack socket needs them mapped
            addr = ("::ffff:" + addr[0], addr[1])
        elif self._family == socket.AF_INET and ipv6:
            return False  # unreachable from an IPv4 socket
        self.transport.sendto(data, addr)
        self.bytes_sent += len(data)
        return True

    # -- incoming ------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Only queue here; _drain does the work within a budget per event-loop turn.
        self.bytes_received += len(data)
        if len(self._queue) >= QUEUE_MAX:
            return self._drop("overload", addr)
        self._queue.append((data, addr))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)
        return None

    def _drain(self) -> None:
        queue, clock = self._queue, time.perf_counter
        deadline = clock() + DRAIN_BUDGET
        while queue:
            data, addr = queue.popleft()
            try:
                self._on_datagram(data, addr)
            except Exception:  # a bug of ours: log it, keep serving
                log.exception("error handling datagram from %s", addr)
                self.drops["internal error"] += 1
            if clock() >= deadline:
                break
        if queue and self.transport is not None and not self.transport.is_closing():
            asyncio.get_running_loop().call_soon(self._drain)  # after everyone else's turn
        else:
            self._draining = False

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        if len(data) > MAX_DATAGRAM:
            return self._drop("oversized", addr)
        unframed = self._unframe(data, addr)
        if unframed is None:
            return None
        frame, sender_id, receiver_id, _ = unframed
        if len(frame) < _HEADER + 1:
            return self._drop("too short", addr)
        kind, msg_id = frame[:1], frame[1:_HEADER]
        host = normalize_host(addr[0])
        if host is None:
            return self._drop("bad source address", addr)
        if kind == REQUEST and not self.limiter.allow(host, time.monotonic()):
            return self._drop("rate limited", addr)
        try:
            msg = umsgpack.unpackb(frame[_HEADER:])
        except Exception:  # umsgpack raises many types, RecursionError included
            return self._drop("bad msgpack", addr)
        if self._unresponsive:
            self._unresponsive.pop((host, addr[1]), None)
        if kind == REQUEST:
            return self._on_request(msg_id, msg, (host, addr[1]), len(data), unframed)
        if kind == RESPONSE:
            if self._mac_key is not None and receiver_id != self.source_node.id:
                return self._drop("not for this node", addr)
            return self._on_response(msg_id, msg, addr, sender_id)
        return self._drop("unknown message kind", addr)

    def _on_request(
        self,
        msg_id: bytes,
        msg: Any,
        addr: Addr,
        size: int,
        unframed: tuple[bytes, bytes, bytes, str],
    ) -> None:
        _, sender_id, receiver_id, own_ip = unframed
        if not (
            isinstance(msg, list)
            and len(msg) == 4
            and isinstance(msg[0], str)
            and isinstance(msg[1], list)
            and isinstance(msg[2], bytes)
            and isinstance(msg[3], bytes)
        ):
            return self._drop("malformed request", addr)
        name, args, token = msg[0], msg[1], msg[2]
        if _ARITY.get(name) != len(args):
            return self._drop(f"unknown rpc or wrong arity: {name[:32]!r}/{len(args)}", addr)
        if self._mac_key is not None:
            if args[0] != sender_id:
                return self._drop("sender id differs from the authenticated one", addr)
            if receiver_id == _NO_ID and name != "ping":
                return self._drop("request for an unnamed node", addr)
            if self._is_replay(msg_id):
                return self._drop("replayed request", addr)
        now = time.monotonic()
        proven = self.tokens.valid(token, addr[0], addr[1], now)
        self.handled[name] += 1
        result = getattr(self, f"rpc_{name}")(addr, proven, *args)
        if result is None:  # the handler refused the arguments
            return None
        requester = args[0] if valid_key(args[0]) else _NO_ID
        mine = self.tokens.issue(addr[0], addr[1], now)

        def build(n_providers: int, n_nodes: int) -> bytes:
            body = result
            if name == "find_node":
                body = result[:n_nodes]
            elif name == "get_providers":
                body = {
                    "providers": result["providers"][:n_providers],
                    "nodes": result["nodes"][:n_nodes],
                }
            payload = umsgpack.packb([self.source_node.id, body, mine])
            return self._frame(RESPONSE, msg_id, payload, addr, requester, own_ip)

        if proven:
            data = build(REPLY_LIMIT, MAX_NODES_PER_REPLY)
        else:  # never more bytes than it sent to an address that has not proven itself
            counts = (
                (len(result), 0)
                if name == "find_node"
                else (len(result["providers"]), len(result["nodes"]))
                if name == "get_providers"
                else (0, 0)
            )
            if name == "find_node":
                data = dht_guard.fit_reply(size, lambda p, n: build(0, n), counts[0], 0)
            else:
                data = dht_guard.fit_reply(size, build, counts[1], counts[0])
            if len(data) > size:
                return self._drop("unproven sender, request too small for any reply", addr)
        self._emit(data, addr)
        return None

    def _on_response(self, msg_id: bytes, msg: Any, addr: Any, sender_id: bytes) -> None:
        entry = self._pending.get(msg_id)
        if entry is None:
            # usually a late reply to a request a finished lookup gave up on: normal,
            # so counted without a warning
            self.drops["unsolicited response"] += 1
            return None
        fut, timer, expected = entry
        if not _same_addr(addr, expected):
            return self._drop("response from the wrong address", addr)
        if not (
            isinstance(msg, list)
            and len(msg) == 3
            and valid_key(msg[0])
            and isinstance(msg[2], bytes)
            and (self._mac_key is None or msg[0] == sender_id)
        ):
            return self._drop("malformed response", addr)
        del self._pending[msg_id]
        timer.cancel()
        if not fut.done():  # the caller may have been cancelled meanwhile
            fut.set_result((True, (msg[0], msg[1], msg[2])))
        return None

    def _welcome_sender(self, sender: Addr, proven: bool, nodeid: Any) -> Node | None:
        """The sender as a Node; added to the routing table only once its address is
        proven (a spoofed source must not become a contact we then send to)."""
        if not valid_key(nodeid):
            self._drop("bad node id", sender)
            return None
        node = Node(nodeid, sender[0], sender[1])
        if proven:
            self.welcome_if_new(node)
        return node

    def _neighbors(self, key: bytes, exclude: Node | None) -> list[list[Any]]:
        k = min(self.router.ksize, MAX_NODES_PER_REPLY)
        return [list(n) for n in self.router.find_neighbors(Node(key), k, exclude)]

    def rpc_ping(self, sender: Addr, proven: bool, nodeid: Any) -> bool | None:
        return None if self._welcome_sender(sender, proven, nodeid) is None else True

    def rpc_find_node(
        self, sender: Addr, proven: bool, nodeid: Any, key: Any
    ) -> list[list[Any]] | None:
        source = self._welcome_sender(sender, proven, nodeid)
        if source is None:
            return None
        if not valid_key(key):
            self._drop("bad key", sender)
            return None
        return self._neighbors(key, source)

    def rpc_add_provider(self, sender: Addr, proven: bool, nodeid: Any, key: Any) -> bool | None:
        source = self._welcome_sender(sender, proven, nodeid)
        if source is None:
            return None
        if not valid_key(key):
            self._drop("bad add_provider arguments", sender)
            return None
        if not proven:  # no token: the source address may be spoofed
            self.handled["add_provider refused: no token"] += 1
            return False
        # The holder is whoever sent this datagram, on the port it proved: the message
        # names neither, and one record per address and key.
        news = not self.providers.holds(key, sender[0])
        added = self.providers.add(key, sender[0], sender[1], time.monotonic())
        if added and news:  # the hooks are cheap and synchronous, and never raise
            if self.on_new_holder is not None:
                self.on_new_holder(key)
            if self.on_holder is not None:
                self.on_holder(key, sender[0], sender[1])
        return added

    def rpc_get_providers(
        self, sender: Addr, proven: bool, nodeid: Any, key: Any
    ) -> dict[str, Any] | None:
        source = self._welcome_sender(sender, proven, nodeid)
        if source is None:
            return None
        if not valid_key(key):
            self._drop("bad key", sender)
            return None
        now = time.monotonic()
        holders = self.providers.get(key, now, REPLY_LIMIT)
        # Nodes always come too (unlike find_value): a crawl passing a node that holds
        # records still needs its neighbours to reach the true k closest.
        return {
            "providers": [[p.host, p.port, math.ceil(p.ttl(now))] for p in holders],
            "nodes": self._neighbors(key, source),
        }

    def welcome_if_new(self, node: Node) -> None:
        """Add or refresh a contact. Unlike kademlia, push no stored values to
        newcomers (and hash no hashed keys): holders re-announce to the new
        closest nodes themselves, and a record can't be relayed anyway since its
        holder is the announcement's source address."""
        if node.id == self.source_node.id:
            return
        if self.router.is_new_node(node):
            self.router.forget_address(node)
            log.debug("new contact %s", node)
        self.router.add_contact(node)  # also moves a known one to most-recently-seen

    # -- outgoing ------------------------------------------------------------

    async def _request(
        self, address: Any, name: str, receiver_id: bytes, *args: Any
    ) -> tuple[bool, Any]:
        """(True, (responder_id, result)) or (False, None) on timeout or stop."""
        if self.transport is None or self.transport.is_closing():
            return (False, None)
        loop = asyncio.get_running_loop()
        addr = (normalize_host(address[0]) or address[0], address[1])
        msg_id = secrets.token_bytes(20)
        token = self.peer_tokens.get(addr, time.monotonic())
        payload = umsgpack.packb([name, list(args), token or b"", b""])
        data = self._frame(REQUEST, msg_id, payload, addr, receiver_id)
        if token is None and len(data) < PAD_TO:  # unproven: pay for the reply we ask
            pad = PAD_TO - len(data) - 2  # the pad's own msgpack header (bin8/bin16)
            pad -= 1 if pad > 255 else 0
            payload = umsgpack.packb([name, list(args), b"", b"\0" * max(0, pad)])
            data = self._frame(REQUEST, msg_id, payload, addr, receiver_id)
        wait = self.rtt.timeout(addr)
        fut: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(wait, self._request_timed_out, msg_id)
        self._pending[msg_id] = (fut, timer, addr)
        started = time.monotonic()
        try:
            if not self._emit(data, addr):
                return (False, None)
            ok, reply = await fut
            if ok:
                self.rtt.observe(addr, time.monotonic() - started)
                self.peer_tokens.put(addr, reply[2], time.monotonic())
                return (True, (reply[0], reply[1]))
            if self.transport is not None and not self.transport.is_closing():
                self.timeouts.append((addr, wait))
            return (False, None)
        finally:  # also on cancellation: forget the request and its timer
            entry = self._pending.pop(msg_id, None)
            if entry is not None:
                entry[1].cancel()

    def _request_timed_out(self, msg_id: bytes) -> None:
        entry = self._pending.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def is_unresponsive(self, node: Node) -> bool:
        mark = (normalize_host(node.ip) or "", node.port)
        return self._unresponsive.get(mark, -math.inf) > time.monotonic()

    async def _call_node(self, node: Node, name: str, *args: Any) -> tuple[bool, Any]:
        mark = (normalize_host(node.ip) or "", node.port)
        if self.is_unresponsive(node):
            self.router.remove_contact(node)
            return (False, None)
        ok, reply = await self._request(
            (node.ip, node.port), name, node.id, self.source_node.id, *args
        )
        if not ok:
            log.debug("no reply from %s to %s", node, name)
            self.router.remove_contact(node)
            self.peer_tokens.forget(mark)
            self._unresponsive[mark] = time.monotonic() + UNRESPONSIVE_FOR
            self._unresponsive.move_to_end(mark)
            while len(self._unresponsive) > UNRESPONSIVE_MAX:
                self._unresponsive.popitem(last=False)
            return (False, None)
        responder_id, result = reply
        if responder_id != node.id:  # the id we were told was stale or made up
            self.router.remove_contact(node)
        self.welcome_if_new(Node(responder_id, node.ip, node.port))
        return (True, result)

    async def ping_address(self, address: Addr) -> Node | None:
        ok, reply = await self._request(address, "ping", _NO_ID, self.source_node.id)
        if not ok or reply[0] == self.source_node.id:
            return None
        node = Node(reply[0], address[0], address[1])
        self.welcome_if_new(node)
        return node

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, Any]:
        return await self._call_node(node_to_ask, "ping")

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        ok, result = await self._call_node(node_to_ask, "find_node", node_to_find.id)
        nodes = self._parse_nodes(result, node_to_ask) if ok else None
        return (False, None) if nodes is None else (True, nodes)

    async def call_get_providers(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        ok, result = await self._call_node(node_to_ask, "get_providers", node_to_find.id)
        if not ok:
            return (False, None)
        if not isinstance(result, dict):
            self._drop("malformed get_providers reply", node_to_ask)
            return (False, None)
        providers = self._parse_providers(result.get("providers"), node_to_ask)
        nodes = self._parse_nodes(result.get("nodes"), node_to_ask)
        if providers is None or nodes is None:
            return (False, None)
        return (True, (providers, nodes))

    async def call_add_provider(self, node_to_ask: Node, key: bytes) -> bool:
        addr = (normalize_host(node_to_ask.ip) or "", node_to_ask.port)
        token = self.peer_tokens.get(addr, time.monotonic())
        if token is None:
            await self.call_ping(node_to_ask)  # get a token first: announcing needs one
            token = self.peer_tokens.get(addr, time.monotonic())
        ok, result = await self._call_node(node_to_ask, "add_provider", key)
        if ok and result is False and self.peer_tokens.get(addr, time.monotonic()) != token:
            # refused with a fresh token in the reply: ours was stale (the node restarted)
            ok, result = await self._call_node(node_to_ask, "add_provider", key)
        return ok and result is True

    async def call_store(self, node_to_ask: Node, key: bytes, value: Any) -> NoReturn:
        raise NotImplementedError("one value per key: use provide / find_providers")

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> NoReturn:
        raise NotImplementedError("one value per key: use provide / find_providers")

    def _parse_nodes(self, raw: Any, peer: Any) -> list[Node] | None:
        """Validated contacts from a reply; bad entries are skipped, a bad list is None."""
        if not isinstance(raw, list):
            self._drop("malformed node list", peer)
            return None
        nodes = []
        for item in raw[:MAX_NODES_PER_REPLY]:
            ok = isinstance(item, list) and len(item) == 3 and valid_key(item[0])
            host = normalize_host(item[1]) if ok else None
            if host is None or not valid_port(item[2]):
                self._drop("bad node entry", peer)
            elif item[0] != self.source_node.id:
                nodes.append(Node(item[0], host, item[2]))
        return nodes

    def _parse_providers(self, raw: Any, peer: Any) -> list[Provider] | None:
        if not isinstance(raw, list):
            self._drop("malformed provider list", peer)
            return None
        now = time.monotonic()
        found = []
        for item in raw[:REPLY_LIMIT]:
            host = normalize_host(item[0]) if isinstance(item, list) and len(item) == 3 else None
            ttl = item[2] if host is not None else None
            if (
                host is not None
                and valid_port(item[1])
                and isinstance(ttl, int | float)
                and not isinstance(ttl, bool)
                and ttl > 0  # NaN fails this too
            ):
                found.append(Provider(host, item[1], now + min(ttl, self.providers.ttl)))
            else:
                self._drop("bad provider entry", peer)
        return found


def _ip16(host: str) -> bytes:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


class _Crawl:
    """An iterative lookup (swarm.dht_lookup.LookupState) driven over the network:
    up to alpha requests in flight, the next sent as soon as one ends, so a dead or
    slow contact holds one slot for its (RTT-based) timeout, not the whole lookup.
    A contact that failed is never re-admitted, whoever names it later, and one IP
    contributes at most MAX_CONTACTS_PER_IP candidates."""

    def __init__(
        self, protocol: DHTProtocol, node: Node, peers: list[Node], ksize: int, alpha: int
    ) -> None:
        self.protocol = protocol
        self.node = node
        self.state = LookupState(node, [], ksize, alpha)
        self._per_ip: Counter[str] = Counter()
        self._admit(peers, 1)

    @property
    def failed(self) -> set[bytes]:
        return self.state.failed

    @property
    def queried(self) -> int:
        return self.state.queried

    @property
    def rounds(self) -> int:
        """Hops: the depth of the farthest contact asked (our own contacts are 1)."""
        return self.state.max_depth

    def _admit(self, nodes: list[Node], depth: int) -> None:
        fresh = []
        for n in nodes:
            known = self.state.depth_of(n) or n.id in self.state.failed
            if known or self._per_ip[n.ip] >= MAX_CONTACTS_PER_IP:
                continue
            self._per_ip[n.ip] += 1
            fresh.append(n)
        self.state.learn(fresh, depth)

    async def find(self) -> Any:
        state = self.state
        loop = asyncio.get_running_loop()
        rtt = getattr(self.protocol, "rtt", None) or RttEstimator(5.0)
        pending: dict[asyncio.Task[tuple[bool, Any]], Node] = {}
        soft: dict[asyncio.Task[tuple[bool, Any]], float] = {}
        try:
            while True:
                while (peer := state.next()) is not None:
                    task = asyncio.ensure_future(self._rpc(peer, self.node))
                    pending[task] = peer
                    addr = (normalize_host(peer.ip) or peer.ip, peer.port)
                    soft[task] = loop.time() + rtt.soft_timeout(addr)
                if not pending or state.done():
                    break
                now = loop.time()
                waiting = [d for t, d in soft.items() if t in pending and d > now]
                done, _ = await asyncio.wait(
                    pending,
                    timeout=(min(waiting) - now) if waiting else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                now = loop.time()
                for task, deadline in list(soft.items()):
                    if deadline <= now and task not in done:
                        state.slow(pending[task])  # its slot goes to the next contact
                        del soft[task]
                for task in done:
                    peer = pending.pop(task)
                    soft.pop(task, None)
                    ok, reply = task.result()
                    if ok:
                        nodes = self._absorb(reply, state.depth_of(peer))
                        depth = state.depth_of(peer) + 1
                        state.answered(peer, [])
                        self._admit(nodes, depth)
                    else:
                        state.failed_to_answer(peer)
        finally:
            # Requests past their soft timeout finish in the background: a dead contact
            # then reaches its timeout once and is skipped by every later request.
            keep = getattr(self.protocol, "adopt", None)
            cancel = [t for t in pending if t in soft or keep is None]
            for task in pending:
                if task in cancel:
                    task.cancel()
                elif keep is not None:
                    keep(task)
            if cancel:
                await asyncio.gather(*cancel, return_exceptions=True)
        return self._result()

    async def _rpc(self, peer: Node, node: Node) -> tuple[bool, Any]:
        raise NotImplementedError

    def _absorb(self, reply: Any, depth: int) -> list[Node]:
        """Take what a reply holds; return the contacts it named."""
        raise NotImplementedError

    def _result(self) -> Any:
        raise NotImplementedError


class NodeCrawl(_Crawl):
    """The k closest live nodes to a target id."""

    async def _rpc(self, peer: Node, node: Node) -> tuple[bool, Any]:
        return await self.protocol.call_find_node(peer, node)

    def _absorb(self, reply: list[Node], depth: int) -> list[Node]:
        return reply

    def _result(self) -> list[Node]:
        return self.state.result()


class ProviderCrawl(_Crawl):
    """Iterative get_providers lookup that unions the holders from every node it
    reaches until the k closest have all answered (kademlia's ValueSpiderCrawl
    stops at the first round holding a value and keeps only the most common)."""

    def __init__(
        self, protocol: DHTProtocol, node: Node, peers: list[Node], ksize: int, alpha: int
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self.providers: list[Provider] = []
        self.first_hit_round: int | None = None

    async def _rpc(self, peer: Node, node: Node) -> tuple[bool, Any]:
        return await self.protocol.call_get_providers(peer, node)

    def _absorb(self, reply: tuple[list[Provider], list[Node]], depth: int) -> list[Node]:
        providers, nodes = reply
        if providers:
            self.providers = merge(self.providers, providers)
            if self.first_hit_round is None:
                self.first_hit_round = depth
        return nodes

    def _result(self) -> list[Provider]:
        return self.providers


class DHTNode(Server):
    """A DHT participant that announces and finds content holders::

    node = DHTNode(ttl=1800, secret=b"swarm secret")
    await node.listen(9009, interface="127.0.0.2")
    await node.bootstrap([("127.0.0.1", 9009)])
    key = dht_key("file", sha256_hex)
    await node.provide(key)  # the record names our IP and port, as peers see them
    holders = await node.find_providers(key)
    # in the daemon's task group, hffs.daemon.announcer re-announces held keys
    node.stop()
    """

    protocol: DHTProtocol | None

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        ksize: int = 20,
        alpha: int = 3,
        secret: bytes | None = None,
        node_id: bytes | None = None,
        timeout: float = 5.0,
        store: ProviderStore | None = None,
    ) -> None:
        if node_id is not None and not valid_key(node_id):
            raise ValueError("node_id must be 20 bytes")
        if secret is not None and not secret:
            raise ValueError("an empty secret protects nothing")
        # node ids are self-chosen (kademlia's flaw too); at least make them unpredictable
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id or secrets.token_bytes(KEY_LEN))
        self.ttl = ttl
        self.store = store if store is not None else ProviderStore(ttl=ttl)  # empty is falsy
        self.secret = secret
        self.timeout = timeout
        # Told of each key that gained a new holder on this node (hffs: refresh lookups),
        # and with on_holder of who it is.
        self.on_new_holder: Callable[[bytes], None] | None = None
        self.on_holder: Callable[[bytes, str, int], None] | None = None

    def _create_protocol(self) -> DHTProtocol:
        proto = DHTProtocol(
            self.node, self.store, self.ksize, secret=self.secret, timeout=self.timeout
        )
        proto.on_new_holder = self._new_holder
        proto.on_holder = self._holder
        return proto

    def _new_holder(self, key: bytes) -> None:
        if self.on_new_holder is not None:
            self.on_new_holder(key)

    def _holder(self, key: bytes, host: str, port: int) -> None:
        if self.on_holder is not None:
            self.on_holder(key, host, port)

    @property
    def node_id(self) -> str:
        return self.node.id.hex()

    @property
    def address(self) -> Addr | None:
        """The bound UDP (ip, port), once listening."""
        if self.transport is None:
            return None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def _proto(self) -> DHTProtocol:
        if self.protocol is None:
            raise RuntimeError("DHTNode is not listening")
        return self.protocol

    def routing_size(self) -> int:
        return 0 if self.protocol is None else len(self.protocol.router.contacts())

    async def listen(self, port: int = 0, interface: str = "0.0.0.0") -> Addr:
        """Bind UDP (port 0: any free port) and return the bound address. Starts
        no background task: the caller re-announces (hffs.daemon.announcer)."""
        ipaddress.ip_address(interface)
        loop = asyncio.get_running_loop()
        self.transport, self.protocol = await loop.create_datagram_endpoint(
            self._create_protocol, local_addr=(interface, port)
        )
        addr = self.address
        assert addr is not None
        log.info("DHT node %s listening on %s:%d", self.node_id[:12], *addr)
        return addr

    def stop(self) -> None:
        if self.protocol is not None:
            self.protocol.shutdown()
        super().stop()

    async def bootstrap(self, addrs: Iterable[tuple[str, int]]) -> int:
        """Ping the given (ip, port)s, look up our own id through those that
        answered, then refresh every bucket (Kademlia's join: without it a
        newcomer knows little beyond its own neighbourhood and lookups from it
        stall early). Returns the number of contacts known afterwards."""
        proto = self._proto()
        checked = [_check_addr(a) for a in addrs]
        found = await asyncio.gather(*(proto.ping_address(a) for a in checked))
        nodes = [n for n in found if n is not None]
        if nodes:
            await NodeCrawl(proto, self.node, nodes, self.ksize, self.alpha).find()
            await self.refresh(max_age=0)
        return self.routing_size()

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        return await self._proto().ping_address(_check_addr(addr))

    async def _closest_nodes(self, key: bytes) -> list[Node]:
        proto = self._proto()
        target = Node(key)
        nearest = proto.router.find_neighbors(target)
        if not nearest:
            return []
        return await NodeCrawl(proto, target, nearest, self.ksize, self.alpha).find()

    async def provide(self, key: bytes, port: int | None = None) -> int:
        """Announce this node (its IP and UDP port, as peers see them: a record's
        port is the one its address proved) holding key to the k closest nodes.
        ``port``, if given, must be that port: the DHT cannot announce another.
        Returns how many accepted. Records expire after the ttl: call again well
        before that (hffs.daemon.announcer does)."""
        if not valid_key(key) or (port is not None and not valid_port(port)):
            raise ValueError("key must be 20 bytes and port 1..65535")
        addr = self.address
        if port is not None and addr is not None and port != addr[1]:
            raise ValueError(f"records carry the DHT port ({addr[1]}), not {port}")
        proto = self._proto()
        nodes = await self._closest_nodes(key)
        oks = await asyncio.gather(*(proto.call_add_provider(n, key) for n in nodes))
        return sum(oks)

    async def lookup(self, key: bytes) -> Lookup:
        """Holders of key merged from our store and the k closest nodes, with the
        crawl's cost (for benchmarks)."""
        if not valid_key(key):
            raise ValueError("key must be 20 bytes")
        proto = self._proto()
        local = self.store.get(key, time.monotonic(), limit=None)
        target = Node(key)
        nearest = proto.router.find_neighbors(target)
        if not nearest:
            return Lookup(local)
        crawl = ProviderCrawl(proto, target, nearest, self.ksize, self.alpha)
        found = await crawl.find()
        return Lookup(merge(local, found), crawl.rounds, crawl.queried, crawl.first_hit_round)

    async def find_providers(self, key: bytes, limit: int | None = None) -> list[Provider]:
        """Live holders of key, freshest first (at most ``limit``)."""
        providers = (await self.lookup(key)).providers
        return providers if limit is None else providers[:limit]

    async def announce(
        self, keys: Iterable[bytes], port: int | None = None, *, concurrency: int = 8
    ) -> int:
        """provide() every key, a few at a time; returns how many reached a node."""
        sem = asyncio.Semaphore(concurrency)

        async def one(key: bytes) -> bool:
            async with sem:
                return await self.provide(key, port) > 0

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    async def refresh(self, max_age: float = 3600.0) -> None:
        """Look up a random id in every bucket not used for ``max_age`` seconds
        (Kademlia's bucket refresh), so the routing table follows churn."""
        proto = self._proto()
        stale = time.monotonic() - max_age
        ranges = [b.range for b in proto.router.buckets if b.last_updated <= stale]
        ids = [min(lo + secrets.randbelow(hi - lo + 1), 2**160 - 1) for lo, hi in ranges]
        await asyncio.gather(*(self._closest_nodes(i.to_bytes(KEY_LEN, "big")) for i in ids))

    # kademlia's single-value API and pickle state are disabled on purpose
    async def get(self, key: Any) -> NoReturn:
        raise NotImplementedError("one value per key: use find_providers")

    async def set(self, key: Any, value: Any) -> NoReturn:
        raise NotImplementedError("one value per key: use provide")

    async def set_digest(self, dkey: Any, value: Any) -> NoReturn:
        raise NotImplementedError("one value per key: use provide")

    def refresh_table(self, interval: int = 3600) -> NoReturn:
        raise NotImplementedError("refresh() from the caller's own loop instead")

    def save_state(self, fname: Any) -> NoReturn:
        raise NotImplementedError("persist bootstrappable_neighbors() as plain data instead")

    def save_state_regularly(self, fname: Any, frequency: int = 600) -> NoReturn:
        raise NotImplementedError("persist bootstrappable_neighbors() as plain data instead")

    @classmethod
    async def load_state(cls, fname: Any, port: int, interface: str = "0.0.0.0") -> NoReturn:
        raise NotImplementedError("state files are pickles: never loaded")
