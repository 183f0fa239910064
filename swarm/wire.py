"""Small pieces of the peer wire format shared by the server and its clients."""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, Generator, Sequence

import anyio
import httpx

from swarm.hostport import is_ip
from swarm.peer_auth import Signer

MAX_RETRY_AFTER = 30.0  # a holder cannot park a downloader longer than this


def parse_retry_after(value: str | None) -> float | None:
    """Seconds a busy holder asks us to wait (``Retry-After`` as delta-seconds), capped
    at MAX_RETRY_AFTER; None when absent or not a small decimal integer (an HTTP date
    is not worth trusting a peer's clock for: the caller's own default applies)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        return None
    return min(float(text), MAX_RETRY_AFTER)


# Seconds within which a probe asks a busy holder again; the holder holds each ask up to
# 1.5 s (swarm.manifest_cache.ANSWER_WAIT), so the last answer comes before 4.5 s, inside
# the downloader's 5 s probe limit.
BUSY_BUDGET = 3.0


def busy_retry_delay(
    retry_after: float | None, waited: float, budget: float = BUSY_BUDGET
) -> float | None:
    """How long to wait before asking a holder that answered busy (503) again, or None
    to stop: only when it said when (``Retry-After``), and only while asking again still
    fits in ``budget`` seconds since the first ask (``waited`` so far)."""
    if retry_after is None or waited + retry_after >= budget:
        return None
    return retry_after


def encode_have(have: Sequence[bool]) -> bytes:
    """One bit per chunk, MSB first; trailing bits of the last byte are zero."""
    out = bytearray((len(have) + 7) // 8)
    for i, flag in enumerate(have):
        if flag:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def decode_have(raw: bytes, n_chunks: int) -> list[bool]:
    """Inverse of ``encode_have``: the one parser of a holder's bitmap.

    ValueError when ``raw`` has the wrong length or sets bits past the last chunk."""
    if len(raw) != (n_chunks + 7) // 8:
        raise ValueError(f"have-bitmap of {len(raw)} bytes for {n_chunks} chunks")
    if n_chunks % 8 and raw[-1] & (0xFF >> (n_chunks % 8)):
        raise ValueError("have-bitmap sets bits past the last chunk")
    return [bool(raw[i >> 3] & (0x80 >> (i & 7))) for i in range(n_chunks)]


class PeerAuth(httpx.Auth):
    """Signs every request to a peer (``swarm.peer_auth``); does nothing without a secret.

    One object for every client of the peer port: httpx takes it as ``auth=``, the raw
    socket clients call ``head_lines`` with the address they are connected to."""

    def __init__(self, secret: str | bytes | None = None, signer: Signer | None = None) -> None:
        self.signer = signer if signer is not None else Signer(secret)

    @property
    def enabled(self) -> bool:
        return self.signer.enabled

    def head_lines(self, method: str, target: str, dest: tuple[str, int]) -> list[str]:
        """``Authorization`` header lines for a request written by hand to ``dest``
        (the IP and port the connection reached)."""
        value = self.signer.authorization(method, target.encode("latin-1"), dest)
        return [] if value is None else [f"Authorization: {value}"]

    def _sign(self, request: httpx.Request, ip: str, port: int) -> None:
        if ip != request.url.host:
            # The signature names the IP the request goes to: dial that IP (the Host
            # header keeps the name).
            request.url = request.url.copy_with(host=ip)
        value = self.signer.authorization(request.method, request.url.raw_path, (ip, port))
        assert value is not None
        request.headers["Authorization"] = value

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.enabled:
            host, port = request.url.host, request.url.port or 80
            if not is_ip(host):
                try:
                    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                except OSError as exc:  # as httpx says a name does not resolve
                    raise httpx.ConnectError(str(exc), request=request) from exc
                host = str(infos[0][4][0])
            self._sign(request, host, port)
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        if self.enabled:
            host, port = request.url.host, request.url.port or 80
            if not is_ip(host):
                try:
                    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    raise httpx.ConnectError(str(exc), request=request) from exc
                host = str(infos[0][4][0])
            self._sign(request, host, port)
        yield request
