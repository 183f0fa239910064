"""The cache layer and the peer-listing parser refuse anything that could name a path
outside the cache, whoever calls them (defense in depth behind every parser)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hffs.cache import CacheError, HubCache
from hffs.listing import ListingError, parse_listing

COMMIT = "a" * 40
FID = "b" * 64


def listing(**over: object) -> bytes:
    body: dict[str, object] = {
        "commit": COMMIT,
        "fetched_at": 1.0,
        "files": [{"path": "config.json", "file_id": FID, "size": 3}],
    }
    body.update(over)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "commit", ["/home/victim", "../../x", "A" * 40, "a" * 39, "a" * 41, "", 7, None, "a" * 40 + "/"]
)
def test_cache_refuses_a_commit_that_is_not_a_commit(tmp_path: Path, commit: object) -> None:
    cache = HubCache(tmp_path / "hub")
    blob = cache.blob_path("model", "org/name", FID)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"abc")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / ".bashrc").write_text("mine")
    with pytest.raises(CacheError):
        cache.link("model", "org/name", commit, ".bashrc", FID)  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        cache.write_ref("model", "org/name", "main", commit)  # type: ignore[arg-type]
    assert (victim / ".bashrc").read_text() == "mine"
    assert not (victim / ".bashrc").is_symlink()
    assert sorted(p.name for p in victim.iterdir()) == [".bashrc"]


@pytest.mark.parametrize(
    "repo_id", ["../../etc", "org/../x", "a/b/c", "/abs", "org--x", "", "x" * 200, "a\\b"]
)
def test_cache_refuses_a_repo_id_the_hub_could_not_have(tmp_path: Path, repo_id: str) -> None:
    cache = HubCache(tmp_path / "hub")
    with pytest.raises(CacheError):
        cache.snapshot_dir("model", repo_id, COMMIT)
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\..\\x", "a\0b", ""]
)
def test_cache_refuses_a_path_that_leaves_the_snapshot(tmp_path: Path, path: str) -> None:
    cache = HubCache(tmp_path / "hub")
    blob = cache.blob_path("model", "org/name", FID)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"abc")
    with pytest.raises(CacheError):
        cache.link("model", "org/name", COMMIT, path, FID)
    outside = {p for p in tmp_path.rglob("*") if "hub" not in p.relative_to(tmp_path).parts[:1]}
    assert outside == set()


def test_cache_refuses_a_blob_id_that_is_not_an_id(tmp_path: Path) -> None:
    cache = HubCache(tmp_path / "hub")
    for bad in ["../../../x", "B" * 64, "b" * 63]:
        with pytest.raises(CacheError):
            cache.blob_path("model", "org/name", bad)


def test_foreign_folders_in_the_cache_are_skipped_not_fatal(tmp_path: Path) -> None:
    cache = HubCache(tmp_path / "hub")
    (tmp_path / "hub" / "models--a--b--c").mkdir(parents=True)  # not a repo id
    (tmp_path / "hub" / "models--org--name" / "snapshots" / "not-a-commit").mkdir(parents=True)
    assert list(cache.iter_repos()) == [("model", "org/name")]
    assert cache.commits("model", "org/name") == []
    assert cache.files("model", "org/name") == []


def test_a_sound_listing_parses() -> None:
    got = parse_listing(listing())
    assert got.commit == COMMIT
    assert [(f.path, f.file_id, f.size, f.lfs) for f in got.files] == [
        ("config.json", FID, 3, True)
    ]


@pytest.mark.parametrize(
    "raw",
    [
        listing(commit="/home/victim"),
        listing(commit="A" * 40),
        listing(files=[{"path": ".bashrc", "file_id": FID, "size": 3}] * 2),
        listing(files=[{"path": "../x", "file_id": FID, "size": 3}]),
        listing(files=[{"path": "a", "file_id": "../../x", "size": 3}]),
        listing(files=[{"path": "a", "file_id": FID, "size": True}]),
        listing(files=[{"path": "a", "file_id": FID, "size": -1}]),
        listing(files=[{"path": "a", "file_id": FID, "size": 1 << 60}]),
        listing(files=[{"path": "a", "file_id": FID, "size": 3.0}]),
        listing(files=[]),
        listing(files={"a": 1}),
        b"[" * 200_000,
        b'{"commit": ' + b"[" * 100_000,
        b"\xff\xfe",
        b"null",
        b"x" * (5 << 20),
    ],
)
def test_a_bad_listing_is_refused_whole(raw: bytes) -> None:
    with pytest.raises(ListingError):
        parse_listing(raw)


def test_an_absurd_fetched_at_is_no_claim() -> None:
    assert parse_listing(listing(fetched_at=1e300)).fetched_at == 1e300  # a hint only
    assert parse_listing(listing(fetched_at="soon")).fetched_at == 0.0
    raw = listing().replace(b'"fetched_at": 1.0', b'"fetched_at": NaN')
    assert parse_listing(raw).fetched_at == 0.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {}, optional={"commit": json_values, "files": json_values, "fetched_at": json_values}
    )
    | json_values
)
def test_any_json_either_parses_to_safe_fields_or_is_refused(body: object) -> None:
    try:
        got = parse_listing(json.dumps(body).encode())
    except ListingError:
        return
    assert len(got.commit) == 40
    for f in got.files:
        assert not os.path.isabs(f.path) and ".." not in f.path.split("/")
        assert f.size >= 0
