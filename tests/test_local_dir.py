"""hffs.local_dir places files as ``hf download --local-dir`` does, so that
huggingface_hub itself finds them up to date and fetches nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from hffs.cache import HubCache
from hffs.local_dir import is_current, place
from hffs.selection import SelectionError
from tests.localhub import LocalHub

REPO = "org/local-dir"
FILES = {
    "config.json": b'{"a": 1}\n',  # a git blob: etag is its sha1
    "model.safetensors": b"w" * 5000,  # LFS: etag is its sha256
    "sub/dir/notes.txt": b"hello\n",
}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root, but hf's tree-listing cache (hffs keeps no such listing)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "trees" not in p.relative_to(root).parts
    }


def test_same_layout_as_hf_and_hf_fetches_nothing_again(hub: LocalHub, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, FILES)
    cache_dir = tmp_path / "cache"  # as the swarm fills it
    snapshot_download(REPO, revision=commit, endpoint=hub.url, cache_dir=cache_dir, token=False)
    cache = HubCache(cache_dir)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for path in FILES:
        f = hub.get_file(REPO, path, commit)
        blob = cache.blob_path("model", REPO, f.etag)
        assert blob.is_file()
        placed = place(ours, path, blob, commit, f.etag)
        assert placed == ours.joinpath(*path.split("/")) and not placed.is_symlink()
        assert placed.stat().st_ino != blob.stat().st_ino  # a copy: edits never reach the blob
    snapshot_download(REPO, revision=commit, endpoint=hub.url, local_dir=theirs, token=False)

    a, b = tree(ours), tree(theirs)
    assert set(a) == set(b)
    for name in a:
        if name.endswith(".metadata"):  # commit, etag, then a timestamp
            assert a[name].splitlines()[:2] == b[name].splitlines()[:2], name
        else:
            assert a[name] == b[name], name

    # huggingface_hub, pointed at our folder, finds every file current: no file byte moves
    hub.reset_stats()
    snapshot_download(REPO, revision=commit, endpoint=hub.url, local_dir=ours, token=False)
    assert hub.bytes_served == 0

    # an edited copy is no longer current, and placing again restores it
    f = hub.get_file(REPO, "config.json", commit)
    edited = ours / "config.json"
    edited.write_bytes(b'{"a": 2}\n')
    later = edited.stat().st_mtime + 10  # hf trusts its metadata within a second of it
    os.utime(edited, (later, later))
    assert not is_current(ours, "config.json", f.etag, len(FILES["config.json"]))
    place(ours, "config.json", cache.blob_path("model", REPO, f.etag), commit, f.etag)
    assert edited.read_bytes() == FILES["config.json"]


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", ".cache/huggingface/x", "a/../../b", ""])
def test_a_path_cannot_leave_the_folder(tmp_path: Path, bad: str) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    with pytest.raises((SelectionError, ValueError)):
        place(tmp_path / "dir", bad, blob, "c" * 40, "a" * 40)
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()
