"""The local hub is faithful: huggingface_hub's own downloads and API calls work against it, and its
throttle and fault injection do what they say."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.localhub import (
    LocalHub,
    git_blob_sha1,
    lfs_pointer,
    make_random_file,
    patch_hf_endpoint,
)

LFS_SIZE = 3 * 1024 * 1024 + 123  # not a multiple of any piece size
CONFIG_V1 = b'{"model_type": "toy", "version": 1}\n'
CONFIG_V2 = b'{"model_type": "toy", "version": 2}\n'
TOKENIZER = b"hello world\n" * 10
CSV = b"a,b\n" + b"1,2\n" * 20_000  # 80 KB of text: LFS by size (>= 64 KiB), not by extension
README = b"# toy dataset\n"


@dataclass
class Env:
    hub: LocalHub
    weights: Path
    c1: str  # first commit of org/toy
    c2: str  # main of org/toy: config.json changed
    data_commit: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    weights = make_random_file(tmp_path_factory.mktemp("src") / "w.safetensors", LFS_SIZE, seed=7)
    with LocalHub() as hub:
        c1 = hub.add_repo(
            "org/toy",
            {"config.json": CONFIG_V1, "model.safetensors": weights, "tok/vocab.txt": TOKENIZER},
        )
        c2 = hub.add_commit("org/toy", {"config.json": CONFIG_V2})
        data_commit = hub.add_repo(
            "org/data", {"README.md": README, "data/train.csv": CSV}, repo_type="dataset"
        )
        yield Env(hub, weights, c1, c2, data_commit)


@pytest.fixture
def hub(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """The shared hub, with runtime knobs restored after each test."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    env.hub.reset_stats()
    yield env.hub
    env.hub.clear_faults()
    env.hub.throttle_bps = None
    env.hub.lfs_redirect = False
    env.hub.tokens.clear()
    env.hub.tree_page_size = 1000


def _dl(hub: LocalHub, cache: Path, filename: str, **kw: object) -> Path:
    kw.setdefault("token", False)
    return Path(hf_hub_download("org/toy", filename, endpoint=hub.url, cache_dir=cache, **kw))  # type: ignore[arg-type]


# ------------------------------------------------------------------ huggingface_hub downloads


def test_hf_hub_download_main_and_old_commit(env: Env, hub: LocalHub, tmp_path: Path) -> None:
    weights = _dl(hub, tmp_path, "model.safetensors")
    assert weights.read_bytes() == env.weights.read_bytes()
    assert weights.parent.name == env.c2  # main resolved to its commit
    assert _dl(hub, tmp_path, "config.json").read_bytes() == CONFIG_V2
    assert _dl(hub, tmp_path, "tok/vocab.txt").read_bytes() == TOKENIZER
    old = _dl(hub, tmp_path, "config.json", revision=env.c1)
    assert old.read_bytes() == CONFIG_V1
    assert old.parent.name == env.c1
    # huggingface_hub keeps the blob under its etag: sha256 for LFS, git sha1 otherwise.
    blobs = {p.name for p in (tmp_path / "models--org--toy" / "blobs").iterdir()}
    assert hashlib.sha256(env.weights.read_bytes()).hexdigest() in blobs
    assert git_blob_sha1(CONFIG_V2) in blobs
    # The LFS file went over the wire exactly once, whole.
    assert hub.bytes_served == LFS_SIZE + len(CONFIG_V2) + len(TOKENIZER) + len(CONFIG_V1)


def test_snapshot_download_main_and_old_commit(env: Env, hub: LocalHub, tmp_path: Path) -> None:
    snap = Path(snapshot_download("org/toy", endpoint=hub.url, cache_dir=tmp_path, token=False))
    assert snap.name == env.c2
    assert (snap / "config.json").read_bytes() == CONFIG_V2
    assert (snap / "model.safetensors").read_bytes() == env.weights.read_bytes()
    assert (snap / "tok" / "vocab.txt").read_bytes() == TOKENIZER
    old = Path(
        snapshot_download(
            "org/toy", revision=env.c1, endpoint=hub.url, cache_dir=tmp_path, token=False
        )
    )
    assert old.name == env.c1
    assert (old / "config.json").read_bytes() == CONFIG_V1
    refs = tmp_path / "models--org--toy" / "refs" / "main"
    assert refs.read_text() == env.c2


