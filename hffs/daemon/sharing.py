"""Learning whether repos found in the cache are public, by asking upstream anonymously.

What HF tools downloaded before hffs ran (or with a token) is of unknown visibility and
is not shared (``hffs.trust``). When an upstream endpoint answers, one anonymous repo-info
request per repo settles it; the answer is kept in the hffs home (``hffs.visibility``).
What is known public is asked about again once the answer is old
(``hffs.trust.visibility_stale``): a repo made private or gated since stops being shared.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import anyio

from hffs.cache import HubCache
from hffs.config import ZERO_COMMIT
from hffs.daemon.hub_api import HOPS_HEADER, listing_from_info
from hffs.daemon.upstream import Upstream
from hffs.trust import PRIVATE, PUBLIC, Visibility, visibility_from_info, visibility_stale
from hffs.visibility import VisibilityStore

log = logging.getLogger(__name__)

BATCH = 32  # repos asked about per round
RETRY_AFTER = 120.0  # a repo upstream could not tell about is asked again after this
ASK_TIMEOUT = 10.0
IDLE = 300.0  # rounds without being woken


class VisibilityLearner:
    def __init__(
        self,
        cache: HubCache,
        store: VisibilityStore,
        upstream: Upstream,
        on_public: Callable[[], Awaitable[object]],
    ) -> None:
        self.cache = cache
        self.store = store
        self.upstream = upstream
        self.on_public = on_public  # what is shared changed (either way): rescan
        self._asked: dict[tuple[str, str, str | None], float] = {}
        self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def _get(self, path: str) -> tuple[int, object] | None:
        """One anonymous GET upstream: (status, JSON body or None); None if unreachable."""
        ans = None
        with anyio.move_on_after(ASK_TIMEOUT):
            ans = await self.upstream.ask("GET", path, {HOPS_HEADER: "1"})
        if ans is None:
            return None
        try:
            return ans.status, (json.loads(ans.body) if ans.status == 200 else None)
        except (ValueError, RecursionError):
            return ans.status, None

    async def ask(self, repo_type: str, repo_id: str) -> Visibility | None:
        """One anonymous question; records and returns the answer (None: upstream silent)."""
        got = await self._get(f"/api/{repo_type}s/{quote(repo_id, safe='/')}")
        vis = visibility_from_info(*got) if got is not None else None
        if vis is not None:
            await anyio.to_thread.run_sync(self.store.record, repo_type, repo_id, vis)
            log.info("%s %s is %s", repo_type, repo_id, vis)
        return vis

    async def learn_revision(self, repo_type: str, repo_id: str, commit: str) -> bool:
        """The content ids a public revision names, asked anonymously: only those of the
        cached files are shared (not a file imported or changed under the repo's name)."""
        path = f"/api/{repo_type}s/{quote(repo_id, safe='/')}/revision/{commit}?blobs=true"
        got = await self._get(path)
        if got is None or got[0] != 200:
            return False
        listing = listing_from_info(got[1], "")
        if listing is None or listing.commit != commit:
            return False
        vis = (
            visibility_from_info(200, {**got[1], "id": repo_id})
            if isinstance(got[1], dict)
            else None
        )
        if vis != PUBLIC:
            if vis is not None:
                await anyio.to_thread.run_sync(self.store.record, repo_type, repo_id, vis)
            return False
        ids = [f.file_id for f in listing.files.values()]
        await anyio.to_thread.run_sync(self.store.record, repo_type, repo_id, PUBLIC, ids)
        return True

    def _todo(self) -> list[tuple[str, str, str | None]]:
        """Blocking: (type, repo, None) for repos of unknown visibility or known public
        long ago, (type, repo, commit) for cached revisions of repos not known private
        with unshared files."""
        out: list[tuple[str, str, str | None]] = []
        now = time.time()
        for repo_type, repo_id in self.cache.iter_repos():
            vis = self.store.get(repo_type, repo_id)
            if vis == PRIVATE:
                continue
            if vis is None or visibility_stale(vis, self.store.learnt_at(repo_type, repo_id), now):
                out.append((repo_type, repo_id, None))
            for commit in self.cache.commits(repo_type, repo_id):
                if commit == ZERO_COMMIT:
                    continue  # imported files: no upstream revision names them
                files = self.cache.files(repo_type, repo_id, commit)
                if any(not self.store.id_shared(f.blob_id) for f in files):
                    out.append((repo_type, repo_id, commit))
        return out

    async def round(self) -> int:
        """Ask about up to BATCH repos and revisions; how many repos or revisions changed
        what is shared (revisions learnt public, public repos now private)."""
        if self.store.private_swarm or not self.upstream.endpoints:
            return 0
        now = time.monotonic()
        todo = [
            item
            for item in await anyio.to_thread.run_sync(self._todo)
            if now - self._asked.get(item, -RETRY_AFTER) >= RETRY_AFTER
        ][:BATCH]
        learned = 0
        for repo_type, repo_id, commit in todo:
            self._asked[(repo_type, repo_id, commit)] = now
            if commit is None:
                was = self.store.get(repo_type, repo_id)
                vis = await self.ask(repo_type, repo_id)
                learned += was == PUBLIC and vis == PRIVATE  # no longer shared: rescan
            elif self.store.get(repo_type, repo_id) != PRIVATE:
                learned += await self.learn_revision(repo_type, repo_id, commit)
        return learned

    async def run(self) -> None:
        while True:
            if await self.round():
                await self.on_public()
            with anyio.move_on_after(IDLE):
                await self._wake.wait()
            self._wake = anyio.Event()
