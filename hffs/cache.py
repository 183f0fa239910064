"""huggingface_hub's cache layout, read and written exactly as it does.

``<root>/models--org--name/{blobs/<id>, snapshots/<commit>/<path> -> blob, refs/<ref>}``.
Blobs are named by the hub's ETag: the sha256 of an LFS file, the git blob sha1
of any other, which is also hffs's content id, so a blob is found by id alone.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hffs.errors import HffsError
from swarm import portable
from swarm.files import atomic_write
from swarm.ids import is_file_id

REPO_TYPES = ("model", "dataset", "space")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# A strict subset of what huggingface_hub's validate_repo_id accepts (ASCII alphanumerics
# at both ends of each part, no "--", "..", ".git" end): such ids pass without importing
# huggingface_hub, which costs the CLI ~80 ms; every other id gets its verdict from it.
_PLAIN_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
_PLAIN_REPO_ID = re.compile(rf"(?:{_PLAIN_PART}/)?{_PLAIN_PART}")


class CacheError(HffsError):
    """The cache cannot do what was asked."""


def is_commit(value: str) -> bool:
    return _COMMIT.fullmatch(value) is not None


def check_commit(commit: object) -> str:
    """A commit hash (40 lowercase hex), refused otherwise: it names a snapshot folder."""
    if not isinstance(commit, str) or not is_commit(commit):
        raise CacheError(f"not a commit hash (40 lowercase hex): {str(commit)[:80]!r}")
    return commit


def check_repo_id(repo_id: object) -> str:
    """A repo id as the hub allows it (``name`` or ``org/name``, no ``..`` or ``--``)."""
    if (
        isinstance(repo_id, str)
        and _PLAIN_REPO_ID.fullmatch(repo_id)
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith(".git")
    ):
        return repo_id
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)  # type: ignore[arg-type]
    except HFValidationError:
        raise CacheError(f"invalid repo id: {str(repo_id)[:100]!r}") from None
    assert isinstance(repo_id, str)
    return repo_id


def repo_folder_name(repo_type: str, repo_id: str) -> str:
    if repo_type not in REPO_TYPES:
        raise CacheError(f"unknown repo type {repo_type!r} (model, dataset or space)")
    return f"{repo_type}s--" + check_repo_id(repo_id).replace("/", "--")


def parse_repo_folder(name: str) -> tuple[str, str] | None:
    kind, sep, rest = name.partition("--")
    if not sep or not rest or kind not in ("models", "datasets", "spaces"):
        return None
    repo_id = rest.replace("--", "/")
    try:
        return kind[:-1], check_repo_id(repo_id)
    except CacheError:
        return None  # not a folder huggingface_hub would have made


def check_repo_path(path: object) -> PurePosixPath:
    """A path inside a repo, refused if it could escape the snapshot folder (or name
    something other than a plain relative path on any platform), or if this platform
    cannot store it as named (Windows rules there, and when forced: swarm.portable)."""
    if not isinstance(path, str) or len(path) > 4096 or "\\" in path:
        raise CacheError(f"invalid path in repo: {str(path)[:200]!r}")
    problem = portable.relpath_problem(path)
    if problem is not None:
        raise CacheError(f"invalid path in repo: {path[:200]!r} ({problem})")
    return PurePosixPath(path)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")  # as HF reads it


_warned_no_symlinks: set[str] = set()


def _use_symlinks(root: Path) -> bool:
    """huggingface_hub's choice for this cache: symlinks unless disabled or impossible,
    with its warning, once per cache folder, when impossible."""
    if _env_true("HF_HUB_DISABLE_SYMLINKS"):
        return False
    if portable.symlinks_supported(root):
        return True
    key = str(root)
    if key not in _warned_no_symlinks and not _env_true("HF_HUB_DISABLE_SYMLINKS_WARNING"):
        _warned_no_symlinks.add(key)
        message = (
            "`huggingface_hub` cache-system uses symlinks by default to efficiently store"
            f" duplicated files but your machine does not support them in {root}. Caching"
            " files will still work but in a degraded version that might require more space"
            " on your disk. This warning can be disabled by setting the"
            " `HF_HUB_DISABLE_SYMLINKS_WARNING` environment variable. For more details, see"
            " https://huggingface.co/docs/huggingface_hub/how-to-cache#limitations."
        )
        if portable.WINDOWS:
            message += (
                "\nTo support symlinks on Windows, you either need to activate Developer Mode"
                " or to run Python as an administrator. In order to activate developer mode,"
                " see this article: https://docs.microsoft.com/en-us/windows/apps/"
                "get-started/enable-your-device-for-development"
            )
        warnings.warn(message, stacklevel=3)
    return False


@dataclass(frozen=True)
class CachedFile:
    repo_type: str
    repo_id: str
    commit: str
    path: str  # inside the repo, "/" separated
    blob_id: str
    size: int
    local_path: Path  # the snapshot entry, as HF tools open it


@dataclass(frozen=True)
class CachedRepo:
    repo_type: str
    repo_id: str
    commits: tuple[str, ...]
    refs: dict[str, str]
    n_files: int
    size: int  # bytes of distinct blobs


class HubCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    # -- layout --------------------------------------------------------------

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / repo_folder_name(repo_type, repo_id)

    def blob_path(self, repo_type: str, repo_id: str, blob_id: str) -> Path:
        if not isinstance(blob_id, str) or not is_file_id(blob_id):
            raise CacheError(f"not a content id: {str(blob_id)[:80]!r}")
        return self.repo_dir(repo_type, repo_id) / "blobs" / blob_id

    def blob_lock_path(self, repo_type: str, repo_id: str, blob_id: str) -> Path:
        """The lock huggingface_hub takes while it downloads this blob (then, holding it,
        it downloads only if the blob is still missing)."""
        name = self.blob_path(repo_type, repo_id, blob_id).name
        return self.root / ".locks" / repo_folder_name(repo_type, repo_id) / f"{name}.lock"

    def snapshot_dir(self, repo_type: str, repo_id: str, commit: str) -> Path:
        return self.repo_dir(repo_type, repo_id) / "snapshots" / check_commit(commit)

    def snapshot_entry(self, repo_type: str, repo_id: str, commit: str, path: str) -> Path:
        """Where ``path`` of a revision lives; refused unless it stays inside the snapshot."""
        snap = self.snapshot_dir(repo_type, repo_id, commit)
        entry = snap / check_repo_path(path)
        if os.path.commonpath([os.path.normpath(entry), os.path.normpath(snap)]) != str(
            os.path.normpath(snap)
        ):
            raise CacheError(f"invalid path in repo: {path[:200]!r}")
        return entry

    # -- refs ----------------------------------------------------------------

    def read_ref(self, repo_type: str, repo_id: str, ref: str) -> str | None:
        """The commit a ref or commit hash names locally, if any."""
        if is_commit(ref) and self.snapshot_dir(repo_type, repo_id, ref).is_dir():
            return ref
        try:
            commit = (self.repo_dir(repo_type, repo_id) / "refs" / ref).read_text().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return commit if is_commit(commit) else None

    def write_ref(self, repo_type: str, repo_id: str, ref: str, commit: str) -> None:
        check_commit(commit)
        if is_commit(ref):
            return  # a commit names itself; HF writes no ref for it
        check_repo_path(ref)
        path = self.repo_dir(repo_type, repo_id) / "refs" / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, commit)

    # -- writing -------------------------------------------------------------

    def link(self, repo_type: str, repo_id: str, commit: str, path: str, blob_id: str) -> Path:
        """Point ``snapshots/<commit>/<path>`` at the blob, as huggingface_hub does."""
        entry = self.snapshot_entry(repo_type, repo_id, commit, path)
        blob = self.blob_path(repo_type, repo_id, blob_id)
        Path(portable.extended_path(entry.parent, limit=247)).mkdir(parents=True, exist_ok=True)
        tmp = Path(portable.extended_path(entry.with_name(entry.name + ".hffs-tmp")))
        tmp.unlink(missing_ok=True)
        # No symlinks (Windows without Developer Mode): HF copies; a hard link is that copy
        # without a second one on disk, and keeps the blob findable by id (see files()).
        portable.link_or_copy(
            Path(portable.extended_path(blob)), tmp, symlink=_use_symlinks(self.root)
        )
        os.replace(tmp, portable.extended_path(entry))
        return entry

    def adopt(self, repo_type: str, repo_id: str, blob_id: str, src: Path, method: str) -> None:
        """Bring a local file in as a blob: "mv", "cp", "ln" (symlink to src) or
        "hardlink" (for a blob already in the cache: no second copy on disk)."""
        dest = self.blob_path(repo_type, repo_id, blob_id)
        if dest.exists():
            if method == "mv":
                src.unlink()
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".hffs-tmp")
        tmp.unlink(missing_ok=True)
        try:
            if method == "ln":
                tmp.symlink_to(src.resolve())
            elif method == "hardlink":
                try:
                    os.link(src, tmp)
                except OSError:  # another filesystem
                    shutil.copyfile(src, tmp)
            elif method == "mv":
                shutil.move(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CacheError(f"cannot store {src} in the cache: {exc.strerror or exc}") from exc

    # -- reading -------------------------------------------------------------

    def iter_repos(self) -> Iterator[tuple[str, str]]:
        if not self.root.is_dir():
            return
        for child in sorted(self.root.iterdir()):
            parsed = parse_repo_folder(child.name)
            if parsed and child.is_dir():
                yield parsed

    def commits(self, repo_type: str, repo_id: str) -> list[str]:
        snaps = self.repo_dir(repo_type, repo_id) / "snapshots"
        if not snaps.is_dir():
            return []
        return sorted(p.name for p in snaps.iterdir() if is_commit(p.name) and p.is_dir())

    def refs(self, repo_type: str, repo_id: str) -> dict[str, str]:
        refs_dir = self.repo_dir(repo_type, repo_id) / "refs"
        if not refs_dir.is_dir():
            return {}
        out = {}
        for p in sorted(refs_dir.rglob("*")):
            if p.is_file() and not p.name.endswith(".tmp"):
                out[p.relative_to(refs_dir).as_posix()] = p.read_text().strip()
        return out

    def files(self, repo_type: str, repo_id: str, commit: str | None = None) -> list[CachedFile]:
        """Complete files of one commit, or of every commit (dangling links skipped)."""
        out = []
        for c in [commit] if commit else self.commits(repo_type, repo_id):
            snap = self.snapshot_dir(repo_type, repo_id, c)
            if not snap.is_dir():
                continue
            copies: dict[tuple[int, int] | None, str] | None = None
            for entry in sorted(snap.rglob("*")):
                if entry.is_dir() or entry.name.endswith(".hffs-tmp"):
                    continue
                if entry.is_symlink():
                    blob_id: str | None = os.path.basename(os.readlink(entry))
                else:  # no symlinks here: the blob is the same file (a hard link), if any
                    if copies is None:
                        copies = self._blobs_by_inode(repo_type, repo_id)
                    blob_id = copies.get(portable.file_key(entry))
                if blob_id is None or not is_file_id(blob_id):
                    continue  # a plain copy (as HF makes): not shareable by id
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:
                    continue
                path = entry.relative_to(snap).as_posix()
                out.append(CachedFile(repo_type, repo_id, c, path, blob_id, size, entry))
        return out

    def _blobs_by_inode(self, repo_type: str, repo_id: str) -> dict[tuple[int, int] | None, str]:
        blobs = self.repo_dir(repo_type, repo_id) / "blobs"
        if not blobs.is_dir():
            return {}
        keys = {portable.file_key(b): b.name for b in blobs.iterdir() if is_file_id(b.name)}
        keys.pop(None, None)
        return keys

    def repo_summary(self, repo_type: str, repo_id: str) -> CachedRepo:
        files = self.files(repo_type, repo_id)
        blobs = {f.blob_id: f.size for f in files}
        return CachedRepo(
            repo_type,
            repo_id,
            tuple(self.commits(repo_type, repo_id)),
            self.refs(repo_type, repo_id),
            len({(f.path) for f in files}),
            sum(blobs.values()),
        )

    def find_blob(self, blob_id: str) -> Path | None:
        """A complete blob with this id in any repo of the cache."""
        if not is_file_id(blob_id) or not self.root.is_dir():
            return None
        for repo_type, repo_id in self.iter_repos():
            path = self.blob_path(repo_type, repo_id, blob_id)
            if path.is_file():
                return path
        return None

    # -- removing ------------------------------------------------------------

    def remove_file(self, repo_type: str, repo_id: str, commit: str, path: str) -> bool:
        entry = self.snapshot_entry(repo_type, repo_id, commit, path)
        if not (entry.is_symlink() or entry.is_file()):
            return False
        entry.unlink()
        self._prune_empty(entry.parent, self.snapshot_dir(repo_type, repo_id, commit))
        return True

    def remove_commit(self, repo_type: str, repo_id: str, commit: str) -> bool:
        snap = self.snapshot_dir(repo_type, repo_id, commit)
        if not snap.is_dir():
            return False
        shutil.rmtree(snap)
        for ref, target in self.refs(repo_type, repo_id).items():
            if target == commit:
                (self.repo_dir(repo_type, repo_id) / "refs" / ref).unlink()
        return True

    def collect_garbage(self, repo_type: str, repo_id: str) -> list[str]:
        """Remove blobs no snapshot links to; drop the repo folder once empty."""
        used = {f.blob_id for f in self.files(repo_type, repo_id)}
        blobs_dir = self.repo_dir(repo_type, repo_id) / "blobs"
        removed = []
        if blobs_dir.is_dir():
            for blob in blobs_dir.iterdir():
                if blob.name not in used:
                    blob.unlink()
                    removed.append(blob.name)
        repo = self.repo_dir(repo_type, repo_id)
        if not self.commits(repo_type, repo_id) and repo.is_dir():
            shutil.rmtree(repo)
        return removed

    @staticmethod
    def _prune_empty(folder: Path, stop: Path) -> None:
        while folder != stop.parent and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
