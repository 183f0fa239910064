"""Holder lookups cached per key (hffs/daemon/lookups.py), with an injected clock."""

from __future__ import annotations

import anyio

from hffs.daemon.lookups import (
    EMPTY_TTL,
    LOOKUP_TTL,
    MAX_ADDED,
    MIN_GAP,
    Lookups,
    lookup_due,
    lookup_key,
)
from tests.dht_nodes import node_starter


def test_due_rules() -> None:
    assert lookup_due(None, 0, 0.0, fresh=False)
    assert not lookup_due(0.0, 3, LOOKUP_TTL - 1, fresh=False)
    assert lookup_due(0.0, 3, LOOKUP_TTL, fresh=False)
    assert lookup_due(0.0, 0, EMPTY_TTL, fresh=False)  # nobody found: look again soon
    assert not lookup_due(0.0, 3, MIN_GAP - 1, fresh=True)  # even on demand, not too often
    assert lookup_due(0.0, 3, MIN_GAP, fresh=True)


def test_a_download_asking_every_two_seconds_crawls_once_per_ttl() -> None:
    now = [0.0]
    found = [{"host": "127.0.0.2", "port": 1}]

    async def crawl(query: tuple[str, ...]) -> list[dict[str, object]]:
        await anyio.sleep(0)
        return found

    async def main() -> Lookups:
        lookups = Lookups(crawl, clock=lambda: now[0])
        for _ in range(300):  # ten minutes of asking every 2 s, by four files at once
            async with anyio.create_task_group() as tg:
                for f in "abcd":
                    tg.start_soon(lambda f=f: lookups.get(("file", f)))
            now[0] += 2.0
        return lookups

    lookups = anyio.run(main)
    assert lookups.asks == 1200
    assert lookups.crawls == 4 * (600 // int(LOOKUP_TTL))


def test_fresh_asks_and_new_holders_look_again_but_not_too_often() -> None:
    now = [0.0]
    calls: list[float] = []

    async def crawl(query: tuple[str, ...]) -> list[dict[str, object]]:
        calls.append(now[0])
        return [{"host": "h", "port": 1}]

    async def main() -> None:
        lookups = Lookups(crawl, clock=lambda: now[0])
        await lookups.get(("file", "a"))
        await lookups.get(("file", "b"))
        now[0] = 1.0
        await lookups.get(("file", "a"), fresh=True)  # too soon after the last one
        now[0] = MIN_GAP + 0.5
        await lookups.get(("file", "a"), fresh=True)  # every holder failed: look again
        now[0] = 2 * MIN_GAP + 1.0
        for _ in range(1000):  # a flood of announcements: news, but one crawl
            lookups.new_holder(lookup_key(("file", "a")))
        await lookups.get(("file", "a"))
        await lookups.get(("file", "a"))
        await lookups.get(("file", "b"))  # nothing new for b: still cached
        lookups.new_holder(b"\0" * 20)  # a key nobody asked about: nothing to refresh
        await lookups.get(("file", "b"))

    anyio.run(main)
    assert calls == [0.0, 0.0, MIN_GAP + 0.5, 2 * MIN_GAP + 1.0]


def test_a_dht_node_tells_of_new_holders_not_of_re_announcements() -> None:
    """Real DHT nodes on loopback UDP: the second node's announcement reaches the first,
    whose hook hears the key once; the same holder announcing again is no news."""
    key = lookup_key(("file", "c" * 64))
    heard: list[bytes] = []

    async def main() -> None:
        async with node_starter(2.0) as start:
            a, b = await start("127.0.0.1"), await start("127.0.0.1")
            a.on_new_holder = heard.append
            assert a.address is not None
            await b.bootstrap([a.address])
            for _ in range(3):
                await b.provide(key)

    anyio.run(main, backend="asyncio")
    assert heard == [key]


def test_an_announced_holder_joins_the_cached_answer_at_once() -> None:
    """Downloaders of one file announce as they start; each must find the others then,
    not one crawl (MIN_GAP or more) later. Bounded, whatever the flood."""
    now = [0.0]
    calls: list[float] = []

    async def crawl(query: tuple[str, ...]) -> list[dict[str, object]]:
        calls.append(now[0])
        return [{"host": "127.0.0.2", "port": 1}]

    async def main() -> list[list[dict[str, object]]]:
        lookups = Lookups(crawl, clock=lambda: now[0])
        key = lookup_key(("file", "a"))
        lookups.new_holder(key, ("127.0.0.9", 9))  # nobody asked yet: nothing cached
        first = await lookups.get(("file", "a"))
        now[0] = 1.0
        lookups.new_holder(key, ("127.0.0.3", 3))
        lookups.new_holder(key, ("127.0.0.3", 3))  # the same holder twice: listed once
        second = await lookups.get(("file", "a"))
        for i in range(10_000):
            lookups.new_holder(key, (f"10.0.{i // 250}.{i % 250}", 1))
        third = await lookups.get(("file", "a"))
        return [first, second, third]

    first, second, third = anyio.run(main)
    assert calls == [0.0]  # no crawl: the announcement itself named the holder
    assert [(f["host"], f["port"]) for f in first] == [("127.0.0.2", 1)]
    assert [(f["host"], f["port"]) for f in second] == [("127.0.0.2", 1), ("127.0.0.3", 3)]
    assert len(third) == MAX_ADDED


def test_a_dht_node_names_the_new_holder() -> None:
    key = lookup_key(("file", "d" * 64))
    heard: list[tuple[bytes, str, int]] = []

    async def main() -> int:
        async with node_starter(2.0) as start:
            a, b = await start("127.0.0.1"), await start("127.0.0.1")
            a.on_holder = lambda k, host, port: heard.append((k, host, port))
            assert a.address is not None and b.address is not None
            await b.bootstrap([a.address])
            await b.provide(key)
            await b.provide(key)
            return b.address[1]

    port = anyio.run(main, backend="asyncio")
    assert heard == [(key, "127.0.0.1", port)]


def test_holders_announced_during_a_crawl_join_its_answer_and_news_counts_them() -> None:
    """A downloader that starts with others crawls while they announce: their records
    reach this node after the crawl asked, so they are kept aside and join its answer.
    ``news`` returns as soon as the cached answer gained holders since the caller's last
    count (no edge is missed between two calls) and not before."""
    key = lookup_key(("file", "a"))
    lookups_box: list[Lookups] = []

    async def crawl(query: tuple[str, ...]) -> list[dict[str, object]]:
        lookups_box[0].new_holder(key, ("127.0.0.4", 4))  # arrives mid-crawl
        lookups_box[0].new_holder(key, ("127.0.0.2", 1))  # the crawl found it too
        return [{"host": "127.0.0.2", "port": 1}]

    async def main() -> tuple[list[dict[str, object]], list[int], bool]:
        lookups = Lookups(crawl, clock=lambda: 0.0)
        lookups_box.append(lookups)
        found = await lookups.get(("file", "a"))
        counts = [await lookups.news(("file", "a"), 0)]  # the mid-crawl one: at once
        waiting = True
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                nonlocal waiting
                counts.append(await lookups.news(("file", "a"), counts[0]))
                waiting = False

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            blocked = waiting  # nothing new: still waiting
            lookups.new_holder(key, ("127.0.0.4", 4))  # known already: no news
            await anyio.wait_all_tasks_blocked()
            blocked = blocked and waiting
            lookups.new_holder(key, ("127.0.0.5", 5))
        return found, counts, blocked

    found, counts, blocked = anyio.run(main)
    assert [(f["host"], f["port"]) for f in found] == [("127.0.0.2", 1), ("127.0.0.4", 4)]
    assert counts == [1, 2]
    assert blocked
