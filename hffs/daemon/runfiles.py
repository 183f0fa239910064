"""The files a running daemon keeps in the home dir, and how to tell it is alive.

- ``daemon.lock``: held (an OS file lock) by the daemon for its whole life. It is the one
  truth about "a daemon runs": the kernel drops it when the process dies, so a
  stale pid file or a recycled pid can never fool us.
- ``daemon.pid``: its pid, for signals and for people.
- ``daemon.json`` (mode 0600): where its servers listen and the control token.
- ``daemon.log``: its stdout/stderr when detached.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from swarm import portable

LOCK_FILE = "daemon.lock"
PID_FILE = "daemon.pid"
INFO_FILE = "daemon.json"
LOG_FILE = "daemon.log"
TOKEN_HEADER = "X-HFFS-Token"


@dataclass(frozen=True)
class DaemonInfo:
    """What ``daemon.json`` says about a running daemon."""

    pid: int
    host: str  # bind address of the peer port (TCP) and DHT (UDP)
    port: int
    control_host: str  # always loopback
    control_port: int
    token: str  # sent as the X-HFFS-Token header to the control API
    node_id: str
    started_at: float  # unix time

    @property
    def control_url(self) -> str:
        return f"http://{self.control_host}:{self.control_port}"


def write_info(home: Path, info: DaemonInfo) -> None:
    """Atomically, readable by the owner only: the token guards the control API."""
    path = home / INFO_FILE
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(info), f, indent=2)
    os.replace(tmp, path)


def read_info(home: Path) -> DaemonInfo | None:
    try:
        raw = json.loads((home / INFO_FILE).read_text())
        return DaemonInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None


def read_pid(home: Path) -> int | None:
    try:
        pid = int((home / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def write_pid(home: Path, pid: int) -> None:
    tmp = home / (PID_FILE + ".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, home / PID_FILE)


def remove_run_files(home: Path, pid: int) -> None:
    """Remove pid and info files, but only those that name ``pid``: never a successor's."""
    info = read_info(home)
    if info is not None and info.pid == pid:
        (home / INFO_FILE).unlink(missing_ok=True)
    if read_pid(home) == pid:
        (home / PID_FILE).unlink(missing_ok=True)


def clear_stale(home: Path) -> None:
    """Forget the files of a daemon that is gone (callers checked the lock is free)."""
    for name in (INFO_FILE, PID_FILE):
        (home / name).unlink(missing_ok=True)


class InstanceLock:
    """The daemon's life lock; see the module docstring."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = portable.lock_file(self.path, 0o600)
        except OSError:
            return False
        self._fd = fd
        return fd is not None

    def release(self) -> None:
        if self._fd is not None:
            portable.unlock_file(self._fd)
            self._fd = None


def is_running(home: Path) -> bool:
    """True while some process holds the daemon lock of ``home``."""
    probe = InstanceLock(home)
    if not probe.path.exists():
        return False
    if probe.acquire():
        probe.release()
        return False
    return True
