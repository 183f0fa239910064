"""Chunk manifests: size, chunk size and the xxh3-128 digest of every chunk.

A manifest lets a downloader check each chunk on arrival, long before the
whole-file hash can be checked. Digests may be unknown (None) for a manifest
published by a holder that is itself still downloading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import xxhash

from swarm.chunking import chunk_count, chunk_size_for, chunk_span
from swarm.files import hash_range, pread_of
from swarm.ids import check_file_id, content_hasher

DIGEST_SIZE = 16


def chunk_digest(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


class ManifestError(ValueError):
    """A manifest that does not describe the file it claims to."""


@dataclass(frozen=True)
class Manifest:
    file_id: str
    size: int
    chunk_size: int
    digests: tuple[bytes | None, ...]

    @property
    def n_chunks(self) -> int:
        return len(self.digests)

    @property
    def complete(self) -> bool:
        return all(d is not None for d in self.digests)

    def span(self, index: int) -> tuple[int, int]:
        return chunk_span(index, self.size, self.chunk_size)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "file_id": self.file_id,
                "size": self.size,
                "chunk_size": self.chunk_size,
                "digests": [d.hex() if d is not None else None for d in self.digests],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, file_id: str, size: int | None = None) -> Manifest:
        """Parse and check a manifest received from anyone (peers included)."""
        try:
            obj = json.loads(raw)
            digests = tuple(None if d is None else bytes.fromhex(d) for d in obj["digests"])
            got_id, got_size, got_chunk = obj["file_id"], obj["size"], obj["chunk_size"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: {exc}") from exc
        if got_id != file_id:
            raise ManifestError("manifest is for another file")
        if not isinstance(got_size, int) or got_size < 0 or (size is not None and got_size != size):
            raise ManifestError(f"manifest size {got_size!r} does not match the file")
        if got_chunk != chunk_size_for(got_size):
            raise ManifestError("manifest chunk size breaks the chunk rule")
        if len(digests) != chunk_count(got_size, got_chunk):
            raise ManifestError("manifest has the wrong number of chunks")
        if any(d is not None and len(d) != DIGEST_SIZE for d in digests):
            raise ManifestError("manifest digest of the wrong length")
        return cls(check_file_id(file_id), got_size, got_chunk, digests)

    @classmethod
    def empty(cls, file_id: str, size: int) -> Manifest:
        chunk = chunk_size_for(size)
        return cls(check_file_id(file_id), size, chunk, (None,) * chunk_count(size, chunk))


def build_manifest(path: Path, file_id: str) -> Manifest:
    """Digest every chunk of a complete local file (memory bounded by one block).

    The whole file is checked against its id in the same pass: a holder never vouches
    for a blob that rotted on disk or was altered."""
    size = path.stat().st_size
    base = Manifest.empty(file_id, size)
    digests: list[bytes | None] = []
    whole = content_hasher(file_id, size)
    with path.open("rb") as f:
        read = pread_of(f.fileno())
        for i in range(base.n_chunks):
            start, end = base.span(i)
            hasher = xxhash.xxh3_128()
            if hash_range(read, start, end, hasher, whole) != end - start:
                raise ManifestError(f"{path} shrank while being read")
            digests.append(hasher.digest())
    if whole.hexdigest() != file_id:
        raise ManifestError(f"{path} does not match its id {file_id[:12]}…")
    return Manifest(file_id, size, base.chunk_size, tuple(digests))
