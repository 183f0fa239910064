"""The peer wire protocol server, driven in-process through httpx's ASGI transport."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette

from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.manifest import Manifest, build_manifest, chunk_digest
from swarm.peer_server import (
    PeerServer,
    RangeError,
    RateLimiter,
    UploadLimits,
    UploadStats,
    create_peer_app,
    parse_range,
    span_is_held,
)
from swarm.store import PartialFile
from swarm.wire import PeerAuth, decode_have, encode_have
from tests.blob_index import DictIndex

pytestmark = pytest.mark.anyio
SIZE = 2 * MIN_CHUNK_SIZE + 1000  # three chunks, the last one short


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _data(seed: int) -> bytes:
    return hashlib.sha256(b"%d" % seed).digest() * (SIZE // 32) + b"x" * (SIZE % 32)


class Swarm:
    """A complete file, a partial one (chunks 0 and 2 only), and the app over them."""

    def __init__(self, root: Path) -> None:
        self.full = _data(1)
        self.full_id = hashlib.sha256(self.full).hexdigest()
        blob = root / "blobs" / self.full_id
        blob.parent.mkdir(parents=True)
        blob.write_bytes(self.full)
        self.part = _data(2)
        self.part_id = hashlib.sha256(self.part).hexdigest()
        self.partial_root = root / "partial"
        with PartialFile(self.partial_root, self.part_id, SIZE) as pf:
            for i in (0, 2):
                start, end = pf.span(i)
                assert pf.write_chunk(i, self.part[start:end])
        self.manifest_dir = root / "manifests"
        self.index = DictIndex({self.full_id: blob})
        self.stats = UploadStats()

    def client(
        self, *, secret: str | None = None, limits: UploadLimits = UploadLimits()
    ) -> httpx.AsyncClient:
        app = create_peer_app(
            self.index,
            self.partial_root,
            self.manifest_dir,
            limits=limits,
            stats=self.stats,
            secret=secret,
        )
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
        # An IP base URL: a signed request names the address it goes to (swarm.peer_auth).
        return httpx.AsyncClient(transport=transport, base_url="http://10.9.9.9:9009")


@pytest.fixture
def swarm(tmp_path: Path) -> Swarm:
    return Swarm(tmp_path)


# -- plain decisions -------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "span"),
    [
        (None, None),
        ("bytes=0-0", (0, 1)),
        ("bytes=10-19", (10, 20)),
        ("bytes=90-", (90, 100)),
        ("bytes=-5", (95, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes=50-5000", (50, 100)),
        (" bytes = 1 - 2 ", (1, 3)),
    ],
)
def test_parse_range_accepts(header: str | None, span: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == span


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("bytes=100-", 416),
        ("bytes=100-200", 416),
        ("bytes=-0", 416),
        ("bytes=0-1,5-6", 416),
        ("bytes=5-2", 400),
        ("bytes=-", 400),
        ("bytes=a-b", 400),
        ("items=0-1", 400),
        ("bytes=0-1-2", 400),
        ("bytes=\u0661-\u0662", 400),  # non-ASCII digits
        ("", 400),
    ],
)
def test_parse_range_refuses(header: str, status: int) -> None:
    with pytest.raises(RangeError) as exc:
        parse_range(header, 100)
    assert exc.value.status == status


def test_any_range_of_an_empty_file_is_unsatisfiable() -> None:
    with pytest.raises(RangeError):
        parse_range("bytes=0-", 0)


@given(st.lists(st.booleans(), max_size=100))
def test_have_bitmap_round_trips(flags: list[bool]) -> None:
    raw = encode_have(flags)
    assert len(raw) == (len(flags) + 7) // 8
    assert decode_have(raw, len(flags)) == flags


def test_have_bitmap_is_msb_first() -> None:
    assert encode_have([True, False, True]) == b"\xa0"
    with pytest.raises(ValueError):
        decode_have(b"\x00\x00", 3)


def test_span_is_held() -> None:
    have = [True, False, True]
    assert span_is_held(0, 10, 10, have)
    assert not span_is_held(5, 15, 10, have)
    assert span_is_held(20, 25, 10, have)
    assert not span_is_held(20, 35, 10, have)  # past the last chunk
    assert not span_is_held(3, 3, 10, have)


def test_rate_limiter_lets_a_burst_through_then_paces() -> None:
    limiter = RateLimiter(1000, burst=500)
    assert limiter.reserve(500, now=0.0) == 0.0
    assert limiter.reserve(500, now=0.0) == pytest.approx(0.5)
    assert limiter.reserve(1000, now=0.0) == pytest.approx(1.5)
    assert limiter.reserve(100, now=10.0) == 0.0  # idle time refills the bucket


# -- blobs ------------------------------------------------------------------------


async def test_full_and_ranged_reads_of_a_complete_file(swarm: Swarm) -> None:
    async with swarm.client() as c:
        r = await c.get(f"/v1/blobs/{swarm.full_id}")
        assert r.status_code == 200
        assert r.content == swarm.full
        assert r.headers["content-length"] == str(SIZE)
        assert r.headers["accept-ranges"] == "bytes"

        r = await c.get(f"/v1/blobs/{swarm.full_id}", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206
        assert r.content == swarm.full[10:20]
        assert r.headers["content-range"] == f"bytes 10-19/{SIZE}"

        r = await c.get(f"/v1/blobs/{swarm.full_id}", headers={"Range": "bytes=-7"})
        assert (r.status_code, r.content) == (206, swarm.full[-7:])

        r = await c.get(f"/v1/blobs/{swarm.full_id}", headers={"Range": f"bytes={SIZE}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{SIZE}"

        for bad in ("bytes=9-3", "lines=1-2", "bytes=x-"):
            r = await c.get(f"/v1/blobs/{swarm.full_id}", headers={"Range": bad})
            assert r.status_code == 400, bad
        r = await c.get(f"/v1/blobs/{swarm.full_id}", headers={"Range": "bytes=0-1,4-5"})
        assert r.status_code in (400, 416)

        r = await c.head(f"/v1/blobs/{swarm.full_id}")
        assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", str(SIZE))
    assert swarm.stats.by_host == {"10.1.2.3": SIZE + 10 + 7}
    assert swarm.stats.active == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/blobs/xyz",
        "/v1/blobs/" + "A" * 64,  # uppercase: not how ids are spelled
        "/v1/blobs/" + "a" * 63,
        "/v1/blobs/" + "a" * 64 + ".part",
        "/v1/blobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/blobs/%2e%2e/manifest",
        "/v1/blobs/zz/have",
    ],
)
async def test_bad_ids_are_refused(swarm: Swarm, path: str) -> None:
    async with swarm.client() as c:
        r = await c.get(path)
    assert r.status_code in (400, 404)


async def test_paths_never_come_from_the_request(swarm: Swarm) -> None:
    async with swarm.client() as c:
        for path in ("/v1/blobs/../../etc/passwd", "/v1/blobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd"):
            r = await c.get(path)
            assert r.status_code in (400, 404)
        r = await c.get("/v1/blobs/" + "b" * 40)  # well formed, not held
        assert r.status_code == 404


async def test_a_partial_file_serves_only_verified_chunks(swarm: Swarm) -> None:
    pid, data = swarm.part_id, swarm.part
    async with swarm.client() as c:
        assert (await c.get(f"/v1/blobs/{pid}")).status_code == 404  # the whole file: not held
        r = await c.get(f"/v1/blobs/{pid}", headers={"Range": "bytes=100-199"})
        assert (r.status_code, r.content) == (206, data[100:200])
        r = await c.get(f"/v1/blobs/{pid}", headers={"Range": f"bytes={2 * MIN_CHUNK_SIZE}-"})
        assert (r.status_code, r.content) == (206, data[2 * MIN_CHUNK_SIZE :])
        span = f"bytes={MIN_CHUNK_SIZE - 10}-{MIN_CHUNK_SIZE + 10}"  # crosses into chunk 1
        r = await c.get(f"/v1/blobs/{pid}", headers={"Range": span})
        assert r.status_code == 416
        r = await c.get(f"/v1/blobs/{pid}", headers={"Range": f"bytes={MIN_CHUNK_SIZE}-"})
        assert r.status_code == 416

        r = await c.get(f"/v1/blobs/{pid}/have")
        assert r.status_code == 200
        assert r.headers["x-chunk-count"] == "3"
        assert r.headers["x-file-size"] == str(SIZE)
        assert decode_have(r.content, 3) == [True, False, True]

        r = await c.get(f"/v1/blobs/{pid}/manifest")
        m = Manifest.from_json(r.content, file_id=pid, size=SIZE)
        assert m.digests[0] == chunk_digest(data[:MIN_CHUNK_SIZE])
        assert m.digests[1] is None
        assert m.digests[2] == chunk_digest(data[2 * MIN_CHUNK_SIZE :])


async def test_a_download_with_no_chunk_yet_is_a_holder_of_nothing(swarm: Swarm) -> None:
    """It announced itself as it started, so downloaders starting with it find it at
    once: it answers with an empty bitmap and a manifest of no digest (BitTorrent's empty
    bitfield), and serves no byte until a chunk verifies, not even bytes already
    written in place."""
    data = _data(3)
    fid = hashlib.sha256(data).hexdigest()
    with PartialFile(swarm.partial_root, fid, SIZE) as pf:
        portable.pwrite(pf.fileno(), data, 0)  # landed in place, not verified: not held
    async with swarm.client() as c:
        r = await c.get(f"/v1/blobs/{fid}/have")
        assert r.status_code == 200
        assert decode_have(r.content, 3) == [False, False, False]
        r = await c.get(f"/v1/blobs/{fid}/manifest")
        assert Manifest.from_json(r.content, file_id=fid, size=SIZE).digests == (None,) * 3
        for span in ("bytes=0-99", f"bytes={MIN_CHUNK_SIZE}-", "bytes=-1"):
            r = await c.get(f"/v1/blobs/{fid}", headers={"Range": span})
            assert r.status_code == 416
            assert data[:16] not in r.content
        assert (await c.get(f"/v1/blobs/{fid}")).status_code == 404


async def test_manifest_and_have_of_a_complete_file(swarm: Swarm) -> None:
    fid = swarm.full_id
    async with swarm.client() as c:
        r = await c.get(f"/v1/blobs/{fid}/have")
        assert (r.content, r.headers["x-chunk-count"]) == (b"\xe0", "3")
        r = await c.get(f"/v1/blobs/{fid}/manifest")
        assert r.status_code == 200
        expected = build_manifest(swarm.index.files[fid], fid)
        assert Manifest.from_json(r.content, file_id=fid, size=SIZE) == expected
        cached = list(swarm.manifest_dir.glob(f"{fid}-*.json"))
        assert len(cached) == 1

        # Content changed on disk (new mtime) so it no longer matches its id: digested
        # again, and the holder refuses to vouch for it.
        blob = swarm.index.files[fid]
        blob.write_bytes(swarm.full[::-1])
        os.utime(blob, ns=(time.time_ns(), time.time_ns() + 10**9))
        r = await c.get(f"/v1/blobs/{fid}/manifest")
        assert r.status_code == 404
        assert not list(swarm.manifest_dir.glob(f"{fid}-*.json"))
        assert (await c.get("/v1/blobs/" + "c" * 64 + "/manifest")).status_code == 404


async def test_the_swarm_secret_guards_every_route(swarm: Swarm) -> None:
    async with swarm.client(secret="s3cret") as c:
        for path in ("/v1/ping", f"/v1/blobs/{swarm.full_id}", f"/v1/blobs/{swarm.full_id}/have"):
            assert (await c.get(path)).status_code == 403
            assert (await c.get(path, auth=PeerAuth("wrong"))).status_code == 403
            assert (await c.get(path, auth=PeerAuth("s3cret"))).status_code == 200


async def test_too_many_uploads_get_503(swarm: Swarm) -> None:
    swarm.stats.active = 2  # two uploads already running
    async with swarm.client(limits=UploadLimits(max_uploads=2)) as c:
        r = await c.get(f"/v1/blobs/{swarm.full_id}")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        # Metadata is never refused: a downloader must learn who has what.
        assert (await c.get(f"/v1/blobs/{swarm.full_id}/have")).status_code == 200
    swarm.stats.active = 1
    async with swarm.client(limits=UploadLimits(max_uploads=2)) as c:
        assert (await c.get(f"/v1/blobs/{swarm.full_id}")).status_code == 200
    assert swarm.stats.active == 1


async def test_the_upload_rate_is_capped(swarm: Swarm) -> None:
    """Against an injected clock that only sleeping advances: the 300 kB took exactly
    (300 kB - 100 kB burst) / 400 kB/s of the limiter's time, whatever the machine's load."""
    rate = 400_000
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await anyio.sleep(0)

    server = PeerServer(
        swarm.index, swarm.partial_root, swarm.manifest_dir, UploadLimits(max_rate=rate)
    )
    server.limiter = RateLimiter(rate, rate // 4, clock=lambda: now[0], sleep=sleep)
    app = Starlette(routes=server.routes())
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
    async with httpx.AsyncClient(transport=transport, base_url="http://peer") as c:
        r = await c.get(f"/v1/blobs/{swarm.full_id}", headers={"Range": "bytes=0-299999"})
    assert r.content == swarm.full[:300_000]
    assert now[0] - 1000.0 == pytest.approx((300_000 - rate // 4) / rate, abs=0.02)
