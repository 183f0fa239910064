"""The chunk rule, manifests and the chunk store, alone."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.chunking import (
    MAX_FILE_SIZE,
    MIN_CHUNK_SIZE,
    TARGET_MAX_CHUNKS,
    chunk_count,
    chunk_size_for,
    chunk_span,
)
from swarm.ids import check_file_id, content_hasher
from swarm.manifest import Manifest, ManifestError, build_manifest, chunk_digest
from swarm.store import PartialFile, StoreError, partial_digests, read_partial_state


@given(st.integers(min_value=0, max_value=MAX_FILE_SIZE))
def test_chunk_rule_covers_the_file_exactly(size: int) -> None:
    chunk = chunk_size_for(size)
    assert chunk >= MIN_CHUNK_SIZE and chunk & (chunk - 1) == 0
    n = chunk_count(size, chunk)
    assert n <= TARGET_MAX_CHUNKS or chunk == 1 << 26
    if n:
        assert chunk_span(0, size, chunk)[0] == 0
        assert chunk_span(n - 1, size, chunk)[1] == size
        assert chunk_span(n - 1, size, chunk)[0] < size


def test_chunk_span_rejects_out_of_range() -> None:
    with pytest.raises(IndexError):
        chunk_span(1, MIN_CHUNK_SIZE, MIN_CHUNK_SIZE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_ids_and_hashers() -> None:
    data = b"hello world\n"
    assert git_sha1(data) == "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"  # `git hash-object`
    for file_id in (sha256(data), git_sha1(data)):
        h = content_hasher(file_id, len(data))
        h.update(data)
        assert h.hexdigest() == file_id
    for bad in ("", "../etc/passwd", "A" * 64, "0" * 63, "g" * 40):
        with pytest.raises(ValueError):
            check_file_id(bad)


def make_file(tmp_path: Path, size: int) -> tuple[Path, bytes, str]:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return path, data, sha256(data)


def test_manifest_round_trip_and_rejects_lies(tmp_path: Path) -> None:
    path, data, fid = make_file(tmp_path, 2 * MIN_CHUNK_SIZE + 5)
    m = build_manifest(path, fid)
    assert m.n_chunks == 3 and m.complete
    assert m.digests[2] == chunk_digest(data[2 * MIN_CHUNK_SIZE :])
    assert Manifest.from_json(m.to_json(), file_id=fid, size=len(data)) == m
    with pytest.raises(ManifestError):
        Manifest.from_json(m.to_json(), file_id=sha256(b"other"))
    with pytest.raises(ManifestError):
        Manifest.from_json(m.to_json(), file_id=fid, size=len(data) + 1)
    with pytest.raises(ManifestError):
        Manifest.from_json(b"{not json", file_id=fid)
    lie = m.to_json().replace(b'"chunk_size":1048576', b'"chunk_size":4096')
    with pytest.raises(ManifestError):
        Manifest.from_json(lie, file_id=fid)


def test_store_writes_resumes_and_publishes(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    _, data, fid = make_file(tmp_path, 3 * MIN_CHUNK_SIZE + 100)
    pf = PartialFile(root, fid, len(data))
    assert pf.n_chunks == 4 and pf.missing() == [0, 1, 2, 3]
    for i in (0, 2):
        s, e = pf.span(i)
        assert pf.write_chunk(i, data[s:e])
    assert not pf.write_chunk(1, b"short")  # wrong length is refused
    # another process sees the verified chunks without the lock
    size, flags = read_partial_state(root, fid)
    assert size == len(data) and flags == [True, False, True, False]
    assert partial_digests(root, fid)[2] == chunk_digest(
        data[2 * MIN_CHUNK_SIZE : 3 * MIN_CHUNK_SIZE]
    )
    # only one writer at a time
    with pytest.raises(StoreError):
        PartialFile(root, fid, len(data))
    pf.close()

    pf = PartialFile(root, fid, len(data))  # resume: what was written is kept
    assert pf.missing() == [1, 3]
    for i in (1, 3):
        s, e = pf.span(i)
        pf.write_chunk(i, data[s:e])
    assert pf.complete and pf.verify_whole()
    dest = tmp_path / "blobs" / fid
    pf.publish(dest)
    assert dest.read_bytes() == data
    assert not any(root.iterdir())


def test_publish_ends_at_the_rename_and_the_blob_reaches_the_disk_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "partial"
    _, data, fid = make_file(tmp_path, 2 * MIN_CHUNK_SIZE + 5)
    disk = threading.Event()  # a disk that takes as long as the test says
    flushed: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        assert disk.wait(30)
        flushed.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    with PartialFile(root, fid, len(data)) as pf:
        for i in range(pf.n_chunks):
            s, e = pf.span(i)
            assert pf.write_chunk(i, data[s:e])
        assert pf.verify_whole()
        dest = tmp_path / "blobs" / fid
        pf.publish(dest)  # returns while the flush waits for the disk
    assert dest.read_bytes() == data and flushed == []
    disk.set()
    ino = dest.stat().st_ino  # (another test's earlier publish may be flushed first)
    deadline = time.monotonic() + 30
    while ino not in flushed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ino in flushed  # the published blob itself was flushed


def test_store_drops_torn_chunks_on_resume(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    _, data, fid = make_file(tmp_path, 2 * MIN_CHUNK_SIZE)
    with PartialFile(root, fid, len(data)) as pf:
        pf.write_chunk(0, data[:MIN_CHUNK_SIZE])
        pf.write_chunk(1, data[MIN_CHUNK_SIZE:])
    with (root / f"{fid}.part").open("r+b") as f:  # a crash left chunk 1 half-written
        f.seek(MIN_CHUNK_SIZE + 10)
        f.write(b"\0" * 100)
    with PartialFile(root, fid, len(data)) as pf:
        assert pf.missing() == [1]


def test_store_manifest_rejects_bad_chunks_and_drops_disagreeing(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    path, data, fid = make_file(tmp_path, 2 * MIN_CHUNK_SIZE)
    good = build_manifest(path, fid)
    with PartialFile(root, fid, len(data)) as pf:
        bad0 = bytes(MIN_CHUNK_SIZE)
        assert pf.write_chunk(0, bad0)  # no manifest yet: accepted on its own digest
        assert pf.set_manifest(good) == [0]  # disagrees with the holder's manifest: dropped
        assert not pf.write_chunk(1, bytes(MIN_CHUNK_SIZE))
        assert pf.write_chunk(1, data[MIN_CHUNK_SIZE:])
        assert pf.missing() == [0]
    with PartialFile(root, fid, len(data)) as pf:  # the manifest survives a restart
        assert pf.manifest == good


def test_whole_file_check_catches_a_consistent_lie(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    _, data, fid = make_file(tmp_path, MIN_CHUNK_SIZE)
    with PartialFile(root, fid, len(data)) as pf:
        pf.write_chunk(0, os.urandom(MIN_CHUNK_SIZE))
        assert pf.complete and not pf.verify_whole()


def test_empty_file(tmp_path: Path) -> None:
    fid = sha256(b"")
    with PartialFile(tmp_path, fid, 0) as pf:
        assert pf.n_chunks == 0 and pf.complete and pf.verify_whole()
        pf.publish(tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b""
