"""Swarm downloads between real daemons on loopback: many peers at once, faults, the hub last."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hffs.cache import HubCache
from hffs.runfiles import read_pid
from hffs.visibility import VisibilityStore
from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.store import PartialFile
from tests.localhub import LocalHub
from tests.nodes import COMMIT, REPO, Node, wait_for

FILE = "model.safetensors"


def blob_of(node: Node, data: bytes) -> Path:
    return HubCache(node.hub).blob_path("model", REPO, hashlib.sha256(data).hexdigest())


def cached_bytes(node: Node, path: str = FILE) -> bytes:
    snapshot = node.hub / f"models--{REPO.replace('/', '--')}" / "snapshots"
    (commit_dir,) = snapshot.iterdir()
    return (commit_dir / path).read_bytes()


def bytes_up(node: Node) -> int:
    return int(node.client().status()["bytes_up"])


def use_hub(node: Node, hub: LocalHub) -> None:
    node.env["HFFS_ENDPOINTS"] = hub.url


def hold_chunks(node: Node, data: bytes, chunks: range) -> None:
    """Leave a partial download of ``data`` holding just ``chunks`` in node's store
    (of public content, so the node shares it)."""
    VisibilityStore(node.home).record_peer_ids([hashlib.sha256(data).hexdigest()])
    with PartialFile(node.home / "partial", hashlib.sha256(data).hexdigest(), len(data)) as pf:
        for i in chunks:
            start, end = pf.span(i)
            assert pf.write_chunk(i, data[start:end])


def start_swarm(seeds: list[Node], downloader: Node, *extra: str) -> None:
    """Start the seeds, then the downloader's daemon bootstrapped from all of them."""
    for node in seeds:
        assert node.start(*extra).returncode == 0
    boot = [arg for n in seeds for arg in ("--bootstrap", f"{n.host}:{n.port}")]
    assert downloader.start(*boot).returncode == 0
    for node in seeds:  # every seed's announce has reached the downloader's DHT
        file_ids = {f.blob_id for f in HubCache(node.hub).files("model", REPO)}
        file_ids |= {p.stem for p in (node.home / "partial").glob("*.state")}
        for fid in file_ids:
            wait_for(
                lambda fid=fid, node=node: (
                    (node.host, node.port) in downloader.client().find_providers(fid)
                ),
                20,
                f"{node.host} announced",
            )


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    with LocalHub() as h:
        yield h


def test_chain_downloads_from_the_first_with_no_hub(nodes: Callable[[str], Node]) -> None:
    """Issue 3's acceptance: C, bootstrapped through B, gets a file only A holds."""
    a, b, c = nodes("127.0.0.2"), nodes("127.0.0.3"), nodes("127.0.0.4")
    data = os.urandom(3 * MIN_CHUNK_SIZE + 5)
    a.add_model_file(FILE, data)
    a.add_model_file("config.json", b"{}\n")
    assert a.start().returncode == 0
    assert b.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0
    assert c.start("--bootstrap", f"{b.host}:{b.port}").returncode == 0
    wait_for(
        lambda: c.client().find_providers(hashlib.sha256(data).hexdigest()) != [],
        20,
        "C to find A through the DHT",
    )
    r = c.cli("model", "add", REPO)  # `main` resolved by peers: no endpoint answers
    assert r.returncode == 0, r.stderr
    assert "using commit" in r.stderr
    assert cached_bytes(c) == data and cached_bytes(c, "config.json") == b"{}\n"
    assert (c.hub / f"models--{REPO.replace('/', '--')}" / "refs" / "main").read_text() == COMMIT
    assert bytes_up(a) >= len(data)
    # C now holds it too, and says so
    wait_for(
        lambda: (c.host, c.port) in b.client().find_providers(hashlib.sha256(data).hexdigest()),
        20,
        "C to announce what it downloaded",
    )