def test_dataset_repo(env: Env, hub: LocalHub, tmp_path: Path) -> None:
    snap = Path(
        snapshot_download(
            "org/data", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path, token=False
        )
    )
    assert snap.name == env.data_commit
    assert (snap / "README.md").read_bytes() == README
    assert (snap / "data" / "train.csv").read_bytes() == CSV
    one = hf_hub_download(
        "org/data", "data/train.csv", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path
    )
    assert Path(one).read_bytes() == CSV
    assert all(
        p.startswith(("/api/datasets/org/data", "/datasets/org/data/"))
        for _, p, _ in hub.request_log
    )


def test_patch_hf_endpoint_without_endpoint_argument(
    env: Env, hub: LocalHub, tmp_path: Path
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    endpoint_before = constants.ENDPOINT
    with patch_hf_endpoint(hub.url):
        snap = snapshot_download("org/toy", revision=env.c1, cache_dir=tmp_path, token=False)
        assert (Path(snap) / "config.json").read_bytes() == CONFIG_V1
        assert huggingface_hub.model_info("org/toy", token=False).sha == env.c2
    assert endpoint_before == constants.ENDPOINT


def test_refs_with_slashes_and_tags(env: Env, hub: LocalHub, tmp_path: Path) -> None:
    hub.set_ref("org/toy", "refs/pr/1", env.c1)
    hub.set_ref("org/toy", "v1.0", env.c1, tag=True)
    try:
        for rev in ("refs/pr/1", "v1.0"):
            got = _dl(hub, tmp_path, "config.json", revision=rev)
            assert got.read_bytes() == CONFIG_V1
            assert got.parent.name == env.c1
        refs = HfApi(endpoint=hub.url, token=False).list_repo_refs(
            "org/toy", include_pull_requests=True
        )
        assert [b.name for b in refs.branches] == ["main"]
        assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", env.c1)]
        assert [p.ref for p in refs.pull_requests or []] == ["refs/pr/1"]
    finally:
        hub.delete_ref("org/toy", "refs/pr/1")
        hub.delete_ref("org/toy", "v1.0")


# ------------------------------------------------------------------ API metadata


def test_model_info_tree_and_paths_info(env: Env, hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    sha256 = hashlib.sha256(env.weights.read_bytes()).hexdigest()
    pointer_oid = git_blob_sha1(lfs_pointer(sha256, LFS_SIZE))

    info = api.model_info("org/toy", files_metadata=True)
    assert info.sha == env.c2 and info.private is False and info.gated is False
    sib = {s.rfilename: s for s in info.siblings or []}
    assert set(sib) == {"config.json", "model.safetensors", "tok/vocab.txt"}
    assert (sib["config.json"].size, sib["config.json"].blob_id) == (
        len(CONFIG_V2),
        git_blob_sha1(CONFIG_V2),
    )
    assert sib["config.json"].lfs is None
    lfs = sib["model.safetensors"].lfs
    assert lfs is not None and (lfs.sha256, lfs.size) == (sha256, LFS_SIZE)
    assert sib["model.safetensors"].blob_id == pointer_oid
    assert api.model_info("org/toy", revision=env.c1).sha == env.c1
    assert api.model_info("org/toy").siblings[0].size is None  # type: ignore[index]  # no blobs=

    tree = list(api.list_repo_tree("org/toy", recursive=True))
    files = {e.path: e for e in tree if isinstance(e, RepoFile)}
    dirs = {e.path for e in tree if isinstance(e, RepoFolder)}
    assert dirs == {"tok"}
    assert files["model.safetensors"].lfs is not None
    assert files["model.safetensors"].lfs.sha256 == sha256
    assert files["tok/vocab.txt"].size == len(TOKENIZER)
    assert files["tok/vocab.txt"].blob_id == git_blob_sha1(TOKENIZER)
    top = {e.path for e in api.list_repo_tree("org/toy")}
    assert top == {"config.json", "model.safetensors", "tok"}
    assert [e.path for e in api.list_repo_tree("org/toy", "tok")] == ["tok/vocab.txt"]
    old = {e.path: e for e in api.list_repo_tree("org/toy", revision=env.c1, recursive=True)}
    assert isinstance(old["config.json"], RepoFile)
    assert old["config.json"].blob_id == git_blob_sha1(CONFIG_V1)

    infos = api.get_paths_info("org/toy", ["config.json", "tok", "missing.bin"], revision=env.c1)
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFile", "config.json"),
        ("RepoFolder", "tok"),
    ]
    assert isinstance(infos[0], RepoFile) and infos[0].size == len(CONFIG_V1)

    data = api.dataset_info("org/data", files_metadata=True)
    csv = {s.rfilename: s for s in data.siblings or []}["data/train.csv"]
    assert csv.lfs is not None and csv.lfs.sha256 == hashlib.sha256(CSV).hexdigest()


def test_tree_pagination_and_expand(env: Env, hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    hub.tree_page_size = 2
    entries = list(api.list_repo_tree("org/toy", recursive=True, expand=True))
    assert [e.path for e in entries] == ["config.json", "model.safetensors", "tok", "tok/vocab.txt"]
    pages = [r for r in hub.records if "/tree/" in r.path]
    assert len(pages) == 2  # followed the Link header
    last = {e.path: e.last_commit.oid for e in entries if e.last_commit is not None}
    assert last == {
        "config.json": env.c2,
        "model.safetensors": env.c1,
        "tok": env.c1,
        "tok/vocab.txt": env.c1,
    }
    assert isinstance(entries[0], RepoFile) and entries[0].security is not None


# ------------------------------------------------------------ raw HTTP: headers, ranges, errors


def test_resolve_headers(env: Env, hub: LocalHub) -> None:
    sha256 = hashlib.sha256(env.weights.read_bytes()).hexdigest()
    r = httpx.head(hub.file_url("org/toy", "model.safetensors"))
    assert r.status_code == 200
    h = r.headers
    assert h["x-repo-commit"] == env.c2
    assert h["etag"] == f'"{sha256}"' == h["x-linked-etag"]
    assert h["x-linked-size"] == h["content-length"] == str(LFS_SIZE)
    assert h["accept-ranges"] == "bytes"
    assert not [k for k in h if k.lower().startswith("x-xet")]
    r = httpx.head(hub.file_url("org/toy", "config.json", env.c1))
    assert r.headers["etag"] == f'"{git_blob_sha1(CONFIG_V1)}"'
    assert r.headers["x-repo-commit"] == env.c1
    assert "x-linked-etag" not in r.headers and "x-linked-size" not in r.headers
    assert hub.bytes_served == 0  # HEAD sends no body


@pytest.mark.parametrize(
    ("header", "status", "start", "end"),
    [
        ("bytes=0-9", 206, 0, 10),
        ("bytes=1000000-", 206, 1000000, LFS_SIZE),
        ("bytes=-77", 206, LFS_SIZE - 77, LFS_SIZE),
        ("bytes=5-999999999", 206, 5, LFS_SIZE),
        ("bytes=10-5", 200, 0, LFS_SIZE),  # invalid: ignored, as the RFC allows
        (f"bytes={LFS_SIZE}-", 416, 0, 0),
        ("bytes=-0", 416, 0, 0),
    ],
)
def test_range_requests(
    env: Env, hub: LocalHub, header: str, status: int, start: int, end: int
) -> None:
    r = httpx.get(hub.file_url("org/toy", "model.safetensors"), headers={"Range": header})
    assert r.status_code == status
    if status == 416:
        assert r.headers["content-range"] == f"bytes */{LFS_SIZE}"
        return
    with env.weights.open("rb") as f:
        f.seek(start)
        assert r.content == f.read(end - start)
    if status == 206:
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{LFS_SIZE}"
    assert hub.bytes_served == end - start
    assert hub.request_log == [("GET", "/org/toy/resolve/main/model.safetensors", header)]


def test_not_found_errors(env: Env, hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            "org/nope", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False
        )
    with pytest.raises(RevisionNotFoundError):
        _dl(hub, tmp_path, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        _dl(hub, tmp_path, "no/such/file.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            "org/toy", "README.md", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path
        )
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/toy", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree("org/toy", revision="nope"))
    # The hub says 401 without credentials, 404 with them; RepoNotFound either way.
    r = httpx.get(f"{hub.url}/api/models/org/nope")
    assert (r.status_code, r.headers["x-error-code"]) == (401, "RepoNotFound")
    r = httpx.get(f"{hub.url}/api/models/org/nope", headers={"Authorization": "Bearer x"})
    assert (r.status_code, r.headers["x-error-code"]) == (404, "RepoNotFound")
    r = httpx.head(hub.file_url("org/toy", "nope.txt"))
    assert (r.status_code, r.headers["x-error-code"]) == (404, "EntryNotFound")
    assert r.headers["x-repo-commit"] == env.c2


# ------------------------------------------------------------ auth, CDN redirect, private repos


def test_lfs_redirect_keeps_token_off_the_cdn(env: Env, hub: LocalHub, tmp_path: Path) -> None:
    hub.lfs_redirect = True
    got = _dl(hub, tmp_path, "model.safetensors", token="hf_secret")
    assert got.read_bytes() == env.weights.read_bytes()
    cdn = [r for r in hub.records if r.cdn]
    assert [r.method for r in cdn] == ["GET"] and cdn[0].bytes_sent == LFS_SIZE
    assert all(r.authorization is None for r in cdn)
    assert all(
        auth == "Bearer hf_secret"
        for (_, auth), r in zip(hub.auth_log, hub.records, strict=True)
        if not r.cdn
    )
    r = httpx.head(hub.file_url("org/toy", "model.safetensors"))
    assert r.status_code == 302 and r.headers["location"].startswith(hub.cdn_url)
    assert r.headers["x-linked-size"] == str(LFS_SIZE)


def test_private_repo_needs_token(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_repo("org/secret", {"a.txt": b"classified"}, private=True)
    hub.tokens.add("hf_good")
    try:
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(
                "org/secret", "a.txt", endpoint=hub.url, cache_dir=tmp_path, token=False
            )
        got = hf_hub_download(
            "org/secret", "a.txt", endpoint=hub.url, cache_dir=tmp_path, token="hf_good"
        )
        assert Path(got).read_bytes() == b"classified"
        r = httpx.get(f"{hub.url}/api/models/org/toy", headers={"Authorization": "Bearer hf_bad"})
        assert r.status_code == 401
        assert hub.auth_log[0] == ("/org/secret/resolve/main/a.txt", None)
    finally:
        hub.delete_repo("org/secret")


# ------------------------------------------------------------------ throttle and faults


def test_throttle_limits_total_rate(hub: LocalHub) -> None:
    url = hub.file_url("org/toy", "model.safetensors")
    booked = hub.throttled_seconds
    hub.throttle_bps = 2_000_000
    t0 = time.monotonic()
    r = httpx.get(url, headers={"Range": "bytes=0-999999"})
    assert len(r.content) == 1_000_000
    assert time.monotonic() - t0 >= 0.3
    # Shared across connections: two concurrent 500 KB bodies also take >= ~0.5 s in total.
    t0 = time.monotonic()
    threads = [
        threading.Thread(
            target=httpx.get, args=(url,), kwargs={"headers": {"Range": "bytes=0-499999"}}
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert time.monotonic() - t0 >= 0.3
    # Every throttled byte booked its share of the link: 2 MB at 2 MB/s.
    assert hub.throttled_seconds - booked == pytest.approx(1.0)
    hub.throttle_bps = None  # off again: the whole 3 MB goes unthrottled
    assert len(httpx.get(url).content) == LFS_SIZE
    assert hub.throttled_seconds - booked == pytest.approx(1.0)


def test_fault_drop(env: Env, hub: LocalHub) -> None:
    fault = hub.inject("drop", count=1, after_bytes=1000, path="model.safetensors")
    url = hub.file_url("org/toy", "model.safetensors")
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            got += chunk
    assert bytes(got) == env.weights.read_bytes()[:1000]
    assert fault.hits == 1 and fault.count == 0
    assert len(httpx.get(url).content) == LFS_SIZE  # count exhausted: served whole
    assert [r.fault for r in hub.records] == ["drop", None]
    assert hub.bytes_served == 1000 + LFS_SIZE


def test_fault_drop_huggingface_hub_retries(env: Env, hub: LocalHub, tmp_path: Path) -> None:
    hub.inject("drop", count=1, after_bytes=1 << 20)
    got = _dl(hub, tmp_path, "model.safetensors")
    assert got.read_bytes() == env.weights.read_bytes()
    # huggingface_hub reads 10 MB pieces, so it had kept nothing of the cut body and retried
    # from 0 (with a Range only once it holds some bytes).
    gets = [r for r in hub.records if r.method == "GET"]
    assert [(r.fault, r.range, r.bytes_sent) for r in gets] == [
        ("drop", None, 1 << 20),
        (None, None, LFS_SIZE),
    ]
    assert hub.bytes_served == LFS_SIZE + (1 << 20)


def test_fault_5xx_count_and_path(hub: LocalHub) -> None:
    fault = hub.inject("5xx", count=2, status=503, path="config.json")
    config = hub.file_url("org/toy", "config.json")
    assert httpx.get(hub.file_url("org/toy", "tok/vocab.txt")).status_code == 200  # other path
    assert httpx.head(config).status_code == 200  # HEAD is not faulted
    assert [httpx.get(config).status_code for _ in range(3)] == [503, 503, 200]
    assert fault.hits == 2
    hub.clear_faults()
    hub.inject("5xx", api=True)
    assert httpx.get(f"{hub.url}/api/models/org/toy").status_code == 500


def test_fault_corrupt(env: Env, hub: LocalHub) -> None:
    hub.inject("corrupt", count=1, after_bytes=300_000)
    url = hub.file_url("org/toy", "model.safetensors")
    bad = httpx.get(url, headers={"Range": "bytes=100000-"}).content
    good = env.weights.read_bytes()[100_000:]
    assert len(bad) == len(good)
    diff = [i for i, (a, b) in enumerate(zip(bad, good, strict=True)) if a != b]
    assert diff == [300_000]
    assert httpx.get(url, headers={"Range": "bytes=100000-"}).content == good


# ------------------------------------------------------------------ lifecycle


def test_stop_is_quick_and_leaves_no_thread(tmp_path: Path) -> None:
    hub = LocalHub(throttle_bps=50_000)
    hub.add_repo("a/b", {"w.bin": b"x" * 1_000_000})
    with hub:
        url = hub.file_url("a/b", "w.bin")
        errors: list[BaseException] = []

        def slow_get() -> None:  # would take 20 s at this rate
            try:
                httpx.get(url, timeout=10)
            except httpx.HTTPError as e:
                errors.append(e)

        client = threading.Thread(target=slow_get)
        client.start()
        deadline = time.monotonic() + 5
        while hub.bytes_served == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        name = f"localhub-{hub.port}"
    # Leaving the block stopped the server mid-body: stop() raises if the thread is
    # still up after _STOP_TIMEOUT_S (the body alone would take 20 s).
    client.join(timeout=5)
    assert not client.is_alive() and errors  # the client saw the connection end early
    assert name not in [t.name for t in threading.enumerate()]
    with pytest.raises(RuntimeError):
        _ = hub.url
