"""huggingface_hub through the daemon's HF endpoint, vs `curl -o` from nginx on loopback.

A seed daemon holds one file; `hf_hub_download` runs in a new Python process with
HF_ENDPOINT at a downloader daemon (which holds nothing, upstream unreachable, the
revision a commit), as a user's script or `transformers` would. Two clients per pass:

- "shared cache": HF_HUB_CACHE is the daemon's own (one machine, the default): the
  daemon fetches the file while answering the client's HEAD, and the client finds the
  blob there;
- "own cache": the client writes its own copy, from the bytes the daemon serves (the
  daemon holds the blob from the first client by then).

Start-up of the client's Python and its imports are included, as for curl's start-up.
The passes alternate curl and the clients; every copy is removed after each.

    HFFS_BENCH_TMP=/dev/shm/hffs-bench .venv/bin/python bench/hf_endpoint.py \\
        [--size 1G] [--repeat 3] [--publish]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path

import harness as h

REPO = "org/hf-endpoint"
NAME = "model.safetensors"
CLIENT = (
    "import sys; from huggingface_hub import hf_hub_download; "
    "print(hf_hub_download(sys.argv[1], sys.argv[2], revision=sys.argv[3]))"
)


def run_client(dl: h.Node, cache: Path) -> h.CliRun:
    env = dict(dl.env)
    env.update(
        HF_ENDPOINT=f"http://{dl.addr}",
        HF_HUB_CACHE=str(cache),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return h.run_timed([sys.executable, "-c", CLIENT, REPO, NAME, h.COMMIT], env, 600)


def main() -> None:
    ap = h.arguments(__doc__, size="1G", settle=True)
    ap.add_argument("--repeat", type=int, default=3, help="passes (default 3)")
    ap.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    args = ap.parse_args()
    size: int = args.size

    src = h.cached_random_file(size, seed=11)
    runs: dict[str, list[h.CliRun]] = {"curl": [], "shared": [], "own": []}
    with h.scratch("hf-endpoint") as tmp, h.nodes(Path(tmp)) as make:
        root = Path(tmp)
        _, dl, file_id, www = h.one_seed(make, root, REPO, NAME, src)
        own = root / "client-cache"
        with h.Nginx(www, root / "nginx") as nginx:
            for i in range(args.repeat):
                h.settle(args.settle)
                r = h.curl_to(f"{nginx.url}/{NAME}", root / "curl.out")
                if not r.ok:
                    raise SystemExit(f"curl failed: {r.tail()}")
                (root / "curl.out").unlink()
                runs["curl"].append(r)
                for kind, cache in (("shared", dl.hub), ("own", own)):
                    h.settle(args.settle)
                    r = run_client(dl, cache)
                    got = Path(r.stdout.strip().splitlines()[-1]) if r.ok and r.stdout else None
                    if got is None or (i == 0 and h.sha256_file(got) != file_id):
                        raise SystemExit(f"hf_hub_download ({kind} cache) failed: {r.tail()}")
                    runs[kind].append(r)
                shutil.rmtree(own, ignore_errors=True)
                dl.blob(REPO, file_id).unlink()
                rates = ", ".join(f"{k} {h.mbps(size, v[-1].seconds):.0f}" for k, v in runs.items())
                print(f"pass {i + 1} (MB/s): {rates}; load {os.getloadavg()[0]:.1f}", flush=True)

    def med(kind: str) -> float:
        return statistics.median(h.mbps(size, r.seconds) for r in runs[kind])

    ratios = {
        k: [round(c.seconds / r.seconds, 3) for c, r in zip(runs["curl"], runs[k], strict=True)]
        for k in ("shared", "own")
    }
    res = {
        "machine": h.machine(),
        "size_MiB": size // h.MIB,
        "repeat": args.repeat,
        "curl_nginx_MBps": round(med("curl"), 1),
        "hf_shared_cache_MBps": round(med("shared"), 1),
        "hf_own_cache_MBps": round(med("own"), 1),
        "ratio_per_pass_shared": ratios["shared"],
        "ratio_per_pass_own": ratios["own"],
        "client_cpu_s_per_GiB": {
            k: round(statistics.median(r.cpu_seconds for r in runs[k]) * (1 << 30) / size, 2)
            for k in runs
        },
    }
    print(f"\nhf_hub_download via the daemon, {size / h.MIB:.0f} MiB, {h.machine()}")
    print(f"  curl <- nginx               {res['curl_nginx_MBps']:8.1f} MB/s")
    print(f"  hf_hub_download, shared     {res['hf_shared_cache_MBps']:8.1f} MB/s")
    print(f"  hf_hub_download, own cache  {res['hf_own_cache_MBps']:8.1f} MB/s")
    for k in ("shared", "own"):
        print(f"  ratio per pass, {k:6}  {ratios[k]}  median {statistics.median(ratios[k]):.3f}")
    print(f"  client CPU s/GiB {res['client_cpu_s_per_GiB']}")
    h.write_results("hf_endpoint", res)

    fig, (ax,) = h.subplots(f"hf_hub_download via the daemon, {size / h.MIB:.0f} MiB", 1, 6.0)
    bars = ax.bar(
        ["curl ← nginx", "hf_hub_download\n(daemon's cache)", "hf_hub_download\n(own cache)"],
        [res["curl_nginx_MBps"], res["hf_shared_cache_MBps"], res["hf_own_cache_MBps"]],
        color=["#888", "#2a7", "#7c9"],
    )
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("MB/s (higher is better)")
    h.save_plot(fig, "hf_endpoint", args.publish)


if __name__ == "__main__":
    main()
