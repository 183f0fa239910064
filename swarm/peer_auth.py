"""Proof of swarm membership on the peer port: a signature per request, never the secret.

A member signs each HTTP request with HMAC-SHA256 under a key derived from the swarm
secret, over the method, the request target (path and query, as sent), the address the
request is sent to (IP and port), a timestamp and a random nonce. The receiver recomputes
the MAC with its own view of each: the method and target it parsed, and the local address
the connection reached (its socket's name), so

- a captured request is worthless for another path, method or server (another member,
  or the same host on another port): the MAC no longer matches;
- the same request sent again to the same server is refused: its nonce was seen within
  the clock window (:class:`ReplayGuard`), and outside the window the timestamp is stale;
- nothing on the wire reveals the secret (only MACs under a key derived from it; a weak
  secret can still be guessed offline from a captured MAC, as with any MAC: use a long
  random one).

Why the server's address and not the client's: the client knows the address it dials
(after resolving a name: the IP is what is signed), and the server knows the address the
connection reached, so both sides agree whenever no NAT rewrites the destination
(loopback, a LAN, a VPN). A client behind NAT does not know the source address the
server will see, so binding the client's address would lock out every member behind a
home router, and it would add nothing: replays to the same server are caught by the
nonce, replays elsewhere by the destination. A server reached through port forwarding
(DNAT) sees its private address while the client signed the public one, and refuses:
as with the DHT's MAC (``swarm.dht_guard.mac_input``), a private swarm needs members
to reach each other's real addresses (a VPN).

Plain code without I/O: the clock and the nonce source are the caller's.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import os
import re
import struct
import time
from collections.abc import Callable

from swarm.dht_guard import addr_bytes

SCHEME = "HFFS-HMAC-SHA256"
WINDOW = 120.0  # seconds of clock difference tolerated between members (as the DHT's)
NONCE_LEN = 16
MAX_NONCES = 1 << 16  # nonces remembered per server: ~10 MB at most
_LABEL = b"hffs-peer-auth-v1\0"
_HEADER = re.compile(
    SCHEME + r" t=([0-9]{1,15}),n=([0-9a-f]{32}),m=([0-9a-f]{64})", re.ASCII | re.IGNORECASE
)

Addr = tuple[str, int]


def derive_key(secret: str | bytes) -> bytes:
    """The request-signing key: its own label, so a DHT MAC is never a valid signature."""
    raw = secret.encode() if isinstance(secret, str) else secret
    if not raw:
        raise ValueError("an empty secret protects nothing")
    return hashlib.sha256(_LABEL + raw).digest()


def mac_input(method: str, target: bytes, dest: Addr, stamp_ms: int, nonce: bytes) -> bytes:
    """What a signature covers. ``dest`` must be an IP literal and a port (ValueError
    otherwise): a name would let two spellings of one server differ."""
    return (
        _LABEL
        + method.upper().encode("ascii")
        + b"\0"
        + target
        + b"\0"
        + addr_bytes(*dest)
        + struct.pack(">Q", stamp_ms)
        + nonce
    )


def sign(key: bytes, method: str, target: bytes, dest: Addr, stamp_ms: int, nonce: bytes) -> str:
    """The ``Authorization`` value of one request."""
    mac = hmac.new(key, mac_input(method, target, dest, stamp_ms, nonce), hashlib.sha256)
    return f"{SCHEME} t={stamp_ms},n={nonce.hex()},m={mac.hexdigest()}"


def parse_authorization(value: str | None) -> tuple[int, bytes, bytes] | None:
    """(stamp in ms, nonce, mac) of a signed request's header; None if it is not one."""
    if not value or len(value) > 200:
        return None
    m = _HEADER.fullmatch(value.strip())
    if m is None:
        return None
    return int(m[1]), bytes.fromhex(m[2]), bytes.fromhex(m[3])


def dest_of(sockname: object) -> Addr | None:
    """(ip, port) of a socket name (IPv6 names have four fields); None if not an IP one."""
    if not isinstance(sockname, (tuple, list)) or len(sockname) < 2:
        return None
    host, port = sockname[0], sockname[1]
    if not isinstance(host, str) or type(port) is not int:
        return None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return host.split("%", 1)[0], port


class ReplayGuard:
    """Nonces seen within the window, bounded in count and time.

    A nonce is forgotten once its stamp is out of the window (the stamp check refuses
    it from then on). When ``limit`` nonces are held, the one with the oldest stamp is
    forgotten and every stamp up to it is refused from then on (``floor``): memory stays
    bounded and a forgotten nonce can still never be replayed; the cost, under a flood
    of valid requests, is refusing late members' requests older than the floor."""

    def __init__(self, window: float = WINDOW, limit: int = MAX_NONCES) -> None:
        if not (window > 0 and limit >= 1):
            raise ValueError("window and limit must be positive")
        self.window_ms = int(window * 1000)
        self.limit = limit
        self.floor = -1  # stamps <= floor are refused
        self._heap: list[tuple[int, bytes]] = []  # (stamp, nonce), oldest stamp first
        self._seen: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, stamp_ms: int, nonce: bytes, now: float) -> bool:
        """True the first time (stamp, nonce) is offered within the window, else False."""
        now_ms = int(now * 1000)
        if abs(now_ms - stamp_ms) > self.window_ms or stamp_ms <= self.floor:
            return False
        heap = self._heap
        while heap and heap[0][0] < now_ms - self.window_ms:
            self._seen.discard(heapq.heappop(heap)[1])
        if nonce in self._seen:
            return False
        self._seen.add(nonce)
        heapq.heappush(heap, (stamp_ms, nonce))
        while len(heap) > self.limit:
            old_stamp, old = heapq.heappop(heap)
            self._seen.discard(old)
            self.floor = max(self.floor, old_stamp)
        return stamp_ms > self.floor  # else this very request made the cut: refused too


class Verifier:
    """The server's check of one request: a valid MAC for what arrived, where, and a
    fresh nonce. Only requests with a valid MAC reach the nonce memory."""

    def __init__(
        self, secret: str | bytes, window: float = WINDOW, limit: int = MAX_NONCES
    ) -> None:
        self._key = derive_key(secret)
        self.replays = ReplayGuard(window, limit)

    def check(
        self, authorization: str | None, method: str, target: bytes, dest: Addr | None, now: float
    ) -> bool:
        parsed = parse_authorization(authorization)
        if parsed is None or dest is None:
            return False
        stamp_ms, nonce, mac = parsed
        try:
            want = hmac.new(
                self._key, mac_input(method, target, dest, stamp_ms, nonce), hashlib.sha256
            ).digest()
        except (ValueError, UnicodeEncodeError):
            return False
        return hmac.compare_digest(mac, want) and self.replays.admit(stamp_ms, nonce, now)


class Signer:
    """The client's side: ``authorization`` for one request, or None without a secret."""

    def __init__(
        self,
        secret: str | bytes | None,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._key = derive_key(secret) if secret else None
        self._clock = clock
        self._nonce = nonce

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def authorization(self, method: str, target: bytes, dest: Addr) -> str | None:
        if self._key is None:
            return None
        stamp = int(self._clock() * 1000)
        return sign(self._key, method, target, dest, stamp, self._nonce(NONCE_LEN))
