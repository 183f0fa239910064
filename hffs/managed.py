"""The revisions hffs put in the shared cache, so ``uninstall`` removes only those."""

from __future__ import annotations

import json
from pathlib import Path

from swarm.files import atomic_write


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
    atomic_write(_path(home), json.dumps(sorted(entries)))


def remember(home: Path, repo_type: str, repo_id: str, commit: str) -> None:
    entries = load(home)
    if (repo_type, repo_id, commit) not in entries:
        _save(home, entries | {(repo_type, repo_id, commit)})


def forget(home: Path, repo_type: str, repo_id: str, commit: str) -> None:
    entries = load(home)
    if (repo_type, repo_id, commit) in entries:
        _save(home, entries - {(repo_type, repo_id, commit)})
