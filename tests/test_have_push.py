"""Pushed haves (swarm.have): a holder tells its followers of each chunk the moment the
store records it, from the in-process hook, not from reading its state on a timer."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from swarm import have, store
from swarm.download import Holders
from swarm.have import follow_haves
from swarm.store import PartialFile
from swarm.wire import PeerAuth
from tests.test_transport import SIZE, Peer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    from swarm.transport_server import FrontLimits

    p = Peer(tmp_path / "p", limits=FrontLimits())
    async with anyio.create_task_group() as tg:
        await p.serve_in(tg)
        yield p
        p.uvicorn.should_exit = True


async def _follow_until(peer: Peer, want: set[int], write: object) -> dict[int, bytes]:
    seen: dict[int, bytes] = {}
    grew = anyio.Event()

    def on_have(batch: dict[int, bytes]) -> None:
        nonlocal grew
        seen.update(batch)
        grew.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow_haves, peer.addr, peer.part_id, 4, PeerAuth(), on_have)
        with anyio.fail_after(10):
            while not {0, 2} <= set(seen):
                await grew.wait()
                grew = anyio.Event()
        await write()  # type: ignore[operator]
        with anyio.fail_after(10):
            while not want <= set(seen):
                await grew.wait()
                grew = anyio.Event()
        tg.cancel_scope.cancel()
    return seen


async def test_chunks_recorded_in_this_process_are_pushed_at_once(peer, monkeypatch) -> None:
    # The state file is never read again during the test: only the hook can tell.
    monkeypatch.setattr(have, "LOCAL_CHECK_SECONDS", 3600.0)

    async def write() -> None:
        # One chunk on the event loop, one from a worker thread (as a thread-run download).
        with PartialFile(peer.partial_root, peer.part_id, SIZE) as pf:
            start, end = pf.span(1)
            assert pf.write_chunk(1, peer.part[start:end])

            def in_thread() -> None:
                s, e = pf.span(3)
                assert threading.current_thread() is not threading.main_thread()
                assert pf.write_chunk(3, peer.part[s:e])

            await anyio.to_thread.run_sync(in_thread)

    seen = await _follow_until(peer, {0, 1, 2, 3}, write)
    assert set(seen) == {0, 1, 2, 3}
    # Nobody follows any more: the hook is gone, so downloads pay nothing for it.
    with anyio.fail_after(10):
        while store.chunk_hooks:
            await anyio.sleep(0.02)


async def test_a_hook_for_another_partial_root_is_not_a_have(peer, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(have, "LOCAL_CHECK_SECONDS", 3600.0)
    other_root = tmp_path / "elsewhere"

    async def write() -> None:
        # The same file held under another root (another server in this process) is not
        # what this holder serves: telling followers would send them to a 416.
        with PartialFile(other_root, peer.part_id, SIZE) as pf:
            start, end = pf.span(1)
            assert pf.write_chunk(1, peer.part[start:end])
        with PartialFile(peer.partial_root, peer.part_id, SIZE) as pf:
            start, end = pf.span(3)
            assert pf.write_chunk(3, peer.part[start:end])

    seen = await _follow_until(peer, {3}, write)
    assert 1 not in seen


async def test_another_process_s_chunks_are_read_from_the_state(peer, monkeypatch) -> None:
    monkeypatch.setattr(have, "LOCAL_CHECK_SECONDS", 0.05)
    code = (
        "import sys; from swarm.store import PartialFile;"
        "from tests.test_transport import SIZE, _data;"
        "data = _data(2);"
        "pf = PartialFile(__import__('pathlib').Path(sys.argv[1]), sys.argv[2], SIZE);"
        "s, e = pf.span(1); assert pf.write_chunk(1, data[s:e]); pf.close()"
    )

    async def write() -> None:
        root = str(Path(__file__).resolve().parents[1])
        argv = [sys.executable, "-c", code, str(peer.partial_root), peer.part_id]
        r = await anyio.run_process(argv, cwd=root, check=False, stderr=subprocess.STDOUT)
        assert r.returncode == 0, r.stdout

    seen = await _follow_until(peer, {1}, write)
    assert {0, 1, 2} <= set(seen)


async def _from_peers(
    tmp_path: Path, fid: str, size: int, client: httpx.AsyncClient, holders: Holders
) -> None:
    """Download ``fid`` into ``tmp_path / "blob"`` from ``holders`` only (no upstream)."""
    from swarm import download

    await download.download_file(
        fid,
        size,
        dest=tmp_path / "blob",
        store_root=tmp_path / "partial",
        upstream=[],
        client=client,
        holders=holders,
    )


async def test_a_whole_holder_is_asked_once_a_partial_one_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holders are looked for again every REFRESH_SECONDS: a holder of a chunk subset (one
    that cannot push its haves) is asked again for its bitmap; one already known to hold
    the whole file has nothing new to say and is not asked again."""
    import hashlib

    from swarm import download
    from swarm.chunking import MIN_CHUNK_SIZE
    from swarm.sources import PeerAddr
    from tests.hostile import FakePeer, manifest_of

    monkeypatch.setattr(download, "REFRESH_SECONDS", 0.1)
    monkeypatch.setattr(download, "HAVE_REFRESH_SECONDS", 0.05)
    data = random.Random(3).randbytes(8 * MIN_CHUNK_SIZE)
    fid = hashlib.sha256(data).hexdigest()
    right = manifest_of(fid, data)
    half = [i < 4 for i in range(8)]
    whole = FakePeer("127.0.0.4", fid, data, manifest=right, blob_delay=0.5)
    partial = FakePeer("127.0.0.5", fid, data, manifest=right, have=half, blob_delay=0.5)

    class Static:
        async def holders(self, file_id: str, *, fresh: bool = False) -> list[PeerAddr]:
            return [PeerAddr(p.host, p.port) for p in (whole, partial)]

        async def news(self, file_id: str, seen: int) -> int:
            await anyio.sleep_forever()
            return seen

        async def announce_partial(self, file_id: str) -> None:
            pass

    with whole, partial:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            with anyio.fail_after(60):
                await _from_peers(tmp_path, fid, len(data), client, Static())
        assert (tmp_path / "blob").read_bytes() == data
        assert partial.asked("/have") >= 3  # several refreshes ran meanwhile
        assert whole.asked("/have") == 1


