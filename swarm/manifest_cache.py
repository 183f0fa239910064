"""Manifests of complete files, kept on disk keyed by id, size and mtime.

The peer server answers manifest requests from here; a download that just verified
a file hands its digests over at publish, so a seed never digests what it fetched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio

from swarm.files import atomic_write
from swarm.manifest import Manifest, ManifestError, build_manifest


class ManifestCache:
    """Manifests of complete files, built once in a worker thread and kept on disk.

    A cache entry is keyed by id, size and mtime, so a replaced file is re-digested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, anyio.Lock] = {}

    async def get(self, file_id: str, path: Path) -> Manifest:
        lock = self._locks.setdefault(file_id, anyio.Lock())
        try:
            async with lock:
                return await anyio.to_thread.run_sync(self._get_blocking, file_id, path)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(file_id, None)

    def forget(self, file_id: str) -> None:
        for stale in self.root.glob(f"{file_id}-*.json"):
            stale.unlink(missing_ok=True)

    def _get_blocking(self, file_id: str, path: Path) -> Manifest:
        st = path.stat()
        entry = self.root / f"{file_id}-{st.st_size}-{st.st_mtime_ns}.json"
        with contextlib.suppress(OSError, ManifestError):
            return Manifest.from_json(entry.read_bytes(), file_id=file_id, size=st.st_size)
        for stale in self.root.glob(f"{file_id}-*.json"):
            stale.unlink(missing_ok=True)
        manifest = build_manifest(path, file_id)  # refuses a blob that does not match its id
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise ManifestError(f"{file_id[:12]}… changed while being digested")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, manifest.to_json())
        return manifest
