"""Who holds what (one service: lookups): the DHT and the saved peers (``Finder``), and
for the daemon's downloads the same lookups cached per key (``Lookups``).

A download asks who holds its file every few seconds; a DHT crawl per ask would
flood the swarm (a BitTorrent client asks its tracker every few minutes and then
trades have-messages). So an answer is kept for LOOKUP_TTL (EMPTY_TTL when nobody
was found: a holder may announce any moment), and a download whose holders all
failed may ask for a fresh one, at most every MIN_GAP. A holder announcing a key
here joins its cached answer at once, and downloads waiting on ``news`` of that key
hear of it then, not at their next ask. The control API's own lookups (``hffs model
search``) stay uncached: a person asked.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from hffs.cache import is_commit
from hffs.config import Peer
from hffs.daemon.app import any_revision_key, file_key, repo_key
from hffs.daemon.peerbook import PeerBook, gather
from hffs.peers import PeerClient
from swarm.dht import DHTNode

LOOKUP_TTL = 60.0
EMPTY_TTL = 5.0
MIN_GAP = 5.0
MAX_KEYS = 4096
MAX_ADDED = 64  # holders added to one cached answer by announcements, at most

Query = tuple[str, ...]
Found = list[dict[str, Any]]


def lookup_due(looked_at: float | None, found: int, now: float, *, fresh: bool) -> bool:
    """Whether to look a key up again (plain rule, see the module docstring)."""
    if looked_at is None:
        return True
    age = now - looked_at
    if fresh:
        return age >= MIN_GAP
    return age >= (LOOKUP_TTL if found else EMPTY_TTL)


class Lookups:
    """Cached answers of ``find`` per query; ``crawls`` counts the lookups made."""

    def __init__(
        self, find: Callable[[Query], Awaitable[Found]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._find = find
        self._clock = clock
        self._cache: dict[Query, tuple[float, Found]] = {}
        self._locks: dict[Query, anyio.Lock] = {}
        self._by_key: dict[bytes, Query] = {}  # DHT key -> the cached query it answers
        self._news: set[Query] = set()  # queries whose key gained a holder since
        self._listeners: dict[Query, set[anyio.Event]] = {}  # waiting in ``news``
        self._added: dict[Query, int] = {}  # holders that joined each cached answer
        self._crawling: dict[Query, Found] = {}  # announced while the crawl runs
        self.crawls = 0  # lookups made
        self.asks = 0  # answers given, cached or not

    async def get(self, query: Query, *, fresh: bool = False) -> Found:
        self.asks += 1
        lock = self._locks.setdefault(query, anyio.Lock())
        async with lock:  # concurrent asks for one key share one lookup
            hit = self._cache.get(query)
            fresh = fresh or query in self._news
            if hit is not None and not lookup_due(hit[0], len(hit[1]), self._clock(), fresh=fresh):
                return hit[1]
            # Holders announcing while the crawl runs are not in its answer: kept aside.
            self._by_key[lookup_key(query)] = query
            self._crawling[query] = []
            try:
                found = await self._find(query)
            finally:
                announced = self._crawling.pop(query)
            self.crawls += 1
            self._cache[query] = (self._clock(), found)
            self._news.discard(query)
            for entry in announced:
                self._add(query, entry)
            found = self._cache[query][1]
        if len(self._cache) > MAX_KEYS:  # forget the oldest answers
            for key, _ in sorted(self._cache.items(), key=lambda kv: kv[1][0])[: MAX_KEYS // 2]:
                del self._cache[key]
                self._locks.pop(key, None)
                self._news.discard(key)
                self._added.pop(key, None)
            self._by_key = {
                k: q for k, q in self._by_key.items() if q in self._cache or q in self._crawling
            }
        return found

    def new_holder(self, key: bytes, holder: tuple[str, int] | None = None) -> None:
        """A holder this node had no record of announced ``key`` here: the next ask for
        it looks again, though never sooner than MIN_GAP after the last lookup (so a
        flood of announcements costs at most one crawl per MIN_GAP). A named ``holder``
        (the address the DHT proved) joins the cached answer at once (or the answer of
        the crawl under way), and ``news`` tells the downloads waiting for it: those
        of one file find each other as they start, not a crawl later (at most
        MAX_ADDED)."""
        query = self._by_key.get(key)
        if query is None:
            return
        self._news.add(query)
        if holder is None:
            return
        entry = {"host": holder[0], "port": holder[1], "source": "dht"}
        crawling = self._crawling.get(query)
        if crawling is not None:
            if len(crawling) < MAX_ADDED:
                crawling.append(entry)
        elif query in self._cache:
            self._add(query, entry)

    def _add(self, query: Query, entry: dict[str, Any]) -> None:
        """``entry`` joins ``query``'s cached answer unless listed (or the answer is full)."""
        looked_at, found = self._cache[query]
        host, port = entry.get("host"), entry.get("port")
        if len(found) >= MAX_ADDED or any(
            f.get("host") == host and f.get("port") == port for f in found
        ):
            return
        self._cache[query] = (looked_at, [*found, entry])
        self._added[query] = self._added.get(query, 0) + 1
        for event in self._listeners.get(query, ()):
            event.set()

    async def news(self, query: Query, seen: int) -> int:
        """Returns once more holders joined ``query``'s cached answer than the ``seen``
        the caller got last time (0 at first); returns the new count."""
        while self._added.get(query, 0) <= seen:
            event = anyio.Event()
            listeners = self._listeners.setdefault(query, set())
            listeners.add(event)
            try:
                await event.wait()
            finally:
                listeners.discard(event)
                if not listeners:
                    self._listeners.pop(query, None)
        return self._added[query]


