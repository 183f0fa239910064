"""Running a download job (``hffs model add``): the one code path, in either host.

The daemon runs it for the CLI that submitted it over the control API; with no
daemon, the CLI runs it in-process (``run_local``). Either way: resolve the
revision (the hub or mirror; peers only when no endpoint answers, never after an
endpoint said no), then for each file a cache hit, a hardlink of the same content
held for another repo, or a download through the host's one DownloadManager (one
download per file id, whoever asked); then the snapshot links and the ref,
exactly as huggingface_hub writes them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx

from hffs import config, managed, space
from hffs.cache import CacheError, HubCache
from hffs.downloads import (
    DownloadManager,
    FileJob,
    SwarmView,
    TransferFailed,
    UpstreamRefused,
)
from hffs.hub import HubClient, HubError, Refused, RemoteFile, RemoteRevision, file_url
from hffs.jobs import JobListener, JobPlan, JobResult, JobSpec, PlannedFile
from hffs.listing import read_local
from hffs.selection import SelectionError, local_path, select
from hffs.trust import redirect_guard
from hffs.visibility import remember
from swarm.manifest_cache import ManifestCache
from swarm.sources import Source

log = logging.getLogger(__name__)

HOLDERS_TIMEOUT = 20.0  # a dry run's lookup of one file's holders


class PeersView(SwarmView, Protocol):
    """What a job asks of the swarm beyond the downloads: a revision peers hold."""

    async def revision_from_peers(
        self, repo_type: str, repo_id: str, revision: str, local: dict[str, Any] | None = None
    ) -> RemoteRevision | str: ...


@dataclass
class JobHost:
    """Where a job runs: the daemon, or the CLI process when no daemon runs."""

    cfg: config.Config
    cache: HubCache  # the host's own HF cache
    downloads: DownloadManager
    view: PeersView
    cache_changed: Callable[[], Awaitable[object]] | None = None
    is_self: Callable[[str], bool] | None = None  # an endpoint that is this host (no loops)
    where: str = ""  # "the daemon " when it is not the asker's own process


def upstream_sources(
    hub: HubClient | None, rev: RemoteRevision, f: RemoteFile
) -> tuple[Source, ...]:
    """The endpoints in order, each a source of every chunk of ``f`` (none offline)."""
    if hub is None:
        return ()
    return tuple(
        Source(
            e,
            file_url(e, rev.repo_type, rev.repo_id, rev.commit, f.path),
            True,
            hub.auth_headers(e),
        )
        for e in hub.endpoints
    )


def check_writable(folder: Path, where: str = "") -> None:
    """Fail before any byte is fetched if ``folder`` cannot take files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CacheError(
            f"{where}cannot write to {folder} ({exc.strerror or exc}); "
            "point HF_HUB_CACHE / HFFS_HOME at a writable folder"
        ) from None


async def resolve(
    hub: HubClient | None, view: PeersView, spec: JobSpec, cache: HubCache
) -> tuple[RemoteRevision, str | None]:
    """The hub or mirror resolves refs; with neither reachable (or none, offline), what
    peers vouch for (and this machine's cache holds), and the user is told on what basis
    (``hffs.trust``). An endpoint's "no" (not found, gated, no access) is final."""
    try:
        if hub is None:
            raise HubError("no upstream endpoint (offline)")
        return await hub.arevision(spec.repo_type, spec.repo_id, spec.revision), None
    except Refused:
        raise
    except HubError as exc:
        kinds = (spec.repo_type, spec.repo_id, spec.revision)
        local = await anyio.to_thread.run_sync(read_local, cache, *kinds)
        fallback = await view.revision_from_peers(*kinds, local)
        if isinstance(fallback, str):
            raise HubError(f"{exc}; {fallback}") from None
        note = (
            f"no endpoint answered ({exc}); using commit {fallback.commit[:12]} for "
            f"{spec.revision!r}, {fallback.vouched}"
        )
        return fallback, note


