"""HF_ENDPOINT pointed at a daemon: huggingface_hub's own downloads go through the swarm.

The daemon under test (C) holds nothing; its peers (A, B: real daemons on 127.0.0.x)
hold the repos in their HF caches; its upstream is a LocalHub that, like the real
hub for Xet-backed repos, adds Xet headers and ``xetHash`` fields everywhere. If the
daemon passed any of them on, huggingface_hub would try Xet storage and fail here.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from hffs.cache import HubCache
from hffs.daemon.hub_api import (
    HOPS_HEADER,
    ApiCall,
    Listing,
    head_fetches,
    is_hub_path,
    listing_from_holders,
    parse_api,
    parse_resolve,
    rewrite_link,
    strip_xet,
    valid_revision,
)
from hffs.daemon.hub_proxy import HEAD_WAIT, HubEndpoint
from hffs.downloads import (
    BLOCK,
    DownloadManager,
    FileJob,
    SpanReader,
    Transfer,
    TransferFailed,
)
from hffs.visibility import VisibilityStore
from swarm.chunking import MIN_CHUNK_SIZE
from swarm.sources import Source
from swarm.wire import PeerAuth
from tests.localhub import LocalHub, git_blob_sha1, lfs_pointer, make_random_file
from tests.nodes import Node, wait_for

REPO, DATASET, PRIVATE, SHARED = "org/swarmed", "org/data", "org/secret", "org/shared"
UPSTREAM_ONLY = "org/upstream-only"  # no peer holds it
HEADED = "org/headed"  # fetched once, by a client that shares the daemon's cache
HOPPED = "org/hopped"  # HEAD by another daemon, then by a client
LOCKED = "org/locked"  # only the hub has it, slowly
TOKEN = "hf_good_token"
XET_HASH = "ab" * 32


class XetLies:
    """ASGI middleware for the LocalHub: what the real hub adds for Xet-backed repos."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        body = bytearray()
        xet = [
            (b"x-xet-hash", XET_HASH.encode()),
            (b"x-xet-refresh-route", b"http://127.0.0.1:9/api/models/x/xet-read-token/main"),
            (b"link", b'<http://127.0.0.1:9/api/xet-auth>; rel="xet-auth"'),
        ]

        async def lie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message["headers"], *xet]
                if (b"content-type", b"application/json") in headers:
                    held["start"] = {**message, "headers": headers}
                    return
                await send({**message, "headers": headers})
            elif "start" in held:
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                data = json.loads(bytes(body) or b"null")
                if isinstance(data, list):
                    data = [
                        {**e, "xetHash": XET_HASH} if e.get("type") == "file" else e for e in data
                    ]
                elif isinstance(data, dict) and "siblings" in data:
                    data["xetEnabled"] = True
                out = json.dumps(data).encode()
                start = held["start"]
                start["headers"] = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                start["headers"].append((b"content-length", str(len(out)).encode()))
                await send(start)
                await send({"type": "http.response.body", "body": out})
            else:
                await send(message)

        await self.app(scope, receive, lie)


@dataclass
class World:
    hub: LocalHub
    files: dict[str, dict[str, bytes]]  # repo -> path -> bytes
    commits: dict[str, str]
    a: Node
    b: Node
    c: Node  # the endpoint under test: holds nothing, upstream is the hub
    root: Path

    def client_cache(self, name: str) -> Path:
        return self.root / "clients" / name


def seed(
    node: Node, hub: LocalHub, repo_type: str, repo_id: str, commit: str, paths: list[str]
) -> None:
    """Put a hub repo into a node's HF cache exactly as huggingface_hub lays it out."""
    cache = HubCache(node.hub)
    for path in paths:
        f = hub.get_file(repo_id, path, commit, repo_type=repo_type)
        blob = cache.blob_path(repo_type, repo_id, f.etag)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(f.read())
        cache.link(repo_type, repo_id, commit, path, f.etag)
    cache.write_ref(repo_type, repo_id, "main", commit)
    if repo_id != PRIVATE:
        # as if hffs had fetched it anonymously: known public, so the node shares it
        ids = [hub.get_file(repo_id, p, commit, repo_type=repo_type).etag for p in paths]
        VisibilityStore(node.home).record(repo_type, repo_id, "public", ids)


