"""The daemon's peer-facing app: the swarm's blob routes plus what only HF knows,
``GET /v1/repos/{type}/{repo_id}/{revision}``: the files this peer holds of a
revision (a commit, or a ref its cache knows), as
``{"commit", "fetched_at", "files": [{"path", "file_id", "size"}]}``.

Also the content index over the HF cache, and the DHT keys of what is held.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from hffs.cache import REPO_TYPES, HubCache, is_commit
from hffs.listing import read_local as read_revision
from hffs.visibility import VisibilityStore
from swarm.dht import dht_key
from swarm.ids import is_file_id
from swarm.peer_auth import Verifier
from swarm.peer_server import PeerServer, UploadLimits, UploadStats, peer_app_for
from swarm.selfcheck import OnRotten, drop_rotten_copies, stat_key
from swarm.store import read_partial_state

RepoRev = tuple[str, str, str]  # (repo type, repo id, commit)

_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def valid_repo_id(repo_id: str) -> bool:
    """``name`` or ``org/name`` as the hub allows them; nothing that could walk a path."""
    parts = repo_id.split("/")
    return (
        1 <= len(parts) <= 2
        and all(_REPO_PART.fullmatch(p) for p in parts)
        and ".." not in repo_id
        and "--" not in repo_id
    )


def valid_revision(revision: str) -> bool:
    """A commit, or a ref name of one path segment (``main``, ``v1.0``)."""
    return is_commit(revision) or (
        _REPO_PART.fullmatch(revision) is not None and ".." not in revision
    )


# -- DHT keys: one per file id, per repo revision, and per repo (to resolve refs) ---


def file_key(file_id: str) -> bytes:
    return dht_key("file", file_id)


def repo_key(repo_type: str, repo_id: str, commit: str) -> bytes:
    return dht_key("repo", repo_type, repo_id, commit)


def any_revision_key(repo_type: str, repo_id: str) -> bytes:
    """Holders of any revision of a repo: asked when a ref must be resolved by peers."""
    return dht_key("repo", repo_type, repo_id)


# -- what this peer holds ---------------------------------------------------------


@dataclass(frozen=True)
class Inventory:
    """A snapshot of the cache and the partial store, taken by ``scan_inventory``."""

    files: dict[str, Path] = field(default_factory=dict)  # complete blob id -> blob
    repos: frozenset[RepoRev] = frozenset()
    partials: frozenset[str] = frozenset()  # ids with at least one verified chunk

    def file_ids(self) -> set[str]:
        """Every file held, complete or in part."""
        return {*self.files, *self.partials}

    def keys(self) -> set[bytes]:
        keys = {file_key(i) for i in self.file_ids()}
        for repo_type, repo_id, commit in self.repos:
            keys.add(repo_key(repo_type, repo_id, commit))
            keys.add(any_revision_key(repo_type, repo_id))
        return keys


def scan_inventory(
    cache: HubCache, partial_dir: Path, sharing: VisibilityStore | None = None
) -> Inventory:
    """Blocking: every complete file of every shared revision, and every seedable partial
    of shared content (``sharing`` None: everything, for tests of the wire alone)."""
    files: dict[str, Path] = {}
    repos: set[RepoRev] = set()
    for repo_type, repo_id in cache.iter_repos():
        if not valid_repo_id(repo_id):
            continue  # a folder we could not name on the wire
        # Only content ids a public upstream listing named (or peers served us) are
        # shared: not a private, gated or unknown repo's files, nor a file imported or
        # changed under a public repo's name. Revisions: of repos known public.
        public = sharing is None or sharing.repo_shared(repo_type, repo_id)
        for f in cache.files(repo_type, repo_id):
            if sharing is not None and not sharing.id_shared(f.blob_id):
                continue
            blob = cache.blob_path(repo_type, repo_id, f.blob_id)
            files.setdefault(f.blob_id, blob)
            if public:
                repos.add((repo_type, repo_id, f.commit))
    partials: set[str] = set()
    if partial_dir.is_dir():
        for state in partial_dir.glob("*.state"):
            file_id = state.name.removesuffix(".state")
            if sharing is not None and not sharing.id_shared(file_id):
                continue
            if is_file_id(file_id) and file_id not in files:
                parsed = read_partial_state(partial_dir, file_id)
                if parsed is not None and any(parsed[1]):
                    partials.add(file_id)
    return Inventory(files, frozenset(repos), frozenset(partials))


class CacheIndex:
    """The peer server's content index over the HF cache.

    The last inventory answers at once; a blob published since (a download just
    finished) is still found by a direct look in the cache."""

    def __init__(self, cache: HubCache, sharing: VisibilityStore | None = None) -> None:
        self.cache = cache
        self.sharing = sharing
        self.inventory = Inventory()

    def shares(self, file_id: str) -> bool:
        """Whether peers may have this content (hffs.trust: named by a public listing,
        received from peers, or anything in a private swarm)."""
        return self.sharing is None or self.sharing.id_shared(file_id)

    def repo_shared(self, repo_type: str, repo_id: str) -> bool:
        return self.sharing is None or self.sharing.repo_shared(repo_type, repo_id)

    def complete_path(self, file_id: str) -> Path | None:
        path = self.inventory.files.get(file_id)
        if path is not None and path.is_file():
            return path
        if not self.shares(file_id):
            return None
        return self.cache.find_blob(file_id)


# -- HF routes ---------------------------------------------------------------------


def _bad(detail: str, status: int = 400) -> Response:
    return JSONResponse({"error": detail}, status_code=status)


def repo_routes(index: CacheIndex) -> list[BaseRoute]:
    cache = index.cache

    async def revision_files(request: Request) -> Response:
        repo_type, repo_id = request.path_params["repo_type"], request.path_params["repo_id"]
        revision = request.path_params["revision"]
        if repo_type not in REPO_TYPES:
            return _bad("repo type must be model, dataset or space")
        if not valid_repo_id(repo_id):
            return _bad("bad repo id")
        if not valid_revision(revision):
            return _bad("bad revision")
        if not await anyio.to_thread.run_sync(index.repo_shared, repo_type, repo_id):
            return _bad("revision not held", 404)  # private or unknown: as if absent
        listing = await anyio.to_thread.run_sync(read_revision, cache, repo_type, repo_id, revision)
        if listing is not None:  # only what is shared, as for the blobs themselves
            listing["files"] = [f for f in listing["files"] if index.shares(f["file_id"])]
        if listing is None or not listing["files"]:
            return _bad("revision not held", 404)
        return JSONResponse(listing)

    return [
        Route("/v1/repos/{repo_type}/{repo_id:path}/{revision}", revision_files, methods=["GET"])
    ]


def create_app(
    index: CacheIndex,
    partial_dir: Path,
    manifest_dir: Path,
    *,
    limits: UploadLimits,
    stats: UploadStats,
    verifier: Verifier | None,
    server: PeerServer | None = None,
    on_rotten: OnRotten | None = None,
) -> ASGIApp:
    """The daemon's peer app; ``server`` when the sendfile front shares its state.
    Content this peer does not share answers as if not held (``CacheIndex.shares``)."""
    if server is None:
        server = PeerServer(index, partial_dir, manifest_dir, limits, stats, on_rotten)
    return peer_app_for(server, verifier=verifier, extra_routes=repo_routes(index))


def drop_rotten_blob(cache: HubCache, file_id: str, path: Path) -> int:
    """Blocking: unlink every copy of a blob that failed its check and is the same file as
    ``path`` (hard links share the rot). Its snapshot links dangle, so huggingface_hub
    fetches it again instead of loading bad bytes; returns how many were dropped."""
    key = stat_key(path)
    if key is None:
        return 0
    paths = [path]
    for repo_type, repo_id in cache.iter_repos():
        with contextlib.suppress(Exception):  # a folder we cannot name holds nothing of ours
            paths.append(cache.blob_path(repo_type, repo_id, file_id))
    return drop_rotten_copies(list(dict.fromkeys(paths)), key)
