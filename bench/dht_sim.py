"""Simulate a DHT swarm in one process: real DHTNode objects on loopback UDP.

Every node is a real :class:`swarm.dht.DHTNode` on its own 127.2.x.y address,
so the same protocol, routing table and crawl code runs as in the daemon. The
run joins N nodes one by one (each bootstraps from a few earlier ones), then
measures random provide/find pairs, removes a fraction of the nodes without
warning and measures again (old records, then fresh pairs among survivors).

    .venv/bin/python bench/dht_sim.py --nodes 500
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, field

import anyio

from swarm.dht import DHTNode, dht_key


def address(i: int) -> str:
    return f"127.2.{i // 250}.{i % 250 + 1}"


@dataclass
class Stats:
    ok: int = 0
    rounds: list[int] = field(default_factory=list)
    first_hit: list[int] = field(default_factory=list)
    queried: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def line(self, title: str) -> str:
        n = len(self.rounds)

        def dist(xs: list[float] | list[int]) -> str:
            if not xs:
                return "n/a"
            p95 = statistics.quantiles(xs, n=20)[18] if len(xs) > 1 else xs[0]
            mean, p50 = statistics.mean(xs), statistics.median(xs)
            return f"mean {mean:.2f} p50 {p50:g} p95 {p95:.3g} max {max(xs):g}"

        return (
            f"{title}\n"
            f"  success           {self.ok}/{n} = {100 * self.ok / max(n, 1):.1f}%\n"
            f"  crawl rounds      {dist(self.rounds)}\n"
            f"  round of 1st hit  {dist(self.first_hit)}\n"
            f"  RPCs per lookup   {dist(self.queried)}\n"
            f"  seconds/lookup    {dist([round(s, 3) for s in self.seconds])}"
        )


async def find_all(
    pairs: list[tuple[bytes, DHTNode, DHTNode, int]], limit: anyio.Semaphore
) -> Stats:
    stats = Stats()

    async def one(key: bytes, holder: DHTNode, finder: DHTNode, port: int) -> None:
        async with limit:
            t0 = time.perf_counter()
            res = await finder.lookup(key)
            stats.seconds.append(time.perf_counter() - t0)
        stats.rounds.append(res.rounds)
        stats.queried.append(res.queried)
        if res.first_hit_round is not None:
            stats.first_hit.append(res.first_hit_round)
        assert holder.address is not None
        if (holder.address[0], port) in {(p.host, p.port) for p in res.providers}:
            stats.ok += 1

    async with anyio.create_task_group() as tg:
        for pair in pairs:
            tg.start_soon(one, *pair)
    return stats


async def provide_all(
    pairs: list[tuple[bytes, DHTNode, DHTNode, int]], limit: anyio.Semaphore
) -> list[int]:
    acks: list[int] = []

    async def one(key: bytes, holder: DHTNode, port: int) -> None:
        async with limit:
            acks.append(await holder.provide(key, port))

    async with anyio.create_task_group() as tg:
        for key, holder, _, port in pairs:
            tg.start_soon(one, key, holder, port)
    return acks


def make_pairs(
    rng: random.Random, live: list[DHTNode], count: int, tag: str
) -> list[tuple[bytes, DHTNode, DHTNode, int]]:
    pairs = []
    for i in range(count):
        holder, finder = rng.sample(live, 2)
        pairs.append((dht_key("bench", tag, str(i)), holder, finder, 10_000 + i))
    return pairs


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    limit = anyio.Semaphore(args.concurrency)
    nodes: list[DHTNode] = []
    t0 = time.perf_counter()
    try:
        for i in range(args.nodes):
            node = DHTNode(ksize=args.ksize, alpha=args.alpha, timeout=args.timeout)
            await node.listen(0, address(i))
            if nodes:
                seeds = rng.sample(nodes, min(3, len(nodes)))
                await node.bootstrap([s.address for s in seeds if s.address])
            nodes.append(node)
        sizes = [n.routing_size() for n in nodes]
        print(
            f"{args.nodes} nodes joined in {time.perf_counter() - t0:.1f}s "
            f"(k={args.ksize}, alpha={args.alpha}); routing table contacts: "
            f"mean {statistics.mean(sizes):.0f} min {min(sizes)} max {max(sizes)}"
        )

        pairs = make_pairs(rng, nodes, args.pairs, "before")
        t1 = time.perf_counter()
        acks = await provide_all(pairs, limit)
        print(
            f"{len(pairs)} provides in {time.perf_counter() - t1:.1f}s, "
            f"stored on mean {statistics.mean(acks):.1f} nodes (min {min(acks)})"
        )
        t1 = time.perf_counter()
        stats = await find_all(pairs, limit)
        print(stats.line(f"\nfind, all {args.nodes} nodes up ({time.perf_counter() - t1:.1f}s)"))

        gone = set(rng.sample(range(len(nodes)), int(len(nodes) * args.remove)))
        for i in gone:
            nodes[i].stop()
        live = [n for i, n in enumerate(nodes) if i not in gone]
        print(f"\nremoved {len(gone)} nodes ({args.remove:.0%}) without warning")

        # records whose holder survived, looked up from a new random survivor (the
        # first finder already knows the way: its table learnt the key's neighbourhood)
        dead = {id(nodes[i]) for i in gone}
        old = [
            (k, h, rng.choice([n for n in live if n is not h]), p)
            for k, h, _, p in pairs
            if id(h) not in dead
        ]
        t1 = time.perf_counter()
        stats = await find_all(old, limit)
        print(
            stats.line(
                f"find records announced before the removal (holder alive, new finder) "
                f"({time.perf_counter() - t1:.1f}s)"
            )
        )

        fresh = make_pairs(rng, live, args.pairs, "after")
        t1 = time.perf_counter()
        acks = await provide_all(fresh, limit)
        print(
            f"\n{len(fresh)} new provides among survivors in {time.perf_counter() - t1:.1f}s, "
            f"stored on mean {statistics.mean(acks):.1f} nodes (min {min(acks)})"
        )
        t1 = time.perf_counter()
        stats = await find_all(fresh, limit)
        print(stats.line(f"find new records after the removal ({time.perf_counter() - t1:.1f}s)"))
    finally:
        for node in nodes:
            node.stop()
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pairs", type=int, default=200, help="provide/find pairs per phase")
    ap.add_argument("--remove", type=float, default=0.2, help="fraction of nodes removed")
    ap.add_argument("--ksize", type=int, default=20)
    ap.add_argument("--alpha", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1.0, help="RPC timeout, seconds")
    ap.add_argument("--concurrency", type=int, default=32, help="lookups in flight")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.nodes < 2 or not 0 <= args.remove < 1:
        ap.error("need --nodes >= 2 and 0 <= --remove < 1")
    return args


if __name__ == "__main__":
    anyio.run(main, parse(), backend="asyncio")
