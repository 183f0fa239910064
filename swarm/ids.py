"""Content ids: a file is named by the hash the hub itself uses for it.

An LFS file is named by its sha256 (64 hex), a small git-stored file by its git
blob sha1 (40 hex), exactly as huggingface_hub names blobs in its cache.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

_FILE_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


def is_file_id(value: str) -> bool:
    return _FILE_ID.fullmatch(value) is not None


def check_file_id(value: str) -> str:
    """Return ``value`` if it is a well-formed content id, else raise ValueError."""
    if not is_file_id(value):
        raise ValueError(f"not a content id (40 or 64 lowercase hex): {value[:80]!r}")
    return value


def git_blob_hasher(size: int) -> Hasher:
    """Git's blob id (the hub's id for a non-LFS file): sha1 over "blob <size>\\0" + content."""
    hasher = hashlib.sha1()
    hasher.update(b"blob %d\0" % size)
    return hasher


def content_hasher(file_id: str, size: int) -> Hasher:
    """The hasher whose hexdigest over the whole file must equal ``file_id``."""
    check_file_id(file_id)
    return hashlib.sha256() if len(file_id) == 64 else git_blob_hasher(size)
