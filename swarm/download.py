"""One file's download: the scheduler's decisions carried out over HTTP.

The scheduler (plain code) decides which source gets which chunk; this module
does the I/O: it asks holders for their have-bitmaps and manifests, runs one task
per request inside a task group, verifies and writes each chunk as it lands,
cancels requests the scheduler gave up on (timeouts, endgame losers), and
publishes the file only after its whole-file hash matched its id.

If the whole file does not match (peers that told a consistent lie), the chunks
peers gave are dropped with those peers, and the next round asks upstream only.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
import httpx

from swarm.manifest import Manifest
from swarm.scheduler import Request, Scheduler, SchedulerConfig
from swarm.sources import PeerAddr, Source, SourceError, fetch_have, fetch_manifest, fetch_range
from swarm.store import PartialFile

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # how often holders' bitmaps and the holder list are refreshed
TICK_SECONDS = 0.25  # upper bound on how long a timed-out request goes unnoticed
MAX_ROUNDS = 3
MEMORY_BUDGET = 256 << 20  # bytes of chunks in flight at once, whatever the file size
PROBE_TIMEOUT = 5.0


class DownloadError(Exception):
    """The file could not be completed; the message says why, for the user."""


class Holders(Protocol):
    """Where to learn who holds a file, and how to tell others we do."""

    async def holders(self, file_id: str) -> list[PeerAddr]: ...
    async def announce_partial(self, file_id: str) -> None: ...


OnBytes = Callable[[str, bool, int], None]  # (source id, upstream?, bytes)


@dataclass
class FileReport:
    file_id: str
    size: int
    bytes_by_source: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    bad_chunks: int = 0
    rounds: int = 1


class _Round:
    """One pass at filling the missing chunks, driving one Scheduler."""

    def __init__(
        self,
        pf: PartialFile,
        upstream: list[Source],
        client: httpx.AsyncClient,
        peer_headers: dict[str, str],
        holders: Holders | None,
        banned: set[str],
        report: FileReport,
        on_bytes: OnBytes | None,
        rng: random.Random,
    ) -> None:
        self.pf = pf
        self.client = client
        self.peer_headers = peer_headers
        self.holders = holders
        self.banned = banned
        self.report = report
        self.on_bytes = on_bytes
        self.sources: dict[str, Source] = {s.id: s for s in upstream}
        self.peers: dict[str, PeerAddr] = {}
        # Digests a peer without the full manifest vouched for (transport check only;
        # the whole-file hash is what guards against a liar).
        self.peer_digests: dict[str, tuple[bytes | None, ...]] = {}
        self.peer_chunks: dict[int, str] = {}
        self.announced = False
        cap = max(4, MEMORY_BUDGET // max(pf.chunk_size, 1))
        self.sched = Scheduler(
            pf.n_chunks,
            done=[i for i in range(pf.n_chunks) if pf.has(i)],
            rng=rng,
            config=SchedulerConfig(),
        )
        self.max_in_flight = cap
        for s in upstream:
            self.sched.add_upstream(s.id)
        self.running: dict[Request, anyio.CancelScope] = {}
        self.wake = anyio.Event()

    # -- holders -------------------------------------------------------------

    async def _probe(self, peer: PeerAddr) -> None:
        pid = str(peer)
        fid = self.pf.file_id
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                if pid not in self.peers:
                    manifest = await fetch_manifest(
                        self.client, peer, fid, self.pf.size, self.peer_headers
                    )
                    self._adopt_manifest(pid, manifest)
                have = await fetch_have(self.client, peer, fid, self.pf.n_chunks, self.peer_headers)
        except (SourceError, TimeoutError) as exc:
            log.debug("holder %s: %s", pid, exc)
            return
        if pid in self.banned:
            return
        if pid not in self.peers:
            self.peers[pid] = peer
            self.sources[pid] = Source(pid, peer.blob_url(fid), False, self.peer_headers)
            self.sched.add_peer(pid, have)
        else:
            self.sched.set_have(pid, have)
        self.wake.set()

    def _adopt_manifest(self, pid: str, manifest: Manifest) -> None:
        if manifest.complete and self.pf.manifest is None:
            dropped = self.pf.set_manifest(manifest)
            if dropped:
                self.sched.reopen(dropped)
        self.peer_digests[pid] = manifest.digests

    async def _refresh_loop(self) -> None:
        if self.holders is None:
            return
        while not self.sched.done:
            try:
                found = await self.holders.holders(self.pf.file_id)
            except Exception as exc:  # discovery is best effort: upstream still works
                log.warning("looking up holders of %s failed: %s", self.pf.file_id[:12], exc)
                found = []
            wanted = {str(p): p for p in found if str(p) not in self.banned}
            wanted.update(self.peers)
            async with anyio.create_task_group() as tg:
                for peer in wanted.values():
                    tg.start_soon(self._probe, peer)
            await anyio.sleep(REFRESH_SECONDS)

    # -- requests ------------------------------------------------------------

    async def _fetch(self, req: Request, scope: anyio.CancelScope) -> None:
        source = self.sources[req.source]
        start, end = self.pf.span(req.chunk)
        try:
            with scope:
                try:
                    data, digest = await fetch_range(self.client, source, start, end)
                except SourceError as exc:
                    log.debug("chunk %d from %s: %s", req.chunk, req.source, exc)
                    self.sched.on_failure(req, anyio.current_time(), bad_data=False)
                    return
                if not source.upstream and self.pf.manifest is None:
                    vouched = self.peer_digests.get(req.source, ())
                    if req.chunk >= len(vouched) or vouched[req.chunk] != digest:
                        self._bad(req)
                        return
                if self.pf.has(req.chunk):  # an endgame twin got here first
                    self.sched.on_cancelled(req)
                    return
                if not await anyio.to_thread.run_sync(self.pf.write_chunk, req.chunk, data, digest):
                    self._bad(req)
                    return
                if not source.upstream:
                    self.peer_chunks[req.chunk] = req.source
                self.report.bytes_by_source[req.source] += len(data)
                if self.on_bytes:
                    self.on_bytes(req.source, source.upstream, len(data))
                for loser in self.sched.on_success(req, anyio.current_time(), len(data)):
                    if loser in self.running:
                        self.running[loser].cancel()
                if not self.announced and self.holders is not None:
                    self.announced = True
                    await self.holders.announce_partial(self.pf.file_id)
        finally:
            self.running.pop(req, None)
            self.wake.set()

    def _bad(self, req: Request) -> None:
        log.warning("chunk %d from %s failed verification", req.chunk, req.source)
        self.report.bad_chunks += 1
        if not self.sources[req.source].upstream:
            self.banned.add(req.source)
        self.sched.on_failure(req, anyio.current_time(), bad_data=True)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._refresh_loop)
            while not self.sched.done:
                now = anyio.current_time()
                room = self.max_in_flight - len(self.running)
                for req in self.sched.next_requests(now, limit=room):
                    scope = anyio.CancelScope()
                    self.running[req] = scope
                    tg.start_soon(self._fetch, req, scope)
                live = set(self.sched.in_flight)
                for req, scope in list(self.running.items()):
                    if req not in live:  # the scheduler gave up on it (timeout)
                        scope.cancel()
                if self.sched.failed_chunks:
                    tg.cancel_scope.cancel()
                    break
                self.wake = anyio.Event()
                with anyio.move_on_after(TICK_SECONDS):
                    await self.wake.wait()
            tg.cancel_scope.cancel()
        if self.sched.failed_chunks:
            failed = sorted(self.sched.failed_chunks)
            raise DownloadError(
                f"{len(failed)} chunk(s) of {self.pf.file_id[:12]}… could not be fetched from any "
                "peer or endpoint (is the mirror or huggingface.co reachable?)"
            )


async def download_file(
    file_id: str,
    size: int,
    *,
    dest: Path,
    store_root: Path,
    upstream: list[Source],
    client: httpx.AsyncClient,
    holders: Holders | None = None,
    peer_headers: dict[str, str] | None = None,
    on_bytes: OnBytes | None = None,
    rng: random.Random | None = None,
) -> FileReport:
    """Fetch one file into ``dest``, from peers and then ``upstream`` in order.

    Resumes whatever an earlier attempt left in ``store_root``. Raises
    DownloadError when the file cannot be completed and verified."""
    started = anyio.current_time()
    report = FileReport(file_id, size)
    rng = rng or random.Random()
    banned: set[str] = set()
    pf = await anyio.to_thread.run_sync(PartialFile, store_root, file_id, size)
    try:
        for round_no in range(1, MAX_ROUNDS + 1):
            report.rounds = round_no
            last = round_no == MAX_ROUNDS
            rnd = _Round(
                pf,
                upstream,
                client,
                peer_headers or {},
                None if last else holders,
                banned,
                report,
                on_bytes,
                rng,
            )
            await rnd.run()
            if await anyio.to_thread.run_sync(pf.verify_whole):
                await anyio.to_thread.run_sync(pf.publish, dest)
                report.seconds = anyio.current_time() - started
                return report
            # A consistent lie got past the chunk checks: keep only what upstream gave.
            liars = set(rnd.peer_chunks.values())
            log.warning(
                "%s failed its whole-file check; dropping chunks from %s", file_id[:12], liars
            )
            banned |= liars
            pf.drop_chunks(rnd.peer_chunks)
            if not rnd.peer_chunks:
                pf.drop_chunks(range(pf.n_chunks))
            pf.clear_manifest()
            if not upstream:
                break
        raise DownloadError(
            f"{file_id[:12]}… did not match its hash after {report.rounds} attempt(s); "
            "nothing was published"
        )
    finally:
        pf.close()
