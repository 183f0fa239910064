"""Which files of a revision ``hffs model add`` fetches, and where they are placed:
the rules of ``hf download`` (huggingface_hub's CLI), as plain code without I/O.

- ``REPO_ID`` alone: every file, filtered by ``--include``/``--exclude`` globs with
  huggingface_hub's own ``filter_repo_objects`` (``*`` crosses ``/``; a pattern ending
  in ``/`` means everything under it).
- ``REPO_ID FILE``: that one file; the printed path is the file's.
- ``REPO_ID A B DIR/``: those files and everything under ``DIR/``; ``--include`` and
  ``--exclude`` are then ignored (a folder argument cannot be combined with them).
  A name that is not in the revision is skipped, as ``snapshot_download`` skips it.
- ``--local-dir D``: each file at ``D/<path>``, the printed path ``D`` (or ``D/FILE``),
  with huggingface_hub's bookkeeping under ``D/.cache/huggingface``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hffs.errors import HffsError


class SelectionError(HffsError, ValueError):
    """The arguments cannot select files; the message says why, for the user."""


@dataclass(frozen=True)
class Selection:
    paths: tuple[str, ...]  # repo paths to fetch, in the revision's order
    single: bool  # one FILE named: the result is the file's path, not the folder's
    warnings: tuple[str, ...] = field(default=())


def check_arguments(
    filenames: Sequence[str] = (), include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> None:
    """SelectionError for arguments that can select nothing whatever the revision holds."""
    folders = [f for f in filenames if f.endswith("/")]
    if folders and include:
        raise SelectionError(
            f"cannot combine a folder ({folders[0]!r}) with --include; "
            f'use --include "{folders[0]}*" instead'
        )
    if folders and exclude:
        raise SelectionError(
            f"cannot combine a folder ({folders[0]!r}) with --exclude; "
            f'use --include "{folders[0]}*" with --exclude instead'
        )


def select(
    available: Sequence[str],
    filenames: Sequence[str] = (),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Selection:
    """The paths of ``available`` that ``hf download`` would fetch for these arguments."""
    check_arguments(filenames, include, exclude)
    folders = [f for f in filenames if f.endswith("/")]
    names = [f for f in filenames if not f.endswith("/")]
    warnings: list[str] = []
    if names and include:
        warnings.append("--include is ignored: file names were given")
    if names and exclude:
        warnings.append("--exclude is ignored: file names were given")
    if len(names) == 1 and not folders:
        if names[0] not in available:
            raise SelectionError(f"{names[0]} is not in this revision")
        return Selection((names[0],), True, tuple(warnings))
    if filenames:
        allow: list[str] | None = names + [f"{f.rstrip('/')}/**" for f in folders]
        ignore: list[str] | None = None
    else:
        allow, ignore = list(include) or None, list(exclude) or None
    from huggingface_hub.utils import filter_repo_objects  # ~80 ms: only when selecting

    chosen = tuple(filter_repo_objects(available, allow_patterns=allow, ignore_patterns=ignore))
    return Selection(chosen, False, tuple(warnings))


def local_path(local_dir: Path, repo_path: str) -> Path:
    """Where ``repo_path`` goes under ``local_dir``; SelectionError if it would leave it."""
    parts = PurePosixPath(repo_path).parts
    if not parts or repo_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise SelectionError(f"{repo_path!r} cannot be placed inside a folder")
    if "\\" in repo_path or parts[0] == ".cache":
        raise SelectionError(f"{repo_path!r} cannot be placed inside a folder")
    return local_dir.joinpath(*parts)


def result_path(folder: Path, selection: Selection) -> Path:
    """What ``hf download`` prints: the snapshot (or local) folder, or the one file in it."""
    if selection.single:
        return folder.joinpath(*PurePosixPath(selection.paths[0]).parts)
    return folder
