"""Learning whether repos found in the cache are public, by asking upstream anonymously.

What HF tools downloaded before hffs ran (or with a token) is of unknown visibility and
is not shared (``hffs.trust``). When an upstream endpoint answers, one anonymous repo-info
request per repo settles it; the answer is kept in the hffs home (``hffs.visibility``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import anyio

from hffs.cache import HubCache
from hffs.daemon.hub_api import HOPS_HEADER
from hffs.daemon.upstream import Upstream
from hffs.trust import PUBLIC, visibility_from_info
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
        self.on_public = on_public
        self._asked: dict[tuple[str, str], float] = {}
        self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def ask(self, repo_type: str, repo_id: str) -> str | None:
        """One anonymous question; records and returns the answer (None: upstream silent)."""
        path = f"/api/{repo_type}s/{quote(repo_id, safe='/')}"
        ans = None
        with anyio.move_on_after(ASK_TIMEOUT):
            ans = await self.upstream.ask("GET", path, {HOPS_HEADER: "1"})
        if ans is None:
            return None
        try:
            body = json.loads(ans.body) if ans.status == 200 else None
        except (ValueError, RecursionError):
            body = None
        vis = visibility_from_info(ans.status, body)
        if vis is not None:
            await anyio.to_thread.run_sync(self.store.record, repo_type, repo_id, vis)
            log.info("%s %s is %s", repo_type, repo_id, vis)
        return vis

    async def round(self) -> int:
        """Ask about up to BATCH repos of unknown visibility; how many turned out public."""
        if self.store.private_swarm or not self.upstream.endpoints:
            return 0
        repos = await anyio.to_thread.run_sync(lambda: list(self.cache.iter_repos()))
        now = time.monotonic()
        todo = [
            r
            for r in await anyio.to_thread.run_sync(self.store.unknown, repos)
            if now - self._asked.get(r, -RETRY_AFTER) >= RETRY_AFTER
        ][:BATCH]
        public = 0
        for repo_type, repo_id in todo:
            self._asked[(repo_type, repo_id)] = now
            public += await self.ask(repo_type, repo_id) == PUBLIC
        return public

    async def run(self) -> None:
        while True:
            if await self.round():
                await self.on_public()
            with anyio.move_on_after(IDLE):
                await self._wake.wait()
            self._wake = anyio.Event()
