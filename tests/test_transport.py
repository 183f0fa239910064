"""The sendfile front (swarm.transport_server) and the recv_into client
(swarm.transport_client), over real loopback sockets in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import uvicorn
from anyio.abc import TaskGroup
from hypothesis import given
from hypothesis import strategies as st

from swarm.chunking import MIN_CHUNK_SIZE
from swarm.have import follow_haves
from swarm.manifest import chunk_digest
from swarm.peer_auth import Verifier
from swarm.peer_server import PeerServer, UploadLimits, UploadStats, peer_app_for
from swarm.sources import PeerAddr, SourceError
from swarm.store import PartialFile
from swarm.transport_client import (
    MIN_AT_PEER,
    FileSink,
    MemorySink,
    PeerPool,
    parse_response_head,
    should_send,
)
from swarm.transport_server import FrontLimits, FrontShared, install_front, parse_head
from swarm.wire import PeerAuth
from tests.blob_index import DictIndex

pytestmark = pytest.mark.anyio
SIZE = 3 * MIN_CHUNK_SIZE + 12345
HOST = "127.0.0.61"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _data(seed: int, size: int = SIZE) -> bytes:
    block = hashlib.sha256(b"%d" % seed).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


class Peer:
    """A real uvicorn server with the front installed, on HOST, in this event loop."""

    def __init__(self, root: Path, *, secret: str | None = None, limits: FrontLimits) -> None:
        self.full = _data(1)
        self.full_id = hashlib.sha256(self.full).hexdigest()
        blob = root / "blobs" / self.full_id
        blob.parent.mkdir(parents=True)
        blob.write_bytes(self.full)
        # A big sparse "blob" (its bytes are never checked against its id here): enough
        # to fill any socket buffer of a client that stops reading.
        self.big_id = "b" * 64
        big = root / "blobs" / self.big_id
        with big.open("wb") as f:
            f.truncate(256 << 20)
        self.part = _data(2)
        self.part_id = hashlib.sha256(self.part).hexdigest()
        self.partial_root = root / "partial"
        with PartialFile(self.partial_root, self.part_id, SIZE) as pf:
            for i in (0, 2):
                start, end = pf.span(i)
                assert pf.write_chunk(i, self.part[start:end])
        self.stats = UploadStats()
        self.server = PeerServer(
            DictIndex({self.full_id: blob, self.big_id: big}),
            self.partial_root,
            root / "manifests",
            UploadLimits(max_uploads=32),
            self.stats,
        )
        verifier = Verifier(secret) if secret else None
        app = peer_app_for(self.server, verifier=verifier)
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
        self.shared = FrontShared(self.server, verifier, limits)
        install_front(config, self.shared)
        self.uvicorn = uvicorn.Server(config)
        self.addr = PeerAddr(HOST, self.port)

    async def serve_in(self, tg: TaskGroup) -> None:
        """Serve in ``tg``; returns once the server listens."""
        tg.start_soon(self.uvicorn.serve, [self.sock])
        with anyio.fail_after(10):
            while not self.uvicorn.started:
                await anyio.sleep(0.01)


@pytest.fixture
async def make_peer(tmp_path: Path) -> AsyncIterator:
    started: list[Peer] = []

    async def make(secret: str | None = None, limits: FrontLimits = FrontLimits()) -> Peer:
        peer = Peer(tmp_path / f"p{len(started)}", secret=secret, limits=limits)
        started.append(peer)
        await peer.serve_in(tg)
        return peer

    async with anyio.create_task_group() as tg:
        yield make
        for peer in started:
            peer.uvicorn.should_exit = True


async def slots_given_back(peer: Peer) -> None:
    """Until every upload slot of ``peer`` is free again (bounded): the server books a
    send once it is over, which may be a moment after the client read the last byte."""
    with anyio.fail_after(10):
        while peer.stats.active:
            await anyio.sleep(0.01)


async def _raw(
    peer: Peer, payload: bytes, *, source: str = "127.0.0.62", read_until_close: bool = True
) -> bytes:
    """Send raw bytes from ``source`` and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection(
        peer.addr.host, peer.port, local_addr=(source, 0)
    )
    writer.write(payload)
    out = b""
    with anyio.fail_after(10):
        while chunk := await reader.read(1 << 20):
            out += chunk
            if not read_until_close:
                break
    writer.close()
    return out


