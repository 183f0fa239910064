"""A loopback packet capture for tests: what really crossed the wire to one address.

An AF_PACKET socket on ``lo`` (root only) sees every IPv4 packet on loopback; this keeps
the TCP and UDP payloads sent TO one (ip, port), per TCP connection in arrival order,
bounded in bytes. Loopback does not reorder or lose, so a connection's payloads joined
are what its client wrote.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections import defaultdict

import pytest

ETH_P_ALL = 0x0003
MAX_BYTES = 64 << 20


class LoopbackCapture:
    def __init__(self, host: str, port: int) -> None:
        self.dst = ipaddress.IPv4Address(host).packed
        self.port = port
        self.tcp: dict[tuple[bytes, int], bytearray] = defaultdict(bytearray)
        self.udp: list[bytes] = []
        self._total = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except (PermissionError, AttributeError, OSError) as exc:
            pytest.skip(f"no packet capture here ({exc}): needs Linux and root")
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def streams(self) -> list[bytes]:
        with self._lock:
            return [bytes(b) for b in self.tcp.values()]

    def datagrams(self) -> list[bytes]:
        with self._lock:
            return list(self.udp)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self._sock.recvfrom(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == socket.PACKET_OUTGOING:  # loopback shows each packet twice
                continue
            with contextlib.suppress(IndexError, struct.error):
                self._keep(frame)

    def _keep(self, frame: bytes) -> None:
        if frame[12:14] != b"\x08\x00":  # IPv4 only
            return
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        proto, src, dst = ip[9], ip[12:16], ip[16:20]
        body = ip[ihl:total]
        if dst != self.dst:
            return
        sport, dport = struct.unpack(">HH", body[:4])
        if dport != self.port:
            return
        if proto == 6:
            payload = body[(body[12] >> 4) * 4 :]
        elif proto == 17:
            payload = body[8:]
        else:
            return
        if not payload or self._total + len(payload) > MAX_BYTES:
            return
        with self._lock:
            self._total += len(payload)
            if proto == 6:
                self.tcp[(src, sport)] += payload
            else:
                self.udp.append(payload)


def request_heads(stream: bytes) -> list[bytes]:
    """The request heads a client wrote on one connection (requests have no body here)."""
    return [part + b"\r\n\r\n" for part in stream.split(b"\r\n\r\n") if part.startswith(b"GET ")]
