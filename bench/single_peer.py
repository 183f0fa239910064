"""One file from ONE peer daemon via `hffs model add`, vs `curl -o` from nginx on loopback.

The seed daemon (127.0.0.2) holds the file in its HF cache; the downloader (127.0.0.3,
no daemon) has the seed as a saved peer and its upstream set to an unreachable
http://127.0.0.1:9, so every byte comes from the peer and the revision is resolved by
the peer (commit hash given). nginx (sendfile on) serves a hard link of the same file on
127.0.0.1 and curl writes it to disk: the reference for "one loopback HTTP transfer".

Prints MB/s of each, the ratio, and peak RSS of the downloader and the seeding daemon.

    .venv/bin/python bench/single_peer.py [--size 1G] [--repeat 2] [--publish]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import harness as h

REPO = "org/single-peer"
NAME = "model.safetensors"


def run_curl(url: str, dest: Path) -> h.CliRun:
    dest.unlink(missing_ok=True)
    return h.run_timed(["curl", "-fsS", "--noproxy", "*", "-o", str(dest), url], timeout=600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=h.parse_size, default="1G", help="file size (default 1G)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side (default 2)")
    ap.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    args = ap.parse_args()
    size: int = args.size

    src = h.cached_random_file(size)
    curl_runs: list[h.CliRun] = []
    hffs_runs: list[h.CliRun] = []
    seed_rss = 0
    seed_cpu: list[float] = []
    with h.scratch("single") as tmp, h.nodes(Path(tmp)) as make:
        root = Path(tmp)
        www = root / "www"
        www.mkdir()
        os.link(src, www / NAME)
        seed = make("127.0.0.2")
        file_id = seed.add_file(REPO, NAME, src)
        seed.up()
        with h.Nginx(www, root / "nginx") as nginx:
            for i in range(args.repeat):  # alternate, so neither side gets a warmer machine
                r = run_curl(f"{nginx.url}/{NAME}", root / "curl.out")
                if not r.ok or h.sha256_file(root / "curl.out") != file_id:
                    raise SystemExit(f"curl failed: {r.tail()}")
                curl_runs.append(r)
                dl = make(f"127.0.0.{10 + i}", peers=[seed])
                seed_cpu0 = seed.cpu_seconds()
                r = dl.cli_timed("model", "add", REPO, "--revision", h.COMMIT)
                if not r.ok:
                    print(f"FAILED: hffs model add {REPO} --revision {h.COMMIT}\n{r.tail()}")
                    raise SystemExit(1)
                blob = dl.blob(REPO, file_id)
                if h.sha256_file(blob) != file_id:
                    raise SystemExit("hffs published a wrong file")
                blob.unlink()  # keep disk use flat
                hffs_runs.append(r)
                seed_cpu.append(seed.cpu_seconds() - seed_cpu0)
                print(
                    f"run {i + 1}: curl {h.mbps(size, curl_runs[-1].seconds):.0f} MB/s, "
                    f"hffs {h.mbps(size, r.seconds):.0f} MB/s"
                )
        seed_rss = seed.peak_rss()
        seed_up = seed.status()["bytes_up"]

    curl_mbps = statistics.median(h.mbps(size, r.seconds) for r in curl_runs)
    hffs_mbps = statistics.median(h.mbps(size, r.seconds) for r in hffs_runs)
    inner = [s for r in hffs_runs if (s := r.reported_seconds())]
    hffs_inner = statistics.median(h.mbps(size, s) for s in inner) if inner else float("nan")
    dl_rss = max(r.max_rss for r in hffs_runs)
    curl_rss = max(r.max_rss for r in curl_runs)
    res = {
        "machine": h.machine(),
        "size_bytes": size,
        "repeat": args.repeat,
        "curl_nginx_MBps": round(curl_mbps, 1),
        "hffs_MBps": round(hffs_mbps, 1),
        "hffs_MBps_reported": round(hffs_inner, 1),
        "ratio_hffs_vs_curl": round(hffs_mbps / curl_mbps, 3),
        "ratio_reported_vs_curl": round(hffs_inner / curl_mbps, 3),
        "downloader_peak_rss_MiB": round(dl_rss / h.MIB, 1),
        "seed_daemon_peak_rss_MiB": round(seed_rss / h.MIB, 1),
        "curl_peak_rss_MiB": round(curl_rss / h.MIB, 1),
        "seed_bytes_up": seed_up,
        "cpu_s_per_GiB_downloader": round(
            statistics.median(r.cpu_seconds for r in hffs_runs) * (1 << 30) / size, 2
        ),
        "cpu_s_per_GiB_seed": round(statistics.median(seed_cpu) * (1 << 30) / size, 2),
        "cpu_s_per_GiB_curl": round(
            statistics.median(r.cpu_seconds for r in curl_runs) * (1 << 30) / size, 2
        ),
    }
    print(f"\nsingle peer, {size / h.MIB:.0f} MiB, median of {args.repeat} ({h.machine()})")
    print(f"  curl <- nginx          {curl_mbps:8.1f} MB/s")
    print(f"  hffs <- 1 peer         {hffs_mbps:8.1f} MB/s  (end to end, CLI start-up included)")
    print(f"  hffs, as it reports    {hffs_inner:8.1f} MB/s  (after start-up)")
    print(f"  ratio hffs / curl      {res['ratio_hffs_vs_curl']:8.3f}")
    print(f"  ratio (reported)/curl  {res['ratio_reported_vs_curl']:8.3f}")
    print(
        f"  peak RSS: downloader {res['downloader_peak_rss_MiB']} MiB, seed daemon "
        f"{res['seed_daemon_peak_rss_MiB']} MiB, curl {res['curl_peak_rss_MiB']} MiB"
    )
    print(
        f"  CPU s per GiB: downloader {res['cpu_s_per_GiB_downloader']}, seed "
        f"{res['cpu_s_per_GiB_seed']}, curl {res['cpu_s_per_GiB_curl']} (nginx not counted)"
    )
    h.write_results("single_peer", res)

    fig, (ax1, ax2) = h.subplots(f"One peer vs nginx+curl, {size / h.MIB:.0f} MiB on loopback", 2)
    labels = ["curl ← nginx", "hffs ← 1 peer\n(end to end)", "hffs ← 1 peer\n(reported)"]
    vals = [curl_mbps, hffs_mbps, hffs_inner]
    bars = ax1.bar(labels, vals, color=["#888", "#2a7", "#7c9"])
    ax1.bar_label(bars, fmt="%.0f")
    ax1.set_ylabel("MB/s")
    rss = [res["downloader_peak_rss_MiB"], res["seed_daemon_peak_rss_MiB"]]
    bars = ax2.bar(["downloader\n(CLI)", "seed\ndaemon"], rss, color="#47a")
    ax2.bar_label(bars, fmt="%.0f")
    ax2.set_ylabel("peak RSS, MiB")
    h.save_plot(fig, "single_peer", args.publish)


if __name__ == "__main__":
    main()
