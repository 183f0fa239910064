"""Holder lookups cached per key (hffs/daemon/lookups.py), with an injected clock."""

from __future__ import annotations

import anyio

from hffs.daemon.lookups import EMPTY_TTL, LOOKUP_TTL, MIN_GAP, Lookups, lookup_due


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


def test_fresh_asks_and_forget_look_again() -> None:
    now = [0.0]
    calls: list[float] = []

    async def crawl(query: tuple[str, ...]) -> list[dict[str, object]]:
        calls.append(now[0])
        return [{"host": "h", "port": 1}]

    async def main() -> None:
        lookups = Lookups(crawl, clock=lambda: now[0])
        await lookups.get(("file", "a"))
        now[0] = 1.0
        await lookups.get(("file", "a"), fresh=True)  # too soon after the last one
        now[0] = MIN_GAP + 0.5
        await lookups.get(("file", "a"), fresh=True)  # every holder failed: look again
        lookups.forget(("file", "a"))  # a holder announced itself
        await lookups.get(("file", "a"))

    anyio.run(main)
    assert calls == [0.0, MIN_GAP + 0.5, MIN_GAP + 0.5]
