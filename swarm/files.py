"""The two file helpers everything shares: replace a file atomically, hash a byte range."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from swarm import portable

READ_BLOCK = 1 << 20


class _Updatable(Protocol):
    def update(self, data: bytes, /) -> None: ...


def atomic_write(path: Path, data: bytes | str, *, private: bool = False) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never a
    part; ``private`` makes it readable by the owner only (a secret, a token)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def hash_range(
    read: Callable[[int, int], bytes], start: int, end: int, *hashers: _Updatable
) -> int:
    """Feed bytes ``[start, end)`` to every hasher, reading ``read(n, offset)`` a block at
    a time (memory stays at one block); returns how many bytes there were (fewer than
    asked when the file is shorter)."""
    pos = start
    while pos < end:
        block = read(min(READ_BLOCK, end - pos), pos)
        if not block:
            break
        for h in hashers:
            h.update(block)
        pos += len(block)
    return pos - start


def pread_of(fd: int) -> Callable[[int, int], bytes]:
    """A ``read(n, offset)`` over an open file descriptor (positional, on every platform)."""
    return lambda n, offset: portable.pread(fd, n, offset)