# -- plain parsing -------------------------------------------------------------------


def test_parse_head() -> None:
    head = parse_head(b"GET /v1/blobs/x HTTP/1.1\r\nHost: a\r\nRange:  bytes=0-9 \r\n\r\n")
    assert (head.method, head.target, head.headers["range"]) == ("GET", b"/v1/blobs/x", "bytes=0-9")
    for bad in (b"GET /x\r\n\r\n", b"GET /x HTTP/2\r\n\r\n", b"GET /x HTTP/1.1\r\nnocolon\r\n\r\n"):
        with pytest.raises(ValueError):
            parse_head(bad)


def test_parse_response_head_refuses_what_it_will_not_follow() -> None:
    ok = parse_response_head(b"HTTP/1.1 206 P\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/99")
    assert (ok.status, ok.length, ok.content_range) == (206, 10, (0, 10))
    for bad in (
        b"HTTP/1.1 206 P\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 206 P\r\nContent-Length: -1",
        b"HTTP/1.1 206 P\r\nContent-Length: 1\r\nContent-Length: 2",
        b"SSH-2.0-x",
    ):
        with pytest.raises(SourceError):
            parse_response_head(bad)


# -- the front and the client together --------------------------------------------


async def test_pipelined_chunks_land_verified_in_memory_and_on_disk(
    make_peer, tmp_path: Path
) -> None:
    peer = await make_peer()
    spans = [(i, min(i + MIN_CHUNK_SIZE, SIZE)) for i in range(0, SIZE, MIN_CHUNK_SIZE)]
    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        async with PeerPool() as pool:
            mem = [MemorySink(e - s) for s, e in spans]
            results: dict[int, bytes] = {}

            async def one(i: int) -> None:
                s, e = spans[i]
                results[i] = await pool.fetch(peer.addr, peer.full_id, s, e, mem[i])
                results[-1 - i] = await pool.fetch(peer.addr, peer.full_id, s, e, FileSink(fd, s))

            async with anyio.create_task_group() as tg:
                for i in range(len(spans)):
                    tg.start_soon(one, i)
            # At most two connections carried all eight requests.
            assert len(pool._conns[peer.addr]) <= 2
    finally:
        os.close(fd)
    for i, (s, e) in enumerate(spans):
        assert bytes(mem[i].data) == peer.full[s:e]
        assert results[i] == results[-1 - i] == chunk_digest(peer.full[s:e])
    assert target.read_bytes() == peer.full
    await slots_given_back(peer)
    assert peer.stats.total == 2 * SIZE


@given(st.integers(0, 64), st.integers(0, 64))
def test_held_back_heads_leave_before_the_peer_runs_dry(at_peer: int, held_back: int) -> None:
    send = should_send(at_peer, held_back)
    if held_back == 0:
        assert not send  # nothing to write
    elif at_peer < MIN_AT_PEER:
        assert send  # the peer would idle: a lone request is not held back
    elif not send:
        assert held_back < at_peer  # the peer keeps at least half of the window


async def test_a_burst_of_pipelined_requests_all_land(make_peer) -> None:
    # Requests pipelined in a burst are held back and leave in batches as answers
    # come in; a batch never left behind would stall this test.
    peer = await make_peer()
    size = 64 << 10
    spans = [(i * size, (i + 1) * size) for i in range(40)]
    got: dict[int, bytes] = {}
    async with PeerPool(conns_per_peer=1) as pool:
        first = MemorySink(size)
        await pool.fetch(peer.addr, peer.full_id, 0, size, first)
        conn = pool.ready(peer.addr)
        assert conn is not None
        sinks = [MemorySink(size) for _ in spans]
        for i, (s, e) in enumerate(spans):

            def done(digest: bytes | None, exc: SourceError | None, i: int = i) -> None:
                assert exc is None and digest is not None
                got[i] = digest

            pool.send(conn, peer.full_id, s, e, sinks[i], done)
        with anyio.fail_after(10):
            while len(got) < len(spans):
                await anyio.sleep(0.01)
    for i, (s, e) in enumerate(spans):
        assert bytes(sinks[i].data) == peer.full[s:e]
        assert got[i] == chunk_digest(peer.full[s:e])


