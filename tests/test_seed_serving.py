"""The seed's cheap path for a chunk, over a real sendfile front, on persistent
connections as downloaders keep them: it reuses its lookups (swarm.held_cache) yet
serves exactly what it holds and shares, and sends straight into the socket yet keeps
the byte order, the rate limit and the deadlines. The cache's clock is frozen unless a
test moves it, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from swarm import peer_server, portable
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.held_cache import HeldCache
from swarm.peer_server import Held, RateLimiter
from swarm.selfcheck import stat_key
from swarm.store import PartialFile
from swarm.transport_server import FrontLimits
from tests.test_transport import SIZE, Peer, slots_given_back

pytestmark = pytest.mark.anyio
CS = MIN_CHUNK_SIZE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Unsharing:
    """The test index with a switch: content can stop being shared."""

    def __init__(self, index: object) -> None:
        self.inner = index
        self.hidden: set[str] = set()

    def shares(self, file_id: str) -> bool:
        return file_id not in self.hidden

    def complete_path(self, file_id: str) -> Path | None:
        return self.inner.complete_path(file_id)  # type: ignore[attr-defined]


@pytest.fixture
async def seed(tmp_path: Path) -> AsyncIterator[tuple[Peer, Clock, Unsharing]]:
    peer = Peer(tmp_path / "p", limits=FrontLimits())
    clock = Clock()
    peer.server.held_cache = HeldCache[Held](clock=clock)
    index = Unsharing(peer.server.index)
    peer.server.index = index
    async with anyio.create_task_group() as tg:
        await peer.serve_in(tg)
        tg.start_soon(peer.server.follow_chunks)  # as the daemon runs it
        yield peer, clock, index
        peer.uvicorn.should_exit = True
        tg.cancel_scope.cancel()


class Conn:
    """One persistent HTTP/1.1 connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, peer: Peer) -> Conn:
        return cls(*await asyncio.open_connection(peer.addr.host, peer.port))

    async def get(self, fid: str, start: int, end: int) -> tuple[int, bytes]:
        rng = f"Range: bytes={start}-{end - 1}"
        self.writer.write(f"GET /v1/blobs/{fid} HTTP/1.1\r\nHost: x\r\n{rng}\r\n\r\n".encode())
        with anyio.fail_after(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            )
            body = await self.reader.readexactly(length)
        return int(lines[0].split(" ")[1]), body

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def connected(peer: Peer) -> AsyncIterator[Conn]:
    conn = await Conn.open(peer)
    try:
        yield conn
    finally:
        conn.close()


async def test_a_chunk_verified_just_now_is_served_at_once(seed) -> None:
    peer, _, _ = seed
    async with connected(peer) as conn:
        assert await conn.get(peer.part_id, 0, CS) == (206, peer.part[:CS])
        status, _ = await conn.get(peer.part_id, CS, 2 * CS)
        assert status == 416  # chunk 1 is not verified: not a byte of it

        def verify_elsewhere() -> None:  # (not on the loop: as another process would)
            with PartialFile(peer.partial_root, peer.part_id, SIZE) as pf:
                start, end = pf.span(1)
                assert pf.write_chunk(1, peer.part[start:end])

        await anyio.to_thread.run_sync(verify_elsewhere)
        # The lookup remembered a moment ago says "no" for chunk 1, and the clock has not
        # moved: only a fresh look serves it, and it must.
        assert await conn.get(peer.part_id, CS, 2 * CS) == (206, peer.part[CS : 2 * CS])
        assert await conn.get(peer.part_id, 2 * CS, 3 * CS) == (206, peer.part[2 * CS : 3 * CS])


