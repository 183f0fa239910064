"""One file from ONE peer daemon via `hffs model add`, vs `curl -o` from nginx on loopback.

The seed daemon (127.0.0.2) holds the file in its HF cache; the downloader daemon
(127.0.0.10) has the seed as a saved peer (and finds it in the DHT) and its upstream set to
an unreachable http://127.0.0.1:9, so every byte comes from the peer and the revision is
resolved by the peer (commit hash given). Each pass fetches the file twice: `hffs model
add` (a CLI process that submits the job to that daemon and shows its progress: end to
end, start-up included), and the same job submitted straight to the daemon's control API
(what the CLI does once started; issue 11 counts either). The daemon downloads with
chunk and whole-file checks. nginx (sendfile on) serves a hard link of the
same file on 127.0.0.1 and curl writes it to disk: the reference for "one loopback HTTP
transfer". The passes alternate curl and hffs; the published file is removed after each.

The seed builds a file's manifest (xxh3 per chunk + sha256 of the blob) once, on the first
request, and keeps it; ``--cold`` leaves that inside the first timed pass, else one
request for the manifest comes before the passes.

Prints MB/s of each, the ratios, peak RSS of the downloader daemon, its CLI and the seed,
and CPU s per GiB (the downloader counts its CLI and the daemon's work during the pass).

    HFFS_BENCH_TMP=/dev/shm/hffs-bench .venv/bin/python bench/single_peer.py \
        [--size 1G] [--repeat 3] [--cold] [--publish]
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import harness as h

REPO = "org/single-peer"
NAME = "model.safetensors"


def main() -> None:
    ap = h.arguments(__doc__, size="1G", settle=True)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3)")
    ap.add_argument("--cold", action="store_true", help="the seed builds its manifest in pass 1")
    ap.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    args = ap.parse_args()
    size: int = args.size

    src = h.cached_random_file(size)
    curl_runs: list[h.CliRun] = []
    hffs_runs: list[h.CliRun] = []
    dl_cpu: list[float] = []
    seed_cpu: list[float] = []
    job_runs: list[float] = []  # seconds of the job submitted to the daemon
    job_cpu: list[float] = []
    with h.scratch("single") as tmp, h.nodes(Path(tmp)) as make:
        root = Path(tmp)
        seed, dl, file_id, www = h.one_seed(make, root, REPO, NAME, src, warm=not args.cold)
        with h.Nginx(www, root / "nginx") as nginx:
            for i in range(args.repeat):  # alternate, so neither side gets a warmer machine
                h.settle(args.settle)
                r = h.curl_to(f"{nginx.url}/{NAME}", root / "curl.out")
                if not r.ok or (i == 0 and h.sha256_file(root / "curl.out") != file_id):
                    raise SystemExit(f"curl failed: {r.tail()}")
                (root / "curl.out").unlink()
                curl_runs.append(r)
                h.settle(args.settle)
                seed_cpu0, dl_cpu0 = seed.cpu_seconds(), dl.cpu_seconds()
                r = dl.cli_timed("model", "add", REPO, "--revision", h.COMMIT)
                if not r.ok:
                    print(f"FAILED: hffs model add {REPO} --revision {h.COMMIT}\n{r.tail()}")
                    raise SystemExit(1)
                dl_cpu.append(r.cpu_seconds + dl.cpu_seconds() - dl_cpu0)
                seed_cpu.append(seed.cpu_seconds() - seed_cpu0)
                blob = dl.blob(REPO, file_id)
                if i == 0 and h.sha256_file(blob) != file_id:
                    raise SystemExit("hffs published a wrong file")
                blob.unlink()  # keep disk use flat; the next pass downloads again
                hffs_runs.append(r)
                h.settle(args.settle)
                dl_cpu0 = dl.cpu_seconds()
                job = h.swarm_jobs([dl], REPO, h.COMMIT, 600)
                if not job.ok:
                    raise SystemExit(f"the job failed: {job.logs}")
                job_cpu.append(dl.cpu_seconds() - dl_cpu0)
                job_runs.append(job.seconds)
                blob.unlink()
                print(
                    f"run {i + 1}: curl {h.mbps(size, curl_runs[-1].seconds):.0f} MB/s, "
                    f"hffs {h.mbps(size, r.seconds):.0f} MB/s, downloader "
                    f"{dl_cpu[-1] * (1 << 30) / size:.2f} CPU s/GiB "
                    f"(CLI {r.cpu_seconds * (1 << 30) / size:.2f}); job "
                    f"{h.mbps(size, job_runs[-1]):.0f} MB/s, "
                    f"{job_cpu[-1] * (1 << 30) / size:.2f} CPU s/GiB; "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        seed_rss = seed.peak_rss()
        dl_rss = dl.peak_rss()
        seed_up = seed.status()["bytes_up"]

    curl_mbps = statistics.median(h.mbps(size, r.seconds) for r in curl_runs)
    hffs_mbps = statistics.median(h.mbps(size, r.seconds) for r in hffs_runs)
    inner = [s for r in hffs_runs if (s := r.reported_seconds())]
    hffs_inner = statistics.median(h.mbps(size, s) for s in inner) if inner else float("nan")
    cli_rss = max(r.max_rss for r in hffs_runs)
    ratios = [
        c.seconds / r.seconds for c, r in zip(curl_runs, hffs_runs, strict=True)
    ]  # per pass: hffs MB/s over curl MB/s
    job_ratios = [c.seconds / j for c, j in zip(curl_runs, job_runs, strict=True)]
    job_mbps = statistics.median(h.mbps(size, j) for j in job_runs)
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
        "ratio_per_pass": [round(x, 3) for x in ratios],
        "ratio_median_of_passes": round(statistics.median(ratios), 3),
        "job_MBps": round(job_mbps, 1),
        "job_ratio_per_pass": [round(x, 3) for x in job_ratios],
        "job_ratio_median_of_passes": round(statistics.median(job_ratios), 3),
        "cpu_s_per_GiB_job": round(statistics.median(job_cpu) * (1 << 30) / size, 2),
        "cold_seed": args.cold,
        "loadavg": os.getloadavg(),
        "downloader_peak_rss_MiB": round(dl_rss / h.MIB, 1),
        "downloader_cli_peak_rss_MiB": round(cli_rss / h.MIB, 1),
        "seed_daemon_peak_rss_MiB": round(seed_rss / h.MIB, 1),
        "curl_peak_rss_MiB": round(curl_rss / h.MIB, 1),
        "seed_bytes_up": seed_up,
        "cpu_s_per_GiB_downloader": round(statistics.median(dl_cpu) * (1 << 30) / size, 2),
        "cpu_s_per_GiB_seed": round(statistics.median(seed_cpu) * (1 << 30) / size, 2),
        "cpu_s_per_GiB_curl": round(
            statistics.median(r.cpu_seconds for r in curl_runs) * (1 << 30) / size, 2
        ),
    }
    print(f"\nsingle peer, {size / h.MIB:.0f} MiB, median of {args.repeat} ({h.machine()})")
    print(f"  curl <- nginx          {curl_mbps:8.1f} MB/s")
    print(f"  hffs <- 1 peer         {hffs_mbps:8.1f} MB/s  (end to end, CLI start-up included)")
    print(f"  hffs, as it reports    {hffs_inner:8.1f} MB/s  (after start-up)")
    print(f"  hffs, daemon's job     {job_mbps:8.1f} MB/s  (submitted to the control API)")
    print(f"  ratio hffs / curl      {res['ratio_hffs_vs_curl']:8.3f}")
    print(f"  ratio (reported)/curl  {res['ratio_reported_vs_curl']:8.3f}")
    print(
        f"  ratio per pass         {res['ratio_per_pass']}  median {res['ratio_median_of_passes']}"
    )
    print(
        f"  job ratio per pass     {res['job_ratio_per_pass']}  median "
        f"{res['job_ratio_median_of_passes']}; downloader {res['cpu_s_per_GiB_job']} CPU s/GiB"
    )
    print(
        f"  peak RSS: downloader daemon {res['downloader_peak_rss_MiB']} MiB, its CLI "
        f"{res['downloader_cli_peak_rss_MiB']} MiB, seed daemon "
        f"{res['seed_daemon_peak_rss_MiB']} MiB, curl {res['curl_peak_rss_MiB']} MiB"
    )
    print(
        f"  CPU s per GiB: downloader (CLI + daemon) {res['cpu_s_per_GiB_downloader']}, seed "
        f"{res['cpu_s_per_GiB_seed']}, curl {res['cpu_s_per_GiB_curl']} (nginx not counted)"
    )
    h.write_results("single_peer", res)

    fig, (ax1, ax2) = h.subplots(f"One peer vs nginx+curl, {size / h.MIB:.0f} MiB on loopback", 2)
    labels = ["curl ← nginx", "hffs model add\n(end to end)", "hffs\n(reported)", "daemon job"]
    vals = [curl_mbps, hffs_mbps, hffs_inner, job_mbps]
    bars = ax1.bar(labels, vals, color=["#888", "#2a7", "#7c9", "#4b8"])
    ax1.bar_label(bars, fmt="%.0f")
    ax1.set_ylabel("MB/s")
    rss = [res["downloader_peak_rss_MiB"], res["seed_daemon_peak_rss_MiB"]]
    bars = ax2.bar(["downloader\ndaemon", "seed\ndaemon"], rss, color="#47a")
    ax2.bar_label(bars, fmt="%.0f")
    ax2.set_ylabel("peak RSS, MiB")
    h.save_plot(fig, "single_peer", args.publish)


if __name__ == "__main__":
    main()
