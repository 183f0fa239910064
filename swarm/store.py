"""The chunk store: partial files being downloaded, one sparse file each.

For every file id it keeps, in one directory:

- ``<id>.part``: the file's bytes, written in place at each chunk's offset (sparse);
- ``<id>.state``: a header and one record per chunk (a "have" flag and the chunk's
  xxh3-128 digest), updated after the chunk's bytes are written, so a process
  killed at any moment leaves at worst a chunk that is re-fetched;
- ``<id>.manifest``: the manifest a full holder gave us, once we have one.

On open, every chunk marked present is checked again against its recorded digest:
xxh3 runs at memory speed, and this catches a torn write after a crash. Nothing
here is ever visible to Hugging Face tools; a file leaves the store only through
``publish`` after its whole-file hash matched its id.

One process at a time may write a file (an advisory lock); any process may read
the state to serve verified chunks to peers while the download goes on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import xxhash

from swarm import portable
from swarm.chunking import MAX_FILE_SIZE, chunk_count, chunk_size_for
from swarm.files import atomic_write, hash_range, pread_of
from swarm.ids import check_file_id, content_hasher
from swarm.manifest import DIGEST_SIZE, Manifest, ManifestError, chunk_digest

# A published file reaches the disk in the background: a download ends at the rename,
# as curl's, huggingface_hub's and libtorrent's end at their last write, instead of
# waiting for the disk (0.5 s per GiB on the test VM, seconds on a slow disk). A crash
# before the flush can leave the blob short or zeroed; a seed's chunk digests and every
# downloader's checks catch that, and the self-check drops the copy (swarm.selfcheck).
_SYNCS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hffs-sync")


def sync_later(path: Path) -> Future[None]:
    """Flush ``path`` to its disk soon, in the one flushing thread (joined at exit)."""
    return _SYNCS.submit(portable.sync_file, path)


_MAGIC = b"HFFSPRT2"
_HEADER = struct.Struct("<8sQQ")
_PROGRESS = struct.Struct("<I")
# Per chunk: a "have" flag, the chunk's digest, and how many leading bytes of a chunk
# still being streamed in are on disk (so a killed download resumes mid-chunk).
_RECORD = 1 + DIGEST_SIZE + _PROGRESS.size

# Told (root, file id, chunk, digest) each time a chunk becomes held in this process,
# after its record is written: the haves stream pushes it to followers at once
# (swarm/have.py) instead of reading the state file on a timer. Hooks are cheap,
# synchronous and never raise.
ChunkHook = Callable[[Path, str, int, bytes], None]
chunk_hooks: list[ChunkHook] = []

# Told (root, manifest, dest) each time a file is published in this process, once it
# is at ``dest``: the digests its download verified, so the daemon's seed side keeps
# them as the blob's manifest instead of reading the blob again. Same rules as above.
PublishHook = Callable[[Path, Manifest, Path], None]
publish_hooks: list[PublishHook] = []


def part_path(root: Path, file_id: str) -> Path:
    """Where the bytes of ``file_id``'s partial download are (sparse, written in place)."""
    return root / f"{file_id}.part"


class StoreError(Exception):
    """The store cannot do what was asked (disk full, locked, inconsistent)."""


