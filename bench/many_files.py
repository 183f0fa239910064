"""A repo of many files from several seed daemons via `hffs model add` (a downloader daemon
runs the job), vs curl fetching the same files from nginx with as many parallel transfers
as there are seeds; passes interleaved.

Each seed (127.0.0.2, .3, ...) holds every file; the downloader daemon (127.0.0.20) knows
them as saved peers and through the DHT, its upstream is unreachable, and the revision is
given as a commit (resolved by the peers). nginx serves hard links of the same files and
`curl --parallel --parallel-max <seeds>` writes them to disk. Every output is checked
(sha256) on the first pass and removed after each pass. The downloader's CPU counts the
CLI and the daemon's work during the pass; peak RSS is the daemon's and each seed's
(VmHWM, read at the end).

Pass 1 is what a user sees first: seeds that imported their files and were never asked
for them hold no manifest yet, so they digest (sha256 + xxh3 of every blob) while they
serve, on the same cores; they keep the manifests, so later passes find them warm. Pass 1
is therefore reported apart from the rest. ``--warm-seeds`` has every seed digest every
file before the clock starts (as libtorrent's piece hashes are made before its timer).
After pass 1 the downloader's own seed side is asked for every file's manifest: a file
fetched through hffs is seeded from the digests its download verified (no digest; its
daemon's CPU for those requests is printed).

    HFFS_BENCH_TMP=/dev/shm/hffs-bench .venv/bin/python bench/many_files.py \
        [--files 16] [--size 256M] [--seeds 3] [--repeat 3] [--warm-seeds] [--settle 10]

``--settle S`` rests S seconds before each timed transfer (``harness.settle``): on a VM
that hands freed memory back to its host, a transfer started right after the previous
side's copy was deleted reuses pages that a slower one must fault in again.
"""

from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path

import harness as h

REPO = "org/many-files"


