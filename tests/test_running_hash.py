"""The whole-file hash that runs beside a download (swarm/download.py ``_RunningHash``):
chunks land in any order, every file of a process shares its hashing threads, and the
verdict is the file's real sha256."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import anyio
import pytest

from swarm.chunking import MIN_CHUNK_SIZE
from swarm.download import _RunningHash, hash_threads
from swarm.store import PartialFile

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_hash_threads_leave_the_loop_a_core() -> None:
    assert hash_threads(None) == 1
    assert hash_threads(1) == 1
    assert hash_threads(2) == 1
    assert hash_threads(3) == 2
    assert hash_threads(64) == 4


async def _land_in_random_order(pf: PartialFile, data: bytes, rh: _RunningHash, seed: int) -> None:
    order = list(range(pf.n_chunks))
    random.Random(seed).shuffle(order)
    for i in order:
        start, end = pf.span(i)
        assert pf.write_chunk(i, data[start:end])
        rh.more(i)
        await anyio.sleep(0)  # let the hash advance between landings sometimes


async def test_files_sharing_one_hash_thread_each_get_their_own_verdict(
    tmp_path: Path,
) -> None:
    size = 5 * MIN_CHUNK_SIZE + 77
    files = [_data(i, size) for i in range(3)]
    ids = [hashlib.sha256(d).hexdigest() for d in files]
    ids[2] = hashlib.sha256(b"not these bytes").hexdigest()  # the last one lies
    limiter = anyio.CapacityLimiter(1)
    pfs = [PartialFile(tmp_path / "p", fid, size) for fid in ids]
    hashes = [_RunningHash(pf, limiter) for pf in pfs]
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for rh in hashes:
                    tg.start_soon(rh.run)
                async with anyio.create_task_group() as landing:
                    for i, (pf, rh) in enumerate(zip(pfs, hashes, strict=True)):
                        landing.start_soon(_land_in_random_order, pf, files[i], rh, i)
                # Every chunk is held: each run() ends by itself once its hash is whole.
        assert [rh.next for rh in hashes] == [pf.n_chunks for pf in pfs]
        assert [rh.matches() for rh in hashes] == [True, True, False]
    finally:
        for pf in pfs:
            pf.discard()


async def test_stop_then_finish_hashes_what_landed_after(tmp_path: Path) -> None:
    size = 4 * MIN_CHUNK_SIZE
    data = _data(9, size)
    pf = PartialFile(tmp_path / "p", hashlib.sha256(data).hexdigest(), size)
    rh = _RunningHash(pf, anyio.CapacityLimiter(1))
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(rh.run)
                for i in (1, 2):  # out of order: nothing can be hashed yet
                    start, end = pf.span(i)
                    assert pf.write_chunk(i, data[start:end])
                    rh.more(i)
                await anyio.sleep(0.05)
                assert rh.next == 0
                rh.stop()  # the round ends with chunks 0 and 3 missing
            for i in (0, 3):  # a later round (or upstream) fills them
                start, end = pf.span(i)
                assert pf.write_chunk(i, data[start:end])
            assert rh.matches() is None  # cannot tell yet
            await rh.finish()
        assert rh.matches() is True
    finally:
        pf.discard()
