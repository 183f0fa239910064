"""hffs on the portable (Windows) branches of swarm.portable, forced: cache, daemons."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from hffs.cache import CacheError, HubCache
from hffs.daemon.runfiles import is_running
from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from tests.nodes import REPO, Node, wait_for

pytestmark = pytest.mark.skipif(portable.WINDOWS, reason="forces Windows' branches on POSIX")

FILE = "model.safetensors"


def force(node: Node, forced: bool = True) -> Node:
    """The node's processes take the portable branches, or (False) the native ones even
    when the whole suite runs forced."""
    if forced:
        node.env[portable.FORCE_ENV] = "1"
    else:
        node.env.pop(portable.FORCE_ENV, None)
    return node


def entry(node: Node, path: str = FILE) -> Path:
    (snap,) = (node.hub / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir()
    return snap / path


COMMIT = "ab" * 20


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portable, "FORCED", True)
    for name in ("HF_HUB_DISABLE_SYMLINKS", "HF_HUB_DISABLE_SYMLINKS_WARNING"):
        monkeypatch.delenv(name, raising=False)


def put_blob(cache: HubCache, data: bytes) -> str:
    blob_id = hashlib.sha256(data).hexdigest()
    blob = cache.blob_path("model", REPO, blob_id)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return blob_id


def test_cache_without_symlinks_links_hard_and_warns_as_hf(forced: None, tmp_path: Path) -> None:
    cache = HubCache(tmp_path / "hub")
    blob_id = put_blob(cache, b"weights")
    with pytest.warns(UserWarning, match="does not support them in"):
        first = cache.link("model", REPO, COMMIT, "a/w.bin", blob_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per cache folder, as huggingface_hub
        second = cache.link("model", REPO, COMMIT, "b.bin", blob_id)
    blob = cache.blob_path("model", REPO, blob_id)
    for e in (first, second):
        assert not e.is_symlink() and portable.file_key(e) == portable.file_key(blob)
    listed = {(f.path, f.blob_id) for f in cache.files("model", REPO)}
    assert listed == {("a/w.bin", blob_id), ("b.bin", blob_id)}  # shareable by id
    assert cache.collect_garbage("model", REPO) == []  # both entries keep the blob
    assert cache.remove_commit("model", REPO, COMMIT)
    cache.collect_garbage("model", REPO)
    assert not cache.repo_dir("model", REPO).exists()


def test_hf_switches_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_SYMLINKS", "1")  # huggingface_hub's own switch
    cache = HubCache(tmp_path / "hub")
    blob_id = put_blob(cache, b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # disabled on purpose: HF does not warn either
        e = cache.link("model", REPO, COMMIT, "x.bin", blob_id)
    assert not e.is_symlink()
    monkeypatch.delenv("HF_HUB_DISABLE_SYMLINKS")
    monkeypatch.setattr(portable, "FORCED", True)
    monkeypatch.setenv("HF_HUB_DISABLE_SYMLINKS_WARNING", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cache.link("model", REPO, COMMIT, "y.bin", blob_id).is_symlink()


def test_a_plain_copy_is_not_shared_by_id(forced: None, tmp_path: Path) -> None:
    """A snapshot file HF copied (no symlinks) is not the blob: hffs cannot vouch for it."""
    cache = HubCache(tmp_path / "hub")
    put_blob(cache, b"weights")
    snap = cache.snapshot_dir("model", REPO, COMMIT)
    snap.mkdir(parents=True)
    (snap / "copied.bin").write_bytes(b"weights")
    assert cache.files("model", REPO) == []


@pytest.mark.parametrize("path", ["CON", "a/nul.txt", "x\\..\\..\\evil", "f.txt:stream", "d./f"])
def test_windows_names_are_refused_before_any_write(
    forced: None, tmp_path: Path, path: str
) -> None:
    cache = HubCache(tmp_path / "hub")
    blob_id = put_blob(cache, b"x")
    with pytest.raises(CacheError, match="invalid path in repo"):
        cache.link("model", REPO, COMMIT, path, blob_id)
    assert not cache.snapshot_dir("model", REPO, COMMIT).exists()


def test_two_forced_daemons_share_a_model(
    nodes: Callable[[str], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = force(nodes("127.0.0.2")), force(nodes("127.0.0.3"))
    data = os.urandom(3 * MIN_CHUNK_SIZE + 11)
    file_id = hashlib.sha256(data).hexdigest()
    with monkeypatch.context() as m:  # the seed's cache as Windows without symlinks has it
        m.setattr(portable, "FORCED", True)
        a.add_model_file(FILE, data)
        a.add_model_file("config.json", b"{}\n")
    assert not entry(a).is_symlink()
    assert a.start().returncode == 0
    assert b.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0
    for node in (a, b):
        assert "portable paths forced" in (node.home / "daemon.log").read_text()
    assert a.client().status()["files_shared"] == 2  # found by id without a symlink
    wait_for(lambda: b.client().find_providers(file_id) != [], 20, "b to find a in the DHT")

    r = b.cli("model", "add", REPO)  # no endpoint answers: peers only
    assert r.returncode == 0, r.stderr
    got = entry(b)
    assert not got.is_symlink() and got.read_bytes() == data
    blob = HubCache(b.hub).blob_path("model", REPO, file_id)
    assert portable.file_key(blob) == portable.file_key(got)  # one file on disk, not two
    assert a.client().status()["bytes_up"] >= len(data)

    for node in (a, b):  # stopped through the control API: no signal involved
        pid = node.info()["pid"]
        assert node.cli("daemon", "stop").returncode == 0
        assert not is_running(node.home) and not portable.pid_alive(pid)
        assert "stopped" in (node.home / "daemon.log").read_text()


@pytest.mark.parametrize("forced", [False, True], ids=["native", "portable"])
def test_stop_when_the_control_api_refuses(nodes: Callable[[str], Node], forced: bool) -> None:
    """The control API is asked first; when it will not answer, the process is ended:
    SIGTERM on POSIX (the daemon cleans up), at once where there are no signals."""
    a = force(nodes("127.0.0.4"), forced)
    assert a.start().returncode == 0
    info = a.info()
    (a.home / "daemon.json").write_text(json.dumps({**info, "token": "wrong"}))
    r = a.cli("daemon", "stop")
    assert r.returncode == 0, r.stderr
    assert not is_running(a.home)
    wait_for(lambda: not portable.pid_alive(info["pid"]), 10, "the daemon to exit")
    assert not (a.home / "daemon.json").exists()
    log = (a.home / "daemon.log").read_text()
    assert ("got SIGTERM" in log) is (not forced)


@pytest.mark.parametrize("forced", [False, True], ids=["native", "portable"])
def test_foreground_ctrl_c_stops_cleanly(nodes: Callable[[str], Node], forced: bool) -> None:
    """Ctrl-C in a foreground run: a signal receiver on POSIX, KeyboardInterrupt where the
    daemon watches no signals (Windows); either way the run files go and the lock frees."""
    a = force(nodes("127.0.0.6"), forced)
    argv = ["daemon", "start", "--foreground", "--host", a.host, "--port", str(a.port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hffs.cli", *argv],
        env=a.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (a.home / "daemon.json").exists(), 20, "the daemon to listen")
        assert a.client().status()["pid"] == proc.pid
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not is_running(a.home) and not (a.home / "daemon.json").exists()
    assert ("got SIGINT" in err) is (not forced)
