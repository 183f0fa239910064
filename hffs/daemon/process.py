"""Starting and stopping the daemon process from the CLI.

``start`` spawns ``python -m hffs.daemon.service`` in a new session (detached from
the terminal, output to ``<home>/daemon.log``) and waits, bounded, until its control
API answers; if it exits first, the ``error:`` line it logged is the error shown.
``stop`` asks the control API, then terminates, then kills (swarm.portable: no signals
on Windows), each wait bounded.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hffs.daemon.client import DaemonClient, DaemonError, DaemonNotRunning
from hffs.daemon.runfiles import (
    LOG_FILE,
    DaemonInfo,
    clear_stale,
    is_running,
    read_info,
    read_pid,
)
from hffs.daemon.service import DaemonSettings, DaemonStartError, run_foreground
from swarm import portable

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
LOG_ROTATE_BYTES = 10 << 20
POLL = 0.1


class DaemonProcessError(Exception):
    """Starting or stopping failed; the message is one line for the user."""


def already_running_message(home: Path) -> str:
    info = read_info(home)
    pid = info.pid if info else read_pid(home)
    where = f", port {info.port}" if info else ""
    return f"a daemon already runs (pid {pid or '?'}{where}); stop it with `hffs daemon stop`"


def _daemon_argv(settings: DaemonSettings) -> list[str]:
    argv = [sys.executable, "-m", "hffs.daemon.service", "--home", str(settings.home)]
    argv += ["--host", settings.host, "--port", str(settings.port)]
    for host, port in settings.bootstrap:
        argv += ["--bootstrap", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if not settings.mdns:
        argv.append("--no-mdns")
    return argv


def _last_error(log_path: Path, offset: int) -> str | None:
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else None


def _ready(home: Path, pid: int) -> DaemonInfo | None:
    info = read_info(home)
    if info is None or info.pid != pid:
        return None
    try:
        DaemonClient(info, timeout=1.0).status()
    except (DaemonNotRunning, DaemonError):
        return None
    return info


def start(settings: DaemonSettings, *, foreground: bool = False) -> DaemonInfo | None:
    """Start a daemon for ``settings.home``; returns where it listens (None in foreground,
    after it stopped). Raises DaemonProcessError."""
    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DaemonProcessError(f"cannot create {home}: {exc.strerror or exc}") from None
    if is_running(home):
        raise DaemonProcessError(already_running_message(home))
    clear_stale(home)
    if foreground:
        try:
            run_foreground(settings)
        except DaemonStartError as exc:
            raise DaemonProcessError(str(exc)) from None
        except KeyboardInterrupt:
            pass
        return None
    return _spawn(settings)


def _spawn(settings: DaemonSettings) -> DaemonInfo:
    home = settings.home
    log_path = home / LOG_FILE
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_suffix(".log.1"))
    with log_path.open("ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(
            _daemon_argv(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            **portable.detach_kwargs(),  # survives the terminal and its Ctrl-C
            cwd=home,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            reason = _last_error(log_path, offset)
            if reason is None:
                reason = f"the daemon exited at start (code {code}); see {log_path}"
            raise DaemonProcessError(reason)
        info = _ready(home, proc.pid)
        if info is not None:
            return info
        time.sleep(POLL)
    proc.kill()
    proc.wait(KILL_TIMEOUT)
    raise DaemonProcessError(
        f"the daemon did not start within {START_TIMEOUT:.0f} s; see {log_path}"
    )


def _wait_stopped(home: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(home):
            return True
        time.sleep(POLL)
    return not is_running(home)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting for a parent to reap it, does not)."""
    return portable.pid_alive(pid)


def _wait_exit(pid: int | None, timeout: float) -> None:
    """The lock is released just before exit: wait, bounded, for the process to end."""
    deadline = time.monotonic() + timeout
    while pid is not None and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL / 2)


def _end(pid: int | None, how: Callable[[int], None]) -> None:
    if pid is not None:
        how(pid)


def stop(home: Path) -> int | None:
    """Stop the daemon of ``home``; returns its pid. Raises DaemonNotRunning."""
    if not is_running(home):
        clear_stale(home)
        raise DaemonNotRunning("the hffs daemon is not running")
    info = read_info(home)
    pid = info.pid if info else read_pid(home)
    try:
        DaemonClient.from_home(home, timeout=5.0).stop()
    except (DaemonNotRunning, DaemonError):
        _end(pid, portable.terminate)
    if not _wait_stopped(home, STOP_TIMEOUT):
        _end(pid, portable.terminate)
        if not _wait_stopped(home, KILL_TIMEOUT):
            _end(pid, portable.kill)
            if not _wait_stopped(home, KILL_TIMEOUT):
                raise DaemonProcessError(f"the daemon (pid {pid}) does not stop; kill it by hand")
    _wait_exit(pid, KILL_TIMEOUT)
    clear_stale(home)
    return pid
