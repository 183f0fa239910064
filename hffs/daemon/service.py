"""The daemon process: peer server (TCP) and DHT (UDP) on one port, the control
API on loopback, and the loops that keep the swarm told what we hold.

Run as ``python -m hffs.daemon.service --home H [--host A] [--port P] [--bootstrap H:P]...``
(``process.py`` does it). Everything runs in one anyio task group on the asyncio
backend (kademlia is asyncio-only); SIGTERM/SIGINT or the control API's stop end it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import uvicorn

from hffs.cache import HubCache, is_commit
from hffs.config import DEFAULT_PORT, Config, ConfigError, Peer, hub_cache_dir
from hffs.daemon.activity import Activity
from hffs.daemon.app import (
    CacheIndex,
    Inventory,
    RepoRev,
    any_revision_key,
    create_app,
    drop_rotten_blob,
    file_key,
    repo_key,
    scan_inventory,
)
from hffs.daemon.control import Query, create_control_app
from hffs.daemon.hub_proxy import HubEndpoint
from hffs.daemon.lan import run_lan
from hffs.daemon.metrics import MetricSources, make_registry
from hffs.daemon.peers import PeerClient
from hffs.daemon.runfiles import (
    DaemonInfo,
    InstanceLock,
    read_pid,
    remove_run_files,
    write_info,
    write_pid,
)
from hffs.daemon.status_page import LocalSurface
from hffs.visibility import VisibilityStore
from swarm import hostport, portable
from swarm.dht import DEFAULT_TTL, DHTNode
from swarm.peer_server import PeerServer, UploadLimits, UploadStats
from swarm.transport_server import FrontLimits, FrontShared, install_front
from swarm.wire import auth_headers

log = logging.getLogger("hffs.daemon")

TICK = 1.0  # how often the announce loop looks at the routing table
ANNOUNCE_PERIOD = DEFAULT_TTL / 3  # a record survives two lost rounds
ANNOUNCE_MIN_GAP = 2.0  # between full announces triggered by new contacts
SMALL_SWARM = 20  # below this many contacts, every newcomer triggers a re-announce
PROBE_PERIOD = 30.0  # saved peers are probed this often
SAMPLE_PERIOD = 1.0  # rates and the throughput history of the status page
ALIVE_WINDOW = 60.0  # a peer that traded bytes this recently counts as alive
BOOTSTRAP_RETRY = 5.0  # while the routing table is empty
RESCAN_PERIOD = 300.0  # catches cache changes nobody told us about
LOOKUP_TIMEOUT = 15.0  # one DHT lookup
BOOTSTRAP_TIMEOUT = 15.0
QUERY_PARALLEL = 16  # peers asked at once over HTTP

T = TypeVar("T")


class DaemonStartError(Exception):
    """The daemon cannot start; the message is one line for the user."""


@dataclass(frozen=True)
class DaemonSettings:
    home: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    bootstrap: tuple[tuple[str, int], ...] = ()
    mdns: bool = True  # LAN discovery (hffs.daemon.lan)


@dataclass
class PeerState:
    active: bool | None = None  # None: not probed yet
    last_seen: float | None = None  # unix time of the last good probe


# -- plain decisions ---------------------------------------------------------------


def announce_due(now: float, last_at: float, last_size: int, size: int) -> bool:
    """Whether to re-announce everything now.

    Periodically, before records expire; and, in a small swarm, whenever the
    routing table grew since the last round: the new node may be the one closest
    to our keys (and a lone node's first announce reached nobody)."""
    if size == 0:
        return False
    if now - last_at >= ANNOUNCE_PERIOD:
        return True
    return now - last_at >= ANNOUNCE_MIN_GAP and size > last_size and last_size < SMALL_SWARM


def parse_hostport(value: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address; ValueError if bad."""
    hp = hostport.parse_hostport(value, default_port)
    return hp.host, hp.port


def _is_unspecified(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


# -- sockets -----------------------------------------------------------------------


def bind_tcp(ip: str, port: int, what: str = "TCP") -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        portable.reuse_address(sock)  # TIME_WAIT only, never a port in use
        sock.bind((ip, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DaemonStartError(
                f"{what} port {port} on {ip} is already in use; choose another with --port"
            ) from None
        raise DaemonStartError(f"cannot listen on {ip}:{port} ({exc.strerror or exc})") from None
    return sock


async def resolve(host: str, port: int) -> str | None:
    """An IP literal for host (the DHT never resolves names itself)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        log.warning("cannot resolve %s: %s", host, exc)
        return None
    return str(infos[0][4][0]) if infos else None


def front_limits() -> FrontLimits:
    """The peer port's connection limits; tests shorten the timeouts through the
    environment (``HFFS_HEADER_TIMEOUT``, ``HFFS_STALL_TIMEOUT``)."""
    base = FrontLimits()
    try:
        return FrontLimits(
            header_timeout=float(os.environ.get("HFFS_HEADER_TIMEOUT", base.header_timeout)),
            idle_timeout=base.idle_timeout,
            stall_timeout=float(os.environ.get("HFFS_STALL_TIMEOUT", base.stall_timeout)),
            per_address=base.per_address,
        )
    except ValueError:
        return base


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon's task group owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn(app: Any) -> _Server:
    return _Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
    )


async def _gather(items: Iterable[T], fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """``fn`` over items, QUERY_PARALLEL at a time, results in order."""
    items = list(items)
    results: list[Any] = [None] * len(items)
    limiter = anyio.CapacityLimiter(QUERY_PARALLEL)

    async def one(i: int, item: T) -> None:
        async with limiter:
            results[i] = await fn(item)

    async with anyio.create_task_group() as tg:
        for i, item in enumerate(items):
            tg.start_soon(one, i, item)
    return results


# -- the daemon --------------------------------------------------------------------


class Daemon:
    """State and behaviour of a running daemon; the control API's ``DaemonOps``."""

    def __init__(
        self,
        settings: DaemonSettings,
        config: Config,
        node: DHTNode,
        bind_ip: str,
        port: int,
        control_port: int,
    ) -> None:
        self.settings = settings
        self.config = config
        self.node = node
        self.bind_ip = bind_ip
        self.port = port
        self.control_port = control_port
        # What may be shared: public content, or everything in a private swarm (hffs.trust).
        self.sharing = VisibilityStore(settings.home, private_swarm=bool(config.swarm_secret))
        self.index = CacheIndex(HubCache(hub_cache_dir()), self.sharing)
        self._learner: Any = None  # hffs.daemon.sharing.VisibilityLearner, once running
        self.uploads = UploadStats()
        self.activity = Activity()  # for /metrics and the status page
        self.bytes_from_peers = 0
        self.bytes_from_upstream = 0
        self.started_at = time.time()
        self.announced_at: float | None = None  # unix time of the last full announce
        self.saved_peers: list[Peer] = list(config.peers)
        self.peer_states: dict[Peer, PeerState] = {}
        self.bootstrap_ips: list[tuple[str, int]] = []
        # Announced through the control API since the last scan: kept re-announced
        # until a scan shows whether they are still held (value: when added).
        self._extra_files: dict[str, float] = {}
        self._extra_repos: dict[RepoRev, float] = {}
        self._pending: set[bytes] = set()
        self._wake_announce = anyio.Event()
        self._wake_peers = anyio.Event()
        self._stop = anyio.Event()
        self._peers_http: PeerClient | None = None

    # -- what we hold ----------------------------------------------------------

    async def scan(self) -> Inventory:
        started = time.monotonic()
        inventory = await anyio.to_thread.run_sync(
            scan_inventory, self.index.cache, self.config.partial_dir, self.sharing
        )
        self.index.inventory = inventory
        self._extra_files = {k: t for k, t in self._extra_files.items() if t >= started}
        self._extra_repos = {k: t for k, t in self._extra_repos.items() if t >= started}
        return inventory

    def held_keys(self) -> set[bytes]:
        keys = self.index.inventory.keys()
        keys.update(file_key(f) for f in self._extra_files)
        for repo_type, repo_id, commit in self._extra_repos:
            keys.add(repo_key(repo_type, repo_id, commit))
            keys.add(any_revision_key(repo_type, repo_id))
        return keys

    async def _provide(self, keys: Iterable[bytes]) -> int:
        keys = list(keys)
        if not keys or self.node.routing_size() == 0:
            return 0
        reached = await self.node.announce(keys, self.port)
        log.info("announced %d key(s), %d reached the DHT", len(keys), reached)
        return reached

    # -- loops -----------------------------------------------------------------

    async def _announce_loop(self) -> None:
        last_at, last_size = -math.inf, 0
        while True:
            with anyio.move_on_after(TICK):
                await self._wake_announce.wait()
            self._wake_announce = anyio.Event()
            pending, self._pending = self._pending, set()
            size, now = self.node.routing_size(), time.monotonic()
            if announce_due(now, last_at, last_size, size):
                last_at, last_size = now, size
                await self._provide(self.held_keys())
                self.announced_at = time.time()
                self.node.store.expire(time.monotonic())
                with anyio.move_on_after(BOOTSTRAP_TIMEOUT):
                    await self.node.refresh()
            elif pending:  # with nobody to tell, the next full round covers them
                await self._provide(pending)

    async def _rescan_loop(self) -> None:
        while True:
            await anyio.sleep(RESCAN_PERIOD)
            before = self.held_keys()
            await self.scan()
            new = self.held_keys() - before
            if new:
                self._queue(new)

    async def _peer_loop(self) -> None:
        await self._bootstrap(self.settings.bootstrap)
        last_probe = -math.inf
        while True:
            if time.monotonic() - last_probe >= PROBE_PERIOD or self._wake_peers.is_set():
                self._wake_peers = anyio.Event()
                last_probe = time.monotonic()
                came_up = await self._probe_saved_peers()
                if came_up:
                    await self._bootstrap([], came_up)
            if self.node.routing_size() == 0:
                await self._bootstrap(self.settings.bootstrap)
            with anyio.move_on_after(BOOTSTRAP_RETRY):
                await self._wake_peers.wait()

    async def _bootstrap(
        self, extra: Iterable[tuple[str, int]], peers: Iterable[Peer] | None = None
    ) -> None:
        """Join the DHT through the given nodes and the saved peers (or ``peers``)."""
        wanted = [
            *extra,
            *((p.host, p.port) for p in (self.saved_peers if peers is None else peers)),
        ]
        addrs: list[tuple[str, int]] = []
        for host, port in wanted:
            ip = await resolve(host, port)
            if ip is not None and not self.is_self(ip, port) and (ip, port) not in addrs:
                addrs.append((ip, port))
        if not addrs:
            return
        with anyio.move_on_after(BOOTSTRAP_TIMEOUT):
            size = await self.node.bootstrap(addrs)
            log.info("bootstrapped through %d node(s): %d contact(s)", len(addrs), size)

    async def _probe_saved_peers(self) -> list[Peer]:
        """Re-read the saved peers and probe each; return those that just came up."""
        with contextlib.suppress(ConfigError):
            loaded = await anyio.to_thread.run_sync(Config.load, self.settings.home)
            self.saved_peers = list(loaded.peers)
        http = self._http()
        peers = list(self.saved_peers)
        alive = await _gather(peers, lambda p: http.ping(p.host, p.port))
        came_up = []
        for peer, ok in zip(peers, alive, strict=True):
            state = self.peer_states.setdefault(peer, PeerState())
            if ok and not state.active:
                came_up.append(peer)
            state.active = ok
            if ok:
                state.last_seen = time.time()
        self.peer_states = {p: s for p, s in self.peer_states.items() if p in peers}
        return came_up

    async def _watch_signals(self) -> None:
        stop_on = portable.stop_signals()  # none on Windows: the control API stops it
        if not stop_on or threading.current_thread() is not threading.main_thread():
            return
        with anyio.open_signal_receiver(*stop_on) as signals:
            async for signum in signals:
                log.info("got %s: stopping", signal.Signals(signum).name)
                self.request_stop()
                return

    def _http(self) -> PeerClient:
        assert self._peers_http is not None, "used outside run()"
        return self._peers_http

    def is_self(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if host == self.bind_ip:
            return True
        try:
            return _is_unspecified(self.bind_ip) and ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _queue(self, keys: Iterable[bytes]) -> None:
        self._pending.update(keys)
        self._wake_announce.set()

    # -- DaemonOps (the control API) ---------------------------------------------

    def status(self) -> dict[str, Any]:
        inv = self.index.inventory
        return {
            "pid": os.getpid(),
            "host": self.settings.host,
            "port": self.port,
            "control_port": self.control_port,
            "node_id": self.node.node_id,
            "routing_size": self.node.routing_size(),
            "bootstrap": [f"{h}:{p}" for h, p in self.settings.bootstrap],
            "peers": [
                {
                    "host": p.host,
                    "port": p.port,
                    "active": self.peer_states.get(p, PeerState()).active,
                    "last_seen": self.peer_states.get(p, PeerState()).last_seen,
                }
                for p in self.saved_peers
            ],
            "files_shared": len(inv.files),
            "partials_shared": len(inv.partials),
            "repos_shared": len(inv.repos),
            "uploads_active": self.uploads.active,
            "bytes_up": self.uploads.total,
            "bytes_up_by_host": dict(self.uploads.by_host),
            "bytes_down_peers": self.bytes_from_peers,
            "bytes_down_upstream": self.bytes_from_upstream,
            "started_at": self.started_at,
            "announced_at": self.announced_at,
        }

    def _lookup_key(self, query: Query) -> bytes:
        if query[0] == "file":
            return file_key(query[1])
        _, repo_type, repo_id, revision = query
        if is_commit(revision):
            return repo_key(repo_type, repo_id, revision)
        return any_revision_key(repo_type, repo_id)

    async def _candidates(self, key: bytes) -> tuple[list[tuple[str, int]], list[Peer]]:
        """Holders the DHT names (self excluded), and the saved peers not among them."""
        found: list[tuple[str, int]] = []
        if self.node.routing_size():
            with anyio.move_on_after(LOOKUP_TIMEOUT):
                started = time.monotonic()
                try:
                    providers = await self.node.find_providers(key)
                finally:
                    self.activity.dht_lookup(time.monotonic() - started)
                found = [(p.host, p.port) for p in providers if not self.is_self(p.host, p.port)]
        saved = [
            p
            for p in self.saved_peers
            if (p.host, p.port) not in found and not self.is_self(p.host, p.port)
        ]
        return found, saved

    async def _ask(self, query: Query, host: str, port: int) -> Any:
        http = self._http()
        if query[0] == "file":
            return await http.has_file(host, port, query[1])
        return await http.revision(host, port, *query[1:])

    async def find_providers(self, query: Query) -> list[dict[str, Any]]:
        found, saved = await self._candidates(self._lookup_key(query))
        answers = await _gather(saved, lambda p: self._ask(query, p.host, p.port))
        out = [{"host": h, "port": p, "source": "dht"} for h, p in found]
        out += [
            {"host": p.host, "port": p.port, "source": "peer"}
            for p, ok in zip(saved, answers, strict=True)
            if ok
        ]
        return out

    async def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]:
        query: Query = ("repo", repo_type, repo_id, revision)
        found, saved = await self._candidates(self._lookup_key(query))
        everyone = [*found, *((p.host, p.port) for p in saved)]
        listings = await _gather(everyone, lambda a: self._ask(query, *a))
        return [
            {"host": host, "port": port, **listing}
            for (host, port), listing in zip(everyone, listings, strict=True)
            if listing
        ]

    async def announce(self, file_ids: list[str], repos: list[RepoRev], wait: bool) -> int | None:
        now = time.monotonic()
        keys: set[bytes] = set()
        # Only what may be shared (hffs.trust): a private download is never announced.
        file_ids = [f for f in file_ids if self.index.shares(f)]
        repos = [r for r in repos if self.index.repo_shared(r[0], r[1])]
        for f in file_ids:
            self._extra_files[f] = now
            keys.add(file_key(f))
        for repo_type, repo_id, commit in repos:
            self._extra_repos[(repo_type, repo_id, commit)] = now
            keys.update(
                (repo_key(repo_type, repo_id, commit), any_revision_key(repo_type, repo_id))
            )
        if wait:
            return await self._provide(keys)
        self._queue(keys)
        return None

    async def rescan(self) -> dict[str, int]:
        inventory = await self.scan()
        if self._learner is not None:
            self._learner.wake()  # new repos of unknown visibility: ask upstream about them
        self._queue(self.held_keys())
        return {
            "files": len(inventory.files),
            "partials": len(inventory.partials),
            "repos": len(inventory.repos),
        }

    async def _drop_rotten(self, file_id: str, path: Path) -> None:
        """A blob that failed its check (a downloader told us): drop it and stop announcing."""
        n = await anyio.to_thread.run_sync(drop_rotten_blob, self.index.cache, file_id, path)
        log.warning("%s… rotted on disk: dropped %d copy(ies)", file_id[:12], n)
        await self.scan()

    def report_transfer(self, from_peers: int, from_upstream: int) -> None:
        self.bytes_from_peers += from_peers
        self.bytes_from_upstream += from_upstream

    def refresh_peers(self) -> None:
        self._wake_peers.set()

    # -- what /metrics and the status page show ---------------------------------------

    def peer_counts(self) -> tuple[int, int]:
        """(known, alive): saved peers and peers traded with; alive if the last probe
        answered or bytes moved within ALIVE_WINDOW."""
        now = time.time()
        known = {p.host for p in self.saved_peers} | set(self.activity.peers)
        alive = {p.host for p in self.saved_peers if self.peer_states.get(p, PeerState()).active}
        alive |= {h for h, a in self.activity.peers.items() if now - a.last_active < ALIVE_WINDOW}
        return len(known), len(alive)

    def ui_state(self) -> dict[str, Any]:
        return {"status": self.status(), "activity": self.activity.snapshot()}

    def local_surface(self, app: Any) -> LocalSurface:
        """``/metrics``, ``/ui`` and response counting in front of the daemon's port."""
        registry = make_registry(
            MetricSources(
                activity=self.activity,
                uploads=self.uploads,
                upload_slots=self.config.max_uploads,
                bytes_down=lambda: {
                    "peer": self.bytes_from_peers,
                    "upstream": self.bytes_from_upstream,
                },
                routing_size=self.node.routing_size,
                peers=self.peer_counts,
            )
        )
        return LocalSurface(app, self.activity, registry, self.ui_state)

    async def _sample_loop(self) -> None:
        while True:
            self.activity.sample(self.uploads.by_host)
            await anyio.sleep(SAMPLE_PERIOD)

    def request_stop(self) -> None:
        self._stop.set()

    # -- running -----------------------------------------------------------------

    async def run(self, tcp: socket.socket, control: socket.socket, token: str) -> None:
        cfg = self.config
        limits = UploadLimits(cfg.max_upload_rate, cfg.max_uploads)
        peer = PeerServer(
            self.index,
            cfg.partial_dir,
            cfg.state_dir / "manifests",
            limits,
            self.uploads,
            on_rotten=self._drop_rotten,
        )
        peer_app = create_app(
            self.index,
            cfg.partial_dir,
            cfg.state_dir / "manifests",
            limits=limits,
            stats=self.uploads,
            secret=cfg.swarm_secret,
            server=peer,
        )
        # The HF endpoint (HF_ENDPOINT=http://host:port) shares the port with the peer app.
        hub = HubEndpoint(
            self,
            cfg.upstream_endpoints(),
            self.index.cache,
            cfg.partial_dir,
            auth_headers(cfg.swarm_secret),
            named=cfg.named_endpoints(),
            sharing=self.sharing,
        )
        hub.downloads.activity = self.activity
        app = self.local_surface(hub.wrap(peer_app, loopback_only=bool(cfg.swarm_secret)))
        self._learner = hub.access.learner  # asks upstream which cached repos are public
        self._learner.on_public = self.rescan
        peer_server, control_server = _uvicorn(app), _uvicorn(create_control_app(self, token))
        # Blob bodies leave by sendfile through the front; other routes reach the app.
        secret = cfg.swarm_secret.encode() if cfg.swarm_secret else None
        install_front(peer_server.config, FrontShared(peer, secret, front_limits()))
        async with PeerClient(cfg.swarm_secret) as http, anyio.create_task_group() as tg:
            self._peers_http = http
            tg.start_soon(peer_server.serve, [tcp])
            tg.start_soon(control_server.serve, [control])
            async with anyio.create_task_group() as loops:
                loops.start_soon(hub.run)
                loops.start_soon(self._learner.run)
                loops.start_soon(self._watch_signals)
                loops.start_soon(self._announce_loop)
                loops.start_soon(self._peer_loop)
                loops.start_soon(self._rescan_loop)
                loops.start_soon(self._sample_loop)
                if self.settings.mdns:
                    loops.start_soon(
                        run_lan,
                        self.bind_ip,
                        self.port,
                        self.node.node_id,
                        cfg.swarm_secret,
                        self._bootstrap,
                        self.node.routing_size,
                    )
                await self._stop.wait()
                loops.cancel_scope.cancel()
            # uvicorn finishes in-flight requests (the stop reply among them), bounded
            # by timeout_graceful_shutdown, then the task group ends.
            peer_server.should_exit = control_server.should_exit = True


async def run_daemon(settings: DaemonSettings) -> None:
    """Start, serve until stopped, clean up. DaemonStartError: one line for the user."""
    home = settings.home
    try:
        config = Config.load(home)
        home.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError) as exc:
        raise DaemonStartError(str(exc)) from None
    lock = InstanceLock(home)
    if not lock.acquire():
        raise DaemonStartError(
            f"a daemon already runs for {home} (pid {read_pid(home) or '?'}); "
            "stop it with `hffs daemon stop`"
        )
    try:
        await _run_locked(settings, config)
    finally:
        lock.release()


async def _run_locked(settings: DaemonSettings, config: Config) -> None:
    ip = await resolve(settings.host, settings.port)
    if ip is None:
        raise DaemonStartError(f"cannot resolve --host {settings.host}")
    tcp = bind_tcp(ip, settings.port)
    port = tcp.getsockname()[1]
    secret = config.swarm_secret.encode() if config.swarm_secret else None
    node = DHTNode(secret=secret)
    try:
        try:
            await node.listen(port, interface=ip)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DaemonStartError(
                    f"UDP port {port} on {ip} is already in use; choose another with --port"
                ) from None
            raise DaemonStartError(f"cannot open UDP {ip}:{port} ({exc.strerror or exc})") from None
        control = bind_tcp("127.0.0.1", 0, "control")
        daemon = Daemon(settings, config, node, ip, port, control.getsockname()[1])
        await daemon.scan()
        info = DaemonInfo(
            pid=os.getpid(),
            host=ip,
            port=port,
            control_host="127.0.0.1",
            control_port=daemon.control_port,
            token=secrets.token_urlsafe(32),
            node_id=node.node_id,
            started_at=daemon.started_at,
        )
        write_pid(settings.home, info.pid)
        write_info(settings.home, info)
        log.info(
            "hffs daemon %d listening on %s:%d (TCP+UDP), control on 127.0.0.1:%d, node %s (%s)",
            info.pid,
            ip,
            port,
            info.control_port,
            info.node_id[:12],
            portable.describe(),
        )
        try:
            await daemon.run(tcp, control, info.token)
        finally:
            remove_run_files(settings.home, info.pid)
            log.info("hffs daemon %d stopped", info.pid)
    finally:
        node.stop()
        tcp.close()


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # one line per crawl, request or server start would drown what matters
    for noisy in ("kademlia", "httpx", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_foreground(settings: DaemonSettings) -> None:
    """Serve in this process until stopped; DaemonStartError when it cannot start."""
    setup_logging()
    anyio.run(run_daemon, settings, backend="asyncio")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hffs-daemon")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--bootstrap", action="append", default=[], metavar="HOST[:PORT]")
    parser.add_argument("--no-mdns", action="store_true")
    args = parser.parse_args(argv)
    try:
        boot = tuple(parse_hostport(b) for b in args.bootstrap)
        settings = DaemonSettings(args.home, args.host, args.port, boot, not args.no_mdns)
        run_foreground(settings)
    except (DaemonStartError, ValueError) as exc:
        # process.py shows the user the last "error:" line of the log
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
