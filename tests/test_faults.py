"""Faults against real daemon processes on loopback: killed processes, hostile peers, a full
disk, a failing hub. After each: the file is correct or the command failed with one clear
line, nothing corrupt is in any HF cache, and every daemon still answers.

A killed seeder mid-transfer and a rotten peer are in test_swarm.py. The module keeps a
tally (faults injected / survived / bytes lost) and prints it at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from anyio.from_thread import start_blocking_portal

from hffs.runfiles import read_pid
from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.dht import DHTNode
from swarm.portable import pid_alive
from swarm.store import PartialFile, read_partial_state
from tests.hostile import FakePeer, corrupt_bytes_published, iter_blobs, manifest_of, wait_until
from tests.localhub import LocalHub
from tests.nodes import REPO, Node, wait_for
from tests.test_swarm import FILE, bytes_up, cached_bytes, hold_chunks, start_swarm, use_hub

CHUNK = MIN_CHUNK_SIZE


@dataclass
class Tally:
    injected: int = 0
    survived: int = 0
    bytes_lost: int = 0

    def line(self) -> str:
        return (
            f"faults: injected {self.injected}, survived {self.survived}, "
            f"bytes lost {self.bytes_lost}"
        )


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    yield TALLY
    capman = request.config.pluginmanager.getplugin("capturemanager")
    # shown even under output capture: the tally is this module's report
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(f"\n{TALLY.line()}")
    assert TALLY.survived == TALLY.injected and TALLY.bytes_lost == 0, TALLY.line()


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    with LocalHub() as h:
        yield h


def inject(n: int = 1) -> None:
    TALLY.injected += n


def survived(n: int, daemons: list[Node], want: dict[Node, bytes] | None = None) -> None:
    """The file is right where expected, no cache holds anything corrupt, every daemon answers."""
    lost = 0
    for node, data in (want or {}).items():
        got = cached_bytes(node)
        lost += sum(a != b for a, b in zip(got, data, strict=False)) + abs(len(got) - len(data))
    for node in daemons:
        lost += corrupt_bytes_published(node.hub)
    TALLY.bytes_lost += lost
    assert lost == 0, f"{lost} byte(s) lost or corrupt"
    for node in daemons:
        assert node.client().status()["pid"] == read_pid(node.home)
        assert httpx.get(f"{node.url}/v1/ping", timeout=5).status_code == 200
    TALLY.survived += n


def one_clear_line(r: subprocess.CompletedProcess[str]) -> str:
    """A failed command: exit 1, one `error:` line, no traceback."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def settled(sent: Callable[[], int]) -> int:
    """Bytes sent so far, once servers noticed a client that went away (bounded wait):
    a server may still push one block into a dead connection, and count it."""
    last = -1
    for _ in range(50):
        now = sent()
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    return last


def fid_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_chunks(node: Node, fid: str) -> int:
    state = read_partial_state(node.home / "partial", fid)
    return 0 if state is None else sum(state[1])


def add_peer(node: Node, peer: FakePeer) -> None:
    r = node.cli("peer", "add", peer.host, "--port", str(peer.port))
    assert r.returncode == 0, r.stderr


# -- killed processes ----------------------------------------------------------------