async def test_a_chunk_verified_here_needs_no_new_lookup(seed, monkeypatch) -> None:
    peer, _, _ = seed
    lookups: list[str] = []
    real_lookup = peer_server._lookup

    def counted(index: object, root: Path, file_id: str) -> Held | None:
        lookups.append(file_id)
        return real_lookup(index, root, file_id)  # type: ignore[arg-type]

    monkeypatch.setattr(peer_server, "_lookup", counted)
    async with connected(peer) as conn:
        assert await conn.get(peer.part_id, 0, CS) == (206, peer.part[:CS])
        assert lookups == [peer.part_id]
        with PartialFile(peer.partial_root, peer.part_id, SIZE) as pf:  # on the loop
            start, end = pf.span(1)
            assert pf.write_chunk(1, peer.part[start:end])
        assert await conn.get(peer.part_id, CS, 2 * CS) == (206, peer.part[CS : 2 * CS])
        if portable.keep_files_open():  # (else each request opens, and checks, anew)
            assert lookups == [peer.part_id]


async def test_a_removed_blob_is_not_served_past_the_bound(seed) -> None:
    peer, clock, _ = seed
    fid = peer.full_id
    async with connected(peer) as kept:
        assert await kept.get(fid, 0, CS) == (206, peer.full[:CS])
        (peer.server.index.complete_path(fid)).unlink()
        async with connected(peer) as other:  # opens the file: it is gone, so "not held"
            assert (await other.get(fid, 0, CS))[0] == 404
        # The kept connection may send its open copy (the right bytes) until the bound...
        status, body = await kept.get(fid, CS, 2 * CS)
        assert status == 404 or body == peer.full[CS : 2 * CS]
        clock.now += peer.server.held_cache.ttl
        # ...never after it.
        assert (await kept.get(fid, 0, CS))[0] == 404
    await slots_given_back(peer)


async def test_unshared_content_stops_at_the_owners_word_or_within_the_bound(seed) -> None:
    peer, clock, index = seed
    fid = peer.full_id
    async with connected(peer) as conn:
        assert (await conn.get(fid, 0, 10))[0] == 206
        index.hidden.add(fid)
        peer.server.forget_held()  # what the daemon does after each scan
        assert (await conn.get(fid, 0, 10))[0] == 404
        index.hidden.clear()  # shared again: served at once (no "not held" is remembered)
        assert (await conn.get(fid, 0, 10)) == (206, peer.full[:10])
        index.hidden.add(fid)  # unshared behind the owner's back: the bound applies
        clock.now += peer.server.held_cache.ttl
        assert (await conn.get(fid, 0, 10))[0] == 404


async def test_a_quarantined_blob_stops_at_once(seed) -> None:
    peer, _, _ = seed
    fid = peer.full_id
    async with connected(peer) as conn:
        assert (await conn.get(fid, 0, 10))[0] == 206
        key = stat_key(peer.server.index.complete_path(fid))
        assert key is not None
        peer.server.selfcheck.hold(fid, key)
        assert (await conn.get(fid, 0, 10))[0] == 404


async def test_a_partial_made_again_is_never_served_from_the_old_lookup(seed) -> None:
    peer, _, _ = seed
    fid = peer.part_id
    async with connected(peer) as kept:
        assert await kept.get(fid, 0, CS) == (206, peer.part[:CS])  # remembered: 0 and 2
        with PartialFile(peer.partial_root, fid, SIZE) as pf:
            pf.discard()
        with PartialFile(peer.partial_root, fid, SIZE) as pf:  # a new download: chunk 2
            start, end = pf.span(2)
            assert pf.write_chunk(2, peer.part[start:end])
        async with connected(peer) as other:
            # The remembered bitmap says chunk 0 is held, but the file there now is
            # another one, without it: nothing of chunk 0 may leave.
            assert (await other.get(fid, 0, CS))[0] == 416
            assert await other.get(fid, 2 * CS, 3 * CS) == (206, peer.part[2 * CS : 3 * CS])
        # A connection that kept the old file open may still send its verified bytes.
        status, body = await kept.get(fid, 0, CS)
        assert status == 416 or body == peer.part[:CS]


