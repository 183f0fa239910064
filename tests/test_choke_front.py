"""Upload fairness at a real sendfile front (swarm.transport_server + swarm.choke): the
seed sends a chunk to one downloader first and chokes the others while it is busy; a
reader that never reads cannot lock the send slots; plain HTTP still works."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from swarm.choke import ChokeConfig
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.transport_server import FrontLimits, UploadGate
from tests.test_transport import SIZE, Peer, _raw, slots_given_back

pytestmark = pytest.mark.anyio
CS = MIN_CHUNK_SIZE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def seed(tmp_path: Path) -> AsyncIterator[Peer]:
    p = Peer(tmp_path / "p", limits=FrontLimits(snub_after=0.5, slot_wait=10.0))
    p.shared.gate = UploadGate(ChokeConfig(slots=1, spread_window=60.0))
    async with anyio.create_task_group() as tg:
        await p.serve_in(tg)
        yield p
        p.uvicorn.should_exit = True


def _get(fid: str, start: int | None, end: int | None) -> bytes:
    rng = f"Range: bytes={start}-{end - 1}\r\n" if start is not None and end is not None else ""
    return f"GET /v1/blobs/{fid} HTTP/1.1\r\nHost: x\r\n{rng}Connection: close\r\n\r\n".encode()


async def test_a_busy_seed_sends_a_chunk_once_and_a_stalled_reader_gives_its_slot_back(
    seed: Peer,
) -> None:
    fid = seed.full_id
    gate = seed.shared.gate
    # A gets chunk 0 while the seed is idle.
    out = await _raw(seed, _get(fid, 0, CS), source="127.0.0.71")
    assert out.startswith(b"HTTP/1.1 206") and out.endswith(seed.full[:CS])
    # Another upload holds the only send slot (taken here through the gate itself, so
    # nothing depends on timing).
    held = await gate.enter("127.0.0.69", "f" * 64, None, 1.0)
    assert held is not None
    # B asks for chunk 0 while the seed is busy: choked at once, not a byte of it sent
    # (A has it and trades it on).
    out = await _raw(seed, _get(fid, 0, CS), source="127.0.0.72")
    assert out.startswith(b"HTTP/1.1 503") and b"X-HFFS-Choked: 1" in out
    assert "127.0.0.72" not in seed.stats.by_host
    gate.leave(held, 0)
    # X takes the slot with a big body it never reads.
    x = socket.socket()
    x.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    x.bind(("127.0.0.70", 0))
    x.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(x, (seed.addr.host, seed.port))
        await loop.sock_sendall(x, _get(seed.big_id, 0, 200 << 20))
        with anyio.fail_after(10):
            while gate.rule.sending == 0:
                await anyio.sleep(0.01)
        # A chunk nobody has is served: X's stalled body gave its slot back.
        with anyio.fail_after(10):
            out = await _raw(seed, _get(fid, CS, 2 * CS), source="127.0.0.72")
        assert out.startswith(b"HTTP/1.1 206") and out.endswith(seed.full[CS : 2 * CS])
    finally:
        x.close()
    # Plain HTTP (curl: no Range) still gets the whole file.
    with anyio.fail_after(10):
        while seed.shared.gate.rule.sending:
            await anyio.sleep(0.02)
    out = await _raw(seed, _get(fid, None, None), source="127.0.0.73")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(seed.full)
    assert len(out) > SIZE
    await slots_given_back(seed)


async def test_peer_connections_leave_from_the_bound_address(seed: Peer) -> None:
    """Fairness counts addresses: a daemon bound to 127.0.0.74 must be seen as that
    address, not as the loopback source the system picks (every bench daemon alike)."""
    from swarm import hostport
    from swarm.transport_client import MemorySink, PeerPool
    from swarm.wire import PeerAuth

    try:
        hostport.set_source_ip("127.0.0.74")
        async with PeerPool(PeerAuth()) as pool:
            await pool.fetch(seed.addr, seed.full_id, 0, CS, MemorySink(CS))
    finally:
        hostport.set_source_ip(None)
    assert seed.stats.by_host.get("127.0.0.74") == CS


def test_the_source_address_is_used_only_where_it_can_reach() -> None:
    from swarm import hostport

    try:
        hostport.set_source_ip("0.0.0.0")
        assert hostport.source_addr("127.0.0.2") is None  # unspecified: the system picks
        hostport.set_source_ip("127.0.0.5")
        assert hostport.source_addr("127.0.0.2") == ("127.0.0.5", 0)
        assert hostport.source_addr("192.168.1.20") is None  # loopback cannot reach it
        assert hostport.source_addr("::1") is None  # another family
        assert hostport.source_addr("peer.example") is None  # a name: left to the system
        hostport.set_source_ip("192.168.1.9")
        assert hostport.source_addr("192.168.1.20") == ("192.168.1.9", 0)
    finally:
        hostport.set_source_ip(None)
