"""Real daemon processes started through the CLI, on distinct loopback addresses.

Each daemon has its own HFFS_HOME and HF_HUB_CACHE under tmp_path; endpoints point
at 127.0.0.1:9 where nothing listens, so nothing here can reach the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable

import httpx
import pytest

from hffs.cache import HubCache
from hffs.runfiles import is_running, read_pid
from hffs.visibility import VisibilityStore
from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.portable import pid_alive
from swarm.store import PartialFile
from tests.nodes import COMMIT, REPO, Node, free_port, wait_for


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_start_status_stop(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.2")
    r = a.start()
    assert r.returncode == 0, r.stderr
    # stdout is the one line to copy; the rest goes to stderr
    export = f"export HF_ENDPOINT=http://127.0.0.2:{a.port}"
    assert r.stdout.splitlines() == [export], r.stdout
    assert f"127.0.0.2:{a.port}" in r.stderr
    info = a.info()
    assert (a.home / "daemon.json").stat().st_mode & 0o777 == 0o600
    assert info["port"] == a.port and info["control_host"] == "127.0.0.1"

    r = a.cli("daemon", "status")
    assert r.returncode == 0, r.stderr
    assert str(a.port) in r.stdout and info["node_id"] in r.stdout
    assert export in r.stdout
    assert f"http://127.0.0.2:{a.port}/ui" in r.stdout

    line = one_clear_line(a.start())
    assert "already runs" in line

    # The control API wants its token and is reachable on loopback only.
    control = f"http://127.0.0.1:{info['control_port']}/v1/status"
    assert httpx.get(control, trust_env=False).status_code == 403
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.2:{info['control_port']}/v1/status", trust_env=False)

    r = a.cli("daemon", "stop")
    assert r.returncode == 0, r.stderr
    assert not pid_alive(info["pid"])
    assert not (a.home / "daemon.json").exists() and not (a.home / "daemon.pid").exists()
    assert "not running" in one_clear_line(a.cli("daemon", "status"))
    assert "not running" in one_clear_line(a.cli("daemon", "stop"))


def test_a_taken_port_is_a_clear_error(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.3")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((a.host, a.port))
        tcp.listen()
        line = one_clear_line(a.start())
    assert f"TCP port {a.port}" in line and "in use" in line
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((a.host, a.port))
        line = one_clear_line(a.start())
    assert f"UDP port {a.port}" in line and "in use" in line
    assert not is_running(a.home)


def test_stale_run_files_do_not_block_a_start(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.2")
    a.home.mkdir(parents=True)
    (a.home / "daemon.pid").write_text("999999\n")
    (a.home / "daemon.json").write_text("{not json")
    r = a.start()
    assert r.returncode == 0, r.stderr
    assert a.info()["pid"] == read_pid(a.home) != 999999


def test_bad_requests_leave_the_daemon_up(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.2")
    file_id = a.add_model_file("config.json", b'{"a": 1}\n')
    assert a.start().returncode == 0
    raw_paths = [
        "/v1/blobs/../../../../etc/passwd",
        "/v1/blobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/blobs/" + "A" * 64,
        f"/v1/blobs/{file_id}/../../x",
        "/v1/repos/model/..%2F..%2Fetc/main",
        f"/v1/repos/model/{REPO}/..",
        "/v1/repos/nope/org/x/main",
    ]
    for path in raw_paths:
        with socket.create_connection((a.host, a.port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            status = s.recv(4096).split(b"\r\n", 1)[0]
        assert status.split()[1] in (b"400", b"404"), (path, status)
    with socket.create_connection((a.host, a.port), timeout=5) as s:  # not HTTP at all
        s.sendall(b"\x00\xff garbage\r\n\r\n")
        s.recv(4096)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # not a DHT datagram
        udp.sendto(b"\x00" + os.urandom(64), (a.host, a.port))

    with httpx.Client(base_url=a.url, trust_env=False, timeout=5) as http:
        assert http.get("/v1/ping").status_code == 200
        r = http.get(f"/v1/repos/model/{REPO}/main")
        assert r.status_code == 200
        assert r.json()["files"] == [{"path": "config.json", "file_id": file_id, "size": 9}]
    assert a.cli("daemon", "status").returncode == 0


def test_search_across_a_bootstrap_chain(nodes: Callable[[str], Node]) -> None:
    a, b, c = nodes("127.0.0.2"), nodes("127.0.0.3"), nodes("127.0.0.4")
    weights = os.urandom(100_000)
    file_id = a.add_model_file("weights/model.bin", weights)
    a.add_model_file("config.json", b"{}\n")
    assert a.start().returncode == 0
    assert b.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0
    assert c.start("--bootstrap", f"{b.host}:{b.port}").returncode == 0

    expected = f"{a.host}:{a.port}, {REPO}, weights/model.bin"
    found: list[str] = []

    def search_finds() -> bool:
        r = c.cli("model", "search", REPO, "--revision", COMMIT)
        found[:] = r.stdout.splitlines()
        return r.returncode == 0

    wait_for(search_finds, 20, "C to find A's files through the DHT")
    assert sorted(found) == sorted([expected, f"{a.host}:{a.port}, {REPO}, config.json"])

    r = c.cli("model", "search", REPO, "--file", "weights/model.bin")  # `main`, resolved by peers
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [expected]
    assert COMMIT[:12] in r.stderr

    r = c.cli("model", "search", REPO, "--file", "nope.bin", "--revision", COMMIT)
    assert "no peer holds" in one_clear_line(r)
    # hf download's way of naming files works here too
    r = c.cli("model", "search", REPO, "--include", "weights/*", "--revision", COMMIT)
    assert r.stdout.splitlines() == [expected], r.stderr
    r = c.cli("model", "search", REPO, "config.json", "weights/", "--revision", COMMIT)
    assert sorted(r.stdout.splitlines()) == sorted(found), r.stderr

    # What the DHT names, the holder serves.
    with httpx.Client(trust_env=False, timeout=5) as http:
        got = http.get(f"{a.url}/v1/blobs/{file_id}", headers={"Range": "bytes=1000-"})
    assert (got.status_code, got.content) == (206, weights[1000:])

    # The downloader's side of the control API: holders by file id, by revision or ref.
    assert c.client().find_providers(file_id) == [(a.host, a.port)]
    assert c.client().find_providers(repo=f"model/{REPO}/{COMMIT}") == [(a.host, a.port)]
    assert c.client().find_providers(repo=("model", REPO, "main")) == [(a.host, a.port)]
    assert c.client().status()["routing_size"] >= 2

    # Partial seeding: B holds one verified chunk of a file and says so.
    big = os.urandom(2 * MIN_CHUNK_SIZE)
    big_id = hashlib.sha256(big).hexdigest()
    VisibilityStore(b.home).record_peer_ids([big_id])  # public content: B may share it
    with PartialFile(b.home / "partial", big_id, len(big)) as pf:
        assert pf.write_chunk(1, big[MIN_CHUNK_SIZE:])
    assert c.client().find_providers(big_id) == []
    assert b.client().announce(file_ids=[big_id], wait=True)["reached"] == 1
    assert c.client().find_providers(big_id) == [(b.host, b.port)]
    with httpx.Client(trust_env=False, timeout=5) as http:
        have = http.get(f"{b.url}/v1/blobs/{big_id}/have")
        assert (have.content, have.headers["x-chunk-count"]) == (b"\x40", "2")
        r = http.get(f"{b.url}/v1/blobs/{big_id}", headers={"Range": f"bytes={MIN_CHUNK_SIZE}-"})
        assert (r.status_code, r.content) == (206, big[MIN_CHUNK_SIZE:])
        assert (
            http.get(f"{b.url}/v1/blobs/{big_id}", headers={"Range": "bytes=0-9"}).status_code
            == 416
        )
    assert b.client().status()["bytes_up_by_host"] == {"127.0.0.1": MIN_CHUNK_SIZE}


def test_rescan_forgets_removed_files(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.2")
    file_id = a.add_model_file("model.bin", b"weights" * 100)
    assert a.start().returncode == 0
    assert a.client().status()["files_shared"] == 1
    # A connection that fetched the blob keeps it open (and the lookup is reused): the
    # rescan must still end its serving at once.
    kept = httpx.Client(base_url=a.url, trust_env=False, timeout=5)
    with kept:
        assert (
            kept.get(f"/v1/blobs/{file_id}", headers={"Range": "bytes=0-6"}).content == b"weights"
        )
        cache = HubCache(a.hub)
        assert cache.remove_commit("model", REPO, COMMIT)
        cache.collect_garbage("model", REPO)
        assert a.client().rescan() == {"files": 0, "partials": 0, "repos": 0}
        assert kept.get(f"/v1/blobs/{file_id}", headers={"Range": "bytes=0-6"}).status_code == 404
    assert a.client().status()["files_shared"] == 0
    with httpx.Client(base_url=a.url, trust_env=False, timeout=5) as http:
        assert http.get(f"/v1/blobs/{file_id}/have").status_code == 404
        assert http.get(f"/v1/repos/model/{REPO}/main").status_code == 404


@pytest.mark.skipif(portable.enabled(), reason="no SIGTERM on Windows: test_portable_hffs")
def test_sigterm_stops_cleanly(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.3")
    assert a.start().returncode == 0
    pid = a.info()["pid"]
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), 10, "the daemon to exit on SIGTERM")
    assert not is_running(a.home)
    assert not (a.home / "daemon.json").exists()
    assert "stopped" in (a.home / "daemon.log").read_text()


def test_saved_peers_add_ls_rm(nodes: Callable[[str], Node]) -> None:
    a, b = nodes("127.0.0.2"), nodes("127.0.0.3")
    assert a.start().returncode == 0
    dead_port = free_port("127.0.0.5")
    assert b.cli("peer", "add", a.host, "--port", str(a.port)).returncode == 0
    assert b.cli("peer", "add", "127.0.0.5", "--port", str(dead_port)).returncode == 0
    r = b.cli("peer", "add", a.host, "--port", str(a.port))
    assert r.returncode == 0 and "already" in r.stdout

    r = b.cli("peer", "ls")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if "127.0.0." in line}
    assert "active" in rows[a.host] and "inactive" not in rows[a.host]
    assert "inactive" in rows["127.0.0.5"]

    assert b.cli("peer", "rm", "127.0.0.5", "--port", str(dead_port)).returncode == 0
    assert "not a saved peer" in one_clear_line(b.cli("peer", "rm", "127.0.0.5"))
    assert "bad" in one_clear_line(b.cli("peer", "add", "bad host"))
    saved = json.loads((b.home / "config.json").read_text())["peers"]
    assert saved == [{"host": a.host, "port": a.port}]
