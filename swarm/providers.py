"""Provider records: which hosts hold the content behind a DHT key.

Plain code with no I/O and no clock of its own: every call takes ``now`` (any
monotonic clock the caller keeps), so the rules are testable alone and the DHT
layer decides when time passes.

Records from many holders merge, never overwrite; each expires on its own; a
store is bounded both per key and in total, so a flood of announcements costs
memory proportional to the caps, not to the flood.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

DEFAULT_TTL = 30 * 60.0  # seconds a record lives unless its holder re-announces
MAX_HOLDERS_PER_KEY = 64
MAX_KEYS = 50_000
MAX_ENTRIES = 200_000  # worst case a few tens of MB
# Records one address may hold on a node: a 100-repo cache is a few thousand keys, and
# in a small swarm every node stores them all.
MAX_PER_HOST = 10_000
REPLY_LIMIT = 20  # holders per DHT reply: keeps a reply well under one UDP datagram
KEY_LEN = 20  # 160-bit keys, like Kademlia node ids
MAX_HOST_LEN = 45  # longest textual IPv6 address (with an embedded IPv4 tail)

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Provider:
    """One holder of a key; ``expires_at`` is on the caller's monotonic clock."""

    host: str
    port: int
    expires_at: float

    @property
    def addr(self) -> Addr:
        return (self.host, self.port)

    def ttl(self, now: float) -> float:
        """Seconds left before this record expires (never negative)."""
        return max(0.0, self.expires_at - now)


def normalize_host(host: object) -> str | None:
    """The canonical text of an IP literal fit to name a holder, else None.

    Names are refused (resolving them would let input trigger lookups);
    IPv4-mapped IPv6 becomes plain IPv4 so one host has one spelling;
    unspecified, multicast and scoped addresses cannot be reached by a peer.
    """
    if type(host) is not str or not 0 < len(host) <= MAX_HOST_LEN:
        return None
    return _normalize_ip(host)


@functools.lru_cache(maxsize=4096)  # every datagram names hosts: ipaddress is slow
def _normalize_ip(host: str) -> str | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return None
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        return None
    return str(ip)


def valid_host(host: object) -> bool:
    return normalize_host(host) is not None


def valid_port(port: object) -> bool:
    # bool is an int subclass; True must not pass as port 1
    return type(port) is int and 1 <= port <= 65535


def valid_key(key: object) -> bool:
    return isinstance(key, bytes) and len(key) == KEY_LEN


def merge(*groups: Iterable[Provider]) -> list[Provider]:
    """Union of provider lists: one record per (host, port), the latest expiry
    wins; freshest first, ties broken by address so the result is a pure
    function of the set of inputs (commutative and idempotent)."""
    best: dict[Addr, Provider] = {}
    for group in groups:
        for p in group:
            old = best.get(p.addr)
            if old is None or p.expires_at > old.expires_at:
                best[p.addr] = p
    return sorted(best.values(), key=_freshest_first)


def _freshest_first(p: Provider) -> tuple[float, str, int]:
    return (-p.expires_at, p.host, p.port)