LOOKUP_TIMEOUT = 15.0  # one DHT lookup


def lookup_key(query: Query) -> bytes:
    """The DHT key of a query: a file id, a commit, or any revision of a repo (a ref)."""
    if query[0] == "file":
        return file_key(query[1])
    _, repo_type, repo_id, revision = query
    if is_commit(revision):
        return repo_key(repo_type, repo_id, revision)
    return any_revision_key(repo_type, repo_id)


class Finder:
    """Who holds what: the DHT's holders of a key, and the saved peers asked directly."""

    def __init__(
        self,
        node: DHTNode,
        book: PeerBook,
        http: PeerClient,
        on_lookup: Callable[[float], None] | None = None,  # seconds one DHT lookup took
    ) -> None:
        self.node, self.book, self.http = node, book, http
        self.on_lookup = on_lookup

    async def _candidates(self, key: bytes) -> tuple[list[tuple[str, int]], list[Peer]]:
        """Holders the DHT names (self excluded), and the saved peers not among them."""
        found: list[tuple[str, int]] = []
        if self.node.routing_size():
            with anyio.move_on_after(LOOKUP_TIMEOUT):
                started = time.monotonic()
                try:
                    providers = await self.node.find_providers(key)
                finally:
                    if self.on_lookup is not None:
                        self.on_lookup(time.monotonic() - started)
                found = [
                    (p.host, p.port) for p in providers if not self.book.is_self(p.host, p.port)
                ]
        return found, self.book.others(found)

    async def _ask(self, query: Query, host: str, port: int) -> Any:
        if query[0] == "file":
            return await self.http.has_file(host, port, query[1])
        return await self.http.revision(host, port, *query[1:])

    async def find_providers(self, query: Query) -> Found:
        found, saved = await self._candidates(lookup_key(query))
        answers = await gather(saved, lambda p: self._ask(query, p.host, p.port))
        out = [{"host": h, "port": p, "source": "dht"} for h, p in found]
        out += [
            {"host": p.host, "port": p.port, "source": "peer"}
            for p, ok in zip(saved, answers, strict=True)
            if ok
        ]
        return out

    async def search(self, repo_type: str, repo_id: str, revision: str) -> Found:
        query: Query = ("repo", repo_type, repo_id, revision)
        found, saved = await self._candidates(lookup_key(query))
        everyone = [*found, *((p.host, p.port) for p in saved)]
        listings = await gather(everyone, lambda a: self._ask(query, *a))
        return [
            {"host": host, "port": port, **listing}
            for (host, port), listing in zip(everyone, listings, strict=True)
            if listing
        ]
