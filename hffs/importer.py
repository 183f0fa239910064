"""``hffs model import``: adopt files already on disk into the cache.

Each file is named by the id the hub would give it, so peers that download the
same file from the hub find it here: the sha256 for files the hub stores in LFS
(large ones and the binary types of the hub's default .gitattributes), the git
blob sha1 for the rest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hffs.cache import CacheError, HubCache, check_repo_path, is_commit
from hffs.config import ZERO_COMMIT
from swarm import portable
from swarm.ids import git_blob_hasher

LFS_MIN_SIZE = 10 * 1024 * 1024  # the hub stores any file over 10 MB in LFS
# The binary types listed in the .gitattributes every new hub repo starts with.
LFS_SUFFIXES = frozenset(
    (
        ".7z .arrow .bin .bz2 .ckpt .ftz .gz .h5 .joblib .mlmodel .model .msgpack .npy "
        ".npz .onnx .ot .parquet .pb .pickle .pkl .pt .pth .rar .safetensors .tar "
        ".tflite .tgz .wasm .xz .zip .zst .gguf .mp3 .wav .flac .ogg .png .jpg .jpeg "
        ".webp"
    ).split()
)
METHODS = ("cp", "mv", "ln")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ImportPlan:
    commit: str
    ref: str
    files: list[tuple[Path, str]]  # (source file, path in repo)


def revision_rule(revision: str | None) -> tuple[str, str]:
    """(commit, ref) by the original hffs rules: none -> zeros + main; a commit -> it + main;
    any other string -> zeros + that string as the ref."""
    if revision is None:
        return ZERO_COMMIT, "main"
    if is_commit(revision):
        return revision, "main"
    check_repo_path(revision)
    return ZERO_COMMIT, revision


def plan(src: Path, file: str | None, revision: str | None) -> ImportPlan:
    commit, ref = revision_rule(revision)
    if not src.exists():
        raise CacheError(f"{src} does not exist")
    if src.is_file():
        if not file:
            raise CacheError("importing a single file needs --file (its path in the repo)")
        check_repo_path(file)
        return ImportPlan(commit, ref, [(src, file)])
    files = [
        (p, p.relative_to(src).as_posix())
        for p in sorted(src.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(src).parts
    ]
    if not files:
        raise CacheError(f"{src} holds no files")
    return ImportPlan(commit, ref, files)


def hub_file_id(path: Path, name_in_repo: str) -> str:
    size = path.stat().st_size
    lfs = size > LFS_MIN_SIZE or Path(name_in_repo).suffix.lower() in LFS_SUFFIXES
    hasher = hashlib.sha256() if lfs else git_blob_hasher(size)
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def run(
    cache: HubCache, repo_type: str, repo_id: str, p: ImportPlan, method: str
) -> list[tuple[str, str]]:
    """Import every planned file; returns (path in repo, blob id) of each."""
    if method not in METHODS:
        raise CacheError(f"unknown import method {method!r} (cp, mv or ln)")
    if method == "ln" and portable.enabled():  # a symlink out of the cache, as the original
        raise CacheError("--method ln is not offered on Windows; use cp or mv")
    done = []
    for src, name in p.files:
        blob_id = hub_file_id(src, name)
        cache.adopt(repo_type, repo_id, blob_id, src, method)
        cache.link(repo_type, repo_id, p.commit, name, blob_id)
        done.append((name, blob_id))
    cache.write_ref(repo_type, repo_id, p.ref, p.commit)
    return done
