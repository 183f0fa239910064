"""The peer transport alone: swarm.transport_client's PeerPool pulling a file from a
seed daemon's sendfile front, vs `curl -o` from nginx, interleaved, same files.

The client asks for 1 MiB ranges (the chunk size of files up to 4 GiB), ``--depth``
in flight, each block hashed with xxh3 and written with pwrite at its offset: what
a download does per chunk, without the driver (scheduler, holders, whole-file hash).

    HFFS_BENCH_TMP=/dev/shm .venv/bin/python bench/transport.py [--size 512M] [--repeat 3]
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path

import anyio
import harness as h

from swarm.sources import PeerAddr
from swarm.transport_client import FileSink, PeerPool

BLOCK = 1 << 20


async def pull(peer: PeerAddr, file_id: str, size: int, dest: Path, depth: int) -> None:
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        async with PeerPool() as pool:
            starts = iter(range(0, size, BLOCK))

            async def worker() -> None:
                for s in starts:
                    await pool.fetch(peer, file_id, s, min(s + BLOCK, size), FileSink(fd, s))

            async with anyio.create_task_group() as tg:
                for _ in range(depth):
                    tg.start_soon(worker)
    finally:
        os.close(fd)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = h.arguments(__doc__, size="512M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--depth", type=int, default=8, help="requests in flight (default 8)")
    args = ap.parse_args()
    size: int = args.size
    src = h.cached_random_file(size)
    curl_mbps, pool_mbps, pool_cpu = [], [], []
    with h.scratch("transport") as tmp, h.nodes(Path(tmp)) as make:
        root = Path(tmp)
        www = root / "www"
        www.mkdir()
        os.link(src, www / "f.bin")
        seed = make("127.0.0.2")
        file_id = seed.add_file("org/transport", "f.bin", src)
        seed.up()
        peer = PeerAddr(seed.host, seed.port)
        with h.Nginx(www, root / "nginx") as nginx:
            for i in range(args.repeat):  # interleaved: neither side gets a quieter machine
                r = h.curl_to(f"{nginx.url}/f.bin", root / "curl.out")
                assert r.ok
                curl_mbps.append(h.mbps(size, r.seconds))
                c0, t0 = cpu(), time.perf_counter()
                anyio.run(pull, peer, file_id, size, root / "pool.out", args.depth)
                dt = time.perf_counter() - t0
                pool_mbps.append(h.mbps(size, dt))
                pool_cpu.append((cpu() - c0) * (1 << 30) / size)
                if i == 0 and h.sha256_file(root / "pool.out") != file_id:
                    raise SystemExit("the pool wrote a wrong file")
                print(f"pass {i + 1}: curl {curl_mbps[-1]:.0f} MB/s, pool {pool_mbps[-1]:.0f} MB/s")
    ratios = [p / c for p, c in zip(pool_mbps, curl_mbps, strict=True)]
    res = {
        "machine": h.machine(),
        "size_bytes": size,
        "depth": args.depth,
        "curl_nginx_MBps": round(statistics.median(curl_mbps), 1),
        "pool_MBps": round(statistics.median(pool_mbps), 1),
        "ratio_pool_vs_curl_per_pass": [round(r, 3) for r in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "pool_client_cpu_s_per_GiB": round(statistics.median(pool_cpu), 2),
    }
    print(f"\ntransport only, {size / h.MIB:.0f} MiB, {args.repeat} passes ({h.machine()})")
    print(f"  curl <- nginx        {res['curl_nginx_MBps']:8.1f} MB/s")
    print(f"  PeerPool <- front    {res['pool_MBps']:8.1f} MB/s  (depth {args.depth})")
    print(
        f"  ratio per pass       {res['ratio_pool_vs_curl_per_pass']}  median {res['ratio_median']}"
    )
    print(f"  client CPU s per GiB {res['pool_client_cpu_s_per_GiB']}")
    h.write_results("transport", res)


if __name__ == "__main__":
    main()
