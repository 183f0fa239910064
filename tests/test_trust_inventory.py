"""What a daemon's inventory shares, from the visibility records (hffs.visibility)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import anyio
import httpx

from hffs.cache import HubCache
from hffs.config import ZERO_COMMIT
from hffs.daemon.app import CacheIndex, scan_inventory
from hffs.daemon.sharing import VisibilityLearner
from hffs.daemon.upstream import Upstream
from hffs.trust import RELEARN_AFTER
from hffs.visibility import VisibilityStore
from tests.localhub import LocalHub

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


def test_a_public_repo_made_private_later_stops_being_shared(tmp_path: Path) -> None:
    """The learner asks upstream again about what it knows public once the answer is old:
    after the owner made the repo private, its files are no longer shared."""
    data = b"weights once public"
    with LocalHub() as hub:
        hub.add_repo("org/was-public", {"w.bin": data})
        cache = HubCache(tmp_path / "hub")
        fid = put(cache, "org/was-public", COMMIT, "w.bin", data)
        store = VisibilityStore(tmp_path / "home")

        async def on_change() -> None:
            pass

        async def go() -> int:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                learner = VisibilityLearner(cache, store, Upstream([hub.url], client), on_change)
                learner._asked.clear()  # each round as if RETRY_AFTER had passed
                return await learner.round()

        anyio.run(go)
        assert store.get("model", "org/was-public") == "public"
        store.record("model", "org/was-public", "public", [fid])
        index = CacheIndex(cache, store)
        index.inventory = scan_inventory(cache, tmp_path / "partial", store)
        assert index.shares(fid)

        hub.add_repo("org/was-public", {"w.bin": data}, private=True)  # the owner's change
        anyio.run(go)  # the answer is fresh: not asked again
        assert store.get("model", "org/was-public") == "public"
        record = store.root / "models--org--was-public.json"
        old = time.time() - RELEARN_AFTER - 1
        os.utime(record, (old, old))  # as if the answer were older than RELEARN_AFTER
        assert anyio.run(go) == 1  # asked again; a change: run() has the daemon rescan
        assert store.get("model", "org/was-public") == "private"
        assert not store.id_shared(fid)
        index.inventory = scan_inventory(cache, tmp_path / "partial", store)
        assert not index.shares(fid) and index.complete_path(fid) is None
