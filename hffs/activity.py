"""What the daemon is doing, for ``/metrics`` and the status page.

The download manager, the DHT lookups and the HTTP front call ``Activity``'s methods
(an observer passed in: each call is cheap, synchronous and never raises into the
caller); a one-second ``sample`` turns byte totals into rates and a throughput history.
Everything is bounded: files in flight are the manager's own, finished ones and errors
are kept in short rings, peers are pruned when idle.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Chunk states on a file's map.
MISSING, FROM_PEER, FROM_UPSTREAM, HELD = 0, 1, 2, 3
KINDS = ("peer", "upstream")
HISTORY = 120  # seconds of throughput kept for the plot
RECENT_FILES = 20
RECENT_ERRORS = 50
PEER_IDLE_FORGET = 600.0  # a download source not heard from this long leaves the list
RATE_WINDOW = 3  # samples a shown rate is averaged over
# DHT lookup latency buckets (seconds), as Prometheus histograms take them
LOOKUP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, float("inf"))


def kind(upstream: bool) -> str:
    return "upstream" if upstream else "peer"


def host_of(source: str) -> str:
    """The host of a peer source id (``127.0.0.2:9009``, ``[::1]:9009``): uploads are
    counted per host, so a peer's two directions meet under it."""
    host = source.rpartition(":")[0] if source.count(":") == 1 or "]" in source else source
    return host.strip("[]") or source


@dataclass
class FileActivity:
    """One file being downloaded: a chunk map by source, and bytes by kind."""

    file_id: str
    label: str
    size: int
    chunks: bytearray
    started: float
    finished: float | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "label": self.label,
            "size": self.size,
            "chunks": self.chunks.hex(),  # one hex digit pair per chunk: MISSING..HELD
            "done": sum(1 for c in self.chunks if c != MISSING),
            "n_chunks": len(self.chunks),
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }


class FileWatch:
    """``swarm.download.ChunkObserver`` for one file: fills its chunk map."""

    def __init__(self, activity: Activity, f: FileActivity) -> None:
        self._activity = activity
        self._file = f

    def chunk_verified(self, chunk: int, source: str, upstream: bool) -> None:
        if 0 <= chunk < len(self._file.chunks):
            self._file.chunks[chunk] = FROM_UPSTREAM if upstream else FROM_PEER
        self._activity.chunks_verified[kind(upstream)] += 1

    def chunk_failed(self, chunk: int, source: str, upstream: bool) -> None:
        self._activity.chunks_failed[kind(upstream)] += 1
        self._activity.error(f"chunk {chunk} of {self._file.label} from {source} failed its check")

    def manifest_vouched(self, hosts: int) -> None:
        pass  # not shown


@dataclass
class PeerActivity:
    """A peer we traded bytes with: totals, and rates from the last samples."""

    down: int = 0  # bytes it sent us
    up: int = 0  # bytes we sent it
    down_rate: float = 0.0
    up_rate: float = 0.0
    last_active: float = 0.0