def start_node(node: Node, *args: str) -> None:
    r = node.start(*args)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("hf-endpoint")
    big = make_random_file(root / "src" / "big", 3 * MIN_CHUNK_SIZE + 4321, seed=7).read_bytes()
    shared = make_random_file(root / "src" / "shared", 2 * MIN_CHUNK_SIZE + 99, seed=8).read_bytes()
    files = {
        REPO: {
            "config.json": b'{"model_type": "bert"}\n',
            "model.safetensors": big,
            "sub/dir/notes.txt": b"hello\n",
            "ranges.bin": big[::-1],
        },
        DATASET: {"data/train.csv": b"a,b\n1,2\n", "data/big.parquet": big[: MIN_CHUNK_SIZE + 7]},
        PRIVATE: {"config.json": b'{"secret": true}\n', "weights.bin": big[::2]},
        SHARED: {"model.safetensors": shared},
        UPSTREAM_ONLY: {"slow.bin": shared[::-1] + big},
        HEADED: {"model.safetensors": big[1:] + b"h"},
        HOPPED: {"model.safetensors": big[2:] + b"hh"},
        LOCKED: {"model.safetensors": big[3:] + b"lll"},
    }
    hub = LocalHub(tokens=[TOKEN])
    hub.app.add_middleware(XetLies)
    nodes: list[Node] = []
    with hub:
        commits = {
            REPO: hub.add_repo(REPO, files[REPO]),
            DATASET: hub.add_repo(DATASET, files[DATASET], repo_type="dataset"),
            PRIVATE: hub.add_repo(PRIVATE, files[PRIVATE], private=True),
            SHARED: hub.add_repo(SHARED, files[SHARED]),
            UPSTREAM_ONLY: hub.add_repo(UPSTREAM_ONLY, files[UPSTREAM_ONLY]),
            HEADED: hub.add_repo(HEADED, files[HEADED]),
            HOPPED: hub.add_repo(HOPPED, files[HOPPED]),
            LOCKED: hub.add_repo(LOCKED, files[LOCKED]),
        }
        try:
            a, b, c = (Node(root / h, h) for h in ("127.0.0.2", "127.0.0.3", "127.0.0.4"))
            nodes += [a, b, c]
            for repo in (REPO, PRIVATE, SHARED, HEADED, HOPPED):
                seed(a, hub, "model", repo, commits[repo], list(files[repo]))
            seed(a, hub, "dataset", DATASET, commits[DATASET], list(files[DATASET]))
            seed(b, hub, "model", REPO, commits[REPO], list(files[REPO]))
            start_node(a)
            start_node(b, "--bootstrap", f"{a.host}:{a.port}")
            c.env["HFFS_ENDPOINTS"] = hub.url
            for peer in (a, b):  # saved peers: always asked, whatever the DHT knows yet
                assert c.cli("peer", "add", peer.host, "--port", str(peer.port)).returncode == 0
            start_node(c, "--bootstrap", f"{a.host}:{a.port}")
            yield World(hub, files, commits, a, b, c, root)
        finally:
            for node in nodes:
                node.kill()


def assert_no_xet(resp: httpx.Response) -> None:
    assert not [k for k in resp.headers if k.lower().startswith("x-xet")], resp.headers
    assert "xet" not in resp.headers.get("link", "").lower()
    if "json" in resp.headers.get("content-type", ""):
        assert b"xet" not in resp.content.lower()


