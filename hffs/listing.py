"""The one parser of a peer's revision listing (``GET /v1/repos/{type}/{repo}/{rev}``).

A listing names a commit and, for each file, a path inside the repo, a content id
and a size: all three end up in the HF cache's layout, so a listing from a peer is
refused whole unless every field is exactly what the hub itself could have said.
Whoever reads a listing (the CLI, the daemon) goes through ``parse_listing``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hffs.cache import CacheError, HubCache, check_repo_path, is_commit
from swarm.chunking import MAX_FILE_SIZE  # larger is a lie: no claim sizes anything past it
from swarm.ids import is_file_id

MAX_LISTING_BYTES = 4 << 20  # a 100k-file repo lists in ~15 MB; ours are far smaller
MAX_FILES = 20_000


class ListingError(ValueError):
    """A listing that is not exactly the shape the hub could have produced."""


@dataclass(frozen=True)
class ListedFile:
    path: str
    file_id: str
    size: int

    @property
    def lfs(self) -> bool:
        return len(self.file_id) == 64


@dataclass(frozen=True)
class Listing:
    commit: str
    fetched_at: float  # when the peer fetched it (its own clock: a hint, never trusted)
    files: tuple[ListedFile, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "fetched_at": self.fetched_at,
            "files": [{"path": f.path, "file_id": f.file_id, "size": f.size} for f in self.files],
        }


def _file(entry: Any) -> ListedFile:
    if not isinstance(entry, dict):
        raise ListingError("a file entry is not an object")
    path, file_id, size = entry.get("path"), entry.get("file_id"), entry.get("size")
    try:
        check_repo_path(path)
    except CacheError as exc:
        raise ListingError(str(exc)) from None
    if not isinstance(file_id, str) or not is_file_id(file_id):
        raise ListingError("a file id is not a content id")
    if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:  # bool is not a size
        raise ListingError("a file size is not a size")
    assert isinstance(path, str)
    return ListedFile(path, file_id, size)


def parse_listing_obj(body: Any) -> Listing:
    """Validate an already-decoded listing; ListingError unless every field is sound."""
    if not isinstance(body, dict):
        raise ListingError("not an object")
    commit, files, fetched_at = body.get("commit"), body.get("files"), body.get("fetched_at", 0.0)
    if not isinstance(commit, str) or not is_commit(commit):
        raise ListingError("the commit is not a commit hash")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ListingError("no file list")
    parsed = tuple(_file(f) for f in files)
    if len({f.path for f in parsed}) != len(parsed):
        raise ListingError("a path is listed twice")
    if type(fetched_at) not in (int, float) or not math.isfinite(fetched_at):
        fetched_at = 0.0
    return Listing(commit, float(fetched_at), parsed)


def parse_listing(raw: bytes) -> Listing:
    """Decode and validate a listing's bytes (already bounded by the reader)."""
    if len(raw) > MAX_LISTING_BYTES:
        raise ListingError("listing too large")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # deeply nested input raises RecursionError
        raise ListingError("not JSON") from None
    return parse_listing_obj(body)


def read_local(
    cache: HubCache, repo_type: str, repo_id: str, revision: str
) -> dict[str, Any] | None:
    """Blocking: what this machine's cache holds of a revision (a commit, or a ref the
    cache knows), as a listing dict; None when it holds nothing of it."""
    commit = cache.read_ref(repo_type, repo_id, revision)
    if commit is None:
        return None
    files = cache.files(repo_type, repo_id, commit)
    if not files:
        return None
    try:  # when we got it (a hint for peers in a private swarm; never trusted otherwise)
        fetched_at = cache.snapshot_dir(repo_type, repo_id, commit).stat().st_mtime
    except OSError:
        fetched_at = 0.0
    return {
        "commit": commit,
        "fetched_at": fetched_at,
        "files": [{"path": f.path, "file_id": f.blob_id, "size": f.size} for f in files],
    }
