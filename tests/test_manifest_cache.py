"""A seed never makes a downloader wait for its manifest (swarm.manifest_cache): a file
fetched through hffs is seeded from the digests its download verified; a cold blob is
digested once, in the background, while askers are told to come back."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

import swarm.download as driver
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.download import download_file, gives_up
from swarm.manifest import (
    ChunkDone,
    Manifest,
    Progress,
    build_manifest,
    check_whole,
    chunk_manifest,
)
from swarm.manifest_cache import ANSWER_WAIT, ManifestCache, answer_wait
from swarm.peer_server import PeerServer, peer_app_for
from swarm.sources import PeerAddr, SourceError, fetch_manifest
from swarm.transport_server import FrontLimits, FrontShared, install_front
from swarm.wire import (
    MAX_RETRY_AFTER,
    PeerAuth,
    busy_retry_delay,
    decode_have,
    parse_retry_after,
)
from tests.blob_index import DictIndex
from tests.nodes import REPO, Node, wait_for

SIZE = 3 * MIN_CHUNK_SIZE + 77
HOST = "127.0.0.71"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- rules -----------------------------------------------------------------------------


def test_small_blobs_are_waited_for_large_ones_answer_busy_soon() -> None:
    assert answer_wait(10, small_blob=100) is None
    assert answer_wait(100, small_blob=100) is None
    assert answer_wait(101, small_blob=100) == ANSWER_WAIT


@given(st.one_of(st.none(), st.text(max_size=12)))
def test_retry_after_is_a_small_bounded_delay_or_nothing(value: str | None) -> None:
    got = parse_retry_after(value)
    assert got is None or 0 <= got <= MAX_RETRY_AFTER
    text = (value or "").strip()
    if text.isascii() and text.isdigit() and len(text) <= 6:
        assert got == min(int(text), MAX_RETRY_AFTER)


def test_retry_after_refuses_dates_and_junk() -> None:
    assert parse_retry_after("1") == 1
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after("99999") == MAX_RETRY_AFTER
    for bad in ("Wed, 21 Oct 2015 07:28:00 GMT", "-1", "1.5", "", "٣", "9" * 40):
        assert parse_retry_after(bad) is None


# -- a slow disk -------------------------------------------------------------------------


class SlowDisk:
    """The real digest, behind a gate the test opens: a disk as slow as the test needs."""

    def __init__(self, slow: set[str] | None = None) -> None:
        self.gate = threading.Event()
        self.slow = slow  # the blobs held at the gate (None: every one)
        self.started: list[str] = []

    def __call__(self, path: Path, file_id: str, done: ChunkDone) -> Manifest:
        self.started.append(file_id)
        if (self.slow is None or file_id in self.slow) and not self.gate.wait(60):
            raise OSError("the test never opened the gate")
        return chunk_manifest(path, file_id, done)


class HalfDisk:
    """The real chunk pass, stopping at a gate the test opens once ``first`` chunks are
    digested: a cold seed midway through its digest."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.gate = threading.Event()
        self.started: list[str] = []
        self.digested = 0

    def __call__(self, path: Path, file_id: str, done: ChunkDone) -> Manifest:
        self.started.append(file_id)

        def tell(end: int, digest: bytes) -> None:
            done(end, digest)
            self.digested += 1
            if self.digested == self.first and not self.gate.wait(60):
                raise OSError("the test never opened the gate")

        return chunk_manifest(path, file_id, tell)