def _write_error(path: Path, exc: OSError) -> StoreError:
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "; free some space, then run the same command again to resume"
    return StoreError(f"cannot write {path}: {exc.strerror or exc}{hint}")


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """A positional write until every byte is written: on a filling disk a write can be short
    (no error), and only the next one raises ENOSPC."""
    view = memoryview(data)
    while view:
        n = portable.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class PartialFile:
    """A file being downloaded; see the module docstring for its on-disk form."""

    def __init__(self, root: Path, file_id: str, size: int, *, lock: bool = True) -> None:
        self.file_id = check_file_id(file_id)
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            raise StoreError(f"{file_id[:12]}…: {str(size)[:40]} is not a file size")
        self.root = root
        self.size = size
        base = Manifest.empty(file_id, size)
        self.chunk_size = base.chunk_size
        self.n_chunks = base.n_chunks
        self._digests: list[bytes | None] = [None] * self.n_chunks
        self._progress = [0] * self.n_chunks
        self.drops = 0  # chunks given up after being held: anything hashed over them is void
        self.manifest: Manifest | None = None
        root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        if lock:
            self._lock_fd = portable.lock_file(self._path(".lock"))
            if self._lock_fd is None:
                raise StoreError(f"{file_id[:12]}… is being downloaded by another process")
        flags = os.O_RDWR | os.O_CREAT | portable.O_BINARY
        self._fd = os.open(part_path(root, self.file_id), flags, 0o644)
        self._state_fd = os.open(self._path(".state"), flags, 0o644)
        self._load()

    # -- paths and loading -------------------------------------------------

    def _path(self, suffix: str) -> Path:
        return self.root / f"{self.file_id}{suffix}"

    def _load(self) -> None:
        header = portable.pread(self._state_fd, _HEADER.size, 0)
        fresh = _HEADER.pack(_MAGIC, self.size, self.chunk_size)
        if header != fresh:  # new, or a different size was recorded: start over
            # Only the header: records and bytes take space as verified data arrives,
            # never ahead of it on a size someone claimed (a missing record is "absent").
            os.ftruncate(self._state_fd, 0)
            _pwrite_all(self._state_fd, fresh, 0)
            os.ftruncate(self._fd, 0)
            self._path(".manifest").unlink(missing_ok=True)
        if os.fstat(self._fd).st_size > self.size:
            os.ftruncate(self._fd, self.size)
        manifest_path = self._path(".manifest")
        if manifest_path.exists():
            try:
                self.manifest = Manifest.from_json(
                    manifest_path.read_bytes(), file_id=self.file_id, size=self.size
                )
            except ManifestError:
                manifest_path.unlink()
        records = portable.pread(self._state_fd, _RECORD * self.n_chunks, _HEADER.size)
        for i in range(self.n_chunks):
            rec = records[i * _RECORD : (i + 1) * _RECORD]
            if len(rec) != _RECORD:
                continue
            if rec[0] == 1:
                digest = rec[1 : 1 + DIGEST_SIZE]
                if self._expected(i) in (None, digest) and self._digest_on_disk(i) == digest:
                    self._digests[i] = digest
                else:
                    self._set_record(i, None)
            else:
                (done,) = _PROGRESS.unpack_from(rec, 1 + DIGEST_SIZE)
                start, end = self.span(i)
                self._progress[i] = done if done < end - start else 0

    def _digest_on_disk(self, index: int) -> bytes:
        start, end = self.span(index)
        hasher = xxhash.xxh3_128()
        hash_range(pread_of(self._fd), start, end, hasher)
        return hasher.digest()

    # -- queries -----------------------------------------------------------

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def has(self, index: int) -> bool:
        return self._digests[index] is not None

    def have(self) -> list[bool]:
        return [d is not None for d in self._digests]

    def missing(self) -> list[int]:
        return [i for i, d in enumerate(self._digests) if d is None]

    @property
    def complete(self) -> bool:
        return all(d is not None for d in self._digests)

    @property
    def bytes_have(self) -> int:
        return sum(e - s for i in range(self.n_chunks) if self.has(i) for s, e in [self.span(i)])

    def _expected(self, index: int) -> bytes | None:
        return self.manifest.digests[index] if self.manifest is not None else None

    def current_manifest(self) -> Manifest:
        """What we can tell peers: the trusted manifest, else the digests we have."""
        if self.manifest is not None:
            return self.manifest
        return Manifest(self.file_id, self.size, self.chunk_size, tuple(self._digests))

    # -- updates -----------------------------------------------------------

    def set_manifest(self, manifest: Manifest) -> list[int]:
        """Adopt a holder's manifest; chunks we hold that disagree with it are dropped.

        Returns the dropped chunk indexes."""
        if (manifest.file_id, manifest.size) != (self.file_id, self.size):
            raise ManifestError("manifest is for another file")
        dropped = [
            i
            for i, d in enumerate(self._digests)
            if d is not None and manifest.digests[i] not in (None, d)
        ]
        for i in dropped:
            self._set_record(i, None)
        self.manifest = manifest
        atomic_write(self._path(".manifest"), manifest.to_json())
        return dropped

    def clear_manifest(self) -> None:
        self.manifest = None
        self._path(".manifest").unlink(missing_ok=True)

    def write_chunk(self, index: int, data: bytes | bytearray, digest: bytes | None = None) -> bool:
        """Store chunk ``index`` if it has the right length and matches the manifest.

        Returns False (and stores nothing) for a bad chunk."""
        start, end = self.span(index)
        if len(data) != end - start:
            return False
        digest = digest if digest is not None else chunk_digest(data)
        expected = self._expected(index)
        if expected is not None and expected != digest:
            return False
        try:
            _pwrite_all(self._fd, data, start)
        except OSError as exc:
            raise _write_error(part_path(self.root, self.file_id), exc) from exc
        self._set_record(index, digest)
        return True

    def fileno(self) -> int:
        """The ``.part`` descriptor, for a writer that fills a chunk in place as its bytes
        arrive (hashing them as it goes); the chunk counts only after ``mark_written``."""
        return self._fd

    def mark_written(self, index: int, digest: bytes) -> bool:
        """Record chunk ``index``, whose bytes a caller wrote in place and hashed to
        ``digest``, as held if that matches the manifest. False (nothing held) otherwise."""
        expected = self._expected(index)
        if expected is not None and expected != digest:
            return False
        self._set_record(index, digest)
        return True

    def drop_chunks(self, indexes: Iterable[int]) -> None:
        for i in indexes:
            self._set_record(i, None)

    def progress(self, index: int) -> int:
        """Leading bytes of chunk ``index`` already on disk from an interrupted stream."""
        return self._progress[index]

    def write_streamed(self, index: int, offset: int, data: bytes) -> None:
        """Write part of chunk ``index`` as it arrives from a single trusted stream.

        Progress is recorded after the bytes, so a kill leaves it at most behind them.
        The chunk counts as held only after ``finish_streamed`` checked it."""
        start, end = self.span(index)
        if offset != self._progress[index] or start + offset + len(data) > end:
            raise StoreError(
                f"chunk {index}: write at {offset} does not follow {self._progress[index]}"
            )
        try:
            _pwrite_all(self._fd, data, start + offset)
            self._progress[index] = offset + len(data)
            _pwrite_all(
                self._state_fd,
                _PROGRESS.pack(self._progress[index]),
                _HEADER.size + index * _RECORD + 1 + DIGEST_SIZE,
            )
        except OSError as exc:
            raise _write_error(part_path(self.root, self.file_id), exc) from exc

    def finish_streamed(self, index: int) -> bytes | None:
        """Check a fully streamed chunk; returns its digest, or None (and forgets it) if bad."""
        start, end = self.span(index)
        digest = self._digest_on_disk(index)
        if self._progress[index] != end - start or self._expected(index) not in (None, digest):
            self._set_record(index, None)
            return None
        self._set_record(index, digest)
        return digest

    def _set_record(self, index: int, digest: bytes | None) -> None:
        if digest is None and self._digests[index] is not None:
            self.drops += 1
        self._digests[index] = digest
        self._progress[index] = 0
        record = b"\x01" + digest + bytes(_PROGRESS.size) if digest is not None else bytes(_RECORD)
        try:
            _pwrite_all(self._state_fd, record, _HEADER.size + index * _RECORD)
        except OSError as exc:
            raise _write_error(self._path(".state"), exc) from exc
        if digest is not None:
            for hook in chunk_hooks:
                hook(self.root, self.file_id, index, digest)

    def read_into(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from ``offset`` of the file (fewer bytes only at its end)."""
        return portable.pread_into(self._fd, view, offset)

    def read(self, start: int, end: int) -> bytes:
        return portable.pread(self._fd, end - start, start)

    def verify_whole(self) -> bool:
        """True when every chunk is present and the whole file hashes to its id."""
        if not self.complete:
            return False
        hasher = content_hasher(self.file_id, self.size)
        if hash_range(pread_of(self._fd), 0, self.size, hasher) != self.size:
            return False
        return hasher.hexdigest() == self.file_id

    def publish(self, dest: Path) -> None:
        """Move the verified file to ``dest`` atomically and forget it here.

        The caller must have seen ``verify_whole()`` return True."""
        verified = Manifest(self.file_id, self.size, self.chunk_size, tuple(self._digests))
        for fd in (self._fd, self._state_fd):  # Windows renames no file that is open
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._state_fd = -1
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(self.root, self.file_id)
        try:
            os.replace(part, dest)
        except OSError:  # another filesystem: copy beside dest, then rename there
            tmp = dest.with_name(dest.name + ".hffs-tmp")
            try:
                shutil.copyfile(part, tmp)
                os.replace(tmp, dest)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"cannot publish {dest}: {exc.strerror}") from exc
        self.discard()
        sync_later(dest)
        for hook in publish_hooks:
            hook(self.root, verified, dest)

    def discard(self) -> None:
        """Remove every trace of this partial file."""
        self.close()
        for suffix in (".part", ".state", ".manifest", ".lock"):
            self._path(suffix).unlink(missing_ok=True)

    def close(self) -> None:
        for fd in (self._fd, self._state_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._lock_fd is not None:
            portable.unlock_file(self._lock_fd)
        self._fd = self._state_fd = -1
        self._lock_fd = None

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_state(root: Path, file_id: str) -> tuple[int, list[bytes | None]] | None:
    """(size, per-chunk digest or None) from a state file, or None if it is not a sane
    one; records past the end of the file (never written) are absent chunks."""
    path = root / f"{check_file_id(file_id)}.state"
    try:
        with path.open("rb") as f:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return None
            magic, size, chunk_size = _HEADER.unpack(header)
            if magic != _MAGIC or not 0 <= size <= MAX_FILE_SIZE:
                return None
            if chunk_size != chunk_size_for(size):
                return None
            n = chunk_count(size, chunk_size)
            raw = f.read(n * _RECORD)  # bounded by the largest file's chunk count
    except FileNotFoundError:
        return None
    digests: list[bytes | None] = [None] * n
    for i in range(min(n, len(raw) // _RECORD)):
        pos = i * _RECORD
        if raw[pos] == 1:
            digests[i] = raw[pos + 1 : pos + 1 + DIGEST_SIZE]
    return size, digests


def read_partial_state(root: Path, file_id: str) -> tuple[int, list[bool]] | None:
    """(size, have-flags) of a partial file, read without taking its lock.

    For serving verified chunks of a file another process is still downloading."""
    state = _read_state(root, file_id)
    return None if state is None else (state[0], [d is not None for d in state[1]])


def partial_digests(root: Path, file_id: str) -> list[bytes | None]:
    """The recorded digest of each chunk of a partial file (None where absent)."""
    state = _read_state(root, file_id)
    if state is None:
        raise FileNotFoundError(f"no partial state for {file_id[:12]}…")
    return state[1]