async def test_an_abandoned_request_still_held_back_is_never_sent(make_peer) -> None:
    peer = await make_peer()
    size = 64 << 10
    got: dict[int, bytes] = {}

    def done_for(i: int):
        def done(digest: bytes | None, exc: SourceError | None) -> None:
            assert exc is None and digest is not None
            got[i] = digest

        return done

    async with PeerPool(conns_per_peer=1) as pool:
        await pool.fetch(peer.addr, peer.full_id, 0, size, MemorySink(size))
        conn = pool.ready(peer.addr)
        assert conn is not None
        # Ten asked at once, with no answer read in between: the first eight go out
        # (1, 2, then batches of 2 and 4), the last two wait for answers.
        tickets = [
            pool.send(conn, peer.full_id, i * size, (i + 1) * size, MemorySink(size), done_for(i))
            for i in range(10)
        ]
        for ticket in tickets[8:]:
            pool.abandon(ticket)  # e.g. the peer was just banned
        with anyio.fail_after(10):
            while len(got) < 8:
                await anyio.sleep(0.01)
        # The connection stays in step: the next answer is the next request's.
        last = MemorySink(size)
        digest = await pool.fetch(peer.addr, peer.full_id, 20 * size, 21 * size, last)
        assert digest == chunk_digest(peer.full[20 * size : 21 * size])
        await slots_given_back(peer)
    assert sorted(got) == list(range(8))
    assert peer.stats.total == (1 + 8 + 1) * size  # the two abandoned were never served


async def test_an_answer_after_the_caller_gave_up_is_still_told(make_peer) -> None:
    # An endgame copy is abandoned once another wins; the peer's answer still counts
    # (``late``): a "not held" refusal, or the digest of the bytes it sent anyway, which
    # are written nowhere.
    peer = await make_peer()
    size = 64 << 10
    late: list[tuple[str, bytes | None, int | None]] = []

    def told(name: str):
        def late_done(digest: bytes | None, exc: SourceError | None) -> None:
            late.append((name, digest, exc.status if exc is not None else None))

        return late_done

    async with PeerPool(conns_per_peer=1) as pool:
        await pool.fetch(peer.addr, peer.full_id, 0, size, MemorySink(size))
        conn = pool.ready(peer.addr)
        assert conn is not None

        def never(digest: bytes | None, exc: SourceError | None) -> None:
            raise AssertionError("done is not called once abandoned")

        lacked = pool.send(conn, "c" * 64, 0, size, MemorySink(size), never)
        sink = MemorySink(size)
        served = pool.send(conn, peer.full_id, size, 2 * size, sink, never)
        pool.abandon(lacked, told("lacked"))
        pool.abandon(served, told("served"))
        # The connection stays in step: a request behind them gets its own answer.
        digest = await pool.fetch(peer.addr, peer.full_id, 2 * size, 3 * size, MemorySink(size))
        assert digest == chunk_digest(peer.full[2 * size : 3 * size])
    assert late == [
        ("lacked", None, 404),
        ("served", chunk_digest(peer.full[size : 2 * size]), None),
    ]
    assert sink.data == bytes(size)  # the abandoned body went nowhere


