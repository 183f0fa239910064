"""`hffs model add/ls/rm/import` against the local hub, with no daemon running."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
from typer.testing import CliRunner

from hffs.cli import app
from swarm.chunking import MIN_CHUNK_SIZE
from tests.localhub import LocalHub, make_random_file

runner = CliRunner()


def hffs(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def repo(hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    big = make_random_file(tmp_path_factory.mktemp("src") / "w", 3 * MIN_CHUNK_SIZE + 123, seed=1)
    files = {
        "config.json": b'{"model_type": "bert"}\n',
        "model.safetensors": big.read_bytes(),
        "sub/dir/notes.txt": b"hello\n",
    }
    hub.add_repo("org/three", files)
    return files


def test_add_whole_repo_lands_where_huggingface_hub_finds_it(
    hffs_env: dict[str, str], hub: LocalHub, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    code, out = hffs("model", "add", "org/three")
    assert code == 0, out
    cache = Path(hffs_env["HF_HUB_CACHE"])
    commit = hub.resolve_revision("org/three")
    for name, data in repo.items():
        path = hf_hub_download("org/three", name, cache_dir=cache, local_files_only=True)
        assert Path(path).read_bytes() == data
    snap = snapshot_download("org/three", cache_dir=cache, local_files_only=True)
    assert Path(snap).name == commit
    scanned = scan_cache_dir(cache)
    assert not scanned.warnings
    (cached,) = scanned.repos
    assert cached.repo_id == "org/three" and cached.nb_files == 3
    # a second add transfers nothing
    served = hub.bytes_served
    code, out = hffs("model", "add", "org/three")
    assert code == 0, out
    assert hub.bytes_served == served
    # ls: repos, files, the path of one file
    code, out = hffs("model", "ls")
    assert "org/three" in out
    code, out = hffs("model", "ls", "--repo-id", "org/three")
    assert "sub/dir/notes.txt" in out and "model.safetensors" in out
    code, out = hffs("model", "ls", "--repo-id", "org/three", "--file", "sub/dir/notes.txt")
    assert code == 0 and Path(out.strip()).read_bytes() == b"hello\n"


def test_add_one_file_and_resolve_refs(
    hffs_env: dict[str, str], hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    first = hub.add_repo("org/refs", {"a.txt": b"one\n", "b.txt": b"bee\n"})
    second = hub.add_commit("org/refs", {"a.txt": b"two\n"})
    cache = Path(hffs_env["HF_HUB_CACHE"])
    code, out = hffs("model", "add", "org/refs", "--file", "a.txt")
    assert code == 0, out
    assert (cache / "models--org--refs" / "refs" / "main").read_text() == second
    assert not (cache / "models--org--refs" / "snapshots" / second / "b.txt").exists()
    code, out = hffs("model", "add", "org/refs", "--file", "a.txt", "--revision", first)
    assert code == 0, out
    old = hf_hub_download(
        "org/refs", "a.txt", revision=first, cache_dir=cache, local_files_only=True
    )
    assert Path(old).read_bytes() == b"one\n"
    new = hf_hub_download("org/refs", "a.txt", cache_dir=cache, local_files_only=True)
    assert Path(new).read_bytes() == b"two\n"


def test_dataset_repo(
    hffs_env: dict[str, str], hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    hub.add_repo("org/data", {"train.csv": b"a,b\n1,2\n"}, repo_type="dataset")
    code, out = hffs("model", "add", "org/data", "--repo-type", "dataset")
    assert code == 0, out
    path = hf_hub_download(
        "org/data",
        "train.csv",
        repo_type="dataset",
        cache_dir=hffs_env["HF_HUB_CACHE"],
        local_files_only=True,
    )
    assert Path(path).read_bytes() == b"a,b\n1,2\n"


def test_falls_over_to_the_second_endpoint_per_chunk(
    hffs_env: dict[str, str], hub: LocalHub, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalHub() as mirror:
        mirror.add_repo("org/three", repo)
        assert mirror.resolve_revision("org/three") == hub.resolve_revision("org/three")
        monkeypatch.setenv("HFFS_ENDPOINTS", f"{mirror.url},{hub.url}")
        fault = mirror.inject("5xx", path="model.safetensors", count=None, status=503)
        hub.reset_stats()
        code, out = hffs("model", "add", "org/three", "--file", "model.safetensors")
        assert code == 0, out
        assert fault.hits >= 1
        # every byte of the LFS file came from the second endpoint, each chunk once
        assert hub.bytes_served == len(repo["model.safetensors"])
    path = hf_hub_download(
        "org/three", "model.safetensors", cache_dir=hffs_env["HF_HUB_CACHE"], local_files_only=True
    )
    assert Path(path).read_bytes() == repo["model.safetensors"]


def test_corrupt_bytes_are_never_published(
    hffs_env: dict[str, str], hub: LocalHub, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    hub.inject("corrupt", path="model.safetensors", count=None, after_bytes=10)
    try:
        code, out = hffs("model", "add", "org/three", "--file", "model.safetensors")
    finally:
        hub.clear_faults()
    assert code == 1
    assert "Traceback" not in out and "nothing was published" in out
    cache = Path(hffs_env["HF_HUB_CACHE"])
    blobs = cache / "models--org--three" / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())
    # with the fault gone, the same command completes the file
    code, out = hffs("model", "add", "org/three", "--file", "model.safetensors")
    assert code == 0, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model", "add", "org/nope"], "not found"),
        (["model", "add", "org/three", "--revision", "nobranch"], "not found"),
        (["model", "add", "org/three", "--file", "missing.bin"], "not in org/three"),
        (["model", "add", "org/three", "--repo-type", "bogus"], "model, dataset or space"),
        (["model", "import", "/no/such/path", "org/x"], "does not exist"),
        (["model", "rm", "org/never"], "nothing removed"),
    ],
)
def test_bad_input_gives_one_clear_line(
    hffs_env: dict[str, str],
    hub: LocalHub,
    repo: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    code, out = hffs(*args)
    assert code == 1
    assert message in out and "Traceback" not in out


def test_no_endpoint_reachable(hffs_env: dict[str, str]) -> None:
    code, out = hffs("model", "add", "org/three")
    assert code == 1 and "no endpoint answered" in out


def test_unwritable_cache(
    hffs_env: dict[str, str],
    hub: LocalHub,
    repo: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: a file where the cache folder should be makes it unusable
        blocker = tmp_path / "blocker"
        blocker.write_text("")
        monkeypatch.setenv("HF_HUB_CACHE", str(blocker / "cache"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv("HF_HUB_CACHE", str(ro / "cache"))
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    hub.reset_stats()
    code, out = hffs("model", "add", "org/three", "--file", "config.json")
    assert code == 1 and "Traceback" not in out
    assert out.startswith("error: cannot write to") and len(out.strip().splitlines()) == 1, out
    assert hub.bytes_served == 0


def test_resume_after_sigkill_fetches_only_the_missing_half(
    hffs_env: dict[str, str], tmp_path: Path
) -> None:
    size = 64 * MIN_CHUNK_SIZE
    src = make_random_file(tmp_path / "big.safetensors", size, seed=7)
    with LocalHub() as slow:
        slow.add_repo("org/big", {"big.safetensors": src})
        slow.throttle_bps = 16 * MIN_CHUNK_SIZE  # ~4 s for the whole file
        env = {**hffs_env, "HFFS_ENDPOINTS": slow.url}
        cmd = [sys.executable, "-m", "hffs.cli", "model", "add", "org/big"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while slow.bytes_served < size // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=10)
        first = slow.bytes_served
        assert MIN_CHUNK_SIZE < first < size, first
        slow.throttle_bps = None
        slow.reset_stats()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        second = slow.bytes_served
    # Upstream bytes are written as they arrive and their progress recorded, so the
    # second run fetches the missing part plus at most one chunk.
    assert second <= size - first + MIN_CHUNK_SIZE, (first, second)
    blob = Path(hffs_env["HF_HUB_CACHE"]) / "models--org--big" / "blobs"
    (published,) = blob.iterdir()
    assert hashlib.sha256(published.read_bytes()).hexdigest() == published.name


def test_hf_token_goes_to_upstream(
    hffs_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalHub(tokens={"hf_test"}) as private:
        private.add_repo("org/private", {"w.bin": b"\x07" * 70_000}, private=True)
        monkeypatch.setenv("HFFS_ENDPOINTS", private.url)
        code, out = hffs("model", "add", "org/private")
        assert code == 1 and "not found" in out  # no token: the hub hides the repo
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        code, out = hffs("model", "add", "org/private")
        assert code == 0, out
        seen = [auth for path, auth in private.auth_log if "org/private" in path and auth]
        assert seen and set(seen) == {"Bearer hf_test"}


def test_a_flaky_only_upstream_that_keeps_cutting_streams_still_completes(
    hffs_env: dict[str, str], hub: LocalHub, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    data = os.urandom(4 * MIN_CHUNK_SIZE)  # whole chunks: every cut delivers some bytes
    hub.add_repo("org/flaky", {"w.safetensors": data})
    hub.inject("drop", path="w.safetensors", count=6, after_bytes=300_000)
    try:
        code, out = hffs("model", "add", "org/flaky")
    finally:
        hub.clear_faults()
    assert code == 0, out
    path = hf_hub_download(
        "org/flaky", "w.safetensors", cache_dir=hffs_env["HF_HUB_CACHE"], local_files_only=True
    )
    assert Path(path).read_bytes() == data


def test_files_huggingface_hub_downloaded_are_listed_and_not_fetched_again(
    hffs_env: dict[str, str], hub: LocalHub, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Path(hffs_env["HF_HUB_CACHE"])
    hf_hub_download("org/three", "config.json", cache_dir=cache, endpoint=hub.url)
    code, out = hffs("model", "ls", "--repo-id", "org/three")
    assert code == 0 and "config.json" in out
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    hub.reset_stats()
    code, out = hffs("model", "add", "org/three", "--file", "config.json")
    assert code == 0, out
    assert hub.bytes_served == 0  # already in the shared cache


def test_same_content_in_two_repos_is_one_blob_on_disk(
    hffs_env: dict[str, str], hub: LocalHub, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    hub.add_repo("org/fork", {"weights.safetensors": repo["model.safetensors"]})
    assert hffs("model", "add", "org/three", "--file", "model.safetensors")[0] == 0
    hub.reset_stats()
    code, out = hffs("model", "add", "org/fork")
    assert code == 0, out
    assert hub.bytes_served == 0
    cache = Path(hffs_env["HF_HUB_CACHE"])
    a = Path(
        hf_hub_download("org/three", "model.safetensors", cache_dir=cache, local_files_only=True)
    )
    b = Path(
        hf_hub_download("org/fork", "weights.safetensors", cache_dir=cache, local_files_only=True)
    )
    assert a.resolve() != b.resolve() and a.stat().st_ino == b.stat().st_ino
