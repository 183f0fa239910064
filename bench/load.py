"""Load: 8 downloaders pull the same repo at once from one rate-limited seed.

The seed daemon (127.0.0.2, `--max-upload-rate`) holds a repo of a few weight files
and a config; 8 downloader daemons (127.0.0.10..) join the DHT through it, and once each
finds the seed, `hffs model add` runs on all 8 at once (upstream unreachable). Every
file of every downloader is checked against its sha256.

Reported: total time until the last downloader finished, against two bounds set by the
seed's upload limit: size / limit (if downloaders shared everything among themselves,
the seed need send each byte once) and 8 x size / limit (if they shared nothing); and
how many bytes came from the seed vs from other downloaders.

    .venv/bin/python bench/load.py [--size 128M] [--seed-rate 8M] [--downloaders 8]
    .venv/bin/python bench/load.py --size 512M --seed-rate 32M --name load_512
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import harness as h

REPO = "org/load-test"
N_WEIGHTS = 4


def make_repo(size: int) -> dict[str, Path]:
    """N_WEIGHTS weight files summing to ``size`` bytes, plus a small config.json."""
    files = {
        f"model-{i + 1:05d}-of-{N_WEIGHTS:05d}.safetensors": h.cached_random_file(
            size // N_WEIGHTS, seed=10 + i
        )
        for i in range(N_WEIGHTS)
    }
    config = h.SCRATCH_ROOT / "data" / "load-config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('{"model_type": "bench", "hidden_size": 64}\n')
    return {**files, "config.json": config}


def main() -> None:
    ap = h.arguments(__doc__, size="128M", what="repo size")
    ap.add_argument("--seed-rate", type=h.parse_size, default="8M", help="seed bytes/s (8M)")
    ap.add_argument("--downloaders", type=int, default=8, help="downloaders at once (8)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds (1800)")
    ap.add_argument("--name", default="load", help="name of the results and plot (load)")
    ap.add_argument(
        "--via",
        choices=["job", "cli"],
        default="job",
        help="job: submit `model add` to each daemon's control API, as the CLI does once "
        "started; cli: run N `hffs model add` processes, their start-up included (job)",
    )
    ap.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    args = ap.parse_args()
    n, rate = args.downloaders, args.seed_rate
    files = make_repo(args.size)
    size = sum(p.stat().st_size for p in files.values())

    with h.scratch("load") as tmp, h.nodes(Path(tmp)) as make:
        root = Path(tmp)
        seed = make("127.0.0.2", max_upload_rate=rate)
        ids: dict[str, str] = {}
        for name, src in files.items():
            ids[name] = seed.add_file(REPO, name, src)
        # (config.json is named by its sha256 here, not by a git blob sha1 as from the hub:
        # peers list files with their ids, and both kinds are valid content ids)
        seed.up()
        for fid in ids.values():
            h.warm_manifest(seed, fid)
        downloaders = [make(f"127.0.0.{10 + i}").up(bootstrap=[seed]) for i in range(n)]
        for d in downloaders:
            h.wait_providers(d, ids[next(iter(files))], 1)
        print(f"{n} downloaders ready; pulling {size / h.MIB:.0f} MiB each")
        if args.via == "job":
            run = h.swarm_jobs(downloaders, REPO, h.COMMIT, args.timeout)
        else:
            run = h.swarm_download(
                downloaders,
                ["model", "add", REPO, "--revision", h.COMMIT],
                root / "logs",
                args.timeout,
            )
        correct = 0
        for d, rc in zip(downloaders, run.returncodes, strict=True):
            if rc == 0 and all(
                hashlib.sha256(d.blob(REPO, fid).read_bytes()).hexdigest() == fid
                for fid in ids.values()
            ):
                correct += 1
        seed_status = seed.status()
        statuses = [d.status() for d in downloaders]
        seed_rss = seed.peak_rss()
        dl_daemon_rss = [d.peak_rss() for d in downloaders]

    seed_up = seed_status["bytes_up"]
    peers_up = sum(s["bytes_up"] for s in statuses)
    lower = size / rate
    upper = n * size / rate
    res: dict[str, Any] = {
        "machine": h.machine(),
        "load_average": os.getloadavg(),
        "via": args.via,
        "repo_bytes": size,
        "downloaders": n,
        "seed_rate": rate,
        "seconds": round(run.seconds, 2),
        "finish": [round(f, 2) for f in run.finish],
        "returncodes": run.returncodes,
        "correct": correct,
        "bound_all_shared_s": round(lower, 2),
        "bound_nothing_shared_s": round(upper, 2),
        "ratio_time_vs_size_over_limit": round(run.seconds / lower, 3),
        "seed_bytes_up": seed_up,
        "downloaders_bytes_up": peers_up,
        "seed_limit_used": round(seed_up / run.seconds / rate, 3),
        "aggregate_MBps": round((seed_up + peers_up) / run.seconds / 1e6, 1),
        "from_seed_share": round(seed_up / (seed_up + peers_up), 3) if seed_up + peers_up else 0,
        "seed_peak_rss_MiB": round(seed_rss / h.MIB, 1),
        "downloader_daemon_peak_rss_MiB": round(max(dl_daemon_rss) / h.MIB, 1),
        "downloader_cli_peak_rss_MiB": round(max(run.peak_rss) / h.MIB, 1),
    }
    h.write_results(args.name, res)
    print(f"\n{n} downloaders x {size / h.MIB:.0f} MiB, seed limited to {rate / h.MIB:g} MiB/s")
    print(f"  finished correct: {correct} of {n}; exit codes {run.returncodes}")
    print(f"  via {args.via}; load average {os.getloadavg()[0]:.1f}")
    print(f"  total time {run.seconds:.1f} s; per downloader {res['finish']}")
    print(
        f"  bounds from the seed's limit: {lower:.1f} s if all is shared, "
        f"{upper:.1f} s if nothing is; time / (size / limit) = "
        f"{res['ratio_time_vs_size_over_limit']:.2f}"
    )
    print(
        f"  bytes: {seed_up / h.MIB:.0f} MiB from the seed, {peers_up / h.MIB:.0f} MiB between "
        f"downloaders ({res['from_seed_share']:.0%} from the seed; "
        f"{n * size / h.MIB:.0f} MiB needed)"
    )
    print(
        f"  the seed used {res['seed_limit_used']:.0%} of its limit on average; all uploads "
        f"together {res['aggregate_MBps']} MB/s"
    )
    print(
        f"  peak RSS: seed daemon {res['seed_peak_rss_MiB']} MiB, downloader daemons up to "
        f"{res['downloader_daemon_peak_rss_MiB']} MiB, CLIs up to "
        f"{res['downloader_cli_peak_rss_MiB']} MiB"
    )
    run.print_failures()

    fig, (ax1, ax2) = h.subplots(
        f"{n} downloaders x {size / h.MIB:.0f} MiB, seed at {rate / h.MIB:g} MiB/s", 2
    )
    ax1.barh(range(n), run.finish, color="#2a7")
    ax1.axvline(lower, color="k", ls=":", label="size / seed limit")
    ax1.axvline(upper, color="r", ls="--", label="n x size / seed limit")
    ax1.set_yticks(range(n), [d.host for d in downloaders], fontsize=8)
    ax1.set_xlabel("seconds until done")
    ax1.legend(fontsize=8)
    ax2.bar(["from the seed", "between\ndownloaders"], [seed_up / h.MIB, peers_up / h.MIB])
    ax2.set_ylabel("MiB uploaded")
    h.save_plot(fig, args.name, args.publish)


if __name__ == "__main__":
    main()
