"""Shared fixtures: an isolated hffs home and HF cache per test, and the local hub."""

from __future__ import annotations

import os
import socket
import subprocess
import time

# Before anything imports huggingface_hub: its telemetry would look up huggingface.co.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.localhub import LocalHub
from tests.nodes import nodes  # noqa: F401  (the fixture, for every test module)

_LOOPBACK_NAMES = {"localhost", "::1", "ip6-localhost"}


@pytest.fixture(autouse=True, scope="session")
def no_internet() -> Iterator[None]:
    """Any name lookup that is not loopback fails the test that made it."""
    real = socket.getaddrinfo

    def loopback_only(host: object, *args: object, **kwargs: object) -> object:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in _LOOPBACK_NAMES and not name.startswith("127."):
            raise AssertionError(f"a test tried to reach {name}: tests stay on loopback")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = loopback_only  # type: ignore[assignment]
    yield
    socket.getaddrinfo = real


@pytest.fixture
def hffs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """HFFS_HOME, HF_HUB_CACHE and every user dir under tmp_path; no real endpoint."""
    env = {
        "HFFS_HOME": str(tmp_path / "home"),
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        # Port 9 (discard) on loopback: nothing listens, so no test can reach the internet.
        "HFFS_ENDPOINTS": "http://127.0.0.1:9",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    return {**os.environ, **env}


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with LocalHub() as h:
        yield h


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of our own, unmounted after the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        for _ in range(20):  # bounded: the daemon may take a moment to let go
            if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10).returncode:
                time.sleep(0.25)
            else:
                break
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)