def test_range_requests_stream_exact_bytes(world: World) -> None:
    data = world.files[REPO]["ranges.bin"]
    url = f"{world.c.url}/{REPO}/resolve/main/ranges.bin"
    world.hub.reset_stats()
    spans = [(100, 199), (MIN_CHUNK_SIZE - 10, MIN_CHUNK_SIZE + 9), (len(data) - 5, len(data) - 1)]
    with httpx.Client(trust_env=False, timeout=20) as http:
        for first, last in spans:  # the first one is served while the download runs
            r = http.get(url, headers={"Range": f"bytes={first}-{last}"})
            assert r.status_code == 206, r.text
            assert r.content == data[first : last + 1]
            assert r.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
            assert_no_xet(r)
        r = http.get(url, headers={"Range": "bytes=-10"})
        assert (r.status_code, r.content) == (206, data[-10:])
        r = http.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        head = http.head(url)
        assert head.status_code == 200
        assert head.headers["x-repo-commit"] == world.commits[REPO]
        assert head.headers["x-linked-size"] == head.headers["content-length"] == str(len(data))
        assert head.headers["x-linked-etag"] == head.headers["etag"]
        assert head.headers["accept-ranges"] == "bytes"
        assert_no_xet(head)
        r = http.get(url)
        assert (r.status_code, r.content) == (200, data)
    # Every byte came from the peers; upstream only vouched for the two spans that end the
    # file (5 and 10 bytes), which would otherwise have waited for the whole file.
    assert world.hub.bytes_served == 15


def test_huggingface_hub_downloads_through_the_daemon(world: World) -> None:
    cache = world.client_cache("hf")
    world.hub.reset_stats()
    before = world.c.client().status()["bytes_down_upstream"]  # the daemon is shared
    commit = world.commits[REPO]
    for name, data in world.files[REPO].items():
        path = hf_hub_download(REPO, name, endpoint=world.c.url, cache_dir=cache, token=False)
        assert Path(path).read_bytes() == data
        assert Path(path).parent.name == commit or commit in Path(path).parts
    snap = Path(snapshot_download(REPO, endpoint=world.c.url, cache_dir=cache / "s", token=False))
    assert snap.name == commit
    got = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
    assert got == world.files[REPO]

    dsnap = snapshot_download(
        DATASET, repo_type="dataset", endpoint=world.c.url, cache_dir=cache, token=False
    )
    for name, data in world.files[DATASET].items():
        assert (Path(dsnap) / name).read_bytes() == data

    assert world.hub.bytes_served == 0  # metadata from the hub, file bytes from the peers
    status = world.c.client().status()
    assert status["bytes_down_peers"] > 0 and status["bytes_down_upstream"] == before

    # The daemon kept what it fetched in its own HF cache, so the swarm has it too.
    held = {f.path for f in HubCache(world.c.hub).files("model", REPO, commit)}
    assert held == set(world.files[REPO])
    assert HubCache(world.c.hub).read_ref("model", REPO, "main") == commit