def test_three_peers_each_holding_a_third(nodes: Callable[[str], Node], hub: LocalHub) -> None:
    data = os.urandom(9 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)  # the hub answers metadata, never file bytes
    seeds = [nodes(f"127.0.0.{i}") for i in (2, 3, 4)]
    for k, node in enumerate(seeds):
        hold_chunks(node, data, range(3 * k, 3 * k + 3))
    d = nodes("127.0.0.5")
    use_hub(d, hub)
    start_swarm(seeds, d)
    r = d.cli("model", "add", REPO)
    assert r.returncode == 0, r.stderr
    assert cached_bytes(d) == data
    assert hub.bytes_served == 0
    assert [bytes_up(n) for n in seeds] == [3 * MIN_CHUNK_SIZE] * 3


def test_four_throttled_holders_all_serve_a_share(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    data = os.urandom(16 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)
    seeds = [nodes(f"127.0.0.{i}") for i in (2, 3, 4, 5)]
    for node in seeds:
        node.add_model_file(FILE, data)
    d = nodes("127.0.0.6")
    use_hub(d, hub)
    start_swarm(seeds, d, "--max-upload-rate", "4M")
    r = d.cli("model", "add", REPO, "--revision", hub.resolve_revision(REPO))
    assert r.returncode == 0, r.stderr
    assert cached_bytes(d) == data
    shares = [bytes_up(n) for n in seeds]
    assert sum(shares) >= len(data)
    # every holder served a real share: no one peer carried the download
    assert all(s >= 2 * MIN_CHUNK_SIZE for s in shares), shares


def test_holder_lookups_are_cached_while_downloading_from_four(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    """The download asks who holds its file every couple of seconds; the daemon answers
    from its cache and crawls the DHT once per LOOKUP_TTL, not once per ask."""
    from hffs.daemon.lookups import LOOKUP_TTL

    data = os.urandom(32 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)
    seeds = [nodes(f"127.0.0.{i}") for i in (2, 3, 4, 5)]
    for node in seeds:
        node.add_model_file(FILE, data)
    d = nodes("127.0.0.6")
    use_hub(d, hub)
    start_swarm(seeds, d, "--max-upload-rate", "1M")  # ~8 s for the file
    started = time.monotonic()
    r = d.cli("model", "add", REPO, "--revision", hub.resolve_revision(REPO), timeout=120)
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert cached_bytes(d) == data
    status = d.client().status()
    assert status["holder_asks"] >= 3, status  # the download kept asking...
    # ...and the DHT was crawled once per TTL at most (a seed answered each time).
    assert status["holder_lookups"] <= 1 + int(elapsed // LOOKUP_TTL), (status, elapsed)


def test_a_seeder_killed_mid_transfer(nodes: Callable[[str], Node], hub: LocalHub) -> None:
    data = os.urandom(16 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)
    seeds = [nodes("127.0.0.2"), nodes("127.0.0.3")]
    for node in seeds:
        node.add_model_file(FILE, data)
    d = nodes("127.0.0.4")
    use_hub(d, hub)
    start_swarm(seeds, d, "--max-upload-rate", "3M")
    victim = seeds[0]
    killed = threading.Event()

    def kill_when_serving() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if bytes_up(victim) >= 2 * MIN_CHUNK_SIZE:
                    break
            except Exception:
                return
            time.sleep(0.05)
        portable.kill(read_pid(victim.home))
        killed.set()

    killer = threading.Thread(target=kill_when_serving)
    killer.start()
    r = d.cli("model", "add", REPO, timeout=90)
    killer.join(timeout=30)
    assert killed.is_set()
    assert r.returncode == 0, r.stderr
    assert cached_bytes(d) == data


def test_a_peer_serving_corrupt_bytes_is_dropped(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    data = os.urandom(8 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)
    bad, good = nodes("127.0.0.2"), nodes("127.0.0.3")
    for node in (bad, good):
        node.add_model_file(FILE, data)
    d = nodes("127.0.0.4")
    use_hub(d, hub)
    start_swarm([bad, good], d)
    # The bad peer digests its blob honestly, then the blob rots under it (same size
    # and mtime, so its cached manifest still vouches for the good bytes).
    fid = hashlib.sha256(data).hexdigest()
    assert httpx.get(f"{bad.url}/v1/blobs/{fid}/manifest", timeout=10).status_code == 200
    blob = blob_of(bad, data)
    st = blob.stat()
    rotten = bytearray(data)
    for i in range(0, len(rotten), MIN_CHUNK_SIZE):
        rotten[i + 100] ^= 0xFF
    blob.write_bytes(bytes(rotten))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = d.cli("model", "add", REPO)
    assert r.returncode == 0, r.stderr
    assert cached_bytes(d) == data
    # the liar was dropped after its first bad chunks; the good peer carried the rest
    assert bytes_up(good) >= len(data) - 3 * MIN_CHUNK_SIZE
    # the daemon did the download: its log names the chunks that failed their check
    # (a copy that lost its race to the good peer is judged when it comes, maybe just
    # after the download ended)
    log = d.home / "daemon.log"
    wait_for(lambda: "failed verification" in log.read_text(), 10, "the liar to be caught")


def test_chunks_no_peer_holds_come_from_the_hub(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    data = os.urandom(8 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    seed = nodes("127.0.0.2")
    hold_chunks(seed, data, range(0, 5))
    d = nodes("127.0.0.3")
    use_hub(d, hub)
    start_swarm([seed], d)
    r = d.cli("model", "add", REPO)
    assert r.returncode == 0, r.stderr
    assert cached_bytes(d) == data
    assert bytes_up(seed) == 5 * MIN_CHUNK_SIZE
    assert hub.bytes_served == 3 * MIN_CHUNK_SIZE  # only the chunks no peer had


def test_two_downloaders_at_once_seed_each_other(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    """Each holds half (as if interrupted), the hub serves no bytes: both complete,
    so each served its verified half to the other while still downloading."""
    data = os.urandom(8 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)
    a, b = nodes("127.0.0.2"), nodes("127.0.0.3")
    hold_chunks(a, data, range(0, 4))
    hold_chunks(b, data, range(4, 8))
    use_hub(a, hub)
    start_swarm([a], b)
    use_hub(b, hub)
    wait_for(
        lambda: (b.host, b.port) in a.client().find_providers(hashlib.sha256(data).hexdigest()),
        20,
        "A to see B's partial copy",
    )
    both_download_at_once(a, b)
    assert cached_bytes(a) == data and cached_bytes(b) == data
    assert bytes_up(a) == bytes_up(b) == 4 * MIN_CHUNK_SIZE
    assert hub.bytes_served == 0


def test_two_downloaders_from_a_slow_hub_share(nodes: Callable[[str], Node], hub: LocalHub) -> None:
    data = os.urandom(32 * MIN_CHUNK_SIZE)
    hub.add_repo(REPO, {FILE: data})
    hub.throttle_bps = 8 * MIN_CHUNK_SIZE  # both share a slow hub: ~8 s for two copies
    a, b = nodes("127.0.0.2"), nodes("127.0.0.3")
    use_hub(a, hub)
    use_hub(b, hub)
    start_swarm([a], b)
    both_download_at_once(a, b)
    assert cached_bytes(a) == data and cached_bytes(b) == data
    # Verified chunks went from one to the other while both were downloading
    # (which ones is chance: each picks upstream chunks in its own random order).
    assert bytes_up(a) + bytes_up(b) >= MIN_CHUNK_SIZE
    assert hub.bytes_served < 2 * len(data)


def both_download_at_once(*downloaders: Node) -> None:
    cmd = [sys.executable, "-m", "hffs.cli", "model", "add", REPO]
    procs = [
        subprocess.Popen(cmd, env=n.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in downloaders
    ]
    outs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outs
