"""``--local-dir``: files placed as ``hf download --local-dir`` places them.

The bytes come through the swarm into the HF cache as always (where the daemon shares
them); each file is then copied (not linked: an edit in the folder must never change
a blob peers fetch) to ``DIR/<path>``, with huggingface_hub's own bookkeeping in
``DIR/.cache/huggingface/download/<path>.metadata`` (commit, etag, time), written by
huggingface_hub's helpers so that ``hf download --local-dir DIR`` later sees the file as
up to date and fetches nothing. The etag is the file's id: the sha256 of an LFS file,
the git blob sha1 of any other, as the hub's ETag headers give them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from huggingface_hub._local_folder import (
    get_local_download_paths,
    read_download_metadata,
    write_download_metadata,
)

from hffs.selection import local_path


def is_current(local_dir: Path, path: str, file_id: str, size: int) -> bool:
    """Whether ``DIR/<path>`` already holds this content, by hf's own metadata (which it
    voids when the file changed after it was written)."""
    meta = read_download_metadata(local_dir, path)
    target = local_path(local_dir, path)
    try:
        return meta is not None and meta.etag == file_id and target.stat().st_size == size
    except OSError:
        return False


def place(
    local_dir: Path, path: str, blob: Path, commit: str, file_id: str, *, force: bool = False
) -> Path:
    """Copy ``blob`` to ``DIR/<path>`` (atomically) and record it as hf does; returns
    the placed file. A current copy is kept unless ``force``."""
    local_path(local_dir, path)  # refuses any path that would leave the folder
    size = blob.stat().st_size
    paths = get_local_download_paths(local_dir, path)
    if force or not is_current(local_dir, path, file_id, size):
        tmp = paths.file_path.with_name(f".{paths.file_path.name}.{os.getpid()}.hffs-tmp")
        try:
            shutil.copyfile(blob, tmp)
            os.replace(tmp, paths.file_path)
        finally:
            tmp.unlink(missing_ok=True)
    write_download_metadata(local_dir, path, commit, file_id)
    return paths.file_path