def main() -> None:
    ap = h.arguments(__doc__, size="256M", what="size of each", settle=True)
    ap.add_argument("--files", type=int, default=16, help="files in the repo (16)")
    ap.add_argument("--seeds", type=int, default=3, help="seed daemons, and curl's transfers")
    ap.add_argument("--repeat", type=int, default=3, help="passes of each side (3)")
    ap.add_argument(
        "--warm-seeds",
        action="store_true",
        help="seeds digest every file before pass 1 (default: cold, as a user first sees)",
    )
    args = ap.parse_args()
    size, nfiles = args.size, args.files
    total = size * nfiles
    srcs = [h.cached_random_file(size, seed=100 + i) for i in range(nfiles)]
    names = [f"model-{i:05d}-of-{nfiles:05d}.safetensors" for i in range(nfiles)]
    curl_mbps: list[float] = []
    curl_cpu: list[float] = []
    hffs_mbps: list[float] = []
    ratios: list[float] = []
    dl_cpu: list[float] = []
    seeds_cpu: list[float] = []
    with h.scratch("many") as tmp, h.nodes(Path(tmp)) as make:
        root = Path(tmp)
        www = root / "www"
        www.mkdir()
        for src, name in zip(srcs, names, strict=True):
            os.link(src, www / name)
        seeds = [make(f"127.0.0.{2 + i}") for i in range(args.seeds)]
        ids = []
        for seed in seeds:
            ids = [seed.add_file(REPO, n, s) for n, s in zip(names, srcs, strict=True)]
        for seed in seeds:
            seed.up(bootstrap=seeds[:1] if seed is not seeds[0] else ())
        dl = make("127.0.0.20", peers=seeds).up(bootstrap=seeds[:1])
        for fid in (ids[0], ids[-1]):
            h.wait_providers(dl, fid, args.seeds)
        if args.warm_seeds:
            for seed in seeds:
                for fid in ids:
                    h.warm_manifest(seed, fid)
        handover: dict[str, object] = {}
        out = root / "curl-out"
        with h.Nginx(www, root / "nginx") as nginx:
            for i in range(args.repeat):  # interleaved: neither side gets a quieter machine
                out.mkdir(exist_ok=True)
                h.settle(args.settle)
                argv = ["curl", "-fsS", "--noproxy", "*", "--parallel"]
                argv += ["--parallel-max", str(args.seeds)]
                for name in names:
                    argv += ["-o", str(out / name), f"{nginx.url}/{name}"]
                r = h.run_timed(argv, timeout=1800)
                if not r.ok:
                    raise SystemExit(f"curl failed: {r.tail()}")
                if i == 0 and any(
                    h.sha256_file(out / n) != f for n, f in zip(names, ids, strict=True)
                ):
                    raise SystemExit("curl wrote a wrong file")
                shutil.rmtree(out)
                curl_mbps.append(h.mbps(total, r.seconds))
                curl_cpu.append(r.cpu_seconds)

                h.settle(args.settle)
                cpu0 = dl.cpu_seconds()
                seed_cpu0 = sum(s.cpu_seconds() for s in seeds)
                r = dl.cli_timed("model", "add", REPO, "--revision", h.COMMIT, timeout=1800)
                if not r.ok:
                    raise SystemExit(f"hffs model add failed:\n{r.tail()}")
                dl_cpu.append(r.cpu_seconds + dl.cpu_seconds() - cpu0)
                seeds_cpu.append(sum(s.cpu_seconds() for s in seeds) - seed_cpu0)
                blobs = [dl.blob(REPO, f) for f in ids]
                if i == 0 and any(h.sha256_file(b) != f for b, f in zip(blobs, ids, strict=True)):
                    raise SystemExit("hffs published a wrong file")
                if i == 0:
                    handover = manifests_after_download(dl, ids)
                for b in blobs:
                    b.unlink()
                hffs_mbps.append(h.mbps(total, r.seconds))
                ratios.append(hffs_mbps[-1] / curl_mbps[-1])
                print(
                    f"pass {i + 1}: curl {curl_mbps[-1]:.0f} MB/s, hffs {hffs_mbps[-1]:.0f} MB/s "
                    f"({ratios[-1]:.2f}), curl {curl_cpu[-1] * (1 << 30) / total:.2f}, "
                    f"downloader {dl_cpu[-1] * (1 << 30) / total:.2f}, "
                    f"seeds {seeds_cpu[-1] * (1 << 30) / total:.2f} CPU s/GiB, "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        dl_rss = dl.peak_rss()
        seed_rss = [s.peak_rss() for s in seeds]

    res = {
        "machine": h.machine(),
        "files": nfiles,
        "size_bytes": size,
        "seeds": args.seeds,
        "curl_nginx_MBps_per_pass": [round(x, 1) for x in curl_mbps],
        "hffs_MBps_per_pass": [round(x, 1) for x in hffs_mbps],
        "ratio_per_pass": [round(x, 3) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "pass1_seeds": "warm" if args.warm_seeds else "cold",
        "settle_s": args.settle,
        "cpu_s_per_GiB_curl": round(statistics.median(curl_cpu) * (1 << 30) / total, 2),
        "ratio_pass1": round(ratios[0], 3),
        "ratio_median_later_passes": (
            round(statistics.median(ratios[1:]), 3) if ratios[1:] else None
        ),
        "cpu_s_per_GiB_seeds_per_pass": [round(c * (1 << 30) / total, 2) for c in seeds_cpu],
        "downloader_seed_side_manifests": handover,
        "cpu_s_per_GiB_downloader": round(statistics.median(dl_cpu) * (1 << 30) / total, 2),
        "cpu_s_per_GiB_seeds": round(statistics.median(seeds_cpu) * (1 << 30) / total, 2),
        "downloader_daemon_peak_rss_MiB": round(dl_rss / h.MIB, 1),
        "seed_peak_rss_MiB": [round(x / h.MIB, 1) for x in seed_rss],
        "loadavg": os.getloadavg(),
    }
    print(
        f"\n{nfiles} files x {size / h.MIB:.0f} MiB from {args.seeds} seeds, "
        f"{args.repeat} passes ({h.machine()})"
    )
    print(f"  curl <- nginx, {args.seeds} parallel  {statistics.median(curl_mbps):8.1f} MB/s")
    print(f"  hffs <- {args.seeds} seeds            {statistics.median(hffs_mbps):8.1f} MB/s")
    print(f"  ratio per pass  {res['ratio_per_pass']}  median {res['ratio_median']}")
    print(
        f"  pass 1 ({res['pass1_seeds']} seeds) {res['ratio_pass1']}, "
        f"later passes (warm seeds) median {res['ratio_median_later_passes']}; "
        f"seeds CPU s/GiB per pass {res['cpu_s_per_GiB_seeds_per_pass']}"
    )
    print(f"  downloader's seed side after pass 1: {handover}")
    print(
        f"  CPU s/GiB: downloader (CLI + daemon) {res['cpu_s_per_GiB_downloader']}, "
        f"seeds {res['cpu_s_per_GiB_seeds']}, curl {res['cpu_s_per_GiB_curl']}"
    )
    print(
        f"  peak RSS: downloader daemon {res['downloader_daemon_peak_rss_MiB']} MiB, "
        f"seeds {res['seed_peak_rss_MiB']} MiB"
    )
    h.write_results("many_files", res)


def manifests_after_download(dl: h.Node, ids: list[str]) -> dict[str, object]:
    """Ask the downloader's seed side for every file it just fetched: how many answered
    at the first ask, and its daemon's CPU meanwhile (a digest costs ~0.6 s per GiB)."""
    import httpx

    cpu0 = dl.cpu_seconds()
    first = 0
    with httpx.Client(trust_env=False, timeout=120) as client:
        for fid in ids:
            url = f"http://{dl.addr}/v1/blobs/{fid}/manifest"
            first += client.get(url).status_code == 200
    return {
        "answered_at_first_ask": f"{first}/{len(ids)}",
        "cpu_s": round(dl.cpu_seconds() - cpu0, 2),
    }


if __name__ == "__main__":
    main()
