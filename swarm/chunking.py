"""The one deterministic rule that cuts a file into chunks.

Every honest peer computes the same cut from the file size alone, so chunk
``i`` of a file means the same bytes everywhere without any negotiation.
"""

from __future__ import annotations

MIN_CHUNK_SIZE = 1 << 20  # 1 MiB: small enough to spread a 100 MB file over many peers
MAX_CHUNK_SIZE = 1 << 26  # 64 MiB: bounds the memory one in-flight chunk may take
TARGET_MAX_CHUNKS = 4096  # keeps manifests and have-bitmaps small for huge files
# The largest file anyone may claim (1 TiB, 16384 chunks; the hub's limit is far lower):
# every size from a peer or upstream is checked against it, so no claim can make a
# manifest, bitmap, chunk table or state file larger than this bound allows.
MAX_FILE_SIZE = 1 << 40


def chunk_size_for(size: int) -> int:
    """Chunk size for a file of ``size`` bytes: the smallest power of two >= 1 MiB
    giving at most TARGET_MAX_CHUNKS chunks (capped at 64 MiB)."""
    if not 0 <= size <= MAX_FILE_SIZE:
        raise ValueError(f"not a file size: {size}")
    chunk = MIN_CHUNK_SIZE
    while chunk < MAX_CHUNK_SIZE and chunk * TARGET_MAX_CHUNKS < size:
        chunk <<= 1
    return chunk


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks; an empty file has none."""
    return -(-size // chunk_size)


def chunk_span(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """Byte range ``[start, end)`` of chunk ``index``."""
    if not 0 <= index < chunk_count(size, chunk_size):
        raise IndexError(f"chunk {index} out of range for size {size}")
    start = index * chunk_size
    return start, min(start + chunk_size, size)