async def test_a_fetch_cancelled_once_sent_is_still_judged(make_peer) -> None:
    # A peer's first requests run as tasks (its connection opening); the endgame cancels
    # the losers. Their answers still reach ``late``, and the bytes go nowhere.
    peer = await make_peer()
    size = 64 << 10
    told: list[tuple[bytes | None, SourceError | None]] = []
    async with PeerPool(conns_per_peer=1) as pool:
        await pool.fetch(peer.addr, peer.full_id, 0, size, MemorySink(size))
        sink = MemorySink(size)
        with anyio.CancelScope() as scope:
            scope.cancel()  # delivered once the request is out, at its first wait
            await pool.fetch(
                peer.addr,
                peer.full_id,
                size,
                2 * size,
                sink,
                late=lambda digest, exc: told.append((digest, exc)),
            )
        assert scope.cancelled_caught
        # The connection stays in step: a request behind it gets its own answer.
        digest = await pool.fetch(peer.addr, peer.full_id, 2 * size, 3 * size, MemorySink(size))
        assert digest == chunk_digest(peer.full[2 * size : 3 * size])
    assert told == [(chunk_digest(peer.full[size : 2 * size]), None)]
    assert sink.data == bytes(size)


async def test_a_partial_file_serves_only_verified_chunks(make_peer) -> None:
    peer = await make_peer()
    async with PeerPool() as pool:
        sink = MemorySink(MIN_CHUNK_SIZE)
        with pytest.raises(SourceError, match="416"):
            await pool.fetch(peer.addr, peer.part_id, MIN_CHUNK_SIZE, 2 * MIN_CHUNK_SIZE, sink)
        assert not any(sink.data)  # nothing of the unverified chunk left the peer
        # The same connection goes on serving after a refusal.
        got = await pool.fetch(peer.addr, peer.part_id, 0, MIN_CHUNK_SIZE, sink)
        assert got == chunk_digest(peer.part[:MIN_CHUNK_SIZE])
        assert bytes(sink.data) == peer.part[:MIN_CHUNK_SIZE]


