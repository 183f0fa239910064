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
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from hffs.activity import Activity
from hffs.cache import HubCache
from hffs.config import DEFAULT_PORT, Config, ConfigError, hub_cache_dir
from hffs.daemon.announcer import Announcer
from hffs.daemon.app import (
    CacheIndex,
    Inventory,
    RepoRev,
    create_app,
    drop_rotten_blob,
)
from hffs.daemon.control import Query, create_control_app
from hffs.daemon.holdings import Holdings
from hffs.daemon.hub_proxy import HubEndpoint
from hffs.daemon.lan import run_lan
from hffs.daemon.lookups import Finder, Lookups
from hffs.daemon.metrics import MetricSources, make_registry
from hffs.daemon.peerbook import PeerBook, PeerState, resolve
from hffs.daemon.status_page import LocalSurface
from hffs.discovery import vouched_revision
from hffs.errors import HffsError
from hffs.fetch import JobHost, run_job
from hffs.hub import RemoteRevision
from hffs.jobs import JobListener, JobResult, JobSpec
from hffs.peers import PeerClient
from hffs.runfiles import (
    DaemonInfo,
    DaemonSettings,
    InstanceLock,
    read_pid,
    remove_run_files,
    write_info,
    write_pid,
)
from hffs.visibility import VisibilityStore
from swarm import hostport, portable
from swarm.dht import DHTNode
from swarm.peer_auth import Verifier
from swarm.peer_server import PeerServer, UploadLimits, UploadStats
from swarm.transport_server import FrontLimits, FrontShared, install_front
from swarm.wire import PeerAuth

log = logging.getLogger("hffs.daemon")

SAMPLE_PERIOD = 1.0  # rates and the throughput history of the status page
ALIVE_WINDOW = 60.0  # a peer that traded bytes this recently counts as alive


class DaemonStartError(HffsError):
    """The daemon cannot start; the message is one line for the user."""


# -- plain decisions ---------------------------------------------------------------


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


# -- the daemon --------------------------------------------------------------------


