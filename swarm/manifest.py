"""Chunk manifests: size, chunk size and the xxh3-128 digest of every chunk.

A manifest lets a downloader check each chunk on arrival, long before the
whole-file hash can be checked. Digests may be unknown (None) for a manifest
published by a holder that is itself still downloading.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from swarm.chunking import MAX_FILE_SIZE, chunk_count, chunk_size_for, chunk_span
from swarm.files import hash_range, pread_of
from swarm.ids import Hasher, check_file_id, content_hasher

Progress = Callable[[int], None]  # told (or asked to wait for) a position in a file
ChunkDone = Callable[[int, bytes], None]  # told each chunk's end and digest, in file order

DIGEST_SIZE = 16
READ_BLOCK = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20  # the largest file's manifest (16384 chunks) is ~570 kB
_DIGEST = re.compile(r"[0-9a-f]{32}", re.ASCII)


def chunk_digest(data: bytes | bytearray) -> bytes:
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
        """Parse and check a manifest received from anyone (peers included).

        The one parser of this wire shape: ManifestError for anything but exactly what an
        honest holder of ``file_id`` could have sent (never another exception)."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError("manifest too large")
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # "[[[[..." raises RecursionError
            raise ManifestError("manifest is not JSON") from None
        if not isinstance(obj, dict):
            raise ManifestError("manifest is not an object")
        got_id, got_size = obj.get("file_id"), obj.get("size")
        got_chunk, raw_digests = obj.get("chunk_size"), obj.get("digests")
        if got_id != file_id or not isinstance(got_id, str):
            raise ManifestError("manifest is for another file")
        # type() is: a bool is not a size; sizes past the largest file are lies
        if type(got_size) is not int or not 0 <= got_size <= MAX_FILE_SIZE:
            raise ManifestError(f"manifest size {str(got_size)[:40]} is not a file size")
        if size is not None and got_size != size:
            raise ManifestError(f"manifest size {got_size} does not match the file")
        if type(got_chunk) is not int or got_chunk != chunk_size_for(got_size):
            raise ManifestError("manifest chunk size breaks the chunk rule")
        if not isinstance(raw_digests, list):
            raise ManifestError("manifest has no digest list")
        if len(raw_digests) != chunk_count(got_size, got_chunk):
            raise ManifestError("manifest has the wrong number of chunks")
        if not all(d is None or (isinstance(d, str) and _DIGEST.fullmatch(d)) for d in raw_digests):
            raise ManifestError("manifest digest is not 32 lowercase hex")
        digests = tuple(None if d is None else bytes.fromhex(d) for d in raw_digests)
        return cls(check_file_id(file_id), got_size, got_chunk, digests)

    @classmethod
    def empty(cls, file_id: str, size: int) -> Manifest:
        chunk = chunk_size_for(size)
        return cls(check_file_id(file_id), size, chunk, (None,) * chunk_count(size, chunk))


def build_manifest(path: Path, file_id: str) -> Manifest:
    """Digest every chunk of a complete local file (memory bounded by one block).

    The whole file is checked against its id in the same pass: a holder never vouches
    for a blob that rotted on disk or was altered."""
    return _digest(path, file_id, whole=True)


def chunk_manifest(path: Path, file_id: str, done: ChunkDone | None = None) -> Manifest:
    """Digest every chunk (xxh3 only, ~10x faster than the sha256 of the whole): what a
    holder can vouch for at once while ``check_whole`` runs. Nothing here says the file
    matches its id. ``done(end, digest)`` hears of each chunk as it is digested."""
    return _digest(path, file_id, whole=False, done=done)


def check_whole(path: Path, file_id: str, readable: Progress | None = None) -> None:
    """ManifestError unless the file at ``path`` hashes to its id. ``readable(pos)``, if
    given, is called (and may block) before each block up to ``pos`` is read: trailing
    ``chunk_manifest``, this pass finds the pages that one brought into memory, so a
    blob on a slow disk is read from it once."""
    size = path.stat().st_size
    whole = content_hasher(file_id, size)
    with path.open("rb") as f:
        read = pread_of(f.fileno())
        if readable is not None:
            plain, wait = read, readable

            def read(n: int, offset: int) -> bytes:
                wait(min(offset + n, size))
                return plain(n, offset)

        if hash_range(read, 0, size, whole) != size:
            raise ManifestError(f"{path} shrank while being read")
    _matches(whole, path, file_id)


def _matches(whole: Hasher, path: Path, file_id: str) -> None:
    if whole.hexdigest() != file_id:
        raise ManifestError(f"{path} does not match its id {file_id[:12]}…")


def _digest(path: Path, file_id: str, *, whole: bool, done: ChunkDone | None = None) -> Manifest:
    size = path.stat().st_size
    base = Manifest.empty(file_id, size)
    digests: list[bytes | None] = []
    also = (content_hasher(file_id, size),) if whole else ()
    with path.open("rb") as f:
        read = pread_of(f.fileno())
        for i in range(base.n_chunks):
            start, end = base.span(i)
            hasher = xxhash.xxh3_128()
            if hash_range(read, start, end, hasher, *also) != end - start:
                raise ManifestError(f"{path} shrank while being read")
            digest = hasher.digest()
            digests.append(digest)
            if done is not None:
                done(end, digest)
    if also:
        _matches(also[0], path, file_id)
    return Manifest(file_id, size, base.chunk_size, tuple(digests))