class Activity:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.files: dict[str, FileActivity] = {}
        self.recent: deque[FileActivity] = deque(maxlen=RECENT_FILES)
        self.errors: deque[tuple[float, str]] = deque(maxlen=RECENT_ERRORS)
        self.bytes_down: Counter[str] = Counter()  # by kind, downloads this daemon ran
        self.chunks_verified: Counter[str] = Counter()
        self.chunks_failed: Counter[str] = Counter()
        self.http_requests: Counter[tuple[str, int]] = Counter()  # (route kind, status)
        self.http_bytes: Counter[str] = Counter()  # response body bytes by route kind
        self.lookup_counts = [0] * len(LOOKUP_BUCKETS)  # not cumulative: one bucket each
        self.lookup_sum = 0.0
        self.peers: dict[str, PeerActivity] = {}  # host (or host:port for sources) -> activity
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY)
        self._peer_bytes: Counter[str] = Counter()  # bytes from each peer host
        self._last_totals: dict[str, int] = {}
        self._last_up: dict[str, int] = {}
        self._last_down: dict[str, int] = {}
        self._rates: dict[str, deque[float]] = {}
        self._last_t: float | None = None

    # -- the download manager's calls -------------------------------------------

    def file_started(self, file_id: str, label: str, size: int, have: list[bool]) -> FileWatch:
        f = FileActivity(
            file_id, label, size, bytearray(HELD if h else MISSING for h in have), self.clock()
        )
        self.files[file_id] = f
        return FileWatch(self, f)

    def file_finished(self, file_id: str, error: str | None = None) -> None:
        f = self.files.pop(file_id, None)
        if f is None:
            return
        f.finished, f.error = self.clock(), error
        self.recent.append(f)
        if error:
            self.error(f"{f.label}: {error}")

    def bytes_in(self, source: str, upstream: bool, n: int) -> None:
        self.bytes_down[kind(upstream)] += n
        if not upstream:
            self._peer_bytes[host_of(source)] += n

    def error(self, message: str) -> None:
        self.errors.append((self.clock(), message))

    # -- the daemon's other calls ---------------------------------------------------

    def dht_lookup(self, seconds: float) -> None:
        for i, bound in enumerate(LOOKUP_BUCKETS):
            if seconds <= bound:
                self.lookup_counts[i] += 1
                break
        self.lookup_sum += seconds

    def http_response(self, route: str, status: int, body_bytes: int) -> None:
        self.http_requests[(route, status)] += 1
        self.http_bytes[route] += body_bytes

    # -- sampling ---------------------------------------------------------------------

    def sample(self, up_by_host: Mapping[str, int]) -> None:
        """Once a second: rates per kind and per peer since the last sample."""
        now = self.clock()
        dt = max(now - self._last_t, 1e-3) if self._last_t is not None else 1.0
        self._last_t = now
        totals = {**{k: self.bytes_down[k] for k in KINDS}, "up": sum(up_by_host.values())}
        point: dict[str, float] = {"t": now}  # bytes/s of each kind since the last sample
        for k, v in totals.items():
            point[k] = max(0, v - self._last_totals.get(k, v)) / dt
        self._last_totals = totals
        self.history.append(point)
        moved: dict[str, tuple[float, float]] = {}
        for host in {*self._peer_bytes, *up_by_host}:
            down, up = self._peer_bytes.get(host, 0), up_by_host.get(host, 0)
            # a host first seen counts from zero: its first bytes came since the last sample
            moved[host] = (
                (down - self._last_down.get(host, 0)) / dt,
                (up - self._last_up.get(host, 0)) / dt,
            )
        self._last_down, self._last_up = dict(self._peer_bytes), dict(up_by_host)
        for peer_id, (down_rate, up_rate) in moved.items():
            if not (down_rate or up_rate) and peer_id not in self.peers:
                continue  # idle and forgotten: shown again when it trades again
            p = self.peers.setdefault(peer_id, PeerActivity())
            p.down = self._peer_bytes.get(peer_id, 0)
            p.up = up_by_host.get(peer_id, 0)
            rates = self._rates.setdefault(peer_id + "\0down", deque(maxlen=RATE_WINDOW))
            rates.append(down_rate)
            p.down_rate = sum(rates) / len(rates)
            rates = self._rates.setdefault(peer_id + "\0up", deque(maxlen=RATE_WINDOW))
            rates.append(up_rate)
            p.up_rate = sum(rates) / len(rates)
            if down_rate or up_rate:
                p.last_active = now
        for peer_id in [p for p, a in self.peers.items() if now - a.last_active > PEER_IDLE_FORGET]:
            del self.peers[peer_id]
            self._rates.pop(peer_id + "\0down", None)
            self._rates.pop(peer_id + "\0up", None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "files": [f.as_json() for f in self.files.values()],
            "recent": [f.as_json() for f in reversed(self.recent)],
            "errors": [{"t": t, "message": m} for t, m in reversed(self.errors)],
            "history": list(self.history),
            "traffic": [
                {"peer": k, **vars(v)} for k, v in sorted(self.peers.items(), key=lambda kv: kv[0])
            ],
            "chunks_verified": dict(self.chunks_verified),
            "chunks_failed": dict(self.chunks_failed),
        }
