"""hffs fetching a file from the throttled local hub (no peers) vs `aria2c -x 8 -s 8`.

A LocalHub (127.0.0.1, total bandwidth throttled, shared by all connections) holds one
file. hffs (`model add`, no daemon, no peers, the hub as its only endpoint) and aria2c
with 8 connections fetch it from the same resolve URL, alternately; both results are
checked against the sha256. Prints the time of each and the ratio.

    .venv/bin/python bench/vs_aria2.py [--size 256M] [--throttle 32M] [--repeat 2]
    .venv/bin/python bench/vs_aria2.py --throttle 0     # unthrottled: the hub's own limit
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import harness as h

REPO = "org/vs-aria2"
NAME = "model.safetensors"


def main() -> None:
    ap = h.arguments(__doc__, size="256M")
    ap.add_argument("--throttle", type=h.parse_size, default="32M", help="hub bytes/s (32M)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side (2)")
    ap.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    args = ap.parse_args()
    size: int = args.size
    aria2c = shutil.which("aria2c")
    if aria2c is None:
        raise SystemExit("aria2c is not installed (apt-get install aria2)")
    src = h.cached_random_file(size, seed=2)
    aria: list[h.CliRun] = []
    hffs: list[h.CliRun] = []
    with (
        h.scratch("aria2") as tmp,
        h.LocalHub(throttle_bps=args.throttle or None) as hub,
        h.nodes(Path(tmp)) as make,
    ):
        root = Path(tmp)
        commit = hub.add_repo(REPO, {NAME: src})
        file_id = hub.get_file(REPO, NAME).etag
        url = hub.file_url(REPO, NAME, commit)
        for i in range(args.repeat):
            out = root / "aria2"
            shutil.rmtree(out, ignore_errors=True)
            r = h.run_timed(
                [
                    aria2c,
                    "--no-conf",
                    "-x",
                    "8",
                    "-s",
                    "8",
                    "-d",
                    str(out),
                    "-o",
                    NAME,
                    "--file-allocation=none",
                    "--allow-overwrite=true",
                    "--summary-interval=0",
                    "--console-log-level=warn",
                    url,
                ],
                timeout=1800,
            )
            if not r.ok or h.sha256_file(out / NAME) != file_id:
                raise SystemExit(f"aria2c failed: {r.tail()}")
            aria.append(r)

            dl = make(f"127.0.0.{10 + i}", endpoints=hub.url)
            r = dl.cli_timed("model", "add", REPO, "--file", NAME, timeout=1800)
            if not r.ok:
                raise SystemExit(f"FAILED: hffs model add {REPO} --file {NAME}\n{r.tail()}")
            blob = dl.blob(REPO, file_id)
            if h.sha256_file(blob) != file_id:
                raise SystemExit("hffs published a wrong file")
            blob.unlink()
            hffs.append(r)
            print(f"run {i + 1}: aria2c {aria[-1].seconds:.2f} s, hffs {r.seconds:.2f} s")

    t_aria = statistics.median(r.seconds for r in aria)
    t_hffs = statistics.median(r.seconds for r in hffs)
    reported = [s for r in hffs if (s := r.reported_seconds())]
    t_hffs_rep = statistics.median(reported) if reported else float("nan")
    limit = f"{args.throttle / h.MIB:g} MiB/s" if args.throttle else "unthrottled"
    res = {
        "machine": h.machine(),
        "size_bytes": size,
        "throttle_bps": args.throttle,
        "repeat": args.repeat,
        "aria2c_seconds": round(t_aria, 2),
        "hffs_seconds": round(t_hffs, 2),
        "hffs_seconds_reported": t_hffs_rep,
        "aria2c_MBps": round(h.mbps(size, t_aria), 1),
        "hffs_MBps": round(h.mbps(size, t_hffs), 1),
        "limit_MBps": round(args.throttle / 1e6, 1) if args.throttle else None,
        "time_ratio_hffs_vs_aria2c": round(t_hffs / t_aria, 3),
        "time_ratio_reported_vs_aria2c": round(t_hffs_rep / t_aria, 3),
        "hffs_peak_rss_MiB": round(max(r.max_rss for r in hffs) / h.MIB, 1),
        "aria2c_peak_rss_MiB": round(max(r.max_rss for r in aria) / h.MIB, 1),
    }
    print(f"\nfrom the local hub ({limit}), {size / h.MIB:.0f} MiB, median of {args.repeat}")
    print(f"  aria2c -x 8 -s 8   {t_aria:7.2f} s  {res['aria2c_MBps']:7.1f} MB/s")
    print(f"  hffs model add     {t_hffs:7.2f} s  {res['hffs_MBps']:7.1f} MB/s (end to end)")
    print(f"  hffs, as reported  {t_hffs_rep:7.2f} s")
    print(f"  time ratio hffs / aria2c  {res['time_ratio_hffs_vs_aria2c']:.3f}")
    print(
        f"  peak RSS: hffs {res['hffs_peak_rss_MiB']} MiB, aria2c {res['aria2c_peak_rss_MiB']} MiB"
    )
    h.write_results("vs_aria2", res)

    fig, (ax,) = h.subplots(f"From the local hub ({limit}), {size / h.MIB:.0f} MiB", 1, 6.0)
    bars = ax.bar(
        ["aria2c -x 8 -s 8", "hffs\n(end to end)", "hffs\n(reported)"],
        [t_aria, t_hffs, t_hffs_rep],
        color=["#888", "#2a7", "#7c9"],
    )
    ax.bar_label(bars, fmt="%.1f s")
    if args.throttle:
        ax.axhline(size / args.throttle, color="k", ls=":", label="size / hub limit")
        ax.legend()
    ax.set_ylabel("seconds (lower is better)")
    h.save_plot(fig, "vs_aria2", args.publish)


if __name__ == "__main__":
    main()
