"""Small pieces of the peer wire format shared by the server and its clients."""

from __future__ import annotations

from collections.abc import Sequence


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


def auth_headers(secret: str | None) -> dict[str, str]:
    """Headers a client sends to peers of a swarm protected by ``secret``."""
    return {"Authorization": f"Bearer {secret}"} if secret else {}
