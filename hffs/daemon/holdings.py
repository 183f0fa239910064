"""What this daemon holds (one service: the inventory).

The last scan of the HF cache and the partial store, plus what was announced
through the control API since (kept until a scan shows whether it is held)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import anyio

from hffs.daemon.app import (
    CacheIndex,
    Inventory,
    RepoRev,
    any_revision_key,
    file_key,
    repo_key,
    scan_inventory,
)

if TYPE_CHECKING:
    from swarm.manifest_cache import ManifestCache

RESCAN_PERIOD = 300.0  # catches cache changes nobody told us about


class Holdings:
    def __init__(self, index: CacheIndex, partial_dir: Path, sharing: Any = None) -> None:
        self.index = index
        self.partial_dir = partial_dir
        self.sharing = sharing  # hffs.visibility.VisibilityStore: what may be shared
        self._extra_files: dict[str, float] = {}  # value: when announced
        self._extra_repos: dict[RepoRev, float] = {}
        # Called after each scan: what is held or shared may have changed (the peer
        # server forgets the lookups it reuses, swarm.held_cache).
        self.on_scanned: list[Callable[[], None]] = []
        # The seed's manifests: those of files no longer held are dropped at each scan.
        self.manifests: ManifestCache | None = None

    @property
    def inventory(self) -> Inventory:
        return self.index.inventory

    async def scan(self) -> Inventory:
        started = time.monotonic()
        inventory = await anyio.to_thread.run_sync(
            scan_inventory, self.index.cache, self.partial_dir, self.sharing
        )
        self.index.inventory = inventory
        self._extra_files = {k: t for k, t in self._extra_files.items() if t >= started}
        self._extra_repos = {k: t for k, t in self._extra_repos.items() if t >= started}
        if self.manifests is not None:
            held = inventory.file_ids() | set(self._extra_files)
            await anyio.to_thread.run_sync(self.manifests.prune, held.__contains__)
        for listener in self.on_scanned:
            listener()
        return inventory

    def held_keys(self) -> set[bytes]:
        keys = self.index.inventory.keys()
        keys.update(file_key(f) for f in self._extra_files)
        for repo_type, repo_id, commit in self._extra_repos:
            keys.add(repo_key(repo_type, repo_id, commit))
            keys.add(any_revision_key(repo_type, repo_id))
        return keys

    def add(self, file_ids: Iterable[str], repos: Iterable[RepoRev]) -> set[bytes]:
        """Held from now on (a download started or finished); returns their keys."""
        now = time.monotonic()
        keys: set[bytes] = set()
        for f in file_ids:
            self._extra_files[f] = now
            keys.add(file_key(f))
        for repo_type, repo_id, commit in repos:
            self._extra_repos[(repo_type, repo_id, commit)] = now
            keys.update(
                (repo_key(repo_type, repo_id, commit), any_revision_key(repo_type, repo_id))
            )
        return keys

    async def rescan_loop(self, on_new: Callable[[set[bytes]], None]) -> NoReturn:
        while True:
            await anyio.sleep(RESCAN_PERIOD)
            before = self.held_keys()
            await self.scan()
            new = self.held_keys() - before
            if new:
                on_new(new)
