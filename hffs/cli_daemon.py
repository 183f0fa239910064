"""``hffs daemon ...``, ``hffs peer ...`` and ``hffs model search`` (mounted by hffs/cli.py)."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from hffs import config
from hffs.cache import HubCache, is_commit
from hffs.config import Config, Peer
from hffs.console import err, expected_failures, fail, out
from hffs.progress import human_bytes
from swarm.hostport import format_hostport, is_ip, parse_hostport


def _hostport(value: str, default_port: int) -> tuple[str, int]:
    """(host, port) of ``host[:port]`` (brackets stripped); ValueError if bad."""
    hp = parse_hostport(value, default_port)
    return hp.host, hp.port


HELP = {"help_option_names": ["-h", "--help"]}
daemon_app = typer.Typer(
    help="Start, stop and inspect the daemon.", no_args_is_help=True, context_settings=HELP
)
peer_app = typer.Typer(
    help="Saved peers: bootstrap nodes, always probed.", no_args_is_help=True, context_settings=HELP
)


PEER_PROBE_TIMEOUT = 1.5


def _addr(host: str, port: int) -> str:
    return format_hostport(host, port)


def endpoint_url(host: str, port: int) -> str:
    """The daemon's HF endpoint as this machine reaches it: loopback when it binds all
    interfaces (with a swarm secret, loopback is the only address it serves HF on)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{_addr(host, port)}"


def export_line(host: str, port: int) -> str:
    return f"export HF_ENDPOINT={endpoint_url(host, port)}"


def _parse_peer(host: str, port: int | None) -> Peer:

    try:
        h, p = _hostport(host, port or config.DEFAULT_PORT)
    except ValueError as exc:
        fail(str(exc))
    if port is not None and p != port:
        fail(f"two ports given: {host} and --port {port}")
    return Peer(h, p)


def _resolves(name: str) -> bool:
    try:
        return bool(socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM))
    except (OSError, UnicodeError):
        return False


def _tell_daemon_peers_changed() -> None:
    from hffs.daemonctl.client import DaemonClient, DaemonError, DaemonNotRunning

    # no daemon is fine; it re-reads saved peers on its own every probe round anyway
    with contextlib.suppress(DaemonNotRunning, DaemonError):
        DaemonClient.from_home(config.home_dir(), timeout=5.0).refresh_peers()


# -- daemon ----------------------------------------------------------------------


_RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_rate(text: str) -> int:
    """Bytes per second from "20M", "512KiB", "1.5g" or a plain number."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?(?:/s)?\s*", text.lower())
    if not m:
        raise ValueError(f"not a rate: {text!r} (try 20M or 512K)")
    return int(float(m[1]) * _RATE_UNITS[m[2] or ""])


@daemon_app.command("start")
def daemon_start(
    host: Annotated[
        str, typer.Option(help="Address to bind and announce (default: all interfaces)")
    ] = "0.0.0.0",
    port: Annotated[
        int | None, typer.Option(help="TCP (peers) and UDP (DHT) port [default: 9009]")
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option(metavar="HOST[:PORT]", help="A DHT node to join through; repeatable"),
    ] = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run in this terminal (Ctrl-C stops)")
    ] = False,
    no_mdns: Annotated[
        bool, typer.Option("--no-mdns", help="Do not find or advertise daemons on the LAN")
    ] = False,
    max_upload_rate: Annotated[
        str | None,
        typer.Option(help="Cap on upload to peers, bytes/s (e.g. 20M, 512K; 0 = none); saved"),
    ] = None,
    max_uploads: Annotated[
        int | None, typer.Option(help="Most uploads served at once; saved")
    ] = None,
    swarm_secret: Annotated[
        str | None,
        typer.Option(
            help="Shared secret of a private swarm: only daemons that know it may fetch from "
            'or announce to this one; saved ("" removes it)'
        ),
    ] = None,
) -> None:
    """Start the daemon: serve the cache to peers, join the DHT, announce every file."""
    from hffs.daemonctl.process import start
    from hffs.runfiles import DaemonSettings

    with expected_failures():
        cfg = Config.load(config.home_dir())
        if max_upload_rate is not None or max_uploads is not None or swarm_secret is not None:
            if swarm_secret is not None:
                # it travels in an HTTP header, which trims spaces and wants ASCII
                ok = swarm_secret.isascii() and swarm_secret.isprintable()
                if not ok or swarm_secret != swarm_secret.strip():
                    fail("--swarm-secret must be printable ASCII without surrounding spaces")
                cfg.swarm_secret = swarm_secret or None
            try:
                if max_upload_rate is not None:
                    cfg.max_upload_rate = parse_rate(max_upload_rate)
            except ValueError as exc:
                fail(f"--max-upload-rate: {exc}")
            if max_uploads is not None:
                if max_uploads < 1:
                    fail("--max-uploads must be at least 1")
                cfg.max_uploads = max_uploads
            cfg.save()
        port = cfg.port if port is None else port
        if not 0 < port < 65536:
            fail(f"--port must be 1..65535, not {port}")
        try:
            boot = tuple(_hostport(b, config.DEFAULT_PORT) for b in bootstrap or [])
        except ValueError as exc:
            fail(f"--bootstrap: {exc}")
        for name, _ in boot:  # a name that does not resolve now is a typo, not an outage
            if not is_ip(name) and not _resolves(name):
                fail(f"--bootstrap: cannot resolve {name!r}; give an address or a known name")
        settings = DaemonSettings(cfg.home, host, port, boot, mdns=not no_mdns)
        if foreground:
            err.print(f"hffs daemon on {_addr(host, port)} (Ctrl-C stops)", highlight=False)
        info = start(settings, foreground=foreground)
    if info is not None:
        err.print(
            f"hffs daemon started (pid {info.pid}): peers and DHT on {_addr(info.host, info.port)}"
            f", control on 127.0.0.1:{info.control_port}; log {cfg.home / 'daemon.log'}\n"
            f"status page {endpoint_url(info.host, info.port)}/ui; "
            "HF tools download through the swarm with:",
            highlight=False,
            soft_wrap=True,
        )
        # the one line on stdout, ready to copy (or: eval "$(hffs daemon start)")
        out.print(export_line(info.host, info.port), highlight=False, soft_wrap=True)


@daemon_app.command("stop")
def daemon_stop() -> None:
    """Stop the daemon cleanly (downloads in progress resume later)."""
    from hffs.daemonctl.process import stop

    with expected_failures():
        pid = stop(config.home_dir())
    out.print(f"hffs daemon stopped (pid {pid})", highlight=False)


@daemon_app.command("status")
def daemon_status() -> None:
    """Port, node id, DHT size, peers, files shared and transfer totals."""
    from hffs.daemonctl.client import DaemonClient

    with expected_failures():
        s = DaemonClient.from_home(config.home_dir(), timeout=10.0).status()
    from rich.table import Table

    up_since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["started_at"]))
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("pid", str(s["pid"])),
        ("listening", f"{_addr(s['host'], s['port'])} (TCP peers, UDP DHT)"),
        ("control", f"127.0.0.1:{s['control_port']}"),
        ("HF endpoint", export_line(s["host"], s["port"])),
        ("status page", f"{endpoint_url(s['host'], s['port'])}/ui (metrics: /metrics)"),
        ("node id", s["node_id"]),
        ("DHT contacts", str(s["routing_size"])),
        ("files shared", f"{s['files_shared']} complete, {s['partials_shared']} partial"),
        ("revisions shared", str(s["repos_shared"])),
        ("uploaded", f"{human_bytes(s['bytes_up'])} ({s['uploads_active']} upload(s) now)"),
        (
            "downloaded",
            f"{human_bytes(s['bytes_down_peers'])} from peers, "
            f"{human_bytes(s['bytes_down_upstream'])} from mirror/hub",
        ),
        ("up since", up_since),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    if s["peers"]:
        peers = Table("peer", "status", "last seen")
        for p in s["peers"]:
            state = {True: "active", False: "inactive", None: "not probed yet"}[p["active"]]
            seen = (
                time.strftime("%H:%M:%S", time.localtime(p["last_seen"])) if p["last_seen"] else "-"
            )
            peers.add_row(_addr(p["host"], p["port"]), state, seen)
        out.print(peers)


# -- peer ------------------------------------------------------------------------


@peer_app.command("add")
def peer_add(
    host: str,
    port: Annotated[int | None, typer.Option(help="Its daemon's port [default: 9009]")] = None,
) -> None:
    """Save a peer: a DHT bootstrap node, probed and asked directly."""
    peer = _parse_peer(host, port)
    with expected_failures():
        cfg = Config.load(config.home_dir())
        if peer in cfg.peers:
            out.print(f"{peer} is already a saved peer", highlight=False)
            return
        cfg.peers.append(peer)
        cfg.save()
    out.print(f"added peer {peer}", highlight=False)
    _tell_daemon_peers_changed()


@peer_app.command("rm")
def peer_rm(
    host: str,
    port: Annotated[int | None, typer.Option(help="Its daemon's port [default: 9009]")] = None,
) -> None:
    """Forget a saved peer."""
    peer = _parse_peer(host, port)
    with expected_failures():
        cfg = Config.load(config.home_dir())
        if peer not in cfg.peers:
            fail(f"{peer} is not a saved peer (see `hffs peer ls`)")
        cfg.peers.remove(peer)
        cfg.save()
    out.print(f"removed peer {peer}", highlight=False)
    _tell_daemon_peers_changed()


async def _probe_all(peers: list[Peer], secret: str | None) -> list[bool]:
    import anyio

    from hffs.peers import PeerClient

    results = [False] * len(peers)

    async def one(i: int, peer: Peer) -> None:
        results[i] = await http.ping(peer.host, peer.port)

    async with (
        PeerClient(secret, timeout=PEER_PROBE_TIMEOUT) as http,
        anyio.create_task_group() as tg,
    ):
        for i, peer in enumerate(peers):
            tg.start_soon(one, i, peer)
    return results


@peer_app.command("ls")
def peer_ls() -> None:
    """Saved peers, each probed now: active when its daemon answers."""
    with expected_failures():
        cfg = Config.load(config.home_dir())
    if not cfg.peers:
        err.print("no saved peers; add one with `hffs peer add HOST [--port P]`")
        return
    import anyio
    from rich.table import Table

    alive = anyio.run(_probe_all, cfg.peers, cfg.swarm_secret)
    table = Table("host", "port", "status")
    for peer, ok in zip(cfg.peers, alive, strict=True):
        table.add_row(peer.host, str(peer.port), "[green]active[/green]" if ok else "inactive")
    out.print(table)


# -- model search ----------------------------------------------------------------


def _resolve_by_peers(
    holders: list[dict[str, Any]], revision: str
) -> tuple[str, list[dict[str, Any]]]:
    """Peers may disagree on where a ref points: take the newest commit reported."""
    newest = max(holders, key=lambda h: h.get("fetched_at", 0.0))["commit"]
    n = sum(h["commit"] == newest for h in holders)
    err.print(
        f"note: {revision} is not in the local cache; {n} peer(s) report it as {newest[:12]}"
        " (the newest commit peers report)",
        highlight=False,
    )
    return newest, [h for h in holders if h["commit"] == newest]


def search_command(
    repo_id: str,
    choose: Callable[[list[str]], list[str] | None],
    revision: str,
    repo_type: str,
) -> None:
    """Print ``host:port, repo-id, file`` for every peer holding the revision (or the
    files ``choose`` keeps of what each peer lists; None keeps all).

    A 40-hex revision is searched as is; a ref is resolved by the local cache if it
    knows it, else by the peers holding any revision of the repo (newest commit)."""
    from hffs.daemonctl.client import DaemonClient

    home = config.home_dir()
    with expected_failures():
        daemon = DaemonClient.from_home(home, timeout=60.0)
        commit = revision if is_commit(revision) else None
        if commit is None:
            commit = HubCache(config.hub_cache_dir()).read_ref(repo_type, repo_id, revision)
        holders = daemon.search(repo_type, repo_id, commit or revision)
    if commit is None and holders:
        commit, holders = _resolve_by_peers(holders, revision)
    lines = []
    for h in holders:
        paths = [f["path"] for f in h["files"] if isinstance(f.get("path"), str)]
        kept = choose(paths)
        for path in paths if kept is None else kept:
            lines.append(f"{_addr(h['host'], h['port'])}, {repo_id}, {path}")
    if not lines:
        what = f"those files of {repo_id}" if choose([]) is not None else repo_id
        at = commit[:12] if commit else revision
        fail(f"no peer holds {what} at {at}; is the daemon in the DHT? (`hffs daemon status`)")
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