class SlowCheck:
    """The real whole-file check, behind a gate the test opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ran: list[str] = []

    def __call__(self, path: Path, file_id: str, readable: Progress) -> None:
        if not self.gate.wait(60):
            raise OSError("the test never opened the gate")
        self.ran.append(file_id)
        check_whole(path, file_id, readable)


def _data(seed: int, size: int = SIZE) -> bytes:
    block = hashlib.sha256(b"%d" % seed).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def _blob(root: Path, data: bytes, file_id: str | None = None) -> tuple[str, Path]:
    fid = file_id or hashlib.sha256(data).hexdigest()
    path = root / "blobs" / fid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return fid, path


def _server(root: Path, blobs: dict[str, Path], cache: ManifestCache) -> PeerServer:
    server = PeerServer(DictIndex(blobs), root / "partial", root / "manifests")
    server.manifests = cache
    return server


def _client(server: PeerServer) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=peer_app_for(server), client=("10.1.2.3", 4567))
    return httpx.AsyncClient(transport=transport, base_url="http://10.9.9.9:9009")


class _OneHolder:
    """The holders of one file: one address."""

    def __init__(self, fid: str, addr: PeerAddr) -> None:
        self.fid, self.addr = fid, addr

    async def holders(self, file_id: str, *, fresh: bool = False) -> list[PeerAddr]:
        return [self.addr] if file_id == self.fid else []

    async def news(self, file_id: str, seen: int) -> int:
        await anyio.sleep_forever()
        return seen

    async def announce_partial(self, file_id: str) -> None:
        pass


def _cold_seed(
    tmp_path: Path, data: bytes, disk: SlowDisk | HalfDisk
) -> tuple[str, ManifestCache, PeerServer, uvicorn.Server, socket.socket, PeerAddr, _OneHolder]:
    """A seed holding ``data`` whose digest waits at ``disk``'s gate (serve ``sock`` to
    run it)."""
    fid, path = _blob(tmp_path / "seed", data)
    cache = ManifestCache(tmp_path / "seed" / "manifests", chunks=disk, small_blob=0)
    server = _server(tmp_path / "seed", {fid: path}, cache)
    config = uvicorn.Config(peer_app_for(server), lifespan="off", log_config=None, access_log=False)
    install_front(config, FrontShared(server, None, FrontLimits()))
    sock = socket.socket()
    sock.bind((HOST, 0))
    addr = PeerAddr(HOST, sock.getsockname()[1])
    return fid, cache, server, uvicorn.Server(config), sock, addr, _OneHolder(fid, addr)


async def _download(
    tmp_path: Path, fid: str, size: int, client: httpx.AsyncClient, holders: _OneHolder
) -> driver.FileReport:
    """Download ``fid`` from the holders alone (no upstream) to ``tmp_path/dl/blob``."""
    return await download_file(
        fid,
        size,
        dest=tmp_path / "dl" / "blob",
        store_root=tmp_path / "dl" / "partial",
        upstream=[],
        client=client,
        holders=holders,
    )


def _start_download(
    tg: anyio.abc.TaskGroup,
    tmp_path: Path,
    fid: str,
    size: int,
    client: httpx.AsyncClient,
    holders: _OneHolder,
) -> anyio.Event:
    """``_download`` in ``tg``; the event is set once every byte came from the holder."""
    done = anyio.Event()

    async def download() -> None:
        report = await _download(tmp_path, fid, size, client, holders)
        assert report.bytes_by_source == {str(holders.addr): size}
        done.set()

    tg.start_soon(download)
    return done


async def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


# -- a cold holder -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cold_holder_says_busy_digests_once_then_answers(tmp_path: Path) -> None:
    fid, path = _blob(tmp_path, _data(1))
    disk = SlowDisk()
    cache = ManifestCache(tmp_path / "manifests", chunks=disk, small_blob=0)
    server = _server(tmp_path, {fid: path}, cache)
    answers: list[httpx.Response] = []
    async with _client(server) as c:

        async def ask() -> None:
            answers.append(await c.get(f"/v1/blobs/{fid}/manifest"))

        async with anyio.create_task_group() as tg:  # eight peers ask at once
            for _ in range(8):
                tg.start_soon(ask)
        # every one was answered while the digest is still held at the gate
        assert [r.status_code for r in answers] == [503] * 8
        assert all(r.headers["retry-after"] == "1" for r in answers)
        await _until(lambda: disk.started == [fid], "the digest to start")
        assert cache.digests_run == 1
        disk.gate.set()
        with anyio.fail_after(30):
            while (r := await c.get(f"/v1/blobs/{fid}/manifest")).status_code == 503:
                await anyio.sleep(0.02)
        assert r.status_code == 200
        assert Manifest.from_json(r.content, file_id=fid) == build_manifest(path, fid)
        again = await c.get(f"/v1/blobs/{fid}/manifest")
        assert again.status_code == 200 and again.content == r.content
    assert disk.started == [fid] and cache.digests_run == 1  # one digest for ten requests


@pytest.mark.anyio
async def test_a_rotten_blob_is_refused_and_not_digested_per_request(tmp_path: Path) -> None:
    good = _data(2)
    fid, path = _blob(tmp_path, bytes(b ^ 1 for b in good), hashlib.sha256(good).hexdigest())
    cache = ManifestCache(tmp_path / "manifests")
    server = _server(tmp_path, {fid: path}, cache)
    async with _client(server) as c:
        for _ in range(5):
            assert (await c.get(f"/v1/blobs/{fid}/manifest")).status_code == 404
    assert cache.digests_run == 1
    assert not list((tmp_path / "manifests").glob(f"{fid}-*.json"))


@pytest.mark.anyio
async def test_peers_hear_the_chunk_digests_before_the_whole_file_check_ends(
    tmp_path: Path,
) -> None:
    fid, path = _blob(tmp_path, _data(4))
    check = SlowCheck()
    cache = ManifestCache(tmp_path / "manifests", whole=check, small_blob=0)
    server = _server(tmp_path, {fid: path}, cache)
    async with _client(server) as c:
        with anyio.fail_after(30):  # the sha256 pass is held: the xxh3 pass answers
            while (r := await c.get(f"/v1/blobs/{fid}/manifest")).status_code == 503:
                await anyio.sleep(0.02)
        assert r.status_code == 200 and check.ran == []
        assert Manifest.from_json(r.content, file_id=fid) == build_manifest(path, fid)
        assert not list((tmp_path / "manifests").glob("*.json"))  # stored once checked
        check.gate.set()
        await _until(lambda: len(list((tmp_path / "manifests").glob("*.json"))) == 1, "stored")
        assert (await c.get(f"/v1/blobs/{fid}/manifest")).content == r.content
    assert check.ran == [fid] and cache.digests_run == 1


@pytest.mark.anyio
async def test_the_whole_file_check_trails_the_chunk_pass_and_never_overtakes_it(
    tmp_path: Path,
) -> None:
    fid, path = _blob(tmp_path, _data(6, 6 * MIN_CHUNK_SIZE + 3))
    told: list[int] = []  # how far the chunk pass has read, as it says so
    ahead: list[int] = []  # reads of the whole-file pass past that point

    def chunks(path: Path, file_id: str, done: ChunkDone) -> Manifest:
        def tell(pos: int, digest: bytes) -> None:
            time.sleep(0.02)  # a disk slower than sha256
            told.append(pos)
            done(pos, digest)

        return chunk_manifest(path, file_id, tell)

    def whole(path: Path, file_id: str, readable: Progress) -> None:
        def wait(pos: int) -> None:
            readable(pos)
            if pos > max(told, default=0):
                ahead.append(pos)

        check_whole(path, file_id, wait)

    cache = ManifestCache(tmp_path / "manifests", chunks=chunks, whole=whole, small_blob=0)
    with anyio.fail_after(30):
        assert await cache.get(fid, path) == build_manifest(path, fid)
    assert len(told) == 7 and ahead == []
    assert cache.cached(fid, path) is not None  # checked whole, then stored


@pytest.mark.anyio
async def test_a_blob_failing_its_whole_file_check_is_vouched_for_no_longer(
    tmp_path: Path,
) -> None:
    good = _data(5)
    fid, path = _blob(tmp_path, bytes(b ^ 1 for b in good), hashlib.sha256(good).hexdigest())
    check = SlowCheck()
    cache = ManifestCache(tmp_path / "manifests", whole=check, small_blob=0)
    server = _server(tmp_path, {fid: path}, cache)
    async with _client(server) as c:
        with anyio.fail_after(30):
            while (r := await c.get(f"/v1/blobs/{fid}/manifest")).status_code == 503:
                await anyio.sleep(0.02)
        assert r.status_code == 200  # the chunks' digests, while the check is held
        check.gate.set()
        await _until(lambda: check.ran == [fid], "the whole-file check")
        with anyio.fail_after(30):
            while (r := await c.get(f"/v1/blobs/{fid}/manifest")).status_code == 200:
                await anyio.sleep(0.02)
        assert r.status_code == 404
        for _ in range(3):  # remembered: not digested again per request
            assert (await c.get(f"/v1/blobs/{fid}/manifest")).status_code == 404
    assert cache.digests_run == 1
    assert not list((tmp_path / "manifests").glob("*.json"))


@pytest.mark.anyio
async def test_background_digests_are_bounded_and_run_one_at_a_time(tmp_path: Path) -> None:
    blobs = dict(_blob(tmp_path, _data(10 + i, MIN_CHUNK_SIZE)) for i in range(3))
    a, b, c_ = list(blobs)
    disk = SlowDisk()
    cache = ManifestCache(tmp_path / "manifests", chunks=disk, small_blob=0, max_queued=1)
    server = _server(tmp_path, blobs, cache)
    async with _client(server) as c:
        assert (await c.get(f"/v1/blobs/{a}/manifest")).status_code == 503
        await _until(lambda: disk.started == [a], "the first digest to start")
        assert (await c.get(f"/v1/blobs/{b}/manifest")).status_code == 503  # queued
        assert (await c.get(f"/v1/blobs/{c_}/manifest")).status_code == 503  # queue full
        assert disk.started == [a]  # one at a time: b waits for a
        disk.gate.set()
        await _until(lambda: len(list((tmp_path / "manifests").glob("*.json"))) == 2, "a, b")
        assert disk.started == [a, b]  # c was refused, not queued: no work it did not get
        for fid in (a, b):
            assert (await c.get(f"/v1/blobs/{fid}/manifest")).status_code == 200
        with anyio.fail_after(30):  # asked again, c is digested now
            while (await c.get(f"/v1/blobs/{c_}/manifest")).status_code == 503:
                await anyio.sleep(0.02)
    assert disk.started == [a, b, c_]


@pytest.mark.anyio
async def test_a_small_blob_is_answered_at_once_while_a_large_one_digests(
    tmp_path: Path,
) -> None:
    big, big_path = _blob(tmp_path, _data(20, 2 * MIN_CHUNK_SIZE))
    small, small_path = _blob(tmp_path, _data(21, MIN_CHUNK_SIZE))
    disk = SlowDisk(slow={big})
    cache = ManifestCache(tmp_path / "manifests", chunks=disk, small_blob=MIN_CHUNK_SIZE)
    server = _server(tmp_path, {big: big_path, small: small_path}, cache)
    async with _client(server) as c:
        assert (await c.get(f"/v1/blobs/{big}/manifest")).status_code == 503
        await _until(lambda: disk.started == [big], "the large digest to start")
        with anyio.fail_after(20):  # not queued behind the large one (held for 60 s)
            r = await c.get(f"/v1/blobs/{small}/manifest")
        assert r.status_code == 200
        assert Manifest.from_json(r.content, file_id=small) == build_manifest(small_path, small)
        assert not disk.gate.is_set()
        disk.gate.set()


@pytest.mark.anyio
async def test_a_downloader_gets_busy_at_once_and_completes_from_a_cold_seed(
    tmp_path: Path,
) -> None:
    data = _data(3)
    disk = SlowDisk()
    fid, cache, _, seed, sock, addr, holders = _cold_seed(tmp_path, data, disk)
    dest = tmp_path / "dl" / "blob"
    async with anyio.create_task_group() as tg, httpx.AsyncClient(trust_env=False) as client:
        tg.start_soon(seed.serve, [sock])
        await _until(lambda: seed.started, "the seed to listen")
        # what a probe sees: busy, with a delay to come back after (not a 5 s timeout)
        with pytest.raises(SourceError) as busy:
            await fetch_manifest(client, addr, fid, len(data), PeerAuth())
        assert (busy.value.status, busy.value.retry_after) == (503, 1)
        done = _start_download(tg, tmp_path, fid, len(data), client, holders)
        await _until(lambda: cache.busy_answers >= 2, "the downloader to be told busy")
        disk.gate.set()
        with anyio.fail_after(60):
            await done.wait()
        seed.should_exit = True
    assert dest.read_bytes() == data
    assert disk.started == [fid]


@pytest.mark.anyio
async def test_a_cold_holder_vouches_for_the_chunks_digested_so_far(tmp_path: Path) -> None:
    data = _data(7, 6 * MIN_CHUNK_SIZE + 5)
    fid, path = _blob(tmp_path, data)
    full = build_manifest(path, fid).digests
    disk = HalfDisk(first=2)
    cache = ManifestCache(tmp_path / "manifests", chunks=disk, small_blob=0)
    server = _server(tmp_path, {fid: path}, cache)
    async with _client(server) as c:
        with anyio.fail_after(30):  # the first ask starts the digest, which stops midway
            r = await c.get(f"/v1/blobs/{fid}/manifest")
        assert r.status_code == 200
        got = Manifest.from_json(r.content, file_id=fid, size=len(data))
        assert got.digests == full[:2] + (None,) * 5
        have = await c.get(f"/v1/blobs/{fid}/have")
        assert decode_have(have.content, 7) == [True, True] + [False] * 5
        seen: dict[int, bytes] = {}
        with anyio.fail_after(30):
            async for batch in cache.follow(fid, path, lambda: True):
                assert not seen.keys() & batch.keys()  # each chunk told once
                seen.update(batch)
                if len(seen) == 2:
                    assert not disk.gate.is_set()  # told before the pass goes on
                    disk.gate.set()
        assert tuple(seen[i] for i in range(7)) == full  # then the rest, and it ended
        # the chunk pass is done: the whole manifest, every chunk held
        r = await c.get(f"/v1/blobs/{fid}/manifest")
        assert Manifest.from_json(r.content, file_id=fid).digests == full
        have = await c.get(f"/v1/blobs/{fid}/have")
        assert decode_have(have.content, 7) == [True] * 7
    assert cache.digests_run == 1 and cache.busy_answers == 0


@pytest.mark.anyio
async def test_a_downloader_takes_a_cold_seeds_chunks_as_it_digests_them(
    tmp_path: Path,
) -> None:
    data = _data(8, 6 * MIN_CHUNK_SIZE + 5)
    disk = HalfDisk(first=3)
    fid, cache, server, seed, sock, _, holders = _cold_seed(tmp_path, data, disk)
    dest = tmp_path / "dl" / "blob"
    async with anyio.create_task_group() as tg, httpx.AsyncClient(trust_env=False) as client:
        tg.start_soon(seed.serve, [sock])
        await _until(lambda: seed.started, "the seed to listen")
        done = _start_download(tg, tmp_path, fid, len(data), client, holders)
        # The digest stops after 3 chunks: those 3 are sent (and no more) before it goes on.
        await _until(lambda: server.stats.total >= 3 * MIN_CHUNK_SIZE, "the first chunks", 60)
        await anyio.sleep(0.3)
        assert server.stats.total == 3 * MIN_CHUNK_SIZE and not done.is_set()
        disk.gate.set()
        with anyio.fail_after(60):
            await done.wait()
        seed.should_exit = True
    assert dest.read_bytes() == data
    assert disk.started == [fid] and cache.busy_answers == 0


def test_a_stuck_download_waits_for_holders_saying_busy_but_not_forever() -> None:
    grace, patience, fresh = 9.0, 100.0, 9.0
    # nobody can serve: patience runs out after the grace
    assert not gives_up(9.0, 0.0, None, None, grace, patience, fresh)
    assert gives_up(9.5, 0.0, None, None, grace, patience, fresh)
    # a holder said busy lately: keep waiting, up to the patience in all
    assert not gives_up(50.0, 0.0, 1.0, 45.0, grace, patience, fresh)
    assert gives_up(102.0, 0.0, 1.0, 100.0, grace, patience, fresh)
    # it stopped saying so (gone, or answering nothing): the grace applies again
    assert gives_up(50.0, 0.0, 1.0, 30.0, grace, patience, fresh)


@pytest.mark.anyio
async def test_a_seed_digesting_longer_than_the_stuck_grace_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No upstream, one holder busy digesting for longer than a download waits for
    # holders to show up: the download waits for it, then takes every byte from it.
    monkeypatch.setattr(driver, "STUCK_GRACE", 0.3)  # probes still see "busy" every few s
    data = _data(4)
    disk = SlowDisk()
    fid, cache, _, seed, sock, addr, holders = _cold_seed(tmp_path, data, disk)
    dest = tmp_path / "dl" / "blob"
    outcome: list[object] = []
    async with anyio.create_task_group() as tg, httpx.AsyncClient(trust_env=False) as client:
        tg.start_soon(seed.serve, [sock])
        await _until(lambda: seed.started, "the seed to listen")

        async def download() -> None:
            try:
                outcome.append(await _download(tmp_path, fid, len(data), client, holders))
            except Exception as exc:
                outcome.append(exc)

        tg.start_soon(download)
        # Several probe rounds see "busy": each longer than the (shortened) grace.
        await _until(lambda: cache.busy_answers >= 6 or bool(outcome), "busy answers", 60)
        assert not outcome, outcome  # still waiting, not failed
        disk.gate.set()
        await _until(lambda: bool(outcome), "the download", 60)
        seed.should_exit = True
    report = outcome[0]
    assert isinstance(report, driver.FileReport), report
    assert report.bytes_by_source == {str(addr): len(data)}
    assert dest.read_bytes() == data


# -- a file fetched through hffs is seeded without a digest ---------------------------------


def test_entries_of_files_no_longer_held_are_pruned(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path / "manifests")
    assert cache.prune(lambda fid: False) == 0  # nothing stored yet (no directory)
    kept, kept_path = _blob(tmp_path, _data(5))
    gone, gone_path = _blob(tmp_path, _data(6))
    for fid, path in ((kept, kept_path), (gone, gone_path)):
        assert cache.put(build_manifest(path, fid), path)
    assert cache.prune(lambda fid: fid == kept) == 1
    assert cache.cached(kept, kept_path) == build_manifest(kept_path, kept)
    assert cache.cached(gone, gone_path) is None
    assert [p.name.partition("-")[0] for p in cache.root.iterdir()] == [kept]


def _entries(node: Node, fid: str) -> list[Path]:
    return list((node.home / "state" / "manifests").glob(f"{fid}-*.json"))


def test_a_downloaded_file_is_seeded_from_its_verified_digests(
    nodes: Callable[[str], Node],
) -> None:
    a, c = nodes("127.0.0.72"), nodes("127.0.0.73")
    data = os.urandom(3 * MIN_CHUNK_SIZE + 5)
    fid = hashlib.sha256(data).hexdigest()
    a.add_model_file("model.safetensors", data)
    assert a.start().returncode == 0
    assert c.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0
    wait_for(lambda: c.client().find_providers(fid) != [], 20, "C to find A")
    r = c.cli("model", "add", REPO)
    assert r.returncode == 0, r.stderr
    snapshot = c.hub / f"models--{REPO.replace('/', '--')}" / "snapshots"
    (blob,) = (p.resolve() for p in snapshot.glob("*/model.safetensors"))
    assert blob.read_bytes() == data
    # C's seed side was never asked, yet holds the manifest of the published blob
    st = blob.stat()
    (entry,) = _entries(c, fid)
    assert entry.name == f"{fid}-{st.st_size}-{st.st_mtime_ns}.json"
    before = entry.stat()
    answer = httpx.get(f"{c.url}/v1/blobs/{fid}/manifest", timeout=10, trust_env=False)
    assert answer.status_code == 200
    assert Manifest.from_json(answer.content, file_id=fid) == build_manifest(blob, fid)
    # answered from it: a digest would have written the entry anew (a new file)
    after = entry.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # removed from the cache, the file leaves no manifest behind on its seed side
    r = c.cli("model", "rm", REPO)
    assert r.returncode == 0, r.stderr
    assert not blob.exists()
    assert _entries(c, fid) == []


def test_a_busy_holder_is_asked_again_only_when_it_fits_the_budget() -> None:
    assert busy_retry_delay(1.0, 0.0, budget=3.0) == 1.0
    assert busy_retry_delay(1.0, 1.9, budget=3.0) == 1.0
    assert busy_retry_delay(1.0, 2.0, budget=3.0) is None  # would end past the budget
    assert busy_retry_delay(None, 0.0, budget=3.0) is None  # said no when: not again
    assert busy_retry_delay(30.0, 0.0, budget=3.0) is None
