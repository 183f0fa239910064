"""One file from 4 rate-limited peer daemons plus a rate-limited hub: bandwidth used.

Four seed daemons (127.0.0.2-5), each started with `--max-upload-rate`, and a LocalHub
throttled to its own rate (127.0.0.1, also the metadata endpoint) hold the same file;
the downloader (no daemon) has the four as saved peers. Two layouts, one run each:

- full:  every peer holds the whole file. hffs asks upstream only for chunks no live peer
         holds, so the hub is expected to serve ~nothing; the usable sum is the peers' limits.
- split: peer i holds chunks i, i+5, i+10, ... (as a partial download, with the manifest),
         the fifth share of the chunks is only on the hub: every source is needed.

Prints achieved throughput vs the sum of the usable limits (ratio of bandwidth used),
bytes per source (the daemons' own upload counters, the hub's byte counter) and the
peak RSS of the daemons and of the downloader.

    .venv/bin/python bench/multi_source.py [--size 256M] [--peer-rate 8M] [--hub-rate 8M]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import harness as h

from hffs.visibility import VisibilityStore
from swarm.manifest import build_manifest
from swarm.store import PartialFile

REPO = "org/multi-source"
NAME = "model.safetensors"
N_PEERS = 4


def seed_partial(node: h.Node, src: Path, file_id: str, keep: int, every: int) -> int:
    """Give ``node`` the chunks i with i % every == keep of ``src`` as a verified partial
    download with the full manifest, as a peer halfway through its own download has."""
    manifest = build_manifest(src, file_id)
    VisibilityStore(node.home).record_peer_ids([file_id])  # public content: shared
    held = 0
    with PartialFile(node.home / "partial", file_id, manifest.size) as pf, src.open("rb") as f:
        pf.set_manifest(manifest)
        for i in range(keep, manifest.n_chunks, every):
            start, end = manifest.span(i)
            f.seek(start)
            if not pf.write_chunk(i, f.read(end - start)):
                raise RuntimeError(f"chunk {i} did not verify")
            held += end - start
    return held


def run_layout(
    layout: str, src: Path, size: int, peer_rate: int, hub_rate: int, root: Path
) -> dict[str, Any]:
    with h.LocalHub(throttle_bps=hub_rate) as hub, h.nodes(root) as make:
        commit = hub.add_repo(REPO, {NAME: src})
        peers = [make(f"127.0.0.{2 + i}", max_upload_rate=peer_rate) for i in range(N_PEERS)]
        file_id = hub.get_file(REPO, NAME).etag
        for i, p in enumerate(peers):
            if layout == "full":
                p.add_file(REPO, NAME, src, commit)
            else:
                seed_partial(p, src, file_id, i, N_PEERS + 1)
            p.up()
        dl = make("127.0.0.9", peers=peers, endpoints=hub.url)
        hub.reset_stats()
        r = dl.cli_timed("model", "add", REPO, "--file", NAME, timeout=1800)
        res: dict[str, Any] = {"layout": layout, "ok": r.ok, "seconds": r.seconds}
        if not r.ok:
            res["failure"] = r.tail()
            print(f"FAILED ({layout}): hffs model add {REPO} --file {NAME}\n{r.tail()}")
            return res
        blob = dl.blob(REPO, file_id)
        res["correct"] = h.sha256_file(blob) == file_id
        blob.unlink()
        by_source = {p.addr: p.status()["bytes_up"] for p in peers}
        by_source["hub"] = hub.bytes_served
        usable = N_PEERS * peer_rate + (hub_rate if layout == "split" else 0)
        reported = r.reported_seconds() or r.seconds
        res.update(
            reported_seconds=reported,
            MBps=h.mbps(size, reported),
            MBps_end_to_end=h.mbps(size, r.seconds),
            usable_limits_MBps=usable / 1e6,
            all_limits_MBps=(N_PEERS * peer_rate + hub_rate) / 1e6,
            ratio_vs_usable=size / reported / usable,
            ratio_vs_all_limits=size / reported / (N_PEERS * peer_rate + hub_rate),
            bytes_by_source=by_source,
            served_over_size=sum(by_source.values()) / size,
            daemon_peak_rss_MiB=[round(p.peak_rss() / h.MIB, 1) for p in peers],
            downloader_peak_rss_MiB=round(r.max_rss / h.MIB, 1),
        )
        return res


def main() -> None:
    ap = h.arguments(__doc__, size="256M")
    ap.add_argument("--peer-rate", type=h.parse_size, default="8M", help="bytes/s per peer (8M)")
    ap.add_argument("--hub-rate", type=h.parse_size, default="8M", help="hub bytes/s (8M)")
    ap.add_argument("--layout", choices=["full", "split", "both"], default="both")
    ap.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    args = ap.parse_args()
    size: int = args.size
    src = h.cached_random_file(size, seed=1)
    layouts = ["full", "split"] if args.layout == "both" else [args.layout]
    results = []
    for layout in layouts:
        with h.scratch(f"multi-{layout}") as tmp:
            results.append(run_layout(layout, src, size, args.peer_rate, args.hub_rate, Path(tmp)))

    print(
        f"\n4 peers at {args.peer_rate / h.MIB:g} MiB/s each + hub at {args.hub_rate / h.MIB:g} "
        f"MiB/s, {size / h.MIB:.0f} MiB ({h.machine()})"
    )
    for res in results:
        if not res["ok"]:
            print(f"  {res['layout']:5}  FAILED")
            continue
        print(
            f"  {res['layout']:5}  {res['MBps']:6.1f} MB/s of {res['usable_limits_MBps']:.1f} "
            f"usable -> ratio {res['ratio_vs_usable']:.3f} (vs all 5 limits "
            f"{res['ratio_vs_all_limits']:.3f}); {res['reported_seconds']:.1f} s reported, "
            f"{res['seconds']:.1f} s end to end; correct={res['correct']}"
        )
        shares = ", ".join(f"{k} {v / h.MIB:.0f} MiB" for k, v in res["bytes_by_source"].items())
        print(
            f"         bytes per source: {shares} "
            f"(served {res['served_over_size']:.2f}x the file size)"
        )
        print(
            f"         peak RSS: daemons {res['daemon_peak_rss_MiB']} MiB, "
            f"downloader {res['downloader_peak_rss_MiB']} MiB"
        )
    h.write_results(
        "multi_source",
        {
            "machine": h.machine(),
            "size_bytes": size,
            "peer_rate": args.peer_rate,
            "hub_rate": args.hub_rate,
            "results": results,
        },
    )

    ok = [r for r in results if r["ok"]]
    if not ok:
        raise SystemExit(1)
    fig, (ax1, ax2) = h.subplots(
        f"4 peers at {args.peer_rate / h.MIB:g} MiB/s + hub {args.hub_rate / h.MIB:g} MiB/s, "
        f"{size / h.MIB:.0f} MiB",
        2,
    )
    x = range(len(ok))
    ax1.bar([i - 0.2 for i in x], [r["usable_limits_MBps"] for r in ok], 0.4, label="limits")
    bars = ax1.bar([i + 0.2 for i in x], [r["MBps"] for r in ok], 0.4, label="achieved")
    ax1.bar_label(bars, labels=[f"{r['ratio_vs_usable']:.0%}" for r in ok])
    ax1.set_xticks(list(x), [f"{r['layout']}" for r in ok])
    ax1.set_ylabel("MB/s")
    ax1.legend()
    sources = list(ok[0]["bytes_by_source"])
    width = 0.8 / len(ok)
    for j, r in enumerate(ok):
        vals = [r["bytes_by_source"].get(s, 0) / h.MIB for s in sources]
        ax2.bar([i + j * width for i in range(len(sources))], vals, width, label=r["layout"])
    ax2.set_xticks(
        [i + width * (len(ok) - 1) / 2 for i in range(len(sources))],
        [s.split(":")[0] for s in sources],
        fontsize=8,
    )
    ax2.set_ylabel("MiB served")
    ax2.legend()
    h.save_plot(fig, "multi_source", args.publish)


if __name__ == "__main__":
    main()
