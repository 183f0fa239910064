"""Room on disk for a job's downloads, checked before the first byte is fetched.

A 400 GB model that stops at 90 % for want of space wastes hours and leaves the disk
full; the plan knows every size at once, so a job the disk cannot hold is refused up
front, saying what it needs and what is free. A partial download already on disk
counts for the bytes it holds (a resume needs only the rest). Others may fill the disk
meanwhile, so a full disk during the download is still handled where it happens
(``swarm.store``: the download stops, keeping what it verified, and the same command
resumes it once there is room).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hffs.errors import HffsError
from hffs.progress import human_bytes
from swarm import portable
from swarm.store import part_path

# Beyond the files themselves: state files, manifests, locks, and what a filesystem
# keeps back for itself near full.
MARGIN = 1 << 20


class NoSpace(HffsError):
    """The disk cannot hold what a job would download."""


@dataclass(frozen=True)
class Need:
    """``nbytes`` more bytes to be written somewhere on the filesystem of ``folder``."""

    folder: Path
    nbytes: int


def still_to_write(size: int, on_disk: int) -> int:
    """Bytes a file of ``size`` still needs when ``on_disk`` of it are already written."""
    return max(0, size - max(0, min(on_disk, size)))


def needs(
    files: Iterable[tuple[int, int]], partial_dir: Path, cache_dir: Path, *, same_fs: bool
) -> list[Need]:
    """What a job's downloads need, for ``files`` as (size, bytes of its partial already
    on disk): the rest of each in the partial folder, and, when the cache is on another
    filesystem (a published file is then copied, not renamed), each whole file there."""
    files = list(files)
    out = [Need(partial_dir, sum(still_to_write(size, done) for size, done in files))]
    if not same_fs:
        out.append(Need(cache_dir, sum(size for size, _ in files)))
    return [n for n in out if n.nbytes > 0]


def shortfall(nbytes: int, free: int, margin: int = MARGIN) -> int:
    """How many bytes are missing to write ``nbytes`` where ``free`` are free (0: room)."""
    return max(0, nbytes + margin - free) if nbytes > 0 else 0


def refusal(need: Need, free: int, margin: int = MARGIN, where: str = "") -> str | None:
    """The one line telling the user there is no room for ``need``; None when it fits."""
    if shortfall(need.nbytes, free, margin) == 0:
        return None
    return (
        f"{where}cannot fit this download in {need.folder}: it needs "
        f"{human_bytes(need.nbytes)} more and {human_bytes(max(free, 0))} is free; "
        "free some space (or choose another cache with --cache-dir) and run it again"
    )


# -- I/O at the edge ---------------------------------------------------------------


def _existing(folder: Path) -> Path:
    """``folder``, or the nearest folder above it that exists (where it will be made)."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return candidate
    return folder


def same_filesystem(a: Path, b: Path) -> bool:
    """Whether two folders (or where they will be made) are on one filesystem, so a
    rename moves a file between them."""
    try:
        return os.stat(_existing(a)).st_dev == os.stat(_existing(b)).st_dev
    except OSError:
        return False


def check(required: Iterable[Need], margin: int = MARGIN, where: str = "") -> None:
    """NoSpace when a filesystem lacks room for what is required of it (needs of folders
    on one filesystem add up). A folder whose free space cannot be read is not judged,
    nor one whose filesystem reports no size at all (some FUSE and network mounts)."""
    by_fs: dict[int, Need] = {}
    for need in required:
        try:
            dev = os.stat(_existing(need.folder)).st_dev
        except OSError:
            continue
        first = by_fs.get(dev)
        by_fs[dev] = Need(need.folder, need.nbytes + (first.nbytes if first else 0))
    for need in by_fs.values():
        try:
            usage = shutil.disk_usage(_existing(need.folder))
        except OSError:
            continue
        if usage.total <= 0:
            continue
        message = refusal(need, usage.free, margin, where)
        if message is not None:
            raise NoSpace(message)


def check_downloads(
    files: Iterable[tuple[str, int]],
    partial_dir: Path,
    cache_dir: Path,
    where: str = "",
    also: Iterable[Need] = (),
) -> None:
    """Blocking: NoSpace unless the disk can hold what downloading ``files`` (content id,
    size) into ``cache_dir`` through ``partial_dir`` still writes, and ``also`` (copies
    made after, such as a local folder's)."""
    sizes = [
        (size, portable.bytes_on_disk(part_path(partial_dir, file_id))) for file_id, size in files
    ]
    same = same_filesystem(partial_dir, cache_dir)
    check([*needs(sizes, partial_dir, cache_dir, same_fs=same), *also], where=where)