async def test_a_slow_reader_gets_every_byte_in_order(seed) -> None:
    """Bodies go straight to the socket while it takes them and through asyncio's
    sendfile when it is full: both, in turn, on one pipelined connection."""
    peer, _, _ = seed
    fid = peer.full_id
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full after a few KiB
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (peer.addr.host, peer.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    with contextlib.closing(writer):
        writer.write(
            f"GET /v1/blobs/{fid} HTTP/1.1\r\nHost: x\r\nRange: bytes=5-{SIZE - 1}\r\n\r\n"
            f"GET /v1/blobs/{fid} HTTP/1.1\r\nHost: x\r\n\r\n"
            f"HEAD /v1/blobs/{fid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        out = b""
        with anyio.fail_after(20):
            for _ in range(20):  # dawdle: the seed finds the socket full more than once
                out += await reader.readexactly(1000)
                await anyio.sleep(0.01)
            out += await reader.read(-1)
    expected = (
        b"HTTP/1.1 206 ",
        peer.full[5:],
        b"HTTP/1.1 200 ",
        peer.full,
        b"HTTP/1.1 200 ",
    )
    pos = 0
    for part in expected:
        if part.startswith(b"HTTP/1.1"):
            assert out[pos : pos + len(part)] == part
            pos = out.index(b"\r\n\r\n", pos) + 4
        else:
            assert out[pos : pos + len(part)] == part
            pos += len(part)
    assert pos == len(out)  # the HEAD answer has no body
    assert peer.stats.total == 2 * SIZE - 5


@pytest.mark.parametrize("idle", [True, False])
async def test_idle_and_half_sent_heads_are_cut_after_a_served_request(
    tmp_path: Path, idle: bool
) -> None:
    """The deadlines for the next head run on a persistent connection too."""
    limits = FrontLimits(idle_timeout=0.5 if idle else 60.0, header_timeout=0.5)
    peer = Peer(tmp_path / "p", limits=limits)
    async with anyio.create_task_group() as tg:
        await peer.serve_in(tg)
        async with connected(peer) as conn:
            assert await conn.get(peer.full_id, 0, 10) == (206, peer.full[:10])
            if not idle:  # the start of a head, never finished
                conn.writer.write(b"GET /v1/ping HTTP/1.1\r\nX-Slow: ")
            with anyio.fail_after(10):  # far below the 60 s idle deadline
                assert await conn.reader.read() == b""
        peer.uvicorn.should_exit = True


async def test_direct_sends_keep_to_the_upload_rate(seed) -> None:
    """Against a limiter clock that only its sleeps advance: 300 kB took (300 kB - the
    100 kB burst) / 400 kB/s of the limiter's time, whatever the machine's load."""
    peer, _, _ = seed
    rate, now = 400_000, [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await anyio.sleep(0)

    peer.server.limiter = RateLimiter(rate, rate // 4, clock=lambda: now[0], sleep=sleep)
    async with connected(peer) as conn:
        assert await conn.get(peer.full_id, 0, 300_000) == (206, peer.full[:300_000])
    assert now[0] - 1000.0 == pytest.approx((300_000 - rate // 4) / rate, abs=0.02)


def _open_copies(path: Path) -> int:
    """Descriptors of this process open on ``path`` (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    target = str(path.resolve())
    n = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            n += os.readlink(fd) == target
    return n


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_idle_connections_keep_a_bounded_number_of_files_open(tmp_path: Path) -> None:
    peer = Peer(tmp_path / "p", limits=FrontLimits(kept_files=2))
    blob = peer.server.index.complete_path(peer.full_id)
    async with anyio.create_task_group() as tg:
        await peer.serve_in(tg)
        conns = [await Conn.open(peer) for _ in range(5)]
        try:
            for conn in conns:
                assert await conn.get(peer.full_id, 0, 10) == (206, peer.full[:10])
            # Five idle connections, at most two of them holding the blob open.
            assert _open_copies(blob) <= 2
            assert peer.shared.kept_files == _open_copies(blob)
        finally:
            for conn in conns:
                conn.close()
        with anyio.fail_after(10):
            while peer.shared.connections:
                await anyio.sleep(0.02)
        assert _open_copies(blob) == 0 and peer.shared.kept_files == 0
        peer.uvicorn.should_exit = True
