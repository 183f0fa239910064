"""Cluster start: N daemons pull the same file at once through one slow shared upstream.

No seed: a LocalHub (127.0.0.1, total bandwidth throttled, shared by every connection,
as a lab's internet link or a mirror is) holds a repo of one file. N downloader daemons
(127.0.0.10..) join one DHT, then each gets a `model add` job at the same moment, as the
nodes of a cluster starting one model. Each chunk should cross the slow link once and
the downloaders trade the rest.

Reported: bytes the hub served over the file size (1.0: every chunk fetched once; N:
nothing shared) and the time until the last one finished over size / hub rate (the bound
when every chunk crosses the link once).

    .venv/bin/python bench/shared_upstream.py [--size 128M] [--hub-rate 16M] [--downloaders 8]
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import harness as h

from swarm.chunking import chunk_size_for
from swarm.peer_server import parse_range

REPO = "org/cluster-start"
NAME = "model.safetensors"


def main() -> None:
    ap = h.arguments(__doc__, size="128M")
    ap.add_argument("--hub-rate", type=h.parse_size, default="16M", help="hub bytes/s (16M)")
    ap.add_argument("--downloaders", type=int, default=8, help="downloaders at once (8)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds (1800)")
    ap.add_argument("--name", default="shared_upstream", help="name of the results")
    args = ap.parse_args()
    n, rate, size = args.downloaders, args.hub_rate, args.size
    src = h.cached_random_file(size, seed=3)

    with (
        h.scratch("shared-upstream") as tmp,
        h.LocalHub(throttle_bps=rate) as hub,
        h.nodes(Path(tmp)) as make,
    ):
        commit = hub.add_repo(REPO, {NAME: src})
        file_id = hub.get_file(REPO, NAME).etag
        first = make("127.0.0.10", endpoints=hub.url).up()
        others = [make(f"127.0.0.{11 + i}", endpoints=hub.url).up([first]) for i in range(n - 1)]
        downloaders = [first, *others]
        hub.reset_stats()
        print(f"{n} downloaders ready; {size / h.MIB:.0f} MiB each, hub at {rate / h.MIB:g} MiB/s")
        run = h.swarm_jobs(downloaders, REPO, commit, args.timeout)
        correct = sum(
            rc == 0 and hashlib.sha256(d.blob(REPO, file_id).read_bytes()).hexdigest() == file_id
            for d, rc in zip(downloaders, run.returncodes, strict=True)
        )
        hub_bytes = hub.bytes_served
        # How many times each chunk crossed the link (a cut request counts its part).
        crossed: dict[int, float] = {}
        chunk = chunk_size_for(size)
        for r in hub.records:
            span = parse_range(r.range, size) if r.bytes_sent else None
            if span is not None:
                first = span[0] // chunk
                crossed[first] = crossed.get(first, 0.0) + r.bytes_sent / chunk
        between = sum(d.status()["bytes_up"] for d in downloaders)

    bound = size / rate
    res: dict[str, Any] = {
        "machine": h.machine(),
        "load_average": os.getloadavg(),
        "file_bytes": size,
        "downloaders": n,
        "hub_rate": rate,
        "seconds": round(run.seconds, 2),
        "finish": [round(f, 2) for f in run.finish],
        "correct": correct,
        "hub_bytes_over_size": round(hub_bytes / size, 3),
        "between_downloaders_MiB": round(between / h.MIB, 1),
        "time_over_size_per_rate": round(run.seconds / bound, 3),
        "chunks_by_times_crossed": dict(
            sorted(Counter(min(round(v), 8) for v in crossed.values()).items())
        ),
    }
    h.write_results(args.name, res)
    print(f"  finished correct: {correct} of {n}; total time {run.seconds:.1f} s")
    print(
        f"  hub served {hub_bytes / h.MIB:.0f} MiB = {res['hub_bytes_over_size']:.2f}x the file "
        f"(1.0: each chunk once; {n}: nothing shared); {between / h.MIB:.0f} MiB between "
        "downloaders"
    )
    print(f"  chunks by how many times they crossed the link: {res['chunks_by_times_crossed']}")
    print(
        f"  time / (size / hub rate) = {res['time_over_size_per_rate']:.2f} "
        f"(bound {bound:.1f} s); per downloader {res['finish']}"
    )
    run.print_failures()


if __name__ == "__main__":
    main()