class ProviderStore:
    """key -> {host: (port, expires_at)}, bounded per key, per host and in total.

    One record per (key, announcing address): an address that announces again, on
    any port, replaces its record, so one machine cannot fill a key with itself.
    Each address holds at most ``max_per_host`` records; past that its own least
    recently announced record makes room, so a flood from one address churns only
    that address's records. Keys are kept in order of their last announcement; when
    a total cap is reached the key announced longest ago goes first (O(1)).
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_per_key: int = MAX_HOLDERS_PER_KEY,
        max_keys: int = MAX_KEYS,
        max_entries: int = MAX_ENTRIES,
        max_per_host: int = MAX_PER_HOST,
    ) -> None:
        if not ttl > 0 or not 1 <= max_per_key <= max_entries or max_keys < 1 or max_per_host < 1:
            raise ValueError("ttl and caps must be positive, max_per_key <= max_entries")
        self.ttl = ttl
        self.max_per_key = max_per_key
        self.max_keys = max_keys
        self.max_entries = max_entries
        self.max_per_host = min(max_per_host, max_entries)
        self._keys: OrderedDict[bytes, dict[str, tuple[int, float]]] = OrderedDict()
        self._by_host: dict[str, OrderedDict[bytes, None]] = {}
        self._entries = 0

    def __len__(self) -> int:
        """Number of keys with at least one record (expired ones included until expire())."""
        return len(self._keys)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._keys))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    @property
    def entries(self) -> int:
        return self._entries

    def keys(self) -> list[bytes]:
        return list(self._keys)

    def host_records(self, host: str) -> int:
        """How many records ``host`` holds here."""
        norm = normalize_host(host)
        return len(self._by_host.get(norm or "", ()))

    def holds(self, key: bytes, host: str) -> bool:
        """Whether host already has a record for key (a re-announcement, not news)."""
        norm = normalize_host(host)
        holders = self._keys.get(key)
        return norm is not None and holders is not None and norm in holders

    def add(self, key: bytes, host: str, port: int, now: float, ttl: float | None = None) -> bool:
        """Record host (on port) as a holder of key until now + ttl (capped at the
        store's ttl). Returns False if the record was refused: invalid input, or
        the key is full of holders that all outlive this one."""
        norm = normalize_host(host)
        if not valid_key(key) or norm is None or not valid_port(port):
            return False
        life = self.ttl if ttl is None else min(ttl, self.ttl)
        if not life > 0:  # also refuses NaN
            return False
        expires_at = now + life
        holders = self._keys.get(key)
        if holders is not None and norm in holders:
            self._keys.move_to_end(key)
            holders[norm] = (port, max(holders[norm][1], expires_at))
            self._by_host[norm].move_to_end(key)
            return True
        if holders is not None and len(holders) >= self.max_per_key:
            # keep the freshest: evict the record expiring first, unless that's the new one
            full = holders
            oldest = min(full, key=lambda h: full[h][1])
            if holders[oldest][1] >= expires_at:
                return False
            self._drop(key, oldest)
        mine = self._by_host.setdefault(norm, OrderedDict())
        if len(mine) >= self.max_per_host:
            self._drop(next(iter(mine)), norm)  # this address's own oldest record
        holders = self._keys.get(key)
        if holders is None:
            self._make_room_for_key()
            holders = self._keys[key] = {}
        else:
            self._keys.move_to_end(key)
        holders[norm] = (port, expires_at)
        self._by_host.setdefault(norm, mine)[key] = None
        self._entries += 1
        if self._entries > self.max_entries:
            self._evict_oldest_key(keep=key)
        return True

    def get(self, key: bytes, now: float, limit: int | None = REPLY_LIMIT) -> list[Provider]:
        """Live holders of key, freshest first, at most ``limit`` (None: all)."""
        holders = self._keys.get(key)
        if not holders:
            return []
        live = [Provider(h, p, exp) for h, (p, exp) in holders.items() if exp > now]
        live.sort(key=_freshest_first)
        return live if limit is None else live[:limit]

    def remove(self, key: bytes, host: str, port: int) -> bool:
        holders = self._keys.get(key)
        norm = normalize_host(host)
        if holders is None or norm is None or holders.get(norm, (None,))[0] != port:
            return False
        self._drop(key, norm)
        return True

    def expire(self, now: float) -> int:
        """Drop every record expired at ``now``; returns how many went."""
        dropped = 0
        for key in list(self._keys):
            holders = self._keys[key]
            for host in [h for h, (_, exp) in holders.items() if exp <= now]:
                self._drop(key, host)
                dropped += 1
        return dropped

    def _drop(self, key: bytes, host: str) -> None:
        holders = self._keys[key]
        del holders[host]
        self._entries -= 1
        if not holders:
            del self._keys[key]
        mine = self._by_host[host]
        del mine[key]
        if not mine:
            del self._by_host[host]

    def _make_room_for_key(self) -> None:
        # no expire() scan here: that would make each add O(keys) under a flood
        while len(self._keys) >= self.max_keys:
            self._evict_oldest_key()

    def _evict_oldest_key(self, keep: bytes | None = None) -> None:
        for key in self._keys:
            if key != keep:
                for host in list(self._keys[key]):
                    self._drop(key, host)
                return
