"""Simulate a DHT swarm in one process: real DHTNode objects on loopback UDP.

Every node is a real :class:`swarm.dht.DHTNode` on its own 127.2.x.y address, so the
same protocol, tokens, limits, routing table and lookup code run as in the daemon.
The run joins N nodes, then measures random provide/find pairs (success, hops against
log2 N, latency), what announcing a cache costs on the wire, memory per node, and the
same lookups after removing 20 % and then 50 % of the nodes without warning.

    .venv/bin/python bench/dht_sim.py --nodes 1000
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from swarm.dht import DHTNode, dht_key
from swarm.providers import DEFAULT_TTL


def address(i: int) -> str:
    return f"127.2.{i // 250}.{i % 250 + 1}"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Stats:
    ok: int = 0
    rounds: list[int] = field(default_factory=list)
    first_hit: list[int] = field(default_factory=list)
    queried: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def success(self) -> float:
        return self.ok / max(1, len(self.rounds))

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

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
            f"  success           {self.ok}/{n} = {100 * self.success:.1f}%\n"
            f"  hops (rounds)     {dist(self.rounds)}\n"
            f"  hop of 1st hit    {dist(self.first_hit)}\n"
            f"  RPCs per lookup   {dist(self.queried)}\n"
            f"  seconds/lookup    {dist([round(s, 4) for s in self.seconds])}"
        )


Pair = tuple[bytes, DHTNode, DHTNode]


async def find_all(pairs: list[Pair], limit: anyio.Semaphore) -> Stats:
    stats = Stats()

    async def one(key: bytes, holder: DHTNode, finder: DHTNode) -> None:
        async with limit:
            t0 = time.perf_counter()
            res = await finder.lookup(key)
            stats.seconds.append(time.perf_counter() - t0)
        stats.rounds.append(res.rounds)
        stats.queried.append(res.queried)
        if res.first_hit_round is not None:
            stats.first_hit.append(res.first_hit_round)
        if holder.address in {p.addr for p in res.providers}:
            stats.ok += 1

    async with anyio.create_task_group() as tg:
        for pair in pairs:
            tg.start_soon(one, *pair)
    return stats


async def provide_all(pairs: list[Pair], limit: anyio.Semaphore) -> list[int]:
    acks: list[int] = []

    async def one(key: bytes, holder: DHTNode) -> None:
        async with limit:
            acks.append(await holder.provide(key))

    async with anyio.create_task_group() as tg:
        for key, holder, _ in pairs:
            tg.start_soon(one, key, holder)
    return acks


def make_pairs(rng: random.Random, live: list[DHTNode], count: int, tag: str) -> list[Pair]:
    pairs = []
    for i in range(count):
        holder, finder = rng.sample(live, 2)
        pairs.append((dht_key("bench", tag, str(i)), holder, finder))
    return pairs


def wire_bytes(nodes: list[DHTNode]) -> int:
    return sum(n.protocol.bytes_sent for n in nodes if n.protocol is not None)


async def join(args: argparse.Namespace, rng: random.Random) -> list[DHTNode]:
    nodes: list[DHTNode] = []
    # the first few join one by one; then batches join at once through earlier nodes
    batch = max(1, args.join_batch)
    i = 0
    while i < args.nodes:
        group = []
        for j in range(i, min(args.nodes, i + (1 if i < 50 else batch))):
            node = DHTNode(ksize=args.ksize, alpha=args.alpha, timeout=args.timeout)
            await node.listen(0, address(j))
            group.append(node)
        earlier = list(nodes)

        async def boot(node: DHTNode, earlier: list[DHTNode] = earlier) -> None:
            if earlier:
                seeds = rng.sample(earlier, min(3, len(earlier)))
                await node.bootstrap([s.address for s in seeds if s.address])

        async with anyio.create_task_group() as tg:
            for node in group:
                tg.start_soon(boot, node)
        nodes.extend(group)
        i += len(group)
    return nodes


async def phase(
    title: str,
    rng: random.Random,
    live: list[DHTNode],
    dead: set[int],
    old_pairs: list[Pair],
    args: argparse.Namespace,
    limit: anyio.Semaphore,
) -> tuple[Stats, Stats]:
    """Old records (holder alive, a new finder), then fresh provide/find pairs."""
    old = [(k, h, rng.choice([n for n in live if n is not h])) for k, h, _ in old_pairs]
    old = [p for p in old if id(p[1]) not in dead]
    t1 = time.perf_counter()
    before = await find_all(old, limit)
    print(before.line(f"{title}: records announced before ({time.perf_counter() - t1:.1f}s)"))
    fresh = make_pairs(rng, live, args.pairs, title)
    acks = await provide_all(fresh, limit)
    t1 = time.perf_counter()
    after = await find_all(fresh, limit)
    print(
        after.line(
            f"{title}: new records (stored on mean {statistics.mean(acks):.1f} nodes) "
            f"({time.perf_counter() - t1:.1f}s)"
        )
    )
    return before, after


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    limit = anyio.Semaphore(args.concurrency)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    nodes: list[DHTNode] = []
    try:
        nodes = await join(args, rng)
        rss1 = rss_bytes()
        sizes = [n.routing_size() for n in nodes]
        log2n = math.log2(args.nodes)
        print(
            f"{args.nodes} nodes joined in {time.perf_counter() - t0:.1f}s "
            f"(k={args.ksize}, alpha={args.alpha}, max timeout {args.timeout}s); "
            f"routing table contacts: mean {statistics.mean(sizes):.0f} "
            f"min {min(sizes)} max {max(sizes)}"
        )

        pairs = make_pairs(rng, nodes, args.pairs, "before")
        acks = await provide_all(pairs, limit)
        print(f"{len(pairs)} provides, stored on mean {statistics.mean(acks):.1f} nodes")
        t1 = time.perf_counter()
        base = await find_all(pairs, limit)
        print(base.line(f"\nfind, all {args.nodes} nodes up ({time.perf_counter() - t1:.1f}s)"))
        rss2 = rss_bytes()
        print(
            f"  mean hops {statistics.mean(base.rounds):.2f} vs log2(N) = {log2n:.2f}\n"
            f"\nmemory: {(rss1 - rss0) / args.nodes / 1024:.1f} KiB RSS per node after the "
            f"join, {(rss2 - rss0) / args.nodes / 1024:.1f} KiB with {len(pairs)} records "
            f"x ~{statistics.mean(acks):.0f} copies"
        )

        # What announcing costs: one node re-announces a sample of keys; the wire
        # bytes it sends and receives, and those of the whole swarm, per key.
        announcer = nodes[rng.randrange(len(nodes))]
        keys = [dht_key("bench", "cache", str(i)) for i in range(args.announce_sample)]
        await announcer.announce(keys)  # first round: tokens and RTTs learnt
        own0 = announcer.protocol.bytes_sent + announcer.protocol.bytes_received
        all0 = wire_bytes(nodes)
        t1 = time.perf_counter()
        await announcer.announce(keys)
        own = announcer.protocol.bytes_sent + announcer.protocol.bytes_received - own0
        total = wire_bytes(nodes) - all0
        per_key_own, per_key_all = own / len(keys), total / len(keys)
        rounds_per_hour = 3600 / (DEFAULT_TTL / 3)
        cache_keys = args.cache_repos * args.keys_per_repo
        hourly = per_key_own * cache_keys * rounds_per_hour
        print(
            f"\nannounce: {len(keys)} keys in {time.perf_counter() - t1:.1f}s; per key "
            f"{per_key_own / 1024:.1f} KiB in+out at the announcer, "
            f"{per_key_all / 1024:.1f} KiB sent by the whole swarm\n"
            f"  a {args.cache_repos}-repo cache ({cache_keys} keys), re-announced "
            f"{rounds_per_hour:.0f}x/hour: {hourly / 2**20:.1f} MiB/hour at that node "
            f"({hourly * 8 / 3600 / 1000:.1f} kbit/s)"
        )

        dead: set[int] = set()
        results = {}
        for share in (0.2, 0.5):
            alive = [n for n in nodes if id(n) not in dead]
            target = int(len(nodes) * share) - len(dead)
            for node in rng.sample(alive, target):
                node.stop()
                dead.add(id(node))
            live = [n for n in nodes if id(n) not in dead]
            print(f"\nremoved {len(dead)} nodes ({share:.0%}) without warning")
            results[share] = await phase(f"{share:.0%} gone", rng, live, dead, pairs, args, limit)

        print("\nsummary")
        print(f"  N = {args.nodes}, log2(N) = {log2n:.2f}")
        print(
            f"  all up      success {100 * base.success:.1f}%  mean hops "
            f"{statistics.mean(base.rounds):.2f}  p50 {1000 * base.p50:.0f} ms"
        )
        for share, (old, new) in results.items():
            print(
                f"  {share:.0%} gone     old records {100 * old.success:.1f}% "
                f"(p50 {1000 * old.p50:.0f} ms, {old.p50 / base.p50:.2f}x), new "
                f"{100 * new.success:.1f}% (p50 {1000 * new.p50:.0f} ms, "
                f"{new.p50 / base.p50:.2f}x), mean hops {statistics.mean(new.rounds):.2f}"
            )
    finally:
        for node in nodes:
            node.stop()
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=200, help="provide/find pairs per phase")
    ap.add_argument("--ksize", type=int, default=20)
    ap.add_argument("--alpha", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=5.0, help="largest RPC timeout, s")
    ap.add_argument("--concurrency", type=int, default=16, help="lookups in flight")
    ap.add_argument("--join-batch", type=int, default=10, help="nodes joining at once")
    ap.add_argument("--announce-sample", type=int, default=100, help="keys announced")
    ap.add_argument("--cache-repos", type=int, default=100)
    ap.add_argument("--keys-per-repo", type=int, default=12, help="2 per revision + files")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.nodes < 10:
        ap.error("need --nodes >= 10")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # dropped-datagram warnings are expected here
    anyio.run(main, parse(), backend="asyncio")