def check_room(
    files: list[RemoteFile],
    wanted: list[RemoteFile],
    cache: HubCache,
    partial_dir: Path,
    *,
    force: bool,
    local_dir: str | None = None,
    where: str = "",
) -> None:
    """Blocking: NoSpace unless the disk can hold what downloading ``files`` writes (a
    file whose content the cache holds for another repo is linked, not written), and
    the copies of ``wanted`` the asker then makes in ``local_dir``. Nothing is written
    there to find out (huggingface_hub's own check of a copy makes its lock files)."""
    todo = [(f.file_id, f.size) for f in files if force or cache.find_blob(f.file_id) is None]
    also = []
    if local_dir is not None:  # a file there of the same size is replaced, not added to
        folder = Path(local_dir)
        copies = [f for f in wanted if not _copy_there(folder, f)]
        also.append(space.Need(folder, sum(f.size for f in copies)))
    space.check_downloads(todo, partial_dir, cache.root, where, also)


def _copy_there(folder: Path, f: RemoteFile) -> bool:
    """Whether ``folder`` has a file of ``f``'s length at its path (False when it could not
    be placed there: the copy itself says so later)."""
    try:
        return _held(local_path(folder, f.path), f.size)
    except SelectionError:
        return False


def _held(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


async def run_job(spec: JobSpec, host: JobHost, listener: JobListener) -> JobResult:
    """Fetch what ``spec`` asks into the asker's cache, reporting to ``listener``."""
    started = time.monotonic()
    cache = HubCache(Path(spec.cache_dir)) if spec.cache_dir else host.cache
    await anyio.to_thread.run_sync(check_writable, cache.root, host.where)
    await anyio.to_thread.run_sync(check_writable, host.cfg.partial_dir, host.where)
    token = spec.token if spec.token is not None else config.hf_token()
    endpoints = spec.endpoints if spec.endpoints is not None else host.cfg.upstream_endpoints()
    endpoints = [e for e in endpoints if not (host.is_self and host.is_self(e))]
    named = list(spec.named) if spec.named is not None else host.cfg.named_endpoints()
    hub = HubClient(endpoints, token, named) if endpoints else None
    rev, note = await resolve(hub, host.view, spec, cache)
    private = bool(host.cfg.swarm_secret)
    await anyio.to_thread.run_sync(remember, host.cfg.home, rev, private)
    if spec.files is not None and len(spec.files) == 1 and not spec.files[0].endswith("/"):
        rev.file(spec.files[0])  # one named file that is not there: NotFound, naming the repo
    chosen = select([f.path for f in rev.files], spec.files or (), spec.include, spec.exclude)
    wanted = [rev.file(p) for p in chosen.paths]
    kinds = (spec.repo_type, spec.repo_id)

    todo = [
        f for f in wanted if spec.force or not _held(cache.blob_path(*kinds, f.file_id), f.size)
    ]
    try:  # refused before the plan is shown: no bars for nothing
        await anyio.to_thread.run_sync(
            functools.partial(
                check_room,
                todo,
                wanted,
                cache,
                host.cfg.partial_dir,
                force=spec.force,
                local_dir=spec.local_dir,
                where=host.where,
            )
        )
    except space.NoSpace as exc:
        if not spec.dry_run:
            raise
        note = "; ".join(filter(None, (note, str(exc))))  # a dry run says so, and goes on
    holders = await count_holders(host.view, todo) if spec.dry_run else {}
    listener.planned(
        JobPlan(
            spec.repo_type,
            spec.repo_id,
            rev.commit,
            tuple(PlannedFile(f.path, f.size, f.file_id, holders.get(f.path)) for f in wanted),
            tuple(f.path for f in todo),
            tuple(endpoints),
            note,
        )
    )
    result = JobResult(rev.commit)
    if spec.dry_run:
        return result
    pending = {f.path for f in todo}
    workers = anyio.CapacityLimiter(spec.max_workers or len(wanted) or 1)

    async def one(f: RemoteFile) -> None:
        async with workers:
            await fetch_one(f)

    async def fetch_one(f: RemoteFile) -> None:
        own = cache.blob_path(*kinds, f.file_id)
        by_source: dict[str, int] = {}
        if f.path not in pending:
            how = "cached"
        else:
            existing = (
                None if spec.force else await anyio.to_thread.run_sync(cache.find_blob, f.file_id)
            )
            if existing is not None and _held(existing, f.size):
                await anyio.to_thread.run_sync(cache.adopt, *kinds, f.file_id, existing, "hardlink")
                how = "hardlinked"
            else:
                if spec.force:
                    own.unlink(missing_ok=True)
                job = FileJob(
                    *kinds, rev.commit, f.path, f.file_id, f.size, upstream_sources(hub, rev, f)
                )

                def on_bytes(source: str, upstream: bool, n: int, path: str = f.path) -> None:
                    listener.on_bytes(path, source, upstream, n)

                try:
                    blob, by_source = await host.downloads.fetch(job, on_bytes)
                except UpstreamRefused as exc:
                    what = "set HF_TOKEN to" if not token else "the token sent is not"
                    raise Refused(
                        f"{spec.repo_id} is gated or private: the hub refused {f.path} "
                        f"and no peer holds it; {what} a token with access ({exc})"
                    ) from None
                except TransferFailed as exc:
                    raise TransferFailed(f"{f.path}: {exc}") from None
                how = "downloaded"
                if blob != own and not _held(own, f.size):
                    await anyio.to_thread.run_sync(cache.adopt, *kinds, f.file_id, blob, "hardlink")
        await anyio.to_thread.run_sync(cache.link, *kinds, rev.commit, f.path, f.file_id)
        setattr(result, how, getattr(result, how) + 1)
        for source, n in by_source.items():
            result.bytes_by_source[source] = result.bytes_by_source.get(source, 0) + n
        listener.file_done(f.path, how, by_source)

    try:
        async with anyio.create_task_group() as tg:
            for f in wanted:
                tg.start_soon(one, f)
    except BaseExceptionGroup as group:  # one line for the user: the first real failure
        raise first_leaf(group) from None
    await anyio.to_thread.run_sync(cache.write_ref, *kinds, spec.revision, rev.commit)
    with contextlib.suppress(OSError):
        await anyio.to_thread.run_sync(managed.remember, host.cfg.home, *kinds, rev.commit)
    with contextlib.suppress(Exception):  # telling the swarm is best effort
        await host.view.announce(
            [f.file_id for f in wanted], [(spec.repo_type, spec.repo_id, rev.commit)], False
        )
    if host.cache_changed is not None:
        with contextlib.suppress(Exception):
            await host.cache_changed()
    result.seconds = time.monotonic() - started
    return result


async def count_holders(view: PeersView, files: list[RemoteFile]) -> dict[str, int]:
    """How many peers hold each file (a dry run's answer), a few lookups at a time."""
    counts: dict[str, int] = {}
    limiter = anyio.CapacityLimiter(8)

    async def one(f: RemoteFile) -> None:
        async with limiter:
            with anyio.move_on_after(HOLDERS_TIMEOUT):
                try:
                    counts[f.path] = len(await view.holders(f.file_id, fresh=False))
                except Exception as exc:  # a dry run says what it can
                    log.info("holders of %s: %s", f.path, exc)

    async with anyio.create_task_group() as tg:
        for f in files:
            tg.start_soon(one, f)
    return counts


def first_leaf(exc: BaseException) -> BaseException:
    """The first real failure inside nested task-group errors, for a one-line message."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@contextlib.asynccontextmanager
async def local_host(cfg: config.Config, cache_dir: str | None = None) -> AsyncIterator[JobHost]:
    """A host in this process (no daemon runs): saved peers are the only holders; its
    cache is the asker's (``--cache-dir``), so nothing lands anywhere else."""
    from hffs.discovery import SavedPeers
    from hffs.peers import PeerClient

    cache = HubCache(Path(cache_dir)) if cache_dir else HubCache(config.hub_cache_dir())
    async with (
        httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
            follow_redirects=True,  # from upstream, where hffs.trust allows; never from a peer
            event_hooks={"response": [redirect_guard(cfg.upstream_endpoints())]},
        ) as client,
        PeerClient(cfg.swarm_secret) as peers,
    ):
        view = SavedPeers(cfg, peers)
        # What a daemon started later serves as these files' manifests (not digested again).
        manifests = ManifestCache(cfg.state_dir / "manifests")
        manager = DownloadManager(
            cache, cfg.partial_dir, view, client, view.peer_auth, manifests=manifests
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.run)
            yield JobHost(cfg, cache, manager, view)
            tg.cancel_scope.cancel()


async def run_local(spec: JobSpec, listener: JobListener) -> JobResult:
    """Run a job in this process (no daemon runs)."""
    try:
        async with local_host(config.Config.load(), spec.cache_dir) as host:
            return await run_job(spec, host, listener)
    except BaseExceptionGroup as group:  # the host's task group wraps the job's failure
        raise first_leaf(group) from None
