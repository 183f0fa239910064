"""One parser per wire shape (issue 9, items 3 and 8), alone: the manifest, the have-bitmap,
and the store's refusal to size anything by a claim."""

from __future__ import annotations

import hashlib
import json
import os
import resource
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.chunking import MAX_FILE_SIZE, MIN_CHUNK_SIZE, chunk_count, chunk_size_for
from swarm.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError, chunk_digest
from swarm.store import PartialFile, StoreError, read_partial_state
from swarm.wire import decode_have, encode_have

FID = hashlib.sha256(b"x").hexdigest()
SIZE = 2 * MIN_CHUNK_SIZE + 7


def honest() -> dict[str, Any]:
    n = chunk_count(SIZE, chunk_size_for(SIZE))
    return {
        "file_id": FID,
        "size": SIZE,
        "chunk_size": chunk_size_for(SIZE),
        "digests": [chunk_digest(bytes([i])).hex() for i in range(n)],
    }


def test_the_honest_manifest_parses() -> None:
    m = Manifest.from_json(json.dumps(honest()).encode(), file_id=FID, size=SIZE)
    assert m.n_chunks == 3 and m.complete


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 200_000,  # RecursionError inside json
        b"{" * 100_000,
        b"[]",
        b"null",
        b'"x"',
        b"1e999",
        b"\xff\xfe",
        b" " * (MAX_MANIFEST_BYTES + 1),
    ],
)
def test_malformed_bytes_are_a_manifest_error(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(raw, file_id=FID, size=SIZE)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("size", True),  # bool is not an int here
        ("size", -1),
        ("size", float(SIZE)),
        ("size", str(SIZE)),
        ("size", MAX_FILE_SIZE + 1),
        ("size", 1 << 50),  # a peer-claimed 1 PiB
        ("chunk_size", True),
        ("chunk_size", float(MIN_CHUNK_SIZE)),
        ("chunk_size", MIN_CHUNK_SIZE * 2),
        ("file_id", FID.upper()),
        ("file_id", ["x"]),
        ("digests", None),
        ("digests", "ab" * 16),
        ("digests", [None, None]),
        ("digests", [None, None, None, None]),
        ("digests", [None, None, 1]),
        ("digests", [None, None, "AB" * 16]),
        ("digests", [None, None, "ab" * 15]),
        ("digests", [None, None, "a b" * 11]),
        ("digests", [None, None, {"x": 1}]),
    ],
)
def test_wrong_types_and_sizes_are_refused(key: str, value: Any) -> None:
    body = {**honest(), key: value}
    with pytest.raises(ManifestError):
        Manifest.from_json(json.dumps(body).encode(), file_id=FID)


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
        max_leaves=20,
    )


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(list(honest())), json_values()), st.binary(max_size=64))
def test_manifest_parser_raises_only_its_error(patch: dict[str, Any], noise: bytes) -> None:
    for raw in (json.dumps({**honest(), **patch}).encode(), noise):
        try:
            m = Manifest.from_json(raw, file_id=FID, size=SIZE)
        except ManifestError:
            continue
        assert m.size == SIZE and len(m.digests) == m.n_chunks == 3  # only the honest shape


@given(st.binary(max_size=8), st.integers(0, 40))
def test_have_bitmap_parser(raw: bytes, n: int) -> None:
    try:
        flags = decode_have(raw, n)
    except ValueError:
        return
    assert len(flags) == n and encode_have(flags) == raw  # only the canonical encoding


def test_have_bitmap_refuses_bits_past_the_end() -> None:
    assert decode_have(b"\xe0", 3) == [True, True, True]
    with pytest.raises(ValueError):
        decode_have(b"\xf0", 3)
    with pytest.raises(ValueError):
        decode_have(b"\xe0\x00", 3)


# -- the store sizes nothing by a claim -------------------------------------------------


def test_a_claimed_size_allocates_nothing_ahead_of_data(tmp_path: Path) -> None:
    """Item 8: a peer-claimed huge size costs a header on disk and a bounded table in
    memory; a claim past the largest file is refused outright."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with PartialFile(tmp_path, FID, MAX_FILE_SIZE) as pf:
        assert pf.n_chunks == 16384
        on_disk = {p.suffix: p.stat().st_size for p in tmp_path.iterdir()}
        assert on_disk[".state"] < 64 and on_disk[".part"] == 0
        data = os.urandom(pf.chunk_size)
        assert pf.write_chunk(5, data)
        assert os.stat(tmp_path / f"{FID}.part").st_blocks * 512 < 2 * pf.chunk_size
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024  # the chunk itself (64 MiB) and a few small tables
    size, flags = read_partial_state(tmp_path, FID)  # type: ignore[misc]
    assert size == MAX_FILE_SIZE and len(flags) == 16384 and flags[5] and sum(flags) == 1
    with PartialFile(tmp_path, FID, MAX_FILE_SIZE) as pf:  # resumes the one chunk
        assert pf.has(5) and not pf.has(4) and not pf.has(6)
    for claim in (MAX_FILE_SIZE + 1, 1 << 50, -1, True):
        with pytest.raises(StoreError):
            PartialFile(tmp_path, FID, claim)  # type: ignore[arg-type]
