"""Shared helpers for the benchmarks in bench/ (not tests; never run by CI).

Real hffs daemons as subprocesses on 127.0.0.x, each with its own HFFS_HOME and
HF_HUB_CACHE (the approach of tests/test_daemon.py's ``Node``), files put straight
into a daemon's HF cache, the ``hffs`` CLI timed, peak RSS read from /proc, nginx
on loopback with a temporary config, and the LocalHub from tests/localhub.py.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
OUT_DIR = BENCH_DIR / "out"
PLOTS_DIR = BENCH_DIR / "plots"
# Data and scratch homes; HFFS_BENCH_TMP=/dev/shm measures the transfer without the disk
# (on a VM whose disk writes at ~60-90 MB/s, every tool is bound by the disk otherwise).
SCRATCH_ROOT = Path(os.environ.get("HFFS_BENCH_TMP") or OUT_DIR)
if str(REPO_ROOT) not in sys.path:  # tests/ is not installed; localhub lives there
    sys.path.insert(0, str(REPO_ROOT))

from hffs.cache import HubCache  # noqa: E402
from hffs.config import Config, Peer  # noqa: E402
from hffs.visibility import VisibilityStore  # noqa: E402
from tests.localhub import LocalHub as LocalHub  # noqa: E402  (re-exported)
from tests.localhub import make_random_file  # noqa: E402
from tests.nodes import Node as _TestNode  # noqa: E402
from tests.nodes import free_port, wait_for  # noqa: E402

MIB = 1 << 20
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port
COMMIT = "be7c4" + "0" * 35  # the commit seeds claim, so peers can answer for it


# -- small things -------------------------------------------------------------------


def arguments(
    doc: str | None, *, size: str | None = None, what: str = "file size", settle: bool = False
) -> argparse.ArgumentParser:
    """The argument parser every script starts with: its docstring's first line as the
    description, ``--size`` (binary units, ``size`` by default) when it takes one, and
    ``--settle`` when it compares transfers that each write a fresh copy (see ``settle``)."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    if size is not None:
        ap.add_argument("--size", type=parse_size, default=size, help=f"{what} ({size})")
    if settle:
        ap.add_argument(
            "--settle",
            type=float,
            default=SETTLE,
            help=f"seconds of rest before each timed transfer ({SETTLE:g}; 0: none)",
        )
    return ap


# A VM whose balloon reports free memory to its host (virtio free page reporting) may
# hand the pages of a deleted copy back; touching them again faults on the host, which
# made writing 4 GiB into tmpfs cost 1.3-2.2 CPU s per GiB instead of 0.3 (bench/README.md,
# round 10). Back to back, a transfer run right after a deletion reuses some of those
# pages, and the faster one reuses more; a rest before each lets the host take them back
# first. Off by default: on this VM it steadied `many_files.py` but not `single_peer.py`.
SETTLE = 0.0


def settle(seconds: float) -> None:
    """Rest before a timed transfer (``--settle``), so every side starts alike."""
    time.sleep(seconds)


def parse_size(text: str) -> int:
    """'256M', '1G', '512MiB' or a byte count."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def mbps(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes), what curl and aria2 also print."""
    return nbytes / seconds / 1e6 if seconds > 0 else float("nan")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def cached_random_file(size: int, seed: int = 0) -> Path:
    """A deterministic random file under bench/out/data, made once per (size, seed)."""
    path = SCRATCH_ROOT / "data" / f"random-{size}-{seed}.bin"
    if not path.is_file() or path.stat().st_size != size:
        make_random_file(path.with_suffix(".tmp"), size, seed)
        os.replace(path.with_suffix(".tmp"), path)
    return path


# -- peak RSS ------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return out


