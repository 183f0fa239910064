"""A holder that finds, or is told, that a blob it serves no longer matches stops serving it.

A complete file's manifest is cached by size and mtime, and bytes that rot on disk keep
both: without a check the holder would vouch for good digests and send bad bytes to every
downloader, forever. A downloader whose chunk failed verification tells the holder
(``POST /v1/blobs/{id}/bad?chunk=N``); the holder re-digests that one chunk against its
manifest. A false report costs one chunk read (and at most one per file per
``RECHECK_GAP``); a true one puts the file in quarantine (never served again while the
same bytes are there), re-verifies the whole file, and hands a rotten file to the owner's
``on_rotten`` to drop it. A copy published later (another inode or mtime) lifts the
quarantine by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from swarm.manifest import READ_BLOCK, Manifest

RECHECK_GAP = 5.0  # seconds between two checks of one file, whoever asks
MAX_TRACKED = 4096  # files remembered (checked recently, or quarantined)

OnRotten = Callable[[str, Path], Awaitable[None]]
FileKey = tuple[int, int, int]  # (inode, size, mtime ns): "the same bytes are still there"


def stat_key(path: Path) -> FileKey | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def chunk_matches(path: Path, manifest: Manifest, index: int) -> bool:
    """Blocking: whether chunk ``index`` on disk still has the manifest's digest."""
    start, end = manifest.span(index)
    hasher = xxhash.xxh3_128()
    with path.open("rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining:
            block = f.read(min(READ_BLOCK, remaining))
            if not block:
                return False
            hasher.update(block)
            remaining -= len(block)
    return hasher.digest() == manifest.digests[index]


@dataclass
class SelfCheck:
    """Rate limit and quarantine: plain state, the I/O is the caller's."""

    clock: Callable[[], float] = time.monotonic
    quarantine: dict[str, FileKey] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def due(self, file_id: str) -> bool:
        """Whether a report about ``file_id`` may trigger a check now (and book it)."""
        now = self.clock()
        if now - self._last.get(file_id, -RECHECK_GAP) < RECHECK_GAP:
            return False
        if len(self._last) >= MAX_TRACKED:
            self._last = {k: t for k, t in self._last.items() if now - t < RECHECK_GAP}
            if len(self._last) >= MAX_TRACKED:
                return False
        self._last[file_id] = now
        return True

    def hold(self, file_id: str, key: FileKey) -> None:
        if len(self.quarantine) >= MAX_TRACKED:
            self.quarantine.pop(next(iter(self.quarantine)))
        self.quarantine[file_id] = key

    def release(self, file_id: str) -> None:
        self.quarantine.pop(file_id, None)

    def blocked(self, file_id: str, path: Path) -> bool:
        """Blocking (one stat, only for quarantined ids): True while the rotten bytes are
        what ``path`` holds; a replaced file is served again."""
        key = self.quarantine.get(file_id)
        if key is None:
            return False
        if stat_key(path) == key:
            return True
        self.release(file_id)
        return False


def drop_rotten_copies(paths: list[Path], key: FileKey) -> int:
    """Blocking: unlink each of ``paths`` that is still the rotten file; returns how many."""
    dropped = 0
    for p in paths:
        k = stat_key(p)
        if k is not None and k[0] == key[0]:
            try:
                os.unlink(p)
                dropped += 1
            except OSError:
                pass
    return dropped
