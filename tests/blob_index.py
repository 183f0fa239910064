"""A peer server's view of complete blobs, from a dict, for tests of the wire alone."""

from __future__ import annotations

from pathlib import Path


class DictIndex:
    """Every file shared; complete ones where the dict says."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def shares(self, file_id: str) -> bool:
        return True

    def complete_path(self, file_id: str) -> Path | None:
        return self.files.get(file_id)
