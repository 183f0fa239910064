"""The revisions hffs put in the shared cache, so ``uninstall`` removes only those."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _path(home: Path) -> Path:
    return home / "managed.json"


def load(home: Path) -> set[tuple[str, str, str]]:
    try:
        raw = json.loads(_path(home).read_text())
    except (FileNotFoundError, ValueError):
        return set()
    return {(t, r, c) for t, r, c in raw}


def _save(home: Path, entries: set[tuple[str, str, str]]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = _path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(entries)))
    os.replace(tmp, _path(home))


def remember(home: Path, repo_type: str, repo_id: str, commit: str) -> None:
    entries = load(home)
    if (repo_type, repo_id, commit) not in entries:
        _save(home, entries | {(repo_type, repo_id, commit)})


def forget(home: Path, repo_type: str, repo_id: str, commit: str) -> None:
    entries = load(home)
    if (repo_type, repo_id, commit) in entries:
        _save(home, entries - {(repo_type, repo_id, commit)})