def peak_rss(pid: int) -> int:
    """Peak RSS in bytes of a live process tree: the sum of each member's VmHWM (an upper
    bound of the tree's true peak; exact for one process)."""
    return 1024 * sum(_status_kib(p, "VmHWM") for p in descendants(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a set of process trees while a run goes on: per root, the largest VmHWM
    seen (it only grows while the process lives, so the last sample before exit counts)."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, pid: int) -> None:
        self.peaks.setdefault(pid, 0)

    def _sample(self) -> None:
        for pid in list(self.peaks):
            self.peaks[pid] = max(self.peaks[pid], peak_rss(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


# -- daemons and the CLI ---------------------------------------------------------------


@dataclass
class CliRun:
    argv: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    max_rss: int  # bytes: peak RSS of the process tree, sampled from /proc
    cpu_seconds: float  # user + system, of the process and its waited-for children

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 12) -> str:
        return "\n".join((self.stdout + self.stderr).strip().splitlines()[-lines:])

    def reported_seconds(self) -> float | None:
        """The time `hffs model add` reports in its closing line (after start-up)."""
        m = re.search(r"in ([0-9.]+) s", self.stdout + self.stderr)
        return float(m[1]) if m else None


def run_timed(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600.0
) -> CliRun:
    """Run a command to its end: wall time, CPU time (wait4) and peak RSS.

    Peak RSS is sampled from /proc (VmHWM of the process tree, which only grows) rather
    than taken from wait4's ru_maxrss, which also counts the forked image of this Python
    process before exec."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        deadline = started + timeout
        status, rusage, rss = 0, None, 0
        while rusage is None:
            rss = max(rss, peak_rss(proc.pid))
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                rusage = ru
            elif time.perf_counter() > deadline:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
            else:
                time.sleep(0.02)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        return CliRun(
            list(argv),
            proc.returncode,
            seconds,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            rss,
            rusage.ru_utime + rusage.ru_stime,
        )


class Node(_TestNode):
    """One machine: tests/nodes.py's Node (own home, HF cache, loopback address, the CLI run
    against them) plus what benchmarks need: upload limits, saved peers, upstream endpoints
    (unreachable by default, so nothing leaves the machine), timed CLI runs, files on disk."""

    def __init__(
        self,
        root: Path,
        host: str,
        *,
        endpoints: str = UNREACHABLE,
        max_upload_rate: int = 0,
        peers: Sequence[Node] = (),
    ) -> None:
        super().__init__(root, host)
        self.root = root
        self.max_upload_rate = max_upload_rate
        self.env.pop("HF_HUB_OFFLINE", None)  # metadata may come from a LocalHub
        self.env.update(
            HFFS_ENDPOINTS=endpoints, HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1", COLUMNS="120"
        )
        self.pid: int | None = None
        if peers:
            Config(self.home, port=self.port, peers=[Peer(p.host, p.port) for p in peers]).save()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hffs.cli", *args]

    def cli_timed(self, *args: str, timeout: float = 900.0) -> CliRun:
        return run_timed(self.cli_argv(*args), self.env, timeout)

    def cli_popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as f:
            return subprocess.Popen(
                self.cli_argv(*args),
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def up(self, bootstrap: Sequence[Node] = ()) -> Node:
        """Start the daemon (with its upload limit); raise with its message if it fails."""
        extra = [a for b in bootstrap for a in ("--bootstrap", b.addr)]
        if self.max_upload_rate:
            extra += ["--max-upload-rate", str(self.max_upload_rate)]
        r = self.start(*extra)
        if r.returncode != 0:
            raise RuntimeError(f"daemon on {self.addr} did not start: {r.stderr.strip()}")
        self.pid = self.info()["pid"]
        return self

    def status(self) -> dict[str, Any]:
        return self.client().status()

    def peak_rss(self) -> int:
        return peak_rss(self.pid) if self.pid else 0

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid) if self.pid else 0.0

    def add_file(self, repo: str, path: str, src: Path, commit: str = COMMIT) -> str:
        """Put a file into the HF cache as huggingface_hub lays it out (blob named by its
        sha256, snapshot link, refs/main); the blob is a hard link to ``src`` when it can be."""
        blob_id = sha256_file(src)
        cache = HubCache(self.hub)
        blob = cache.blob_path("model", repo, blob_id)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            try:
                os.link(src, blob)
            except OSError:
                shutil.copyfile(src, blob)
        cache.link("model", repo, commit, path, blob_id)
        cache.write_ref("model", repo, "main", commit)
        VisibilityStore(self.home).record("model", repo, "public", [blob_id])  # shared
        return blob_id

    def blob(self, repo: str, blob_id: str) -> Path:
        return HubCache(self.hub).blob_path("model", repo, blob_id)


@contextlib.contextmanager
def nodes(root: Path) -> Iterator[Callable[..., Node]]:
    """Make Nodes under root; every daemon started is stopped on the way out."""
    made: list[Node] = []

    def make(host: str, **kwargs: Any) -> Node:
        node = Node(root / host, host, **kwargs)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.kill()


@dataclass
class SwarmRun:
    """Downloaders started at once; when each finished and how."""

    seconds: float  # until the last one finished
    finish: list[float]  # per downloader, from the common start
    returncodes: list[int]
    logs: list[str]
    peak_rss: list[int]  # per downloader CLI, bytes

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.returncodes)

    def print_failures(self) -> None:
        """The end of each failed downloader's log."""
        for log, rc in zip(self.logs, self.returncodes, strict=True):
            if rc:
                print("--- failed downloader:\n" + log[-1500:])


def swarm_download(
    downloaders: Sequence[Node], args: Sequence[str], log_dir: Path, timeout: float
) -> SwarmRun:
    """Run `hffs <args>` on every downloader at once; wait (bounded) for all to end."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"{d.host}.log" for d in downloaders]
    started = time.perf_counter()
    procs = [d.cli_popen(*args, log=log) for d, log in zip(downloaders, logs, strict=True)]
    finish: list[float | None] = [None] * len(procs)
    rss = [0] * len(procs)
    while any(f is None for f in finish):
        now = time.perf_counter() - started
        for i, p in enumerate(procs):
            if finish[i] is None:
                rss[i] = max(rss[i], peak_rss(p.pid))
                if p.poll() is not None:
                    finish[i] = now
                elif now > timeout:
                    p.kill()
                    p.wait(10)
                    finish[i] = now
        time.sleep(0.05)
    done = [f or 0.0 for f in finish]
    return SwarmRun(
        max(done),
        done,
        [p.returncode for p in procs],
        [log.read_text(errors="replace") for log in logs],
        rss,
    )


class _Quiet:
    """A job listener that only keeps the job's failure, if any."""

    def planned(self, plan: Any) -> None:
        pass

    def on_bytes(self, path: str, source: str, upstream: bool, n: int) -> None:
        pass

    def file_done(self, path: str, how: str, by_source: Any) -> None:
        pass


def swarm_jobs(downloaders: Sequence[Node], repo: str, revision: str, timeout: float) -> SwarmRun:
    """Submit one `model add` job to every downloader's daemon at once over its control
    API (what the CLI does after start-up) and wait, bounded, for every job to end: the
    swarm's own time, without starting N Python CLIs on the same cores."""
    from hffs.daemonctl.client import DaemonClient
    from hffs.jobs import JobSpec

    started = time.perf_counter()
    finish: list[float] = [0.0] * len(downloaders)
    codes = [1] * len(downloaders)
    logs = [""] * len(downloaders)

    def one(i: int, node: Node) -> None:
        spec = JobSpec(
            repo, revision, endpoints=(node.env["HFFS_ENDPOINTS"],), cache_dir=str(node.hub)
        )
        try:
            result = DaemonClient.from_home(node.home, timeout=timeout).run_job(spec, _Quiet())
            codes[i] = 0
            logs[i] = f"job reported {result.seconds:.2f} s"
        except Exception as exc:  # reported, not raised: the others still finish
            logs[i] = f"{type(exc).__name__}: {exc}"
        finish[i] = time.perf_counter() - started

    threads = [
        threading.Thread(target=one, args=(i, d), daemon=True) for i, d in enumerate(downloaders)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return SwarmRun(max(finish), finish, codes, logs, [0] * len(downloaders))


def warm_manifest(node: Node, file_id: str, timeout: float = 120.0) -> None:
    """Have a seed digest its file before the clock starts (what a seed serving a file
    does once and keeps), as libtorrent's piece hashes are made before its timer."""
    import httpx

    url = f"http://{node.addr}/v1/blobs/{file_id}/manifest"
    deadline = time.monotonic() + timeout
    while True:  # a cold seed says 503 + Retry-After while it digests in the background
        r = httpx.get(url, timeout=timeout, trust_env=False)
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if r.status_code != 200:
        raise RuntimeError(f"{node.addr} has no manifest of {file_id[:12]}: HTTP {r.status_code}")
    # Answered after the chunks' digests; warm means the whole-file check ended too (the
    # manifest is stored), so no digest of the seed runs on the clock.
    while not any(Path(node.home).rglob(f"manifests/{file_id}-*.json")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.addr} never stored the manifest of {file_id[:12]}")
        time.sleep(0.05)


def curl_to(url: str, dest: Path) -> CliRun:
    """`curl -o dest url` (the reference transfer), timed; dest is replaced."""
    dest.unlink(missing_ok=True)
    return run_timed(["curl", "-fsS", "--noproxy", "*", "-o", str(dest), url], timeout=600)


def one_seed(
    make: Callable[..., Node], root: Path, repo: str, name: str, src: Path, *, warm: bool = True
) -> tuple[Node, Node, str, Path]:
    """A seed daemon holding ``src`` as ``repo``/``name`` and a downloader daemon that knows
    it, both up; the file also hard-linked into ``root``/www for nginx. Returns (seed,
    downloader, file id, www); the seed's manifest is digested first when ``warm``."""
    www = root / "www"
    www.mkdir()
    os.link(src, www / name)
    seed = make("127.0.0.2")
    file_id = seed.add_file(repo, name, src)
    seed.up()
    dl = make("127.0.0.10", peers=[seed]).up(bootstrap=[seed])
    wait_providers(dl, file_id, 1)
    if warm:
        warm_manifest(seed, file_id)
    return seed, dl, file_id, www


def wait_providers(node: Node, file_id: str, want: int, timeout: float = 60.0) -> None:
    """Until ``node``'s daemon finds at least ``want`` holders of file_id in the DHT."""

    def found() -> bool:
        try:
            return len(node.client().find_providers(file_id)) >= want
        except Exception:
            return False

    wait_for(found, timeout, f"{node.addr} to find {want} holder(s) of {file_id[:12]}")


# -- nginx ---------------------------------------------------------------------------

_NGINX_CONF = """\
{user}daemon off;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""


class Nginx:
    """nginx serving ``root`` on host:port (loopback), from a temporary config."""

    def __init__(self, root: Path, run_dir: Path, host: str = "127.0.0.1") -> None:
        self.root, self.run_dir, self.host = root, run_dir, host
        self.port = free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Nginx:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(
                # as root, nginx's workers would drop to nobody and be refused our 0700 dirs
                user="user root;\n" if os.geteuid() == 0 else "",
                run=self.run_dir,
                host=self.host,
                port=self.port,
                root=self.root,
            )
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(self.run_dir), "-e", str(self.run_dir / "err.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.run_dir / 'error.log').read_text()}")
            with socket.socket() as s:
                return s.connect_ex((self.host, self.port)) == 0

        wait_for(up, 10, "nginx to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- results and plots -------------------------------------------------------------------


def write_results(name: str, results: dict[str, Any]) -> Path:
    """bench/out/<name>.json: what the README table is made from."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path


def save_plot(fig: Any, name: str, publish: bool) -> Path:
    """bench/out/<name>.png; with ``publish`` also bench/plots/<name>.png (committed)."""
    import matplotlib.pyplot as plt

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if publish:
        PLOTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, PLOTS_DIR / path.name)
    print(f"plot: {path}" + (f" (and {PLOTS_DIR / path.name})" if publish else ""))
    return path


def subplots(title: str, n: int = 1, width: float = 5.0) -> tuple[Any, list[Any]]:
    """A figure of ``n`` side-by-side axes under one title (Agg backend, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.0), squeeze=False)
    fig.suptitle(title, fontsize=11)
    return fig, list(axes[0])


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), loopback only"


def scratch(name: str) -> tempfile.TemporaryDirectory[str]:
    """A scratch directory for one run, on the same disk as bench/out (hard links work)."""
    (SCRATCH_ROOT / "tmp").mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f"{name}-", dir=SCRATCH_ROOT / "tmp")