async def test_a_holder_that_announces_itself_is_asked_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Push, not poll, for holders too: one that announces itself while we download
    (another downloader starting with us, a seed coming up) is probed when the news
    comes, not at the next refresh, and it alone (holders already known tell their news
    on their haves streams). Refreshes are an hour apart here, so only the news can find
    the holder of the chunks the first one lacks; without it the download gives up on
    them (STUCK_GRACE)."""
    import hashlib

    from swarm import download
    from swarm.chunking import MIN_CHUNK_SIZE
    from swarm.sources import PeerAddr
    from tests.hostile import FakePeer, manifest_of

    monkeypatch.setattr(download, "REFRESH_SECONDS", 3600.0)
    monkeypatch.setattr(download, "HAVE_REFRESH_SECONDS", 3600.0)
    data = random.Random(4).randbytes(8 * MIN_CHUNK_SIZE)
    fid = hashlib.sha256(data).hexdigest()
    right = manifest_of(fid, data)
    partial = FakePeer("127.0.0.4", fid, data, manifest=right, have=[i < 4 for i in range(8)])
    late = FakePeer("127.0.0.5", fid, data, manifest=right)

    class Announcing:
        def __init__(self) -> None:
            self.listed = [partial]
            self.count = 0
            self.changed = anyio.Event()

        async def holders(self, file_id: str, *, fresh: bool = False) -> list[PeerAddr]:
            return [PeerAddr(p.host, p.port) for p in self.listed]

        async def news(self, file_id: str, seen: int) -> int:
            while self.count <= seen:
                await self.changed.wait()
                self.changed = anyio.Event()
            return self.count

        def announce(self, peer: FakePeer) -> None:
            self.listed.append(peer)
            self.count += 1
            self.changed.set()

        async def announce_partial(self, file_id: str) -> None:
            pass

    holders = Announcing()
    with partial, late:
        async with (
            httpx.AsyncClient(trust_env=False, timeout=5) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_from_peers, tmp_path, fid, len(data), client, holders)
            with anyio.fail_after(10):
                while not partial.asked("/have"):
                    await anyio.sleep(0.01)
            holders.announce(late)
        assert (tmp_path / "blob").read_bytes() == data
        assert late.asked("/have") == 1
        assert late.blob_requests >= 4  # the chunks only it holds came from it
        assert partial.asked("/have") == 1  # news costs a probe of the new holder only


async def test_a_follower_that_asks_hears_what_the_holder_fetches_from_upstream(
    peer, monkeypatch
) -> None:
    monkeypatch.setattr(have, "LOCAL_CHECK_SECONDS", 3600.0)  # only the hooks can tell
    seen: dict[int, bytes] = {}
    claims: list[frozenset[int]] = []
    grew = anyio.Event()

    def on_have(batch: dict[int, bytes]) -> None:
        seen.update(batch)
        grew.set()

    def on_claims(now: frozenset[int]) -> None:
        claims.append(now)
        grew.set()

    async def until(cond: object) -> None:
        nonlocal grew
        with anyio.fail_after(10):
            while not cond():  # type: ignore[operator]
                await grew.wait()
                grew = anyio.Event()

    # A follower that did not ask (as one that predates claims) must get none: one claim
    # frame would end its stream with an error.
    plain: dict[int, bytes] = {}
    plain_ended: list[BaseException | None] = []

    async def follow_plain() -> None:
        try:
            await follow_haves(peer.addr, peer.part_id, 4, PeerAuth(), plain.update)
            plain_ended.append(None)
        except Exception as exc:
            plain_ended.append(exc)

    auth = PeerAuth()
    async with anyio.create_task_group() as tg:
        tg.start_soon(follow_plain)
        tg.start_soon(follow_haves, peer.addr, peer.part_id, 4, auth, on_have, on_claims)
        await until(lambda: {0, 2} <= set(seen))
        have.claim(peer.partial_root, peer.part_id, {1, 3})
        await until(lambda: claims and claims[-1] == {1, 3})
        with PartialFile(peer.partial_root, peer.part_id, SIZE) as pf:
            start, end = pf.span(1)
            assert pf.write_chunk(1, peer.part[start:end])
        # A chunk held is no longer fetched: its have frame ends the claim.
        await until(lambda: 1 in seen and claims[-1] == {3})
        have.claim(peer.partial_root, peer.part_id, ())
        await until(lambda: claims[-1] == frozenset())
        with anyio.fail_after(10):
            while 1 not in plain:
                await anyio.sleep(0.02)
        assert plain_ended == []  # still following, no frame it could not read
        tg.cancel_scope.cancel()
    with anyio.fail_after(10):  # nobody follows: the claim hook is gone too
        while have.claim_hooks:
            await anyio.sleep(0.02)


async def _serve_frames(frames: bytes) -> tuple[object, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + frames)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "frame, asks",
    [
        (have.FRAME.pack(have.CLAIM | 4, bytes(16)), True),  # a claim outside the file
        (have.FRAME.pack(have.CLAIM | have.RELEASE | 1, bytes(16)), True),  # no such kind
        (have.FRAME.pack(have.CLAIM | 1, bytes(16)), False),  # a claim nobody asked for
    ],
)
async def test_a_holder_whose_claims_make_no_sense_is_dropped(frame: bytes, asks: bool) -> None:
    from swarm.sources import PeerAddr, SourceError

    server, port = await _serve_frames(frame)
    got: list[frozenset[int]] = []
    try:
        with pytest.raises(SourceError), anyio.fail_after(10):
            await follow_haves(
                PeerAddr("127.0.0.1", port),
                "a" * 64,
                4,
                PeerAuth(),
                lambda b: None,
                got.append if asks else None,
            )
    finally:
        server.close()  # type: ignore[attr-defined]
    assert got == []  # nothing of it reached the scheduler
