"""Every platform difference in one place: Linux and macOS (POSIX) against Windows.

POSIX takes the native branch of each function below; Windows takes the portable one.
``HFFS_FORCE_PORTABLE=1`` makes a POSIX machine take the portable branches too, so the
test suite runs them here. What only Windows itself can do stays Windows-only even when
forced, and says so where it applies: process creation flags, SO_EXCLUSIVEADDRUSE,
``\\\\?\\`` long paths, asyncio's TransmitFile, and the kernel calls inside filelock and
psutil (the same library calls run, on POSIX primitives).

Nothing here knows Hugging Face; callers add their own rules on top.
"""

from __future__ import annotations

import contextlib
import ntpath
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, BinaryIO

# asyncio, filelock and psutil are imported where used: the CLI imports this module for
# every command and needs none of them on POSIX (together ~60 ms of its start-up).
if TYPE_CHECKING:
    import asyncio

if os.name != "nt":
    import fcntl

WINDOWS = os.name == "nt"
FORCE_ENV = "HFFS_FORCE_PORTABLE"
# Windows opens files in text mode unless told otherwise; 0 elsewhere.
O_BINARY: int = getattr(os, "O_BINARY", 0)


def _forced_by_env() -> bool:
    return os.environ.get(FORCE_ENV, "").strip() not in ("", "0")


# Read at call time (tests flip it); subprocesses inherit the environment variable.
FORCED = _forced_by_env()


def enabled() -> bool:
    """True when the portable (Windows) branches are taken: on Windows, or when forced."""
    return WINDOWS or FORCED


def describe() -> str:
    if WINDOWS:
        return "windows"
    return "posix, portable paths forced" if FORCED else "posix"


# -- file locks ------------------------------------------------------------------


def lock_file(path: Path, mode: int = 0o644) -> int | None:
    """Open ``path`` (created if absent) and lock it exclusively without waiting.

    Returns the descriptor holding the lock (give it to ``unlock_file``), or None while
    another descriptor, in this process or another, holds it. The OS drops the lock when
    its holder dies, so a crash never leaves it behind."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | O_BINARY, mode)
    try:
        if enabled():  # flock on POSIX, LockFileEx on byte 0 on Windows
            import filelock

            got = filelock.lock_descriptor(fd, blocking=False)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                got = False
    except BaseException:
        os.close(fd)
        raise
    if not got:
        os.close(fd)
        return None
    return fd


def unlock_file(fd: int) -> None:
    """Release a lock taken by ``lock_file`` and close its descriptor."""
    with contextlib.suppress(OSError):
        if enabled():  # Windows may keep a lock until unlocked, even past close
            import filelock

            filelock.unlock_descriptor(fd)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


# -- positional reads and writes -------------------------------------------------

# Without pread/pwrite a read is seek + read on the descriptor's one shared offset: each
# descriptor's pair runs under a lock (striped: a fixed number of locks, whatever the fd).
_FD_LOCKS = tuple(threading.Lock() for _ in range(64))


def _native_pio() -> bool:
    return not enabled() and hasattr(os, "pread")


def pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` (fewer only at the end of the file)."""
    if _native_pio():
        return os.pread(fd, n, offset)
    with _FD_LOCKS[fd % len(_FD_LOCKS)]:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset``; returns how many bytes came (fewer only at the end).

    ``os.preadv`` reads straight into the buffer where it exists (Linux, BSD, recent
    macOS); elsewhere a positional read is copied in."""
    if _native_pio() and hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write at ``offset``; returns how many bytes were written (can be short)."""
    if _native_pio():
        return os.pwrite(fd, data, offset)
    with _FD_LOCKS[fd % len(_FD_LOCKS)]:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


# -- sending a file on a socket --------------------------------------------------

SEND_BLOCK = 256 << 10


def sendfile(sock: socket.socket, fd: int, offset: int, count: int) -> int:
    """Send up to ``count`` bytes of ``fd`` from ``offset``; returns how many were sent.

    Zero-copy ``os.sendfile`` where it exists (Linux, macOS); elsewhere a positional read
    and ``send`` of at most SEND_BLOCK bytes. Same contract either way: a short count is
    normal, a non-blocking socket that cannot take a byte raises BlockingIOError.
    (asyncio's ``loop.sock_sendfile`` is already portable; this is for threads.)"""
    if count <= 0:
        return 0
    if not enabled() and hasattr(os, "sendfile"):
        return os.sendfile(sock.fileno(), fd, offset, count)
    data = pread(fd, min(count, SEND_BLOCK), offset)
    return sock.send(data) if data else 0


async def transport_sendfile(
    transport: asyncio.WriteTransport, file: BinaryIO, offset: int, count: int
) -> int:
    """Send ``count`` bytes of ``file`` from ``offset`` on an asyncio transport; returns
    how many were sent.

    asyncio picks the zero-copy call itself (os.sendfile on POSIX, TransmitFile on
    Windows' proactor loop) and reads and writes where it has none. The forced branch
    takes that read-and-write path (asyncio's own fallback) so tests exercise it."""
    import asyncio

    loop = asyncio.get_running_loop()
    if FORCED and not WINDOWS:
        fallback = getattr(loop, "_sendfile_fallback", None)
        if fallback is not None:
            return int(await fallback(transport, file, offset, count))
    return await loop.sendfile(transport, file, offset, count)


