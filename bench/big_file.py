"""Peak memory of a big file's download: one seed daemon, one downloader daemon, `hffs model
add` of a 10 GiB file; peak RSS (VmHWM) of each daemon and of the CLI against the issue's
bound (150 MB each).

The file is sparse (zeros): it takes no room where the seed keeps it, and hashing,
sendfile and the writes do the same work as for random bytes. Only the downloaded copy
takes room: put the scratch on a disk with space (it is removed at the end), or on tmpfs
if twice the size fits in RAM. The bound is the reference; also printed: MB/s and CPU.

    HFFS_BENCH_TMP=/var/tmp/hffs-big .venv/bin/python bench/big_file.py [--size 10G]
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import harness as h

REPO = "org/big-file"
NAME = "model.safetensors"
BOUND = 150e6  # bytes: the bound on each daemon's peak RSS


def main() -> None:
    ap = h.arguments(__doc__, size="10G")
    args = ap.parse_args()
    size: int = args.size
    free = shutil.disk_usage(h.SCRATCH_ROOT if h.SCRATCH_ROOT.exists() else "/").free
    if free < size * 1.1:
        raise SystemExit(f"{h.SCRATCH_ROOT}: {free / h.MIB:.0f} MiB free, need {size / h.MIB:.0f}")
    with h.scratch("big") as tmp, h.nodes(Path(tmp)) as make:
        root = Path(tmp)
        src = root / "sparse.bin"
        with src.open("wb") as f:
            f.truncate(size)
        seed = make("127.0.0.2")
        file_id = seed.add_file(REPO, NAME, src)
        seed.up()
        dl = make("127.0.0.10", peers=[seed]).up(bootstrap=[seed])
        h.wait_providers(dl, file_id, 1)
        h.warm_manifest(seed, file_id, timeout=900)  # digested before the clock starts
        seed_cpu0, dl_cpu0 = seed.cpu_seconds(), dl.cpu_seconds()
        r = dl.cli_timed("model", "add", REPO, "--revision", h.COMMIT, timeout=3600)
        if not r.ok:
            raise SystemExit(f"hffs model add failed:\n{r.tail()}")
        dl_cpu = r.cpu_seconds + dl.cpu_seconds() - dl_cpu0
        seed_cpu = seed.cpu_seconds() - seed_cpu0
        blob = dl.blob(REPO, file_id)
        if blob.stat().st_size != size or h.sha256_file(blob) != file_id:
            raise SystemExit("hffs published a wrong file")
        blob.unlink()
        seed_rss, dl_rss = seed.peak_rss(), dl.peak_rss()
    gib = size / (1 << 30)
    res = {
        "machine": h.machine(),
        "size_bytes": size,
        "hffs_MBps": round(h.mbps(size, r.seconds), 1),
        "seed_daemon_peak_rss_MB": round(seed_rss / 1e6, 1),
        "downloader_daemon_peak_rss_MB": round(dl_rss / 1e6, 1),
        "downloader_cli_peak_rss_MB": round(r.max_rss / 1e6, 1),
        "ratio_to_bound": {
            "seed": round(seed_rss / BOUND, 3),
            "downloader": round(dl_rss / BOUND, 3),
        },
        "cpu_s_per_GiB_downloader": round(dl_cpu / gib, 2),
        "cpu_s_per_GiB_seed": round(seed_cpu / gib, 2),
        "loadavg": os.getloadavg(),
    }
    print(f"\none file of {size / h.MIB:.0f} MiB from one seed ({h.machine()})")
    print(f"  hffs model add        {res['hffs_MBps']:8.1f} MB/s end to end")
    print(
        f"  peak RSS: seed daemon {res['seed_daemon_peak_rss_MB']} MB, downloader daemon "
        f"{res['downloader_daemon_peak_rss_MB']} MB, CLI {res['downloader_cli_peak_rss_MB']} MB"
    )
    print(f"  ratio to the 150 MB bound: {res['ratio_to_bound']}")
    print(
        f"  CPU s/GiB: downloader (CLI + daemon) {res['cpu_s_per_GiB_downloader']}, "
        f"seed {res['cpu_s_per_GiB_seed']}; load {res['loadavg'][0]:.1f}"
    )
    h.write_results("big_file", res)


if __name__ == "__main__":
    main()
