"""hffs's chunk digests and whole-file checks vs the machine's raw xxh3-128 and sha256.

References, on the same bytes held in memory, 1 MiB at a time (as hffs reads):
xxhash.xxh3_128 and hashlib.sha256, and a page-cache read of the file. Measured:

- build_manifest (swarm/manifest.py): what a holder runs before vouching for a blob:
  xxh3-128 of every chunk and the sha256 of the whole file, in one pass over the file.
- PartialFile.write_chunk (swarm/store.py): digest a chunk and pwrite it in place.
- PartialFile reopen: every present chunk is re-checked against its recorded digest.
- PartialFile.verify_whole: the sha256 over the finished file before it is published.

Page-cache read and write speeds are measured too, so each step is also compared with
its hash(es) plus the I/O it must do, one core doing each in turn.

Each is the best of --repeat runs on a file in the page cache; ratios are against the
raw speed of the hash(es) the step must compute.

    .venv/bin/python bench/hashing.py [--size 512M] [--repeat 3]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import harness as h
import xxhash

from swarm.chunking import chunk_size_for
from swarm.manifest import build_manifest
from swarm.store import PartialFile

BLOCK = 1 << 20


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def in_blocks(data: memoryview, make: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        hasher = make()
        for i in range(0, len(data), BLOCK):
            hasher.update(data[i : i + BLOCK])  # type: ignore[attr-defined]
        hasher.digest()  # type: ignore[attr-defined]

    return run


def read_file(path: Path) -> None:
    with path.open("rb", buffering=0) as f:
        while f.read(BLOCK):
            pass


def main() -> None:
    ap = h.arguments(__doc__, size="512M", what="bytes hashed")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, best kept (3)")
    ap.add_argument("--publish", action="store_true", help="copy the plot to bench/plots/")
    args = ap.parse_args()
    size: int = args.size
    src = h.cached_random_file(size, seed=3)
    data = memoryview(src.read_bytes())
    file_id = hashlib.sha256(data).hexdigest()

    def gbps(secs: float) -> float:
        return size / secs / 1e9

    t_xxh = best(in_blocks(data, xxhash.xxh3_128), args.repeat)
    t_sha = best(in_blocks(data, hashlib.sha256), args.repeat)
    t_read = best(lambda: read_file(src), args.repeat)
    t_manifest = best(lambda: build_manifest(src, file_id), args.repeat)

    with h.scratch("hashing") as tmp:
        store = Path(tmp)
        chunk = chunk_size_for(size)

        def write_all() -> PartialFile:
            (store / f"{file_id}.state").unlink(missing_ok=True)
            pf = PartialFile(store, file_id, size)
            for i in range(pf.n_chunks):
                pf.write_chunk(i, data[i * chunk : (i + 1) * chunk].tobytes())
            pf.close()
            return pf

        def pwrite_all() -> None:
            with (store / "raw.bin").open("wb", buffering=0) as f:
                for i in range(0, size, chunk):
                    f.write(data[i : i + chunk].tobytes())

        t_pwrite = best(pwrite_all, args.repeat)
        (store / "raw.bin").unlink()
        # write_chunk is given bytes; the slicing copy is timed too, as a peer's chunk is.
        t_write = best(write_all, args.repeat)
        t_reopen = best(lambda: PartialFile(store, file_id, size).close(), args.repeat)
        with PartialFile(store, file_id, size) as pf:

            def verify() -> None:
                if not pf.verify_whole():
                    raise SystemExit("verify_whole refused a correct file")

            t_verify = best(verify, args.repeat)

    def serial(*rates: float) -> float:  # one core doing each step in turn
        return 1 / sum(1 / r for r in rates)

    xxh, sha, rd, wr = gbps(t_xxh), gbps(t_sha), gbps(t_read), gbps(t_pwrite)
    # (name, GB/s, (raw hash reference, its GB/s), GB/s of that hash plus the I/O it needs)
    rows: list[tuple[str, float, tuple[str, float] | None, float | None]] = [
        ("raw xxh3-128 (memory)", xxh, None, None),
        ("raw sha256 (memory)", sha, None, None),
        ("read file (page cache)", rd, None, None),
        ("write file (page cache)", wr, None, None),
        (
            "build_manifest",
            gbps(t_manifest),
            ("xxh3+sha256", serial(xxh, sha)),
            serial(xxh, sha, rd),
        ),
        ("PartialFile.write_chunk", gbps(t_write), ("xxh3", xxh), serial(xxh, wr)),
        ("PartialFile reopen check", gbps(t_reopen), ("xxh3", xxh), serial(xxh, rd)),
        ("PartialFile.verify_whole", gbps(t_verify), ("sha256", sha), serial(sha, rd)),
    ]
    print(f"\nhashing, {size / h.MIB:.0f} MiB, best of {args.repeat} ({h.machine()})")
    res: dict[str, object] = {"machine": h.machine(), "size_bytes": size}
    for name, rate, ref, with_io in rows:
        line = f"  {name:26} {rate:6.2f} GB/s"
        if ref and with_io:
            line += f"   vs raw {ref[0]}: {rate / ref[1]:.3f}, vs it plus the I/O: "
            line += f"{rate / with_io:.3f}"
            res[f"ratio {name} / raw {ref[0]}"] = round(rate / ref[1], 3)
            res[f"ratio {name} / raw {ref[0]} + I/O"] = round(rate / with_io, 3)
        print(line)
        res[f"{name} GB/s"] = round(rate, 3)
    h.write_results("hashing", res)

    fig, (ax,) = h.subplots(f"Hashing, {size / h.MIB:.0f} MiB in page cache / memory", 1, 8.0)
    colors = ["#888"] * 4 + ["#2a7"] * 4
    bars = ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color=colors[::-1])
    ax.bar_label(
        bars,
        labels=[
            f"{r[1]:.2f}"
            + (
                f"  ({r[1] / r[2][1]:.0%} of raw {r[2][0]}, {r[1] / r[3]:.0%} with I/O)"
                if r[2] and r[3]
                else ""
            )
            for r in rows
        ][::-1],
        fontsize=8,
    )
    ax.set_xlabel("GB/s (one core)")
    ax.set_xlim(0, max(r[1] for r in rows) * 1.45)
    h.save_plot(fig, "hashing", args.publish)


if __name__ == "__main__":
    main()
