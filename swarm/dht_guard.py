"""Whom a DHT node answers, how much, and what it believes: plain rules, no I/O.

Every function takes ``now`` from the caller's clock, so each rule is tested alone.

- :class:`Tokens`: BEP 5-style tokens. A reply hands the asker a token bound to its
  (ip, port); a request that returns it proves the asker receives at that address.
  An unproven address is never sent more bytes than it sent (no amplification), and
  an announcement needs a token (no record for an address that did not prove it).
- :class:`RateLimiter`: a token bucket per source address, bounded in memory.
- :class:`DropLog`: which dropped datagrams are worth a log line: each source address
  soon after it first misbehaves, a flood never more than a few lines a second.
- :func:`mac_input`: what a swarm-secret MAC covers: both node ids, both addresses, a
  timestamp and the message, so a captured datagram is worthless from another address
  or to another node, and a node's replay window catches the same one sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Callable

TOKEN_LEN = 8
TOKEN_PERIOD = 300.0  # a token is valid for one to two periods after it was issued
TOKEN_REUSE = 240.0  # a client reuses a token it got for this long (< TOKEN_PERIOD)
# Requests per second one address may make of a node, after a burst: enough for a
# daemon announcing a big cache to a small swarm (~3 requests per key), and a bound
# on the share of the event loop one address can take.
RATE = 2000.0
BURST = 10_000.0
MAX_TRACKED = 8192  # addresses whose bucket is remembered (least recently seen go first)

Addr = tuple[str, int]


def addr_bytes(host: str, port: int) -> bytes:
    """16-byte IPv6 (IPv4 mapped) and a 2-byte port: one spelling per address."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed + struct.pack(">H", port)


class Tokens:
    """Stateless tokens: a keyed hash of the address and the current period."""

    def __init__(self, key: bytes, period: float = TOKEN_PERIOD) -> None:
        if len(key) < 16 or not period > 0:
            raise ValueError("need a key of 16+ bytes and a positive period")
        self._key = key
        self.period = period

    def _make(self, host: str, port: int, epoch: int) -> bytes:
        msg = struct.pack(">q", epoch) + addr_bytes(host, port)
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:TOKEN_LEN]

    def issue(self, host: str, port: int, now: float) -> bytes:
        return self._make(host, port, int(now // self.period))

    def valid(self, token: object, host: str, port: int, now: float) -> bool:
        if not isinstance(token, bytes) or len(token) != TOKEN_LEN:
            return False
        epoch = int(now // self.period)
        return any(
            hmac.compare_digest(token, self._make(host, port, e)) for e in (epoch, epoch - 1)
        )


class TokenCache:
    """Tokens other nodes gave us, per address, reused while fresh; bounded."""

    def __init__(self, reuse: float = TOKEN_REUSE, limit: int = MAX_TRACKED) -> None:
        self.reuse = reuse
        self.limit = limit
        self._tokens: OrderedDict[Addr, tuple[bytes, float]] = OrderedDict()

    def put(self, addr: Addr, token: object, now: float) -> None:
        if not isinstance(token, bytes) or len(token) != TOKEN_LEN:
            return
        self._tokens[addr] = (token, now)
        self._tokens.move_to_end(addr)
        while len(self._tokens) > self.limit:
            self._tokens.popitem(last=False)

    def get(self, addr: Addr, now: float) -> bytes | None:
        entry = self._tokens.get(addr)
        if entry is None or now - entry[1] >= self.reuse:
            return None
        return entry[0]

    def forget(self, addr: Addr) -> None:
        self._tokens.pop(addr, None)


class RateLimiter:
    """A token bucket per key: ``allow`` spends one if there is one."""

    def __init__(self, rate: float = RATE, burst: float = BURST, limit: int = MAX_TRACKED) -> None:
        if not (rate > 0 and burst >= 1 and limit >= 1):
            raise ValueError("rate, burst and limit must be positive")
        self.rate = rate
        self.burst = burst
        self.limit = limit
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # level, at

    def allow(self, key: str, now: float) -> bool:
        level, at = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + max(0.0, now - at) * self.rate)
        ok = level >= 1.0
        self._buckets[key] = (level - 1.0 if ok else level, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.limit:
            # a forgotten address starts again with a full bucket: the bound on memory
            # costs at most one burst per eviction, and evictions need new addresses
            self._buckets.popitem(last=False)
        return ok


def mac_input(
    sender_id: bytes, receiver_id: bytes, src: Addr, dst: Addr, stamp: int, body: bytes
) -> bytes:
    """The bytes a swarm MAC covers. ``receiver_id`` is 20 zero bytes when the sender
    does not know it yet (a first ping to a bootstrap address)."""
    return (
        b"hffs-dht-mac-v2\0"
        + sender_id
        + receiver_id
        + addr_bytes(*src)
        + addr_bytes(*dst)
        + struct.pack(">Q", stamp)
        + body
    )


def fit_reply(limit: int, build: Callable[[int, int], bytes], nodes: int, providers: int) -> bytes:
    """The largest reply ``build(n_providers, n_nodes)`` not longer than ``limit``:
    nodes go first (another node has them too), then providers. The bare reply
    (no entries) is returned if even that is too long: the caller decides."""
    p, n = providers, nodes
    data = build(p, n)
    while len(data) > limit and (p or n):
        if n:
            n = max(0, n - max(1, (len(data) - limit) // 40))
        else:
            p = max(0, p - max(1, (len(data) - limit) // 20))
        data = build(p, n)
    return data


class DropLog:
    """Whether a dropped datagram from ``host`` gets a log line now.

    A user reading the log wants every address that sends what it should not (a peer
    with the wrong swarm secret), yet a flood must not flood the log: each address at
    most once per ``per_host`` seconds, all together at most ``per_second`` lines a
    second, and at most ``max_hosts`` addresses remembered (the oldest go first)."""

    def __init__(self, per_host: float = 10.0, per_second: int = 5, max_hosts: int = 256) -> None:
        self.per_host = per_host
        self.per_second = per_second
        self.max_hosts = max_hosts
        self._last: OrderedDict[str, float] = OrderedDict()
        self._second = -1.0  # start of the current one-second window
        self._in_second = 0

    def should_log(self, host: str, now: float) -> bool:
        last = self._last.get(host)
        if last is not None and now - last < self.per_host:
            return False
        if now - self._second >= 1.0:
            self._second, self._in_second = now, 0
        if self._in_second >= self.per_second:
            return False
        self._in_second += 1
        self._last[host] = now
        self._last.move_to_end(host)
        while len(self._last) > self.max_hosts:
            self._last.popitem(last=False)
        return True