async def test_plain_http_tools_still_fetch_blobs_and_other_routes(make_peer) -> None:
    peer = await make_peer()
    fid = peer.full_id
    two = (
        f"GET /v1/blobs/{fid} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-4\r\n\r\n"
        f"HEAD /v1/blobs/{fid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ).encode()
    out = await _raw(peer, two)
    first, rest = out.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 206") and b"Content-Range: bytes 0-4/" in first
    assert rest.startswith(peer.full[:5] + b"HTTP/1.1 200")
    assert f"Content-Length: {SIZE}".encode() in rest
    # Any other route reaches the app (uvicorn), for one request.
    out = await _raw(peer, b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b'"hffs-peer"' in out
    out = await _raw(peer, f"GET /v1/blobs/{fid}/have HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\xf0")


async def test_the_secret_guards_the_fast_path_too(make_peer) -> None:
    peer = await make_peer(secret="s3cret")
    fid = peer.full_id
    out = await _raw(peer, f"GET /v1/blobs/{fid} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 403") and peer.full[:64] not in out
    async with PeerPool(PeerAuth("wrong")) as pool:
        with pytest.raises(SourceError, match="403"):
            await pool.fetch(peer.addr, fid, 0, 10, MemorySink(10))
    async with PeerPool(PeerAuth("s3cret")) as pool:
        assert await pool.fetch(peer.addr, fid, 0, 10, MemorySink(10)) == chunk_digest(
            peer.full[:10]
        )


async def test_bad_ids_and_paths_never_reach_the_disk(make_peer) -> None:
    peer = await make_peer()
    for target in ("/v1/blobs/..%2F..%2Fetc%2Fpasswd", "/v1/blobs/" + "A" * 64, "/v1/blobs/"):
        out = await _raw(peer, f"GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 400"), out[:80]
    # A GET with a body is refused and the connection closed (no smuggling into the next).
    out = await _raw(
        peer,
        f"GET /v1/blobs/{peer.full_id} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".encode(),
    )
    assert out.startswith(b"HTTP/1.1 400")


# -- denial of service ---------------------------------------------------------------


async def test_never_reading_downloads_neither_lock_others_out_nor_keep_their_slots(
    make_peer,
) -> None:
    peer = await make_peer(limits=FrontLimits(stall_timeout=1.0))
    request = f"GET /v1/blobs/{peer.big_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    hogs: list[asyncio.StreamWriter] = []
    for i in range(32):
        _, writer = await asyncio.open_connection(
            peer.addr.host, peer.port, local_addr=(f"127.0.0.{70 + i % 2}", 0)
        )
        writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
        )
        writer.write(request)
        hogs.append(writer)
    try:
        with anyio.fail_after(10):  # the hogs got what slots their addresses may hold
            while peer.stats.active < 2 * peer.server.slots_per_address:
                await anyio.sleep(0.05)
        # An honest peer elsewhere still gets its bytes at once.
        async with PeerPool() as pool:
            sink = MemorySink(MIN_CHUNK_SIZE)
            with anyio.fail_after(10):
                got = await pool.fetch(peer.addr, peer.full_id, 0, MIN_CHUNK_SIZE, sink)
            assert got == chunk_digest(peer.full[:MIN_CHUNK_SIZE])
        # The stalled uploads are cut and their slots freed, though the hogs stay connected.
        with anyio.fail_after(15):
            while peer.stats.active:
                await anyio.sleep(0.05)
    finally:
        for w in hogs:
            w.transport.abort()


async def test_half_sent_requests_are_cut_and_ping_still_answers(make_peer) -> None:
    peer = await make_peer(limits=FrontLimits(header_timeout=1.0, per_address=24))
    socks: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.socket()
            s.setblocking(False)
            s.bind(("127.0.0.90", 0))
            with contextlib.suppress(BlockingIOError):
                s.connect((HOST, peer.port))
            socks.append(s)
        await anyio.sleep(0.2)
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert peer.shared.connections.get("127.0.0.90", 0) <= 24
        out = await _raw(peer, b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.91")
        assert b'"hffs-peer"' in out
        with anyio.fail_after(10):  # the header deadline closes every half-sent request
            while peer.shared.connections.get("127.0.0.90", 0):
                await anyio.sleep(0.05)
    finally:
        for s in socks:
            s.close()


# -- have push -----------------------------------------------------------------------


async def test_a_follower_is_told_each_chunk_as_it_verifies(make_peer) -> None:
    peer = await make_peer(secret="s3cret")
    n = 4
    seen: dict[int, bytes] = {}
    grew = anyio.Event()

    def on_have(batch: dict[int, bytes]) -> None:
        seen.update(batch)
        grew.set()

    async with anyio.create_task_group() as tg:
        with pytest.raises(SourceError, match="403"):
            await follow_haves(peer.addr, peer.part_id, n, PeerAuth("nope"), on_have)
        tg.start_soon(follow_haves, peer.addr, peer.part_id, n, PeerAuth("s3cret"), on_have)
        with anyio.fail_after(10):
            while set(seen) != {0, 2}:
                await grew.wait()
                grew = anyio.Event()
        # Chunks verified later (here by "another process" writing the partial file) are
        # pushed; the stream ends once the holder has every chunk.
        with PartialFile(peer.partial_root, peer.part_id, SIZE) as pf:
            for i in (1, 3):
                start, end = pf.span(i)
                assert pf.write_chunk(i, peer.part[start:end])
        with anyio.fail_after(10):
            while len(seen) < n:
                await grew.wait()
                grew = anyio.Event()
    for i, digest in seen.items():
        start, end = i * MIN_CHUNK_SIZE, min((i + 1) * MIN_CHUNK_SIZE, SIZE)
        assert digest == chunk_digest(peer.part[start:end])


async def test_a_complete_holder_sends_every_chunk_and_ends(make_peer) -> None:
    peer = await make_peer()
    seen: dict[int, bytes] = {}
    with anyio.fail_after(10):
        await follow_haves(peer.addr, peer.full_id, 4, PeerAuth(), seen.update)
    assert seen == {
        i: chunk_digest(peer.full[i * MIN_CHUNK_SIZE : (i + 1) * MIN_CHUNK_SIZE]) for i in range(4)
    }
    # A follower that names more chunks than exist is told of none it cannot place.
    with pytest.raises(SourceError):
        await follow_haves(peer.addr, peer.full_id, 2, PeerAuth(), lambda b: None)
