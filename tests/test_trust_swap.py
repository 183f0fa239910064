"""Issue 9 item 2: with the hub down, one hostile peer among honest ones cannot swap a file,
neither for ``hffs model add`` nor through the daemon's HF endpoint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
from starlette.types import Receive, Scope, Send

from hffs.cache import HubCache
from tests.hostile import FakePeer, _reply, manifest_of
from tests.localhub import git_blob_sha1
from tests.nodes import COMMIT, REPO, Node, wait_for

HONEST_CONFIG = b'{"model_type": "bert", "honest": true}\n'
EVIL = b'{"model_type": "bert", "auto_map": {"AutoModel": "modeling_evil.Evil"}}\n'
WEIGHTS = b"w" * 5000


class ListingLiar(FakePeer):
    """Holds EVIL; for every revision of every repo, lists it as config.json (and as a
    modeling file no honest peer has), as fetched at the end of time."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/repos/"):
            fid = self.file_id
            listing = {
                "commit": scope["path"].rsplit("/", 1)[-1]
                if len(scope["path"].rsplit("/", 1)[-1]) == 40
                else "e" * 40,
                "fetched_at": 1e300,
                "files": [
                    {"path": "config.json", "file_id": fid, "size": len(EVIL)},
                    {"path": "modeling_evil.py", "file_id": fid, "size": len(EVIL)},
                ],
            }
            await _reply(send, 200, json.dumps(listing).encode(), "application/json")
            return
        await super().__call__(scope, receive, send)


def snapshot_files(node: Node) -> dict[str, bytes]:
    cache = HubCache(node.hub)
    return {
        f.path: (cache.snapshot_dir("model", REPO, f.commit) / f.path).read_bytes()
        for f in cache.files("model", REPO)
    }


def test_one_hostile_peer_among_honest_ones_cannot_swap_a_file(
    nodes: Callable[[str], Node], tmp_path: Path
) -> None:
    evil_id = git_blob_sha1(EVIL)
    a, b, d = nodes("127.0.0.2"), nodes("127.0.0.3"), nodes("127.0.0.4")
    for honest in (a, b):
        honest.add_model_file("config.json", HONEST_CONFIG)
        honest.add_model_file("model.safetensors", WEIGHTS)
        assert honest.start().returncode == 0
    with ListingLiar("127.0.0.9", evil_id, EVIL, manifest=manifest_of(evil_id, EVIL)) as liar:
        for peer in (a, b, liar):  # saved peers: every one is asked for the listing
            assert d.cli("peer", "add", peer.host, "--port", str(peer.port)).returncode == 0
        assert d.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0

        # the CLI, ref main: the liar claims the newest commit; two honest peers agree on
        # theirs. Nothing the liar alone says is installed, and the user is told.
        r = d.cli("model", "add", REPO)
        assert r.returncode == 0, r.stderr
        got = snapshot_files(d)
        assert got == {"config.json": HONEST_CONFIG, "model.safetensors": WEIGHTS}
        assert "vouched for by peers only" in " ".join(r.stderr.split()), r.stderr
        # a pinned commit, file by file: the same; what only the liar lists is left out
        r = d.cli("model", "add", REPO, "--file", "config.json", "--revision", COMMIT)
        assert r.returncode == 0, r.stderr
        assert snapshot_files(d)["config.json"] == HONEST_CONFIG
        assert "left out" in r.stderr and "modeling_evil.py" in r.stderr
        r = d.cli("model", "add", REPO, "--file", "modeling_evil.py", "--revision", COMMIT)
        assert r.returncode != 0 and not (HubCache(d.hub).find_blob(evil_id))

        # the HF endpoint of a fresh daemon, the hub down: same rules
        e = nodes("127.0.0.5")
        for peer in (a, b, liar):
            assert e.cli("peer", "add", peer.host, "--port", str(peer.port)).returncode == 0
        assert e.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0
        with httpx.Client(trust_env=False, timeout=30) as http:
            for rev in ("main", COMMIT):
                url = f"{e.url}/{REPO}/resolve/{rev}/config.json"
                resp = http.get(url)
                assert (resp.status_code, resp.content) == (200, HONEST_CONFIG), resp.text
                assert "vouched for by peers only" in resp.headers["x-hffs-vouched-by"]
                assert resp.headers["x-repo-commit"] == COMMIT
                evil = http.get(f"{e.url}/{REPO}/resolve/{rev}/modeling_evil.py")
                # main: the liar's "commit" lost the vote; the commit: listed by it alone
                assert evil.status_code == (404 if rev == "main" else 409)
                assert EVIL not in evil.content
        honest_id = hashlib.sha256(HONEST_CONFIG).hexdigest()
        wait_for(lambda: HubCache(e.hub).find_blob(honest_id) is not None, 10, "E's copy")
        assert HubCache(e.hub).find_blob(evil_id) is None
        assert liar.blob_requests == 0  # its bytes were never even asked for
