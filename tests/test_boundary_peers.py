"""Hostile holders against real daemons (issue 9, items 3 and 6).

Item 3: holders answering malformed manifests or bitmaps (200 kB of "[", wrong types, a
bool for a size, a 1 PiB size, bitmaps of the wrong length) are dropped; the download
completes from the honest sources, with no traceback, through the CLI and through the HF
endpoint. Item 6: a peer answering with an endless body costs the daemon a bounded amount
of memory (its peak RSS, read from /proc), not gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import ExitStack

import httpx

from hffs.config import Config, Peer
from swarm.chunking import MIN_CHUNK_SIZE
from tests.hostile import FakePeer, RawHostile, corrupt_bytes_published, manifest_of
from tests.localhub import LocalHub
from tests.nodes import COMMIT, REPO, Node
from tests.test_swarm import FILE, cached_bytes, start_swarm, use_hub

CHUNK = MIN_CHUNK_SIZE


def malformed_manifests(fid: str, size: int) -> list[bytes]:
    """Representative shapes (tests/test_boundary_parsers.py has them all)."""
    honest = json.loads(manifest_of(fid, os.urandom(size)).to_json())
    return [
        b"[" * 200_000,  # RecursionError in json
        json.dumps({**honest, "size": True}).encode(),
        json.dumps({**honest, "size": 1 << 50}).encode(),
        json.dumps({**honest, "digests": [7] * len(honest["digests"])}).encode(),
    ]


def hostile_holders(fid: str, data: bytes, first_host: int) -> list[FakePeer]:
    peers = [
        FakePeer(f"127.0.0.{first_host + i}", fid, data, manifest_raw=raw)
        for i, raw in enumerate(malformed_manifests(fid, len(data)))
    ]
    n = len(peers)
    right = manifest_of(fid, data)  # a bitmap one byte too long
    peers.append(
        FakePeer(f"127.0.0.{first_host + n}", fid, data, manifest=right, have_raw=b"\xff" * 2)
    )
    return peers


def add_peers(node: Node, peers: list[FakePeer] | list[RawHostile]) -> None:
    """Saved peers, written as `hffs peer add` would (one CLI run each is slow)."""
    cfg = Config.load(node.home)
    cfg.peers.extend(Peer(p.host, p.port) for p in peers)
    cfg.save()


def test_malformed_holders_never_break_a_download(nodes: Callable[[str], Node]) -> None:
    data = os.urandom(6 * CHUNK + 123)
    fid = hashlib.sha256(data).hexdigest()
    with LocalHub() as hub, ExitStack() as stack:
        hub.add_repo(REPO, {FILE: data})
        seed, d = nodes("127.0.0.2"), nodes("127.0.0.3")
        seed.add_model_file(FILE, data)
        use_hub(d, hub)
        hostile = [stack.enter_context(p) for p in hostile_holders(fid, data, 10)]
        start_swarm([seed], d)
        add_peers(d, hostile)
        r = d.cli("model", "add", REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert cached_bytes(d) == data
        assert corrupt_bytes_published(d.hub) == 0
        # No malformed holder was ever asked for a chunk: each was dropped at its answer.
        assert sum(p.blob_requests for p in hostile) == 0
        # Every hostile holder was asked, so each malformed shape was really parsed.
        assert all(any("/v1/blobs/" in s.path for s in p.seen) for p in hostile)


def test_the_hf_endpoint_serves_from_the_hub_past_malformed_holders(
    nodes: Callable[[str], Node],
) -> None:
    data = os.urandom(5 * CHUNK + 7)
    fid = hashlib.sha256(data).hexdigest()
    with LocalHub() as hub, ExitStack() as stack:
        hub.add_repo(REPO, {FILE: data})
        c = nodes("127.0.0.2")
        use_hub(c, hub)
        hostile = [stack.enter_context(p) for p in hostile_holders(fid, data, 30)]
        add_peers(c, hostile)
        assert c.start().returncode == 0
        r = httpx.get(f"{c.url}/{REPO}/resolve/main/{FILE}", timeout=120)
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == fid
        assert sum(p.blob_requests for p in hostile) == 0


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


def test_model_search_against_an_endless_peer_keeps_the_daemon_small(
    nodes: Callable[[str], Node],
) -> None:
    node = nodes("127.0.0.2")
    with RawHostile("127.0.0.3", "endless", pattern=b"[") as endless:
        add_peers(node, [endless])
        assert node.start().returncode == 0
        pid = node.info()["pid"]
        before = peak_rss_kib(pid)
        r = node.cli("model", "search", REPO, "--revision", COMMIT, timeout=60)
        assert "Traceback" not in r.stderr
        assert r.returncode == 1  # nobody holds it: the endless peer is no holder
        assert any(b"/v1/repos/" in line for line in endless.requests)  # search asked it
        endless.stop()
        sent = endless.bytes_sent
        grown_mib = (peak_rss_kib(pid) - before) / 1024
        # Unbounded, a search took the daemon up by whatever the peer sent in the
        # timeout (GBs on loopback); bounded, by a few MiB at most.
        assert grown_mib < 64, (grown_mib, sent)
        assert node.client().status()["pid"] == pid  # and the daemon still answers


def test_no_redirect_from_a_peer_is_ever_followed(nodes: Callable[[str], Node]) -> None:
    """Item 10, peer side: a 'peer' that answers every request with a redirect to a
    loopback service gets nothing from us but its own requests: the service is never hit."""
    data = os.urandom(3 * CHUNK + 1)
    with (
        LocalHub() as hub,
        RawHostile("127.0.0.21", "endless") as service,
        RawHostile("127.0.0.20", "redirect", location=f"{service.url}/admin?x=1") as peer,
    ):
        hub.add_repo(REPO, {FILE: data})
        d = nodes("127.0.0.2")
        use_hub(d, hub)
        add_peers(d, [peer])
        assert d.start().returncode == 0
        r = d.cli("model", "add", REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        assert cached_bytes(d) == data
        r = d.cli("model", "search", REPO, "--revision", COMMIT, timeout=60)
        assert "Traceback" not in r.stderr
        hub.inject("5xx", count=None)  # the hub is down: peers are asked for the listing
        r = d.cli("model", "add", "org/elsewhere", timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert any(b"/v1/repos/" in line for line in peer.requests)
        assert peer.requests, "the redirecting peer was never asked"
        assert service.requests == []