class Daemon:
    """The composition root: the services, wired; the control API's ``DaemonOps``.

    Services, one job each: holdings (what we hold), announcer (telling the DHT),
    peer book (saved peers, bootstrap), finder and lookups (who holds what), and
    the download manager (inside the HF endpoint, shared with `model add` jobs)."""

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
        self.http = PeerClient(config.swarm_secret)
        self.holdings = Holdings(self.index, config.partial_dir, self.sharing)
        self.announcer = Announcer(node, port, self.holdings.held_keys)
        self.book = PeerBook(settings, node, self.http, config.peers, self.is_self)
        self.finder = Finder(node, self.book, self.http, on_lookup=self.activity.dht_lookup)
        self.lookups = Lookups(self.finder.find_providers)
        node.on_new_holder = self.lookups.new_holder  # announcements refresh cached lookups
        node.on_holder = self._announced  # ... and name the new holder at once
        self._stop = anyio.Event()
        self._hub: HubEndpoint | None = None

    def _announced(self, key: bytes, host: str, port: int) -> None:
        if not self.is_self(host, port):
            self.lookups.new_holder(key, (host, port))

    def is_self(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if host == self.bind_ip:
            return True
        try:
            return _is_unspecified(self.bind_ip) and ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    async def scan(self) -> Inventory:
        return await self.holdings.scan()

    async def _drop_rotten(self, file_id: str, path: Path) -> None:
        """A blob that failed its check (a downloader told us): drop it and stop announcing."""
        n = await anyio.to_thread.run_sync(drop_rotten_blob, self.index.cache, file_id, path)
        log.warning("%s… rotted on disk: dropped %d copy(ies)", file_id[:12], n)
        await self.scan()

    async def _watch_signals(self) -> None:
        stop_on = portable.stop_signals()  # none on Windows: the control API stops it
        if not stop_on or threading.current_thread() is not threading.main_thread():
            return
        with anyio.open_signal_receiver(*stop_on) as signals:
            async for signum in signals:
                log.info("got %s: stopping", signal.Signals(signum).name)
                self.request_stop()
                return

    # -- DaemonOps (the control API) ---------------------------------------------

    def status(self) -> dict[str, Any]:
        inv = self.index.inventory
        files, partials = set(inv.files), set(inv.partials)
        if self._hub is not None:  # downloads finished or running since the last scan
            files |= self._hub.downloads.completed
            partials |= self._hub.downloads.running - files
        return {
            "pid": os.getpid(),
            "host": self.settings.host,
            "port": self.port,
            "control_port": self.control_port,
            "node_id": self.node.node_id,
            "routing_size": self.node.routing_size(),
            "bootstrap": [f"{h}:{p}" for h, p in self.settings.bootstrap],
            "peers": self.book.status(),
            "files_shared": len(files),
            "partials_shared": len(partials),
            "repos_shared": len(inv.repos),
            "uploads_active": self.uploads.active,
            "bytes_up": self.uploads.total,
            "bytes_up_by_host": dict(self.uploads.by_host),
            "bytes_down_peers": self.bytes_from_peers,
            "bytes_down_upstream": self.bytes_from_upstream,
            "started_at": self.started_at,
            "announced_at": self.announcer.announced_at,
            "holder_lookups": self.lookups.crawls,
            "holder_asks": self.lookups.asks,
        }

    async def holders(self, file_id: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        """For the downloads: the lookup of a file's holders, cached (lookups.py)."""
        return await self.lookups.get(("file", file_id), fresh=fresh)

    async def holder_news(self, file_id: str, seen: int) -> int:
        """For the downloads: returns once holders of the file announced themselves
        since the ``seen`` count the caller got last (0 at first); the new count."""
        return await self.lookups.news(("file", file_id), seen)

    async def find_providers(self, query: Query) -> list[dict[str, Any]]:
        return await self.finder.find_providers(query)

    async def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]:
        return await self.finder.search(repo_type, repo_id, revision)

    async def announce(self, file_ids: list[str], repos: list[RepoRev], wait: bool) -> int | None:
        # Only what may be shared (hffs.trust): a private download is never announced.
        file_ids = [f for f in file_ids if self.index.shares(f)]
        repos = [r for r in repos if self.index.repo_shared(r[0], r[1])]
        keys = self.holdings.add(file_ids, repos)
        if wait:
            return await self.announcer.provide(keys)
        self.announcer.queue(keys)
        return None

    async def rescan(self) -> dict[str, int]:
        inventory = await self.holdings.scan()
        if self._learner is not None:
            self._learner.wake()  # new repos of unknown visibility: ask upstream about them
        self.announcer.queue(self.holdings.held_keys())
        return {
            "files": len(inventory.files),
            "partials": len(inventory.partials),
            "repos": len(inventory.repos),
        }

    def report_transfer(self, from_peers: int, from_upstream: int) -> None:
        self.bytes_from_peers += from_peers
        self.bytes_from_upstream += from_upstream

    def refresh_peers(self) -> None:
        self.book.refresh()

    def request_stop(self) -> None:
        self._stop.set()

    # -- what /metrics and the status page show ---------------------------------------

    def peer_counts(self) -> tuple[int, int]:
        """(known, alive): saved peers and peers traded with; alive if the last probe
        answered or bytes moved within ALIVE_WINDOW."""
        now = time.time()
        saved = self.book.saved_peers
        known = {p.host for p in saved} | set(self.activity.peers)
        alive = {p.host for p in saved if self.book.states.get(p, PeerState()).active}
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

    async def revision_from_peers(
        self, repo_type: str, repo_id: str, revision: str, local: dict[str, Any] | None = None
    ) -> RemoteRevision | str:
        answers = await self.search(repo_type, repo_id, revision)
        private = bool(self.config.swarm_secret)
        return vouched_revision(answers, local, repo_type, repo_id, revision, private)

    async def run_job(self, spec: JobSpec, listener: JobListener) -> JobResult:
        """A ``hffs model add`` job, through the same DownloadManager as the HF endpoint."""
        assert self._hub is not None, "used outside run()"
        host = JobHost(
            self.config,
            self.index.cache,
            self._hub.downloads,
            self,
            cache_changed=self.rescan,
            is_self=self._hub._is_us,
            where="the daemon ",
        )
        return await run_job(spec, host, listener)

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
        self.holdings.on_scanned.append(peer.forget_held)  # unshared: not served from now
        self.holdings.manifests = peer.manifests
        # One verifier for the front and the app: a nonce spent on one is spent on both.
        verifier = Verifier(cfg.swarm_secret) if cfg.swarm_secret else None
        peer_app = create_app(
            self.index,
            cfg.partial_dir,
            cfg.state_dir / "manifests",
            limits=limits,
            stats=self.uploads,
            verifier=verifier,
            server=peer,
        )
        # The HF endpoint (HF_ENDPOINT=http://host:port) shares the port with the peer app.
        hub = HubEndpoint(
            self,
            cfg.upstream_endpoints(),
            self.index.cache,
            cfg.partial_dir,
            PeerAuth(cfg.swarm_secret),
            named=cfg.named_endpoints(),
            sharing=self.sharing,
        )
        self._hub = hub
        hub.downloads.activity = self.activity
        hub.downloads.manifests = peer.manifests  # a file fetched here is seeded at once
        app = self.local_surface(hub.wrap(peer_app, loopback_only=bool(cfg.swarm_secret)))
        self._learner = hub.access.learner  # asks upstream which cached repos are public
        self._learner.on_public = self.rescan
        peer_server, control_server = _uvicorn(app), _uvicorn(create_control_app(self, token))
        # Blob bodies leave by sendfile through the front; other routes reach the app.
        install_front(peer_server.config, FrontShared(peer, verifier, front_limits()))
        async with self.http, anyio.create_task_group() as tg:
            tg.start_soon(peer_server.serve, [tcp])
            tg.start_soon(control_server.serve, [control])
            async with anyio.create_task_group() as loops:
                loops.start_soon(hub.run)
                loops.start_soon(self._learner.run)
                loops.start_soon(self._watch_signals)
                loops.start_soon(self.announcer.run)
                loops.start_soon(self.book.run)
                loops.start_soon(self.holdings.rescan_loop, self.announcer.queue)
                loops.start_soon(self._sample_loop)
                loops.start_soon(peer.follow_chunks)  # verified here: served at once
                if self.settings.mdns:
                    loops.start_soon(
                        run_lan,
                        self.bind_ip,
                        self.port,
                        self.node.node_id,
                        cfg.swarm_secret,
                        self.book.bootstrap,
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
    hostport.set_source_ip(ip)  # peer connections leave from the address peers know
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