def test_downloader_killed_mid_download_resumes_from_peers_and_hub(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    data = os.urandom(12 * CHUNK)
    fid = fid_of(data)
    hub.add_repo(REPO, {FILE: data})
    hub.throttle_bps = 2 * CHUNK  # slow enough to kill mid-way
    seed = nodes("127.0.0.2")
    hold_chunks(seed, data, range(6))  # the seed has the first half, the hub all
    d = nodes("127.0.0.3")
    use_hub(d, hub)
    start_swarm([seed], d, "--max-upload-rate", "2M")
    wait_for(lambda: (seed.host, seed.port) in d.client().find_providers(fid), 20, "the seed")

    cmd = [sys.executable, "-m", "hffs.cli", "model", "add", REPO]
    proc = subprocess.Popen(
        cmd, env=d.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    try:
        reached = wait_until(lambda: verified_chunks(d, fid) >= 3, 30)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert reached, "the download never got going"
    inject()
    held = verified_chunks(d, fid)
    assert held < 12 and not list(iter_blobs(d.hub)), "killed, yet something was published"

    hub.throttle_bps = None
    before = settled(lambda: bytes_up(seed) + hub.bytes_served)
    r = d.cli("model", "add", REPO, timeout=90)
    assert r.returncode == 0, r.stderr
    rerun = bytes_up(seed) + hub.bytes_served - before
    # resumed: nothing verified before the kill was fetched again
    assert rerun <= len(data) - held * CHUNK, (rerun, held)
    # a mix: the seed gave its half, the hub what no peer had
    assert bytes_up(seed) >= 6 * CHUNK and hub.bytes_served >= 6 * CHUNK - held * CHUNK
    assert not (d.home / "partial" / f"{fid}.part").exists()
    survived(1, [seed, d], {d: data})


@contextlib.contextmanager
def dht_in_thread(host: str) -> Iterator[DHTNode]:
    """A DHT node of our own (the test's eyes on the DHT), on its own event loop."""
    with start_blocking_portal(backend="asyncio") as portal:
        node = DHTNode(timeout=1.0)
        portal.call(node.listen, 0, host)
        try:
            yield node
        finally:
            portal.call(node.stop)


def test_daemon_killed_mid_announce_restarts_cleanly(nodes: Callable[[str], Node]) -> None:
    victim = nodes("127.0.0.2")
    for i in range(300):  # many keys: the announce takes a while
        victim.add_model_file(f"f/{i:03d}.txt", b"%d\n" % i)
    partial = os.urandom(4 * CHUNK)
    hold_chunks(victim, partial, range(1, 3))
    state_before = read_partial_state(victim.home / "partial", fid_of(partial))
    want_keys = 300 + 2 + 1  # files, the revision's two keys, the partial

    with dht_in_thread("127.0.0.9") as watcher:
        proto = watcher.protocol
        assert proto is not None and watcher.address is not None
        real = proto.rpc_add_provider
        keys: set[bytes] = set()
        killed = threading.Event()

        def counting(sender: tuple[str, int], proven: bool, nodeid: bytes, key: bytes) -> object:
            result = real(sender, proven, nodeid, key)
            if result and sender[0] == victim.host:
                keys.add(key)
                pid = read_pid(victim.home)
                if len(keys) >= 20 and not killed.is_set() and pid is not None:
                    portable.kill(pid)  # right inside the announce
                    killed.set()
            return result

        proto.rpc_add_provider = counting  # type: ignore[method-assign]
        assert victim.start().returncode == 0
        pid = read_pid(victim.home)
        assert pid is not None
        # Joining the DHT now (through a saved peer) starts the announce.
        r = victim.cli("peer", "add", "127.0.0.9", "--port", str(watcher.address[1]))
        assert r.returncode == 0, r.stderr
        assert killed.wait(20), "the announce never started"
        inject()
        wait_for(lambda: not pid_alive(pid), 10, "the daemon to die")
        assert len(keys) < want_keys, "killed after the announce finished"

        # stale run files are left; the CLI says the daemon is not running, in one line
        assert (victim.home / "daemon.json").exists() and read_pid(victim.home) == pid
        assert "not running" in one_clear_line(victim.cli("daemon", "status"))
        # the partial download is intact and still opens (its chunks re-verified)
        assert read_partial_state(victim.home / "partial", fid_of(partial)) == state_before
        with PartialFile(victim.home / "partial", fid_of(partial), len(partial)) as pf:
            assert pf.have() == [False, True, True, False]

        r = victim.start()
        assert r.returncode == 0, r.stderr
        assert read_pid(victim.home) != pid
        wait_for(lambda: len(keys) >= want_keys, 30, "the restarted daemon's full announce")
        have = httpx.get(f"{victim.url}/v1/blobs/{fid_of(partial)}/have", timeout=5)
        assert have.status_code == 200 and have.content == b"\x60"  # chunks 1 and 2
        survived(1, [victim])


# -- hostile peers -------------------------------------------------------------------


def test_a_peer_that_stalls_after_headers(nodes: Callable[[str], Node], hub: LocalHub) -> None:
    data = os.urandom(16 * CHUNK)
    fid = fid_of(data)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)  # metadata only: every byte comes from peers
    seed, d = nodes("127.0.0.2"), nodes("127.0.0.3")
    seed.add_model_file(FILE, data)
    use_hub(d, hub)
    with FakePeer("127.0.0.4", fid, data, manifest=manifest_of(fid, data), blob="stall") as bad:
        start_swarm([seed], d)
        add_peer(d, bad)
        r = d.cli("model", "add", REPO, timeout=90)
        assert r.returncode == 0, r.stderr
        assert bad.blob_requests >= 1, "the staller was never asked"
        inject()
        # How soon the good peer takes the staller's chunks over is the scheduler's rule,
        # tested on a virtual clock (test_scheduler: a peer that stalls costs no timeout).
    survived(1, [seed, d], {d: data})


def test_outnumbered_by_peers_vouching_for_other_bytes(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    """Two liars agree on a manifest of other bytes and serve those bytes: every chunk
    passes its check, the whole-file hash does not; they are banned and the honest
    peer, outvoted at first, serves the file."""
    data = os.urandom(8 * CHUNK)
    fid = fid_of(data)
    other = os.urandom(len(data))
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)
    seed, d = nodes("127.0.0.2"), nodes("127.0.0.3")
    seed.add_model_file(FILE, data)
    use_hub(d, hub)
    lie = manifest_of(fid, other)
    with (
        FakePeer("127.0.0.4", fid, other, manifest=lie) as liar1,
        FakePeer("127.0.0.5", fid, other, manifest=lie) as liar2,
    ):
        start_swarm([seed], d)
        add_peer(d, liar1)
        add_peer(d, liar2)
        r = d.cli("model", "add", REPO, timeout=90)
        assert r.returncode == 0, r.stderr
        assert liar1.bytes_sent + liar2.bytes_sent > 0, "the lie was never believed"
        inject(2)
    assert bytes_up(seed) >= len(data)
    survived(2, [seed, d], {d: data})


def test_peers_with_wrong_bytes_or_chunks_they_lack(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    data = os.urandom(16 * CHUNK)
    fid = fid_of(data)
    hub.add_repo(REPO, {FILE: data})
    hub.inject("5xx", count=None)
    seed, d = nodes("127.0.0.2"), nodes("127.0.0.3")
    seed.add_model_file(FILE, data)
    use_hub(d, hub)
    right = manifest_of(fid, data)
    liars = [
        FakePeer("127.0.0.4", fid, os.urandom(len(data)), manifest=right),  # wrong chunks
        FakePeer("127.0.0.5", fid, data, manifest=right, blob="404"),  # claims, lacks
        FakePeer("127.0.0.6", fid, data, manifest=right, blob="416"),
        FakePeer("127.0.0.7", fid, data, manifest=right, blob="garbage"),
    ]
    with contextlib.ExitStack() as stack:
        for liar in liars:
            stack.enter_context(liar)
        start_swarm([seed], d)
        for liar in liars:
            add_peer(d, liar)
        r = d.cli("model", "add", REPO, timeout=90)
        assert r.returncode == 0, r.stderr
        assert all(liar.blob_requests >= 1 for liar in liars), [
            liar.blob_requests for liar in liars
        ]
        inject(len(liars))
        # each liar is dropped after its first few failures: the good peer did the work
        assert all(liar.blob_requests <= 4 for liar in liars), [
            liar.blob_requests for liar in liars
        ]
    survived(len(liars), [seed, d], {d: data})


# -- the downloader's disk fills up --------------------------------------------------


def test_disk_full_fails_cleanly_and_resumes_after_space_is_freed(
    small_disk: Path, nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    data = os.urandom(10 * CHUNK)
    fid = fid_of(data)
    hub.add_repo(REPO, {FILE: data})
    hub.throttle_bps = 2 * CHUNK  # ~5 s: the disk fills while it runs
    d = Node(small_disk, "127.0.0.3")
    use_hub(d, hub)
    try:
        assert d.start().returncode == 0
        # There is room when the job starts (it checks), then another writer takes it.
        cmd = [sys.executable, "-m", "hffs.cli", "model", "add", REPO]
        proc = subprocess.Popen(
            cmd, env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            reached = wait_until(lambda: verified_chunks(d, fid) >= 2, 30)
            st = os.statvfs(small_disk)
            ballast = small_disk / "ballast"
            ballast.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - CHUNK))
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert reached, "the download never got going"
        hub.throttle_bps = None
        inject()
        line = one_clear_line(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
        assert "No space left on device" in line and "run the same command again" in line, line
        assert not list(iter_blobs(d.hub))
        held = verified_chunks(d, fid)
        assert d.client().status()  # the daemon on the full disk still answers

        ballast.unlink()
        before = settled(lambda: hub.bytes_served)
        r = d.cli("model", "add", REPO, timeout=90)
        assert r.returncode == 0, r.stderr
        assert hub.bytes_served - before <= len(data) - held * CHUNK, (held, hub.bytes_served)
        survived(1, [d], {d: data})
    finally:
        hub.throttle_bps = None
        d.kill()


# -- the hub fails ----------------------------------------------------------------------


def test_hub_errors_and_cut_bodies_fall_back_to_the_second_endpoint(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    data = os.urandom(6 * CHUNK)
    with LocalHub() as second:
        assert hub.add_repo(REPO, {FILE: data}) == second.add_repo(REPO, {FILE: data})
        d = nodes("127.0.0.3")
        use_hub(d, hub)
        d.env["HFFS_ENDPOINTS"] = f"{hub.url},{second.url}"
        assert d.start().returncode == 0

        # 1. the first endpoint answers 500 to everything, metadata included
        hub.inject("5xx", count=None, api=True)
        inject()
        r = d.cli("model", "add", REPO, timeout=90)
        assert r.returncode == 0, r.stderr
        assert second.bytes_served >= len(data)
        survived(1, [d], {d: data})

        # 2. the first endpoint cuts every body after 300 KB: what it sent is kept
        assert d.cli("model", "rm", REPO).returncode == 0
        hub.clear_faults()
        hub.reset_stats()
        second.reset_stats()
        hub.inject("drop", count=None, after_bytes=300_000)
        inject()
        r = d.cli("model", "add", REPO, timeout=90)
        assert r.returncode == 0, r.stderr
        assert hub.bytes_served > 0 and hub.bytes_served + second.bytes_served <= len(data)
        survived(1, [d], {d: data})


def test_hub_failing_with_nothing_to_fall_back_to(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    """Two repos at once (the wait before giving up is long): one file the hub answers 500
    for, one whose every body it cuts. Each command fails alone, in one line."""
    d = nodes("127.0.0.3")
    use_hub(d, hub)
    assert d.start().returncode == 0
    runs = []
    for repo, mode in (("org/errors", "5xx"), ("org/cuts", "drop")):
        data = os.urandom(3 * CHUNK)
        hub.add_repo(repo, {FILE: data})
        hub.inject(mode, count=None, after_bytes=100_000, path=fid_of(data))  # type: ignore[arg-type]
        cmd = [sys.executable, "-m", "hffs.cli", "model", "add", repo]
        runs.append(
            subprocess.Popen(
                cmd, env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    inject(len(runs))
    for proc in runs:
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            proc.kill()
        line = one_clear_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        assert "could not be fetched" in line, line
    assert not list(iter_blobs(d.hub))
    survived(len(runs), [d])