def test_a_client_sharing_the_daemons_cache_finds_the_file_after_its_head(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.file_download as fd

    data = world.files[HEADED]["model.safetensors"]
    got: list[str] = []  # every body huggingface_hub downloads itself
    real_get = fd.http_get

    def counting_get(url: str, *args: Any, **kwargs: Any) -> Any:
        got.append(url)
        return real_get(url, *args, **kwargs)

    monkeypatch.setattr(fd, "http_get", counting_get)
    path = hf_hub_download(
        HEADED, "model.safetensors", endpoint=world.c.url, cache_dir=world.c.hub, token=False
    )
    assert Path(path).read_bytes() == data
    # The daemon fetched the file while answering the HEAD, into the cache both use: the
    # client found the blob there and wrote no byte of it again.
    assert got == []
    blob = HubCache(world.c.hub).blob_path("model", HEADED, hashlib.sha256(data).hexdigest())
    assert blob.is_file()


def test_a_client_sharing_the_cache_waits_for_a_long_download_instead_of_copying_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.file_download as fd

    data = world.files[LOCKED]["model.safetensors"]
    got: list[str] = []
    real_get = fd.http_get

    def counting_get(url: str, *args: Any, **kwargs: Any) -> Any:
        got.append(url)
        return real_get(url, *args, **kwargs)

    monkeypatch.setattr(fd, "http_get", counting_get)
    world.hub.reset_stats()
    throttled = world.hub.throttled_seconds
    world.hub.throttle_bps = MIN_CHUNK_SIZE // 2  # only the hub has it: ~6 s, past the HEAD
    try:
        path = hf_hub_download(
            LOCKED, "model.safetensors", endpoint=world.c.url, cache_dir=world.c.hub, token=False
        )
    finally:
        world.hub.throttle_bps = None
    assert Path(path).read_bytes() == data
    # the hub's throttle alone made the download outlast the HEAD's wait
    assert world.hub.throttled_seconds - throttled > HEAD_WAIT
    # The client waited on huggingface_hub's own lock, which the daemon held until the
    # file was published, then found the blob: it downloaded nothing itself.
    assert got == []


def test_another_daemons_head_starts_no_download(world: World) -> None:
    data = world.files[HOPPED]["model.safetensors"]
    blob = HubCache(world.c.hub).blob_path("model", HOPPED, hashlib.sha256(data).hexdigest())
    url = f"{world.c.url}/{HOPPED}/resolve/main/model.safetensors"
    with httpx.Client(trust_env=False, timeout=20) as http:
        # a daemon checking access to a gated repo upstream (it says how many hops)
        head = http.head(url, headers={HOPS_HEADER: "1"})
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        assert not blob.exists()  # answered without fetching the file
        head = http.head(url)  # an HF client's HEAD: the file is fetched first
        assert head.status_code == 200
        assert blob.read_bytes() == data


def test_clients_at_once_share_one_download(world: World) -> None:
    data = world.files[SHARED]["model.safetensors"]
    before = int(world.a.client().status()["bytes_up"])
    paths: list[str] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            cache = world.client_cache(f"shared-{i}")
            paths.append(
                hf_hub_download(
                    SHARED, "model.safetensors", endpoint=world.c.url, cache_dir=cache, token=False
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(paths) == 3
    assert all(Path(p).read_bytes() == data for p in paths)
    # A, the only holder, sent the file once: one download in C for every client.
    sent: list[int] = []

    def sent_once() -> bool:
        sent[:] = [int(world.a.client().status()["bytes_up"]) - before]
        return sent[0] >= len(data)

    wait_for(sent_once, 5, "A's upload counter")
    assert sent == [len(data)]


def test_bytes_stream_as_chunks_verify_and_the_download_outlives_its_client(
    world: World,
) -> None:
    data = world.files[UPSTREAM_ONLY]["slow.bin"]
    file_id = hashlib.sha256(data).hexdigest()
    blob = HubCache(world.c.hub).blob_path("model", UPSTREAM_ONLY, file_id)
    url = f"{world.c.url}/{UPSTREAM_ONLY}/resolve/main/slow.bin"
    world.hub.reset_stats()
    world.hub.throttle_bps = 2 * MIN_CHUNK_SIZE  # the whole file takes ~3 s
    try:
        with httpx.Client(trust_env=False, timeout=20) as http, http.stream("GET", url) as r:
            assert r.status_code == 200
            first = next(r.iter_bytes())
            # Slow the rest right away: however loaded the machine, the file cannot
            # complete between the first bytes and the check below.
            world.hub.throttle_bps = MIN_CHUNK_SIZE // 8
            assert data.startswith(first)
            assert not blob.exists()  # bytes flow long before the file is complete
        world.hub.throttle_bps = None
        # The client is gone; the daemon finishes the download it started anyway.
        wait_for(blob.is_file, 20, "the daemon to finish the download")
    finally:
        world.hub.throttle_bps = None
    assert blob.read_bytes() == data
    assert world.hub.bytes_served == len(data)  # fetched once, only what no peer had


def test_a_private_repo_needs_a_token_upstream_accepts(world: World) -> None:
    data = world.files[PRIVATE]["weights.bin"]
    cache = world.client_cache("private")
    url = f"{world.c.url}/{PRIVATE}/resolve/main/weights.bin"
    with httpx.Client(trust_env=False, timeout=20) as http:
        for headers in ({}, {"authorization": "Bearer hf_wrong"}):
            r = http.get(url, headers=headers)
            assert r.status_code in (401, 404), r.status_code
            assert data[:64] not in r.content
            r = http.get(f"{world.c.url}/api/models/{PRIVATE}", headers=headers)
            assert r.status_code in (401, 404)
    for token in (False, "hf_wrong"):
        with pytest.raises(HfHubHTTPError):  # RepositoryNotFound (404) or HTTP 401
            hf_hub_download(
                PRIVATE, "weights.bin", endpoint=world.c.url, cache_dir=cache, token=token
            )
    assert not list(cache.rglob("blobs/*"))

    world.hub.reset_stats()
    a_up = int(world.a.client().status()["bytes_up"])
    path = hf_hub_download(
        PRIVATE, "weights.bin", endpoint=world.c.url, cache_dir=cache, token=TOKEN
    )
    assert Path(path).read_bytes() == data
    snap = snapshot_download(PRIVATE, endpoint=world.c.url, cache_dir=cache, token=TOKEN)
    config = world.files[PRIVATE]["config.json"]
    assert (Path(snap) / "config.json").read_bytes() == config
    # A holds the repo (HF tools put it there: visibility unknown), so A shares none of it:
    # the bytes came from upstream, with the caller's token.
    assert world.hub.bytes_served == len(data) + len(config)
    assert int(world.a.client().status()["bytes_up"]) == a_up
    assert all(auth == f"Bearer {TOKEN}" for _, auth in world.hub.auth_log)
    # upstream's answer said "private": C keeps what it fetched to itself too
    assert VisibilityStore(world.c.home).get("model", PRIVATE) == "private"
    with httpx.Client(trust_env=False, timeout=20) as http:
        for node in (world.a, world.c):
            for fid in (hashlib.sha256(data).hexdigest(), git_blob_sha1(config)):
                r = http.get(f"{node.url}/v1/blobs/{fid}")
                assert r.status_code == 404 and data[:64] not in r.content
            r = http.get(f"{node.url}/v1/repos/model/{PRIVATE}/main")
            assert r.status_code == 404 and b"weights" not in r.content


def test_no_xet_header_or_field_reaches_the_client(world: World) -> None:
    commit = world.commits[REPO]
    with httpx.Client(trust_env=False, timeout=20) as http:
        upstream = http.get(f"{world.hub.url}/api/models/{REPO}/tree/main?recursive=true")
        assert "x-xet-hash" in upstream.headers and b"xetHash" in upstream.content  # the lie
        c = world.c.url
        for r in (
            http.get(f"{c}/api/models/{REPO}"),
            http.get(f"{c}/api/models/{REPO}/revision/main?blobs=true"),
            http.get(f"{c}/api/models/{REPO}/tree/{commit}?recursive=true&expand=false"),
            http.post(
                f"{c}/api/models/{REPO}/paths-info/{commit}", data={"paths": ["config.json", "sub"]}
            ),
            http.head(f"{c}/{REPO}/resolve/main/config.json"),
            http.get(f"{c}/{REPO}/resolve/{commit}/config.json"),
            http.get(f"{c}/datasets/{DATASET}/resolve/main/data/train.csv"),
        ):
            assert r.status_code == 200, (r.request.url, r.status_code, r.text)
            assert_no_xet(r)
        assert http.get(f"{c}/api/models/{REPO}/xet-read-token/main").status_code == 404
        r = http.get(f"{c}/{REPO}/resolve/main/nope.txt")
        assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
        assert r.headers["x-repo-commit"] == commit


def test_with_upstream_down_peers_still_serve_a_commit(world: World) -> None:
    d = Node(world.root / "127.0.0.5", "127.0.0.5")
    # Nothing listens on 127.0.0.1:9; D's own address (HF_ENDPOINT exported everywhere,
    # the daemon's environment included) must not become a loop.
    d.env["HFFS_ENDPOINTS"] = f"{d.url},http://127.0.0.1:9"
    try:
        assert d.cli("peer", "add", world.a.host, "--port", str(world.a.port)).returncode == 0
        start_node(d, "--bootstrap", f"{world.a.host}:{world.a.port}")
        commit = world.commits[REPO]
        cache = world.client_cache("offline")
        path = hf_hub_download(
            REPO, "model.safetensors", revision=commit, endpoint=d.url, cache_dir=cache, token=False
        )
        assert Path(path).read_bytes() == world.files[REPO]["model.safetensors"]
        snap = Path(
            snapshot_download(
                REPO, revision=commit, endpoint=d.url, cache_dir=cache / "s", token=False
            )
        )
        got = {
            p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()
        }
        assert got == world.files[REPO]
        # A path the swarm does not list is absent (404 EntryNotFound), not an outage (5xx,
        # which HF tools retry for minutes): AutoTokenizer's probes move on at once.
        with pytest.raises(EntryNotFoundError):
            hf_hub_download(
                REPO,
                "tokenizer.json",
                revision=commit,
                endpoint=d.url,
                cache_dir=cache,
                token=False,
            )
        # A ref resolves to the commit the peers hold, as `hffs model add` does.
        with httpx.Client(trust_env=False, timeout=20) as http:
            head = http.head(f"{d.url}/{REPO}/resolve/main/config.json")
            assert head.status_code == 200 and head.headers["x-repo-commit"] == commit
            missing = http.head(f"{d.url}/org/nobody-has-it/resolve/main/config.json")
            assert missing.status_code == 502
            looped = http.head(
                f"{d.url}/{REPO}/resolve/main/config.json", headers={"x-hffs-hops": "9"}
            )
            assert looped.status_code == 508
        wait_for(lambda: bool(HubCache(d.hub).files("model", REPO, commit)), 10, "D's cache")
    finally:
        d.kill()


# -- in-process: the download manager and the pieces of the endpoint ---------------------


class QuietSwarm:
    """A SwarmView with no peers: nothing but what the test puts on disk."""

    async def holders(self, file_id: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        return []

    async def holder_news(self, file_id: str, seen: int) -> int:
        await anyio.sleep_forever()
        return seen

    async def announce(
        self, file_ids: list[str], repos: list[tuple[str, str, str]], wait: bool
    ) -> int | None:
        return None

    def report_transfer(self, from_peers: int, from_upstream: int) -> None:
        pass


def test_jobs_and_readers_share_one_download_per_file_id(tmp_path: Path) -> None:
    """Two `model add` jobs and an HF client asking for one file: one download."""
    data = os.urandom(3 * MIN_CHUNK_SIZE + 5)
    file_id = hashlib.sha256(data).hexdigest()
    cache, partial = HubCache(tmp_path / "hub"), tmp_path / "partial"
    with LocalHub() as hub:
        commit = hub.add_repo("org/x", {"w.bin": data})
        hub.throttle_bps = 4 * MIN_CHUNK_SIZE  # slow enough for all three to join
        url = f"{hub.url}/org/x/resolve/{commit}/w.bin"
        job = FileJob(
            "model",
            "org/x",
            commit,
            "w.bin",
            file_id,
            len(data),
            upstream=(Source(hub.url, url, True, {}),),
        )
        heard: list[int] = []

        async def main() -> None:
            async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
                manager = DownloadManager(cache, partial, QuietSwarm(), client, PeerAuth())
                tg.start_soon(manager.run)
                blobs: list[Path] = []

                async def job_wait() -> None:
                    blob, _ = await manager.fetch(job, lambda s, up, n: heard.append(n))
                    blobs.append(blob)

                got = bytearray()

                async def read_all() -> None:
                    reader = await manager.reader(job, 0, len(data))
                    while block := await reader.read():
                        got.extend(block)
                    reader.close()

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as clients:
                        clients.start_soon(job_wait)
                        clients.start_soon(job_wait)
                        clients.start_soon(read_all)
                assert bytes(got) == data
                assert len(set(blobs)) == 1 and blobs[0].read_bytes() == data
                tg.cancel_scope.cancel()

        anyio.run(main, backend="asyncio")
        assert hub.bytes_served == len(data)  # fetched once for all three
    assert sum(heard) == 2 * len(data)  # each job heard every byte


def test_a_reader_holds_the_last_block_and_refuses_changed_chunks(tmp_path: Path) -> None:
    size = 2 * MIN_CHUNK_SIZE
    part = tmp_path / "x.part"
    part.write_bytes(os.urandom(size))

    async def main() -> None:
        t = Transfer("a" * 64, size)
        reader = SpanReader(0, size, transfer=t, partial=part)
        with anyio.move_on_after(0.2) as waited:
            await reader.read()
        assert waited.cancel_called  # nothing verified yet
        t.chunk_verified(0)
        t.chunk_verified(1)
        while reader.pos < size - BLOCK:
            assert await reader.read()
        with anyio.move_on_after(0.2) as waited:
            await reader.read()  # the last block waits for the whole-file check
        assert waited.cancel_called
        t.complete(part)
        assert len(await reader.read()) == BLOCK and await reader.read() == b""
        reader.close()

        for change in (None, b"x"):  # verified twice: same bytes, then different bytes
            t2 = Transfer("a" * 64, size)
            again = SpanReader(0, size, transfer=t2, partial=part)
            t2.chunk_verified(0)
            await again.read()
            if change is not None:
                with part.open("r+b") as f:
                    f.write(change)
            t2.chunk_verified(0)
            t2.chunk_verified(1)
            t2.complete(part)
            if change is None:
                while await again.read():
                    pass
            else:
                with pytest.raises(TransferFailed, match="changed after it was sent"):
                    while await again.read():
                        pass
            again.close()

        failed = SpanReader(0, size, transfer=(t3 := Transfer("a" * 64, size)), partial=part)
        t3.fail("no source")
        with pytest.raises(TransferFailed, match="no source"):
            await failed.read()

    anyio.run(main, backend="asyncio")


def test_only_a_head_that_may_share_the_cache_fetches_the_file() -> None:
    here = ("192.168.1.20", 8000)  # the address the daemon was reached on
    # on this machine: by loopback, or by its own address
    assert head_fetches(True, 0, ("127.0.0.1", 50000), here)
    assert head_fetches(True, 0, ("::1", 50000), ("::1", 8000))
    assert head_fetches(True, 0, ("192.168.1.20", 50000), here)
    # another machine (its own cache), another daemon, a range, a malformed scope
    assert not head_fetches(True, 0, ("192.168.1.21", 50000), here)
    assert not head_fetches(True, 0, ("0.0.0.0", 50000), ("0.0.0.0", 8000))
    assert not head_fetches(True, 1, ("127.0.0.1", 50000), here)
    assert not head_fetches(False, 0, ("127.0.0.1", 50000), here)
    assert not head_fetches(True, 0, None, here)
    assert not head_fetches(True, 0, ("not-an-ip", 1), here)


def test_request_parsing_and_xet_stripping() -> None:
    assert parse_resolve(["org", "m", "resolve", "main", "a", "b.txt"]) == (
        "model",
        "org/m",
        "main",
        "a/b.txt",
    )
    assert parse_resolve(["gpt2", "resolve", "refs/pr/1", "x"]) == (
        "model",
        "gpt2",
        "refs/pr/1",
        "x",
    )
    assert parse_resolve(["datasets", "o", "d", "resolve", "v1", "f"]) == (
        "dataset",
        "o/d",
        "v1",
        "f",
    )
    assert parse_resolve(["org", "m", "blob", "main", "x"]) is None
    call = parse_api(["api", "models", "org", "m", "tree", "main", "sub", "dir"])
    assert call == ApiCall("model", "org/m", "tree", "main", "sub/dir")
    assert parse_api(["api", "datasets", "d"]) == ApiCall("dataset", "d", "info", "main", "")
    assert parse_api(["api", "models", "gpt2", "revision", "v1"]).revision == "v1"
    assert is_hub_path("/org/m/resolve/main/x") and is_hub_path("/api/models/x")
    assert not is_hub_path("/v1/ping") and not is_hub_path("/v1/blobs/" + "a" * 64)
    assert not is_hub_path("/v1/repos/model/org/resolve/main")
    assert is_hub_path("/v1/m/resolve/main/x")
    assert not valid_revision("../main") and valid_revision("refs/pr/1")
    link = '<https://hub.example/api/models/x/tree/main?cursor=2>; rel="next", '
    link += '<https://x/y>; rel="xet-auth"'
    assert rewrite_link(link, "http://127.0.0.1:9009") == (
        '<http://127.0.0.1:9009/api/models/x/tree/main?cursor=2>; rel="next"'
    )
    assert strip_xet([{"path": "a", "xetHash": "x", "lfs": {"xetHash": 1}}]) == [
        {"path": "a", "lfs": {}}
    ]


def test_a_ref_resolves_to_the_commit_most_peers_hold_never_the_newest_claimed() -> None:
    old, new = "1" * 40, "2" * 40
    sha = hashlib.sha256(b"w").hexdigest()

    def said(host: str, commit: str, files: dict[str, str], at: float = 0.0) -> dict[str, Any]:
        listed = [{"path": p, "file_id": i, "size": 1} for p, i in files.items()]
        return {"host": host, "port": 1, "commit": commit, "fetched_at": at, "files": listed}

    answers = [
        said("10.0.0.1", old, {"a": sha}),
        said("10.0.0.2", old, {"a": sha, "b/c": "3" * 40}),
        said("10.0.0.3", old, {"b/c": "3" * 40}),
        said("10.0.0.9", new, {"a": "4" * 64}, at=1e300),  # one liar, "newest"
    ]
    listing = listing_from_holders(answers, "main")
    assert isinstance(listing, Listing) and listing.commit == old
    assert set(listing.files) == {"a", "b/c"} and listing.files["a"].file_id == sha
    assert listing.vouched is not None and listing.vouched.basis == "peers"
    # a pinned commit only the liar holds: one peer only, and said so
    alone = listing_from_holders(answers, new)
    assert isinstance(alone, Listing) and alone.vouched is not None
    assert alone.vouched.basis == "one peer" and "ONE peer" in alone.vouched.describe()
    assert isinstance(listing_from_holders(answers, "5" * 40), str)
    tree = listing.tree("", recursive=False)
    assert [(e["type"], e["path"]) for e in tree or []] == [("file", "a"), ("directory", "b")]
    (entry,) = listing.paths_info(["a"])
    # pointerSize: the size of the git LFS pointer file the hub stores for it
    assert entry["lfs"] == {"oid": sha, "size": 1, "pointerSize": len(lfs_pointer(sha, 1))}


class FakeDaemon(QuietSwarm):
    async def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]:
        return []

    def is_self(self, host: str, port: int) -> bool:
        return False


def test_a_gated_repo_needs_upstream_to_let_the_caller_resolve(tmp_path: Path) -> None:
    content, commit = b"gated weights\n", "5" * 40
    blob_id = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    cache = HubCache(tmp_path / "hub")
    blob = cache.blob_path("model", "org/gated", blob_id)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(content)  # held already: only access decides
    seen: list[tuple[str, str | None]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        seen.append((request.url.path, auth))
        if request.url.path == "/api/models/org/gated/revision/main":
            sibling = {"rfilename": "w.txt", "blobId": blob_id, "size": len(content)}
            return httpx.Response(
                200, json={"sha": commit, "gated": "manual", "siblings": [sibling]}
            )
        if request.method == "HEAD" and auth == "Bearer granted":
            return httpx.Response(302, headers={"location": "https://cdn.test/x"})
        return httpx.Response(403, headers={"X-Error-Code": "GatedRepo", "X-Error-Message": "no"})

    async def main() -> None:
        mock = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
        endpoint = HubEndpoint(
            FakeDaemon(), ["http://upstream.test"], cache, tmp_path / "p", PeerAuth(), client=mock
        )

        async def no_peer_app(scope: Any, receive: Any, send: Any) -> None:
            raise AssertionError("not a peer request")

        app = endpoint.wrap(no_peer_app, loopback_only=False)
        transport = httpx.ASGITransport(app=app)
        async with mock, httpx.AsyncClient(transport=transport, base_url="http://d") as http:
            url = "/org/gated/resolve/main/w.txt"
            for token in ("nope", None):
                headers = {"authorization": f"Bearer {token}"} if token else {}
                denied = await http.get(url, headers=headers)
                assert denied.status_code == 403 and denied.headers["x-error-code"] == "GatedRepo"
                assert content not in denied.content
            ok = await http.get(url, headers={"authorization": "Bearer granted"})
            assert (ok.status_code, ok.content) == (200, content)
            assert ok.headers["etag"] == f'"{blob_id}"' and "x-linked-etag" not in ok.headers

    anyio.run(main, backend="asyncio")
    assert ("/org/gated/resolve/" + commit + "/w.txt", "Bearer granted") in seen
