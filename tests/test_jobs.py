"""`hffs model add` with a daemon running: the daemon fetches, the CLI shows progress.

One download path: the CLI submits a job over the control API and renders what the
daemon streams back; Ctrl-C cancels the job; a rerun resumes from the partial file.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hffs.cache import HubCache
from hffs.jobs import JobSpec, replay
from swarm.chunking import MIN_CHUNK_SIZE
from tests.localhub import LocalHub, make_random_file
from tests.nodes import Node, wait_for

REPO = "org/job"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub() as h:
        yield h


def test_the_daemon_fetches_the_bytes_and_the_cli_shows_them(
    nodes: Callable[[str], Node], hub: LocalHub, tmp_path: Path
) -> None:
    size = 6 * MIN_CHUNK_SIZE + 7
    src = make_random_file(tmp_path / "w.bin", size, seed=3)
    hub.add_repo(REPO, {"w.bin": src, "config.json": b"{}\n"})
    a = nodes("127.0.0.2")
    a.env["HFFS_ENDPOINTS"] = hub.url
    assert a.start().returncode == 0
    # The CLI's HF cache differs from the daemon's: the files still land in the CLI's.
    mine = tmp_path / "cli-cache"
    a.env["HF_HUB_CACHE"] = str(mine)
    r = a.cli("model", "add", REPO)
    assert r.returncode == 0, r.stderr
    assert "2 file(s) downloaded" in r.stderr
    status = a.client().status()
    assert status["bytes_down_upstream"] >= size  # the daemon moved the bytes
    assert status["files_shared"] >= 2  # and shares them at once, no rescan awaited
    files = {f.path: f for f in HubCache(mine).files("model", REPO)}
    assert files["w.bin"].local_path.read_bytes() == src.read_bytes()
    # A rerun fetches nothing; a file of the same content in another repo is linked.
    hub.reset_stats()
    hub.add_repo("org/other", {"copy.bin": src})
    r = a.cli("model", "add", "org/other")
    assert r.returncode == 0, r.stderr
    assert "1 linked from another repo" in r.stderr
    assert hub.bytes_served == 0
    r = a.cli("model", "add", REPO)
    assert r.returncode == 0 and "2 already cached" in r.stderr, r.stderr


def test_ctrl_c_cancels_the_job_and_a_rerun_resumes(
    nodes: Callable[[str], Node], tmp_path: Path
) -> None:
    size = 32 * MIN_CHUNK_SIZE
    src = make_random_file(tmp_path / "big.bin", size, seed=5)
    with LocalHub() as slow:
        slow.add_repo(REPO, {"big.bin": src})
        slow.throttle_bps = 8 * MIN_CHUNK_SIZE  # ~4 s for the whole file
        a = nodes("127.0.0.3")
        a.env["HFFS_ENDPOINTS"] = slow.url
        assert a.start().returncode == 0
        cli = subprocess.Popen(
            [sys.executable, "-m", "hffs.cli", "model", "add", REPO],
            env=a.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: slow.bytes_served > 4 * MIN_CHUNK_SIZE, 30, "bytes flowing")
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=30)
        assert cli.returncode == 1 and "interrupted" in err, err

        # The daemon stops fetching: the hub's counter settles well short of the file.
        def settled() -> bool:
            before = slow.bytes_served
            time.sleep(0.5)
            return slow.bytes_served == before

        wait_for(settled, 30, "the daemon to stop fetching")
        first = slow.bytes_served
        assert first < size
        assert not (HubCache(a.hub).repo_dir("model", REPO) / "blobs").exists() or not any(
            (HubCache(a.hub).repo_dir("model", REPO) / "blobs").iterdir()
        )
        slow.throttle_bps = None
        slow.reset_stats()
        r = a.cli("model", "add", REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        # The rerun fetched the rest, not the whole file again.
        assert slow.bytes_served <= size - first + 8 * MIN_CHUNK_SIZE, (first, slow.bytes_served)
    blob = HubCache(a.hub).blob_path("model", REPO, hashlib.sha256(src.read_bytes()).hexdigest())
    assert blob.read_bytes() == src.read_bytes()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def planned(self, plan: object) -> None:
        self.events.append(("plan", plan))

    def on_bytes(self, path: str, source: str, upstream: bool, n: int) -> None:
        self.events.append(("bytes", (path, source, upstream, n)))

    def file_done(self, path: str, how: str, by_source: object) -> None:
        self.events.append(("file", (path, how)))


def test_job_specs_and_events_are_parsed_strictly() -> None:
    spec = JobSpec("org/x", "main", files=("a.bin",), token="t", endpoints=("http://h",))
    assert JobSpec.from_json(spec.to_json()) == spec
    for bad in (
        [],
        {"repo_id": "org/x"},  # no revision
        {"repo_id": "org/x", "revision": "main", "files": "a.bin"},
        {"repo_id": "org/x", "revision": "main", "force": "yes"},
        {"repo_id": "org/x", "revision": "main", "endpoints": ["file:///etc"]},
        {"repo_id": "org/x", "revision": "main", "repo_type": "bogus"},
    ):
        with pytest.raises(ValueError):
            JobSpec.from_json(bad)
    rec = Recorder()
    replay({"event": "bytes", "path": "a", "source": "s", "upstream": True, "n": 5}, rec)
    assert rec.events == [("bytes", ("a", "s", True, 5))]
    for bad_event in (
        {"event": "bytes", "path": "a", "source": "s", "n": -1},
        {"event": "file", "path": "a", "how": "stolen"},
        {"event": "nope"},
        "text",
    ):
        with pytest.raises(ValueError):
            replay(bad_event, rec)
    done = replay({"event": "done", "commit": "c" * 40, "downloaded": 1}, rec)
    assert done is not None and done.downloaded == 1
