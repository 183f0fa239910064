"""``hffs model add``: resolve a revision, then bring each file in through the swarm.

For every file not already in the cache: holders come from the daemon (DHT and
saved peers), the rest from the upstream endpoints in order; the swarm downloader
verifies and publishes the blob; then the snapshot links and the ref are written
exactly as huggingface_hub writes them.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from rich.console import Console

from hffs import config, managed
from hffs.cache import CacheError, HubCache
from hffs.discovery import Discovery, discovery_for
from hffs.hub import HubClient, HubError, Refused, RemoteFile, RemoteRevision, file_url
from hffs.listing import read_local
from hffs.progress import DownloadProgress
from hffs.trust import redirect_guard
from hffs.visibility import remember
from swarm.download import DownloadError, FileReport, download_file
from swarm.sources import Source

FILES_AT_ONCE = 4


@dataclass
class AddReport:
    revision: RemoteRevision
    reports: list[FileReport] = field(default_factory=list)
    cached: int = 0
    seconds: float = 0.0

    def split(self, upstream: set[str]) -> tuple[int, int]:
        """Bytes (from peers, from upstream) over every file downloaded."""
        totals = [0, 0]
        for r in self.reports:
            for source, n in r.bytes_by_source.items():
                totals[source in upstream] += n
        return totals[0], totals[1]


def upstream_sources(hub: HubClient, rev: RemoteRevision, f: RemoteFile) -> list[Source]:
    """The endpoints in order, each a source of every chunk of ``f``."""
    return [
        Source(
            e,
            file_url(e, rev.repo_type, rev.repo_id, rev.commit, f.path),
            True,
            hub.auth_headers(e),
        )
        for e in hub.endpoints
    ]


async def resolve(
    hub: HubClient,
    discovery: Discovery,
    repo_type: str,
    repo_id: str,
    revision: str,
    console: Console,
    cache: HubCache | None = None,
) -> RemoteRevision:
    """The hub or mirror resolves refs; with neither reachable, what peers vouch for (and
    this machine's cache holds), and the user is told on what basis (``hffs.trust``)."""
    try:
        return await hub.arevision(repo_type, repo_id, revision)
    except Refused:
        raise  # the hub said no: final, whatever peers hold
    except HubError as exc:
        local = None
        if cache is not None:
            local = await anyio.to_thread.run_sync(read_local, cache, repo_type, repo_id, revision)
        fallback = await discovery.revision_from_peers(repo_type, repo_id, revision, local)
        if isinstance(fallback, str):
            raise HubError(f"{exc}; {fallback}") from None
        console.print(
            f"[yellow]note:[/yellow] no endpoint answered ({exc}); using commit "
            f"{fallback.commit[:12]} for {revision!r}, {fallback.vouched}"
        )
        return fallback


async def add_model_async(
    repo_type: str,
    repo_id: str,
    revision: str,
    file: str | None,
    *,
    console: Console,
    cfg: config.Config | None = None,
) -> AddReport:
    cfg = cfg or config.Config.load()
    cache = HubCache(config.hub_cache_dir())
    check_writable(cache.root)
    check_writable(cfg.partial_dir)
    hub = HubClient(cfg.upstream_endpoints(), config.hf_token(), cfg.named_endpoints())
    started = time.monotonic()
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
        follow_redirects=True,  # from upstream, where hffs.trust allows; never from a peer
        event_hooks={"response": [redirect_guard(hub.endpoints)]},
    ) as client:
        discovery = discovery_for(cfg, client)
        rev = await resolve(hub, discovery, repo_type, repo_id, revision, console, cache)
        await anyio.to_thread.run_sync(remember, cfg.home, rev, bool(cfg.swarm_secret))
        wanted = [rev.file(file)] if file else list(rev.files)
        report = AddReport(rev)
        todo = []
        for f in wanted:
            blob = cache.blob_path(repo_type, repo_id, f.file_id)
            if blob.is_file() and blob.stat().st_size == f.size:
                report.cached += 1
                cache.link(repo_type, repo_id, rev.commit, f.path, f.file_id)
            else:
                todo.append(f)
        limiter = anyio.CapacityLimiter(FILES_AT_ONCE)
        with DownloadProgress(console, rev, todo) as progress:

            async def one(f: RemoteFile) -> None:
                async with limiter:
                    existing = cache.find_blob(f.file_id)  # same content in another repo
                    dest = cache.blob_path(repo_type, repo_id, f.file_id)
                    if existing is not None and existing.stat().st_size == f.size:
                        cache.adopt(repo_type, repo_id, f.file_id, existing, "hardlink")
                        cache.link(repo_type, repo_id, rev.commit, f.path, f.file_id)
                        progress.file_done(f, from_cache=True)
                        return
                    rep = await download_file(
                        f.file_id,
                        f.size,
                        dest=dest,
                        store_root=cfg.partial_dir,
                        upstream=upstream_sources(hub, rev, f),
                        holders=discovery,
                        client=client,
                        peer_headers=discovery.peer_headers,
                        on_bytes=progress.callback(f),
                    )
                    report.reports.append(rep)
                    progress.file_done(f)
                    cache.link(repo_type, repo_id, rev.commit, f.path, f.file_id)

            async with anyio.create_task_group() as tg:
                for f in todo:
                    tg.start_soon(one, f)
        cache.write_ref(repo_type, repo_id, revision, rev.commit)
        managed.remember(cfg.home, repo_type, repo_id, rev.commit)
        await discovery.cache_changed()
        await discovery.report_transfer(*report.split(set(hub.endpoints)))
    report.seconds = time.monotonic() - started
    return report


def check_writable(folder: Path) -> None:
    """Fail before any byte is fetched if ``folder`` cannot take files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CacheError(
            f"cannot write to {folder} ({exc.strerror or exc}); "
            "point HF_HUB_CACHE / HFFS_HOME at a writable folder"
        ) from None


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first real failure inside nested task-group errors, for a one-line message."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return HubError(str(exc)) if isinstance(exc, DownloadError) else exc


def add_model(
    repo_type: str, repo_id: str, revision: str, file: str | None, *, console: Console
) -> AddReport:
    try:
        report = anyio.run(
            lambda: add_model_async(repo_type, repo_id, revision, file, console=console),
            backend="asyncio",
        )
    except BaseExceptionGroup as group:
        raise first_leaf(group) from None
    except DownloadError as exc:
        raise HubError(str(exc)) from None
    DownloadProgress.summary(console, report)
    return report
