"""Real hffs daemons on distinct loopback addresses, for multi-machine tests.

Each `Node` is one machine: its own HFFS_HOME and HF_HUB_CACHE under tmp_path, an
address on 127.0.0.x and a free port; endpoints default to 127.0.0.1:9, where
nothing listens, so nothing here can reach the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hffs.cache import HubCache
from hffs.daemonctl.client import DaemonClient
from hffs.runfiles import is_running, read_pid
from hffs.visibility import VisibilityStore
from swarm import portable
from swarm.portable import pid_alive

CLI_TIMEOUT = 30.0
COMMIT = "c0ffee" + "0" * 34
REPO = "org/tiny-model"


def free_port(host: str) -> int:
    """A port free for both TCP and UDP on host (the daemon needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Node:
    """One machine: a home, an HF cache, an address, and the CLI run against them."""

    def __init__(self, root: Path, host: str) -> None:
        self.host = host
        self.port = free_port(host)
        self.home = root / "home"
        self.hub = root / "hub"
        self.env = {
            **os.environ,  # HFFS_FORCE_PORTABLE too: .ci/run's forced run reaches every daemon
            "HFFS_HOME": str(self.home),
            "HF_HUB_CACHE": str(self.hub),
            "HF_HOME": str(root / "hf-home"),
            "XDG_CONFIG_HOME": str(root / "xdg-config"),
            "XDG_DATA_HOME": str(root / "xdg-data"),
            # Nothing listens there: no test reaches the internet. (No HF_HUB_OFFLINE: a
            # daemon runs `model add` jobs with the endpoints the CLI sends.)
            "HFFS_ENDPOINTS": "http://127.0.0.1:9",
        }
        for key in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
            self.env.pop(key, None)

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hffs.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("daemon", "start", "--host", self.host, "--port", str(self.port), *extra)

    def info(self) -> dict:
        return json.loads((self.home / "daemon.json").read_text())

    def client(self) -> DaemonClient:
        return DaemonClient.from_home(self.home, timeout=20)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kill(self) -> None:
        """Teardown: stop through the CLI, and make sure no process is left."""
        stop_all([self])

    def add_model_file(self, path: str, data: bytes) -> str:
        return put_model_file(self.hub, self.home, path, data)


def put_model_file(hub: Path, home: Path, path: str, data: bytes) -> str:
    """Put a file of REPO@COMMIT into the HF cache `hub` exactly as huggingface_hub lays
    it out, recorded public for the daemon of `home`; returns its blob id."""
    cache = HubCache(hub)
    blob_id = hashlib.sha256(data).hexdigest()
    blob = cache.blob_path("model", REPO, blob_id)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    cache.link("model", REPO, COMMIT, path, blob_id)
    cache.write_ref("model", REPO, "main", COMMIT)
    # as if hffs had fetched it anonymously: public, so the daemon shares it
    VisibilityStore(home).record("model", REPO, "public", [blob_id])
    return blob_id


def stop_all(nodes: list[Node]) -> None:
    """Stop every node's daemon through the CLI, all at once (a stop waits for the
    daemon's graceful shutdown: one after another, a 4-node test's teardown took 10-19 s
    on a loaded machine), then make sure no process is left."""
    pids = [read_pid(n.home) for n in nodes]
    stops = [
        subprocess.Popen(
            [sys.executable, "-m", "hffs.cli", "daemon", "stop"],
            env=n.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in nodes
        if is_running(n.home)
    ]
    deadline = time.monotonic() + 20
    for p in stops:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for pid in pids:
        if pid is not None and pid_alive(pid):
            portable.kill(pid)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    made: list[Node] = []

    def make(host: str) -> Node:
        node = Node(tmp_path / host, host)
        made.append(node)
        return node

    yield make
    stop_all(made)