def keep_files_open() -> bool:
    """Whether a server may keep a file open between requests. Not in the portable
    branch: Windows can neither rename nor delete a file someone holds open, and a
    partial file is renamed when it is published, a rotten blob deleted."""
    return not enabled()


class DirectSend:
    """Zero-copy sends on an asyncio transport's own socket, for the moments its write
    buffer is empty (then nothing of the transport's can be overtaken).

    asyncio's ``loop.sendfile`` does the same ``os.sendfile`` but around each call also
    stats the file, seeks it, pauses and resumes reading and adds and removes a writer:
    at 1 MiB per request that is most of the sending's cost. Here a send that the socket
    cannot take raises BlockingIOError; the caller then waits through the transport.

    Linux sends a response head with MSG_MORE, so head and body leave in one flight;
    macOS sends the head on its own. None (``of``) in the portable branch and wherever
    the transport has no socket: callers then use ``transport_sendfile``."""

    MSG_MORE: int = getattr(socket, "MSG_MORE", 0)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.fd = sock.fileno()

    @classmethod
    def of(cls, transport: asyncio.BaseTransport) -> DirectSend | None:
        if enabled() or not hasattr(os, "sendfile"):
            return None
        ts = transport.get_extra_info("socket")
        if ts is None:
            return None
        try:  # a view of the transport's descriptor, never its owner (see ``release``)
            sock = socket.socket(ts.family, ts.type, ts.proto, fileno=ts.fileno())
        except (OSError, AttributeError, ValueError):
            return None
        return cls(sock)

    def head(self, data: bytes, more: bool) -> int:
        """Send what the socket takes of ``data`` now; with ``more``, a body follows at
        once, so the kernel may hold the head back to leave with it."""
        try:
            return self._sock.send(data, self.MSG_MORE if more else 0)
        except BlockingIOError:
            return 0

    def body(self, fd: int, offset: int, count: int) -> int:
        """One ``os.sendfile``: bytes sent, 0 at the end of the file; BlockingIOError
        when the socket takes nothing now."""
        return os.sendfile(self.fd, fd, offset, count)

    def release(self) -> None:
        """Forget the descriptor without closing it: the transport owns it."""
        with contextlib.suppress(OSError):
            self._sock.detach()


# -- listening sockets -----------------------------------------------------------


def reuse_address(sock: socket.socket) -> None:
    """Let a restarted server bind its port again while old connections sit in TIME_WAIT,
    never while another socket listens on it.

    POSIX needs SO_REUSEADDR for that. On Windows SO_REUSEADDR would let another process
    bind the very port this one listens on; there TIME_WAIT never blocks a bind, and
    SO_EXCLUSIVEADDRUSE keeps the port ours. Real Windows only: a forced POSIX run keeps
    SO_REUSEADDR, which gives it the behaviour Windows has by default."""
    if WINDOWS:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)  # type: ignore[attr-defined]
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


# -- processes -------------------------------------------------------------------

# Win32 process creation flags (documented values; subprocess names them only on Windows).
DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200


def detach_kwargs(*, windows: bool = WINDOWS) -> dict[str, Any]:
    """``subprocess.Popen`` arguments for a child that outlives its terminal and Ctrl-C.

    Creation flags exist only on Windows: a forced POSIX run keeps ``start_new_session``."""
    if windows:
        return {"creationflags": DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it does not).

    Never ``os.kill(pid, 0)`` on Windows: there any signal number terminates the process."""
    if enabled():
        import psutil

        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def terminate(pid: int) -> None:
    """Ask ``pid`` to exit: SIGTERM on POSIX (it may clean up). Windows has no such
    request for a detached process, so the portable branch ends it at once, as ``kill``."""
    if enabled():
        kill(pid)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)


def kill(pid: int) -> None:
    """End ``pid`` unconditionally (SIGKILL; TerminateProcess on Windows)."""
    if enabled():
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            psutil.Process(pid).kill()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def stop_signals() -> tuple[signal.Signals, ...]:
    """Signals a daemon can watch to stop cleanly. None in the portable branch: asyncio on
    Windows cannot watch signals, so a stop comes through the control API, and Ctrl-C in a
    foreground run arrives as KeyboardInterrupt."""
    return () if enabled() else (signal.SIGTERM, signal.SIGINT)


# -- links into a cache ----------------------------------------------------------

_symlinks: dict[str, bool] = {}
_symlinks_guard = threading.Lock()


def symlinks_supported(directory: Path) -> bool:
    """Whether a relative symlink can be made in ``directory`` (probed once per directory,
    as huggingface_hub does). Windows allows them only in Developer Mode or as
    administrator; the forced portable branch answers False, Windows' common case."""
    if FORCED and not WINDOWS:
        return False
    key = str(Path(directory).expanduser().resolve())
    with _symlinks_guard:
        if key not in _symlinks:
            os.makedirs(key, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=key) as tmp:
                src = Path(tmp) / "src"
                src.touch()
                try:
                    os.symlink("src", Path(tmp) / "dst")
                    _symlinks[key] = True
                except OSError:
                    _symlinks[key] = False
        return _symlinks[key]


