"""Who may get what through the daemon's HF endpoint (the README's "Security").

- While upstream answers, a file is served only when upstream, asked with the caller's own
  token, lists the revision (and, for a gated repo, lets that token resolve the file); any
  refusal (4xx, 429, 508, a timeout) is relayed and final.
- Only when no upstream can be reached (no connection, 5xx) does the swarm answer: what
  peers vouch for (``hffs.trust.vouch``) and what this machine holds of repos known public.
  A private or gated file in this machine's cache is never served without upstream's yes.
- Chunks from upstream go with the caller's token (where it may go), never the daemon's.
- Each listing upstream gives teaches this machine whether the repo is public
  (``hffs.visibility``), which decides what peers may have of it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol
from urllib.parse import quote

import anyio
import httpx
from starlette.responses import Response

from hffs.cache import HubCache
from hffs.daemon.hub_api import (
    HOPS_HEADER,
    Listing,
    hub_error,
    listing_from_holders,
    listing_from_info,
    upstream_headers,
)
from hffs.daemon.sharing import VisibilityLearner
from hffs.daemon.upstream import Answer, TTLCache, Upstream, auth_key, relay, timed_out
from hffs.hub import file_url
from hffs.listing import read_local
from hffs.trust import NO_FOLLOW, PUBLIC, visibility_of_listing
from hffs.visibility import VisibilityStore
from swarm.sources import Source

log = logging.getLogger(__name__)

META_TTL = 30.0  # how long an upstream answer (listing or refusal) for one token is reused
UNREACHABLE_TTL = 5.0  # how long "nobody answered" is reused: a blocked hub costs timeouts
SWARM_TTL = 10.0
META_BUDGET = 7.0  # seconds for upstream metadata behind one HEAD (huggingface_hub waits 10)
SWARM_BUDGET = 3.0  # seconds to ask the DHT and peers for a revision listing


class Searcher(Protocol):
    async def search(self, repo_type: str, repo_id: str, revision: str) -> list[dict[str, Any]]: ...


class Access:
    def __init__(
        self,
        view: Searcher,
        upstream: Upstream,
        cache: HubCache,
        sharing: VisibilityStore | None,
    ) -> None:
        self.view = view
        self.upstream = upstream
        self.cache = cache
        self.sharing = sharing
        self._meta = TTLCache()
        self.learner: VisibilityLearner | None = None
        if sharing is not None:
            self.learner = VisibilityLearner(cache, sharing, upstream, _nothing)

    # -- listings ----------------------------------------------------------------------

    async def listing(
        self, auth: str | None, repo_type: str, repo_id: str, rev: str, hops: int = 0
    ) -> Listing | Answer | str:
        """Upstream's listing for this caller, or upstream's refusal (an Answer), or (no
        upstream reachable) what the swarm vouches for, or why nothing can be served."""
        # hops in the key: a caller's hop header (508 upstream) must not answer for others
        key = (auth_key(auth), repo_type, repo_id, rev, str(hops))
        async with self._meta.lock(key):
            hit, value = self._meta.get(key)
            if hit:
                return value
            path = f"/api/{repo_type}s/{repo_id}/revision/{_quote(rev)}?blobs=true"
            ans: Answer | None = None
            slow = bool(self.upstream.endpoints)
            with anyio.move_on_after(META_BUDGET):
                ans = await self.upstream.ask("GET", path, upstream_headers(auth, hops))
                slow = False
            if slow:  # connected but slow is an answer: never a reason to skip the check
                ans = timed_out(self.upstream.endpoints[0])
            result: Listing | Answer | str | None = ans
            if ans is not None and ans.status == 200:
                try:
                    body = json.loads(ans.body)
                except (ValueError, RecursionError):
                    body = None
                result = listing_from_info(body, ans.endpoint)
                if result is not None:
                    await self._learn(ans.endpoint, auth, repo_type, repo_id, body, result)
                else:
                    result = hub_answer_invalid(ans)
            if result is None:
                swarm = await self.swarm_listing(repo_type, repo_id, rev)
                ttl = SWARM_TTL if isinstance(swarm, Listing) else UNREACHABLE_TTL
                self._meta.put(key, swarm, ttl)
                return swarm
            # a passing refusal (slow, rate limited, 5xx) is not kept as long as an answer
            brief = isinstance(result, Answer) and result.status >= 429
            self._meta.put(key, result, UNREACHABLE_TTL if brief else META_TTL)
            return result

    async def _learn(
        self,
        endpoint: str,
        auth: str | None,
        repo_type: str,
        repo_id: str,
        body: Any,
        listing: Listing,
    ) -> None:
        """Remember what this listing says of the repo's visibility (and public ids)."""
        if self.sharing is None:
            return
        anonymous = not auth or not self.upstream.headers_for(endpoint, {"authorization": auth})
        vis = visibility_of_listing(anonymous, body)
        if listing.gated:
            vis = "private"
        ids = [f.file_id for f in listing.files.values()]
        if vis is not None:
            await anyio.to_thread.run_sync(self.sharing.record, repo_type, repo_id, vis, ids)
        elif self.learner is not None and self.sharing.get(repo_type, repo_id) is None:
            # Asked with a token: one anonymous question settles whether peers may have it.
            vis = await self.learner.ask(repo_type, repo_id)
            if vis == PUBLIC:
                await anyio.to_thread.run_sync(self.sharing.record, repo_type, repo_id, vis, ids)

    async def swarm_listing(self, repo_type: str, repo_id: str, rev: str) -> Listing | str:
        """What the peers vouch for of a revision, with what this machine holds of it if
        the repo is known public (private content needs upstream's yes, always)."""
        local = None
        if self.sharing is not None and self.sharing.get(repo_type, repo_id) == PUBLIC:
            local = await anyio.to_thread.run_sync(read_local, self.cache, repo_type, repo_id, rev)
        answers: list[dict[str, Any]] = []
        with anyio.move_on_after(SWARM_BUDGET):
            answers = await self.view.search(repo_type, repo_id, rev)
        private_swarm = self.sharing is not None and self.sharing.private_swarm
        found = listing_from_holders(answers, rev, local=local, private_swarm=private_swarm)
        if isinstance(found, Listing) and found.vouched is not None and self.sharing is not None:
            vouched = found.vouched
            log.warning("%s@%s: %s", repo_id, rev, vouched.describe())
            if vouched.peer_ids:  # bytes peers serve are out there already
                await anyio.to_thread.run_sync(self.sharing.record_peer_ids, vouched.peer_ids)
        if isinstance(found, str):
            return f"no upstream endpoint answered and {found}"
        return found

    # -- gated repos -------------------------------------------------------------------

    async def gate(
        self,
        client: httpx.AsyncClient,
        auth: str | None,
        listing: Listing,
        repo_type: str,
        repo_id: str,
        path: str,
        hops: int,
    ) -> Response | None:
        """For a gated repo, upstream must let this caller resolve a file; None if it does."""
        assert listing.endpoint is not None
        key = ("gate", auth_key(auth), repo_type, repo_id)
        hit, refusal = self._meta.get(key)
        if hit:
            return refusal
        url = file_url(listing.endpoint, repo_type, repo_id, listing.commit, path)
        headers = self.upstream.headers_for(listing.endpoint, upstream_headers(auth, hops))
        try:
            resp = await client.head(
                url, headers=headers, follow_redirects=False, extensions={NO_FOLLOW: True}
            )
        except (httpx.HTTPError, OSError):
            return hub_error(502, None, "cannot confirm access to this gated repo upstream")
        refusal = None
        if resp.status_code >= 400:
            refusal = relay(Answer(listing.endpoint, resp.status_code, resp.headers, b""), "")
        self._meta.put(key, refusal, META_TTL)
        return refusal

    # -- upstream chunks ---------------------------------------------------------------

    def sources(
        self,
        listing: Listing,
        auth: str | None,
        repo_type: str,
        repo_id: str,
        path: str,
        hops: int,
    ) -> tuple[Source, ...]:
        """Upstream endpoints as chunk sources, the one that answered first; the caller's
        own token where it may go (an anonymous caller's chunks are fetched anonymously)."""
        order = list(self.upstream.endpoints)
        if listing.endpoint in order:
            order.remove(listing.endpoint)
            order.insert(0, listing.endpoint)
        base = {HOPS_HEADER: str(hops + 1), **({"authorization": auth} if auth else {})}
        return tuple(
            Source(
                e,
                file_url(e, repo_type, repo_id, listing.commit, path),
                True,
                self.upstream.headers_for(e, base),
            )
            for e in order
        )


async def _nothing() -> None:
    return None


def _quote(rev: str) -> str:
    return quote(rev, safe="")


def hub_answer_invalid(ans: Answer) -> Answer:
    """An upstream 200 that is no repo info: refused, not a reason to ask peers."""
    message = "upstream answered with something that is not repo info"
    headers = httpx.Headers({"content-type": "application/json", "x-error-message": message})
    return Answer(ans.endpoint, 502, headers, json.dumps({"error": message}).encode())
