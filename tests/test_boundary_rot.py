"""Issue 9, item 14: a holder whose blob rotted on disk stops serving it once a downloader
tells it so; a false report costs the holder one chunk read and changes nothing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx

from hffs.cache import HubCache
from hffs.daemon.app import CacheIndex, create_app, scan_inventory
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.peer_server import UploadLimits, UploadStats
from tests.hostile import corrupt_bytes_published, wait_until
from tests.localhub import LocalHub
from tests.nodes import COMMIT, REPO, Node
from tests.test_swarm import FILE, blob_of, bytes_up, cached_bytes, start_swarm, use_hub


def rot(blob: Path, every: int) -> None:
    """Flip one byte in each ``every`` bytes, keeping size and mtime (as bit rot does)."""
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    for i in range(0, len(data), every):
        data[i + 100] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_rotted_seed_is_told_and_stops_serving(
    nodes: Callable[[str], Node], tmp_path: Path
) -> None:
    data = os.urandom(8 * MIN_CHUNK_SIZE)
    fid = hashlib.sha256(data).hexdigest()
    with LocalHub() as hub:
        hub.add_repo(REPO, {FILE: data})
        hub.inject("5xx", count=None)  # no upstream: only peers can give the bytes
        bad, good = nodes("127.0.0.2"), nodes("127.0.0.3")
        for node in (bad, good):
            node.add_model_file(FILE, data)
        d = nodes("127.0.0.4")
        use_hub(d, hub)
        start_swarm([bad, good], d)
        # The seed digests its blob while it is whole (its manifest is cached), then the
        # blob rots under it, size and mtime unchanged.
        assert httpx.get(f"{bad.url}/v1/blobs/{fid}/manifest", timeout=10).status_code == 200
        rot(blob_of(bad, data), MIN_CHUNK_SIZE)
        assert bad.client().status()["files_shared"] == 1

        r = d.cli("model", "add", REPO)
        assert r.returncode == 0, r.stderr
        assert cached_bytes(d) == data  # completed from the honest seed
        assert bytes_up(good) >= len(data) - 3 * MIN_CHUNK_SIZE

        # Told by the downloader, the rotted seed checked, dropped the blob, and no longer
        # serves or announces it.
        def gone() -> bool:
            r = httpx.get(f"{bad.url}/v1/blobs/{fid}", headers={"range": "bytes=0-0"}, timeout=10)
            return r.status_code == 404

        assert wait_until(gone, 30)
        assert httpx.get(f"{bad.url}/v1/blobs/{fid}/manifest", timeout=10).status_code == 404
        assert not blob_of(bad, data).exists()
        assert wait_until(lambda: bad.client().status()["files_shared"] == 0, 30)
        assert corrupt_bytes_published(d.hub) == 0
        # The honest seed was never dropped for it.
        assert httpx.get(f"{good.url}/v1/blobs/{fid}/manifest", timeout=10).status_code == 200


def _holder(root: Path, data: bytes) -> tuple[Path, object]:
    cache = HubCache(root / "hub")
    fid = hashlib.sha256(data).hexdigest()
    blob = cache.blob_path("model", REPO, fid)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    cache.link("model", REPO, COMMIT, FILE, fid)
    index = CacheIndex(cache)
    index.inventory = scan_inventory(cache, root / "partial")
    dropped: list[str] = []

    async def on_rotten(file_id: str, path: Path) -> None:
        dropped.append(file_id)

    app = create_app(
        index,
        root / "partial",
        root / "manifests",
        limits=UploadLimits(),
        stats=UploadStats(),
        verifier=None,
        on_rotten=on_rotten,
    )
    return blob, (app, dropped)


def test_a_false_report_changes_nothing_and_reports_are_rate_limited(tmp_path: Path) -> None:
    data = os.urandom(3 * MIN_CHUNK_SIZE)
    fid = hashlib.sha256(data).hexdigest()
    blob, (app, dropped) = _holder(tmp_path, data)  # type: ignore[misc]

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://h") as c:
            for bad_query in ("", "?chunk=3", "?chunk=-1", "?chunk=x", "?chunk=" + "9" * 30):
                assert (await c.post(f"/v1/blobs/{fid}/bad{bad_query}")).status_code == 400
            r = await c.post(f"/v1/blobs/{fid}/bad?chunk=1")
            assert r.json() == {"checked": True, "rotten": False}
            r = await c.post(f"/v1/blobs/{fid}/bad?chunk=1")  # at once again: not re-read
            assert r.status_code == 202 and r.json() == {"checked": False}
            r = await c.get(f"/v1/blobs/{fid}", headers={"range": "bytes=0-9"})
            assert r.status_code == 206 and r.content == data[:10]

    anyio.run(go)
    assert dropped == [] and blob.read_bytes() == data
