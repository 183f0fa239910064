"""What this machine knows of each repo's visibility, kept in the hffs home.

``<home>/visibility/<type>--<org>--<name>.json`` holds ``{"visibility": "public" |
"private", "ids": [...]}``: written when hffs fetches a listing (the CLI and the daemon's
HF endpoint) or asks upstream anonymously about a repo it found in the cache. ``ids`` are
content ids a public listing named, so a partial download of a public file may be shared
before it is complete. Which content is shared follows from this (``hffs.trust``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from hffs.cache import repo_folder_name
from hffs.hub import RemoteRevision
from hffs.trust import PRIVATE, PUBLIC, Visibility, is_shared
from swarm.ids import is_file_id

MAX_IDS = 100_000  # per repo
REREAD_AFTER = 1.0
PEERS_STEM = "from-peers"  # never a repo folder name (those start with models--, ...)


def _parse(raw: bytes) -> tuple[Visibility | None, frozenset[str]]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None, frozenset()
    if not isinstance(body, dict) or body.get("visibility") not in (PUBLIC, PRIVATE):
        return None, frozenset()
    ids = body.get("ids")
    ids = ids if isinstance(ids, list) else []
    return body["visibility"], frozenset(i for i in ids if isinstance(i, str) and is_file_id(i))


class VisibilityStore:
    """The records on disk, with an in-memory copy re-read when the folder changes."""

    def __init__(self, home: Path, private_swarm: bool = False) -> None:
        self.root = home / "visibility"
        self.private_swarm = private_swarm
        self._stamp: tuple[int, int] | None = None
        self._read_at = -1e18
        self._repos: dict[str, Visibility] = {}
        self._public_ids: frozenset[str] = frozenset()

    def _file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_folder_name(repo_type, repo_id)}.json"

    def reload(self) -> None:
        """Re-read the records if any was written since the last read (cheap otherwise)."""
        try:
            st = self.root.stat()
        except OSError:
            self._stamp, self._repos, self._public_ids = None, {}, frozenset()
            return
        # The folder's mtime can miss two writes within its granularity: re-read anyway
        # once a second.
        stamp, now = (st.st_mtime_ns, st.st_size), time.monotonic()
        if stamp == self._stamp and now - self._read_at < REREAD_AFTER:
            return
        self._read_at = now
        repos: dict[str, Visibility] = {}
        ids: set[str] = set()
        for path in self.root.glob("*.json"):
            with contextlib.suppress(OSError):
                vis, found = _parse(path.read_bytes())
                if vis is not None:
                    repos[path.stem] = vis
                    if vis == PUBLIC:
                        ids |= found
        self._stamp, self._repos, self._public_ids = stamp, repos, frozenset(ids)

    def get(self, repo_type: str, repo_id: str) -> Visibility | None:
        self.reload()
        return self._repos.get(repo_folder_name(repo_type, repo_id))

    def record(
        self, repo_type: str, repo_id: str, visibility: Visibility, ids: Iterable[str] = ()
    ) -> None:
        """Remember a repo's visibility (and, if public, content ids its listings name)."""
        self._write(self._file(repo_type, repo_id), visibility, ids)

    def record_peer_ids(self, ids: Iterable[str]) -> None:
        """Content ids whose bytes came from peers: already out in the swarm, so passing
        them on tells nobody anything (the repo they are in is not made public by this)."""
        self._write(self.root / f"{PEERS_STEM}.json", PUBLIC, ids)

    def _write(self, path: Path, visibility: Visibility, ids: Iterable[str]) -> None:
        old_vis, old_ids = (None, frozenset[str]())
        with contextlib.suppress(OSError):
            old_vis, old_ids = _parse(path.read_bytes())
        keep = set(old_ids) if old_vis == visibility == PUBLIC else set()
        if visibility == PUBLIC:
            keep.update(i for i in ids if is_file_id(i))
        if old_vis == visibility and keep == set(old_ids):
            with contextlib.suppress(OSError):
                os.utime(path)  # the same answer, newer: when it was learnt (learnt_at)
            return
        body = {"visibility": visibility, "ids": sorted(keep)[:MAX_IDS]}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        os.replace(tmp, path)
        self._stamp = None

    def learnt_at(self, repo_type: str, repo_id: str) -> float | None:
        """Blocking: when upstream last told this repo's visibility (wall clock)."""
        try:
            return self._file(repo_type, repo_id).stat().st_mtime
        except OSError:
            return None

    # -- what may be shared ----------------------------------------------------------

    def repo_shared(self, repo_type: str, repo_id: str) -> bool:
        return is_shared(self.get(repo_type, repo_id), self.private_swarm)

    def id_shared(self, file_id: str) -> bool:
        """A content id some public listing named (complete blobs of shared repos are
        shared through the inventory, whether or not they are named here)."""
        if self.private_swarm:
            return True
        self.reload()
        return file_id in self._public_ids

    def unknown(self, repos: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The repos of which nothing is known yet (to ask upstream about)."""
        self.reload()
        return [r for r in repos if repo_folder_name(*r) not in self._repos]


def remember(home: Path, rev: RemoteRevision, private_swarm: bool = False) -> None:
    """What a resolved revision teaches: its repo's visibility as upstream showed it, or
    (vouched for by peers) that its content ids are out in the swarm already."""
    store = VisibilityStore(home, private_swarm)
    ids = [f.file_id for f in rev.files]
    if rev.visibility in (PUBLIC, PRIVATE):
        store.record(rev.repo_type, rev.repo_id, rev.visibility, ids)  # type: ignore[arg-type]
    elif rev.peer_ids:
        store.record_peer_ids(rev.peer_ids)