def link_or_copy(src: Path, dst: Path, *, symlink: bool = True) -> str:
    """Make ``dst`` (absent) show the bytes of ``src``: a relative symlink where allowed
    (and ``symlink``), else a hard link (no second copy on disk), else a copy.

    Returns "symlink", "hardlink" or "copy"."""
    if symlink and symlinks_supported(dst.parent):
        try:
            target = os.path.relpath(src, dst.parent)
        except ValueError:  # Windows: another drive
            target = os.path.abspath(src)
        try:
            os.symlink(target, dst)
            return "symlink"
        except PermissionError:  # Windows: a volume that allows none; copy as HF does
            pass
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:  # FAT/exFAT, another filesystem, or no link support at all
        shutil.copyfile(src, dst)
        return "copy"


def sync_file(path: Path) -> None:
    """Flush ``path``'s data to its disk. Windows' flush (``_commit``) needs a handle that
    may write; POSIX syncs through any. Best effort: the file may be gone already."""
    flags = (os.O_RDWR if WINDOWS else os.O_RDONLY) | O_BINARY
    with contextlib.suppress(OSError):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def bytes_on_disk(path: Path) -> int:
    """Bytes a (sparse) file takes on disk, 0 when it is not there. POSIX counts its
    blocks; Windows says no such thing, and a file it extends takes its whole length."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if enabled() or blocks is None else blocks * 512


def file_key(path: Path) -> tuple[int, int] | None:
    """What two hard links of one file share (device and inode on POSIX, volume serial and
    file index on Windows); None when unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_ino else None


# -- paths from other machines ---------------------------------------------------

_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"0123456789", "\u00b9", "\u00b2", "\u00b3"]]
)
_WINDOWS_BAD = frozenset('<>:"|?*\\') | frozenset(chr(c) for c in range(32))
MAX_NAME = 255


def _anchored_on_windows(part: str) -> bool:
    # ntpath takes any "x:" as a drive where pathlib wants a letter: both must say no.
    win = PureWindowsPath(part)
    return bool(ntpath.splitdrive(part)[0] or win.drive or win.root)


def windows_rules() -> bool:
    """Whether file names must follow Windows' rules here."""
    return enabled()


def relpath_problem(path: str, *, windows: bool | None = None) -> str | None:
    """Why ``path``, a "/"-separated relative path from another machine, is unsafe to join
    below a folder here; None when it is safe.

    Everywhere: no empty, "." or ".." part (with "/" or "\\" as separator), nothing
    absolute, no drive or UNC share under either POSIX or Windows rules (a file stored
    here may later be served to a Windows peer). Under Windows rules, also no character
    Windows refuses or reads as a separator or stream (``\\ : * ? " < > |``, controls),
    no reserved device name (CON, NUL, COM1, ``LPT1.txt``...), no part ending in a dot or
    a space (Windows drops them: two names would be one file), none over 255 chars."""
    windows = windows_rules() if windows is None else windows
    if not path:
        return "empty path"
    if "\x00" in path:
        return "NUL byte in path"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "empty, '.' or '..' part"
    if ".." in path.replace("\\", "/").split("/"):
        return "'..' part"
    if PurePosixPath(path).is_absolute() or any(_anchored_on_windows(p) for p in parts):
        return "absolute path, drive or share"
    if not windows:
        return None
    for part in parts:
        bad = next((c for c in part if c in _WINDOWS_BAD), None)
        if bad is not None:
            return f"character {bad!r} not allowed on Windows"
        if part[-1] in " .":
            return "a name ending in a dot or space (Windows drops it)"
        if part.partition(".")[0].rstrip(" ").upper() in _RESERVED:
            return f"{part!r} is a reserved device name on Windows"
        if len(part) > MAX_NAME:
            return f"a name longer than {MAX_NAME} characters"
    return None


def extended_path(
    path: str | os.PathLike[str],
    *,
    windows: bool = WINDOWS,
    abspath: Callable[[str], str] = os.path.abspath,
    limit: int = 255,
) -> str:
    """``path`` in Windows' extended-length form (``\\\\?\\C:\\...``, ``\\\\?\\UNC\\...``) when it
    is longer than ``limit``, so a deep repo path still opens; unchanged elsewhere. Real
    Windows only: no POSIX call accepts that form, so forcing cannot exercise it."""
    text = os.fspath(path)
    if not windows:
        return text
    full = abspath(text)
    if len(full) <= limit or full.startswith("\\\\?\\"):
        return text
    if full.startswith("\\\\"):
        return "\\\\?\\UNC\\" + full[2:]
    return "\\\\?\\" + full
