"""What a daemon's inventory shares, from the visibility records (hffs.visibility)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hffs.cache import HubCache
from hffs.config import ZERO_COMMIT
from hffs.daemon.app import CacheIndex, scan_inventory
from hffs.visibility import VisibilityStore

COMMIT = "a" * 40


def put(cache: HubCache, repo: str, commit: str, path: str, data: bytes) -> str:
    fid = hashlib.sha256(data).hexdigest()
    blob = cache.blob_path("model", repo, fid)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    cache.link("model", repo, commit, path, fid)
    return fid


def test_only_ids_a_public_listing_names_are_shared(tmp_path: Path) -> None:
    cache = HubCache(tmp_path / "hub")
    listed = put(cache, "org/pub", COMMIT, "w.bin", b"listed by the hub")
    swapped = put(cache, "org/pub", COMMIT, "x.bin", b"changed on this machine")
    imported = put(cache, "org/pub", ZERO_COMMIT, "mine.bin", b"imported by the user")
    private = put(cache, "org/priv", COMMIT, "p.bin", b"private weights")
    unknown = put(cache, "org/unknown", COMMIT, "u.bin", b"who knows")
    from_peers = put(cache, "org/unknown", COMMIT, "v.bin", b"a peer served this")
    store = VisibilityStore(tmp_path / "home")
    store.record("model", "org/pub", "public", [listed])
    store.record("model", "org/priv", "private", [private])  # ids of a private repo: ignored
    store.record_peer_ids([from_peers])
    inv = scan_inventory(cache, tmp_path / "partial", store)
    assert set(inv.files) == {listed, from_peers}
    assert {r[1] for r in inv.repos} == {"org/pub"}  # revisions: of public repos only
    index = CacheIndex(cache, store)
    index.inventory = inv
    for fid in (swapped, imported, private, unknown):
        assert not index.shares(fid) and index.complete_path(fid) is None
    assert index.complete_path(listed) is not None
    # a private swarm shares everything with its members
    members = VisibilityStore(tmp_path / "home", private_swarm=True)
    assert len(scan_inventory(cache, tmp_path / "partial", members).files) == 6
    # a record written by another process (the CLI) is seen
    VisibilityStore(tmp_path / "home").record("model", "org/unknown", "public", [unknown])
    store._read_at = -1e18  # as after a second
    assert store.id_shared(unknown)
