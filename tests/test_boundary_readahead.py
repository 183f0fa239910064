"""Issue 9, item 8: a ranged request makes the daemon fetch what it asked, not the file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.chunking import MIN_CHUNK_SIZE, chunk_count, chunk_size_for
from swarm.download import DownloadError, download_file
from swarm.goal import Goal, span_chunks, tail_needs_whole
from swarm.scheduler import Scheduler
from swarm.sources import Source
from swarm.store import read_partial_state
from tests.hostile import FakePeer, corrupt_bytes_published, manifest_of
from tests.localhub import LocalHub
from tests.nodes import REPO, Node, wait_for
from tests.test_swarm import FILE, use_hub

CHUNK = MIN_CHUNK_SIZE


@given(st.integers(0, 1 << 34), st.integers(0, 1 << 34), st.integers(1, 1 << 34))
def test_span_chunks_cover_the_span_and_no_more(a: int, b: int, size: int) -> None:
    start, end = min(a, b) % size, min(max(a, b), size)
    cs = chunk_size_for(size)
    got = span_chunks(start, end, size, cs)
    if end > start:
        assert got.start * cs <= start < got.start * cs + cs
        assert (got.stop - 1) * cs < end <= got.stop * cs
    else:
        assert len(got) == 0


def test_goal_grows_and_the_scheduler_reopens_what_it_deferred() -> None:
    size = 10 * CHUNK
    goal = Goal(size, CHUNK)
    goal.add(0, 1)
    assert goal.wanted() == [0] and not goal.whole and goal.version == 1
    goal.add(0, 1)
    assert goal.version == 1  # nothing new
    sched = Scheduler(10, CHUNK, done=[i for i in range(10) if not goal.wants(i)])
    sched.add_upstream("hub")
    assert [r.chunk for r in sched.next_requests(0.0)] == [0]
    goal.add(5 * CHUNK, 5 * CHUNK + 1)
    sched.reopen(i for i in goal.wanted())
    assert sorted(r.chunk for r in sched.next_requests(0.0)) == [5]
    goal.add(3 * CHUNK, size)  # to the end: those chunks (swarm.goal.tail_needs_whole)
    assert goal.wanted() == [0, *range(3, 10)] and not goal.whole


@given(
    st.integers(1, 1 << 34),
    st.integers(0, 1 << 34),
    st.lists(st.booleans(), max_size=64),
    st.booleans(),
)
def test_a_tail_costs_upstream_no_more_than_it_asked(
    size: int, a: int, held: list[bool], upstream: bool
) -> None:
    """Whichever way a span to the end is vouched for, what it makes us fetch beyond the
    span is no more than the span: the whole file only when little is missing."""
    start, cs = a % size, chunk_size_for(size)
    n = chunk_count(size, cs)
    have = (held + [False] * n)[:n]
    whole = tail_needs_whole(start, size, size, cs, have, upstream)
    inside = span_chunks(start, size, size, cs)
    missing = sum(min(cs, size - i * cs) for i in range(n) if i not in inside and not have[i])
    if not upstream:
        assert whole  # nobody else to vouch for it
    elif whole:
        assert missing <= size - start
    else:
        assert missing > size - start
    assert not tail_needs_whole(start, size - 1, size, cs, have, upstream)  # not a tail


def settled(read: Callable[[], object], rounds: int = 40) -> object:
    """A value once it stopped changing for a few polls (bounded)."""
    last: object = None
    stable = 0
    for _ in range(rounds):
        now = read()
        stable = stable + 1 if now == last else 0
        if stable >= 5:
            return now
        last = now
        time.sleep(0.2)
    return last


def test_range_0_0_fetches_one_chunk_not_the_file(nodes: Callable[[str], Node]) -> None:
    data = os.urandom(24 * CHUNK + 5)
    fid = hashlib.sha256(data).hexdigest()
    with hub_daemon(nodes, data) as (c, hub, url):
        hub.reset_stats()
        with httpx.Client(trust_env=False, timeout=60) as http:
            r = http.get(url, headers={"range": "bytes=0-0"})
            assert r.status_code == 206 and r.content == data[:1]
            span = f"bytes={5 * CHUNK + 10}-{5 * CHUNK + 20}"
            r = http.get(url, headers={"range": span})
            assert r.status_code == 206 and r.content == data[5 * CHUNK + 10 : 5 * CHUNK + 21]
        partial = c.home / "partial"

        def held() -> tuple[int, ...]:
            state = read_partial_state(partial, fid)
            return () if state is None else tuple(i for i, f in enumerate(state[1]) if f)

        # Once the daemon is idle, it holds the two chunks asked for and nothing else, and
        # took no more than those from upstream (not the 24 MiB file).
        assert settled(lambda: (held(), hub.bytes_served)) == ((0, 5), 2 * CHUNK)
        blob = c.hub / f"models--{REPO.replace('/', '--')}" / "blobs" / fid
        assert not blob.exists()
        # A plain GET still gets (and publishes) the whole file, resuming those chunks.
        with httpx.Client(trust_env=False, timeout=60) as http:
            r = http.get(url)
            assert r.status_code == 200 and r.content == data
        wait_for(blob.is_file, 30, "the whole file published")
        assert hub.bytes_served == len(data)  # the two chunks were not fetched twice
        assert corrupt_bytes_published(c.hub) == 0


def test_a_range_to_the_end_fetches_the_tail_not_the_file(nodes: Callable[[str], Node]) -> None:
    """``bytes=-1`` and ``bytes=N-`` of a big file: the daemon fetches the chunks asked
    for (upstream vouches for them: they are its own bytes), not the whole file."""
    data = os.urandom(24 * CHUNK + 5)
    fid = hashlib.sha256(data).hexdigest()
    with hub_daemon(nodes, data) as (c, hub, url):
        hub.reset_stats()
        with httpx.Client(trust_env=False, timeout=60) as http:
            r = http.get(url, headers={"range": "bytes=-1"})
            assert r.status_code == 206 and r.content == data[-1:]
            r = http.get(url, headers={"range": f"bytes={len(data) - 10}-"})
            assert r.status_code == 206 and r.content == data[-10:]
        partial = c.home / "partial"

        def held() -> tuple[int, ...]:
            state = read_partial_state(partial, fid)
            return () if state is None else tuple(i for i, f in enumerate(state[1]) if f)

        # the last chunk (5 bytes) and the one before it; not the 24 MiB file (the last
        # chunk's 5 bytes may be asked twice: found on disk, its source is not known)
        chunks, served = settled(lambda: (held(), hub.bytes_served))  # type: ignore[misc]
        assert chunks == (23, 24) and CHUNK + 5 <= served <= CHUNK + 10, served
        blob = c.hub / f"models--{REPO.replace('/', '--')}" / "blobs" / fid
        assert not blob.exists()


def test_a_peers_forged_tail_is_not_served(nodes: Callable[[str], Node]) -> None:
    """A peer holds the file with its tail changed and a manifest to match: a request for
    the tail gets the peer's chunks, but upstream's bytes are compared before the last
    block, so the forged bytes never reach the client; asked again, it gets the real ones."""
    data = os.urandom(8 * CHUNK + 5)
    forged = data[:-100] + bytes(b ^ 0xFF for b in data[-100:])
    with (
        lone_forger(nodes, data, forged) as (url, peer),
        httpx.Client(trust_env=False, timeout=60) as http,
    ):
        status, body = get_what_arrives(http, url, "bytes=-100")
        assert peer.blob_requests > 0  # the forged chunks were fetched...
        if status == 206:  # ...never served: upstream's bytes, and the copy not completed
            assert body == data[-100:][: len(body)] and len(body) < 100
        else:
            assert status == 502 and forged[-5:] not in body and forged[-100:-95] not in body
        status, body = get_what_arrives(http, url, "bytes=-100")
        assert (status, body) == (206, data[-100:])  # asked again: upstream's bytes


@contextlib.contextmanager
def lone_forger(
    nodes: Callable[[str], Node], data: bytes, forged: bytes
) -> Iterator[tuple[str, FakePeer]]:
    """The hub holds `data`; the one peer holds `forged` under data's id, with a manifest
    that matches its forgery; a daemon that asks both. Yields its resolve URL and the peer."""
    fid = hashlib.sha256(data).hexdigest()
    peer = FakePeer("127.0.0.4", fid, forged, manifest=manifest_of(fid, forged))
    with peer, hub_daemon(nodes, data) as (c, _, url):
        assert c.cli("peer", "add", peer.host, "--port", str(peer.port)).returncode == 0
        yield url, peer


@contextlib.contextmanager
def hub_daemon(nodes: Callable[[str], Node], data: bytes) -> Iterator[tuple[Node, LocalHub, str]]:
    """A hub holding `data` as FILE of REPO, and a daemon using it: (daemon, hub, the
    file's resolve URL on the daemon)."""
    with LocalHub() as hub:
        hub.add_repo(REPO, {FILE: data})
        c = nodes("127.0.0.2")
        use_hub(c, hub)
        assert c.start().returncode == 0
        yield c, hub, f"{c.url}/{REPO}/resolve/main/{FILE}"


def get_what_arrives(http: httpx.Client, url: str, span: str) -> tuple[int, bytes]:
    """Status and whatever body arrived, also when the daemon cuts it short."""
    body = b""
    with http.stream("GET", url, headers={"range": span}) as r:
        try:
            for block in r.iter_raw():
                body += block
        except httpx.RemoteProtocolError:
            pass
    return r.status_code, body


def test_a_failed_download_of_a_claimed_size_leaves_nothing(tmp_path: Path) -> None:
    """A fake id, with a claimed size no source can give: no partial file is left."""
    fid = hashlib.sha256(b"no one has this").hexdigest()
    dead = Source("http://127.0.0.1:9", f"http://127.0.0.1:9/{fid}", True)

    async def go() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            with pytest.raises(DownloadError):
                await download_file(
                    fid,
                    3 * CHUNK,
                    dest=tmp_path / "blob",
                    store_root=tmp_path / "partial",
                    upstream=[dead],
                    client=client,
                )

    anyio.run(go)
    assert list((tmp_path / "partial").iterdir()) == []
    assert not (tmp_path / "blob").exists()


def test_a_lone_peers_forged_bytes_never_stream_to_a_client(nodes: Callable[[str], Node]) -> None:
    """One peer holds the file with its first chunk changed and a manifest to match; the
    hub is up. A plain GET streams as chunks verify, but a chunk checked only against a
    manifest ONE address vouches for waits for the whole-file check: the forged bytes never
    reach the client (a client that resumed after a cut would keep them for good)."""
    data = os.urandom(8 * CHUNK + 5)
    forged = bytes(b ^ 0xFF for b in data[:CHUNK]) + data[CHUNK:]
    with (
        lone_forger(nodes, data, forged) as (url, peer),
        httpx.Client(trust_env=False, timeout=60) as http,
    ):
        status, body = get_what_arrives(http, url, "bytes=0-")
        assert peer.blob_requests > 0  # the forged chunks were fetched...
        assert body == data[: len(body)], "a forged byte reached the client"  # ...not sent
        if status != 206 or len(body) < len(data):  # cut short: the retry is whole
            status, body = get_what_arrives(http, url, f"bytes={len(body)}-")
            assert status == 206 and body == data[len(data) - len(body) :]


def test_a_lone_peers_forged_chunk_inside_a_range_is_not_served(
    nodes: Callable[[str], Node],
) -> None:
    """As above, for a range inside the file (parallel-range clients assemble files from
    these): the lone peer's chunk is compared with upstream's bytes before it goes out."""
    data = os.urandom(8 * CHUNK + 5)
    forged = data[: 2 * CHUNK] + bytes(b ^ 0xFF for b in data[2 * CHUNK : 3 * CHUNK])
    forged += data[3 * CHUNK :]
    with lone_forger(nodes, data, forged) as (url, peer):
        lo, hi = 2 * CHUNK + 10, 2 * CHUNK + 99
        with httpx.Client(trust_env=False, timeout=60) as http:
            status, body = get_what_arrives(http, url, f"bytes={lo}-{hi}")
            assert peer.blob_requests > 0  # the forged chunk was fetched...
            if status == 206:  # ...never served
                assert body == data[lo : lo + len(body)], "a forged byte reached the client"
            else:
                assert status == 502 and forged[lo : lo + 16] not in body
            status, body = get_what_arrives(http, url, f"bytes={lo}-{hi}")
            assert (status, body) == (206, data[lo : hi + 1])  # asked again: the real bytes
