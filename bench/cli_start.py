"""What starting the `hffs` CLI costs: CPU s and wall of the common commands.

A seed daemon (127.0.0.2) holds one small file; a downloader daemon (127.0.0.3) has
it as a saved peer. Round after round, interleaved, runs: `python -c pass` (the
reference: the interpreter alone), `hffs --version`, `hffs daemon status`,
`hffs model ls` and `hffs model add` of the small file through the downloader's
daemon (into a fresh --cache-dir each time, so every run really downloads). Prints
the median CPU s (user + system) and wall per command, and each minus the reference.

    .venv/bin/python bench/cli_start.py [--rounds 9] [--size 1M]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import harness as h

REPO = "org/cli-start"
NAME = "model.safetensors"


def hffs_argv(*args: str) -> list[str]:
    """The installed `hffs` script when there is one (what a user runs), else -m."""
    script = Path(sys.executable).parent / "hffs"
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "hffs", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="runs per command (default 9)")
    ap.add_argument("--size", type=h.parse_size, default="1M", help="file size (default 1M)")
    args = ap.parse_args()
    src = h.cached_random_file(args.size)
    loads = [os.getloadavg()[0]]
    runs: dict[str, list[h.CliRun]] = {}
    with h.scratch("cli_start") as tmp, h.nodes(Path(tmp)) as make:
        seed = make("127.0.0.2")
        seed.add_file(REPO, NAME, src)
        seed.up()
        d = make("127.0.0.3", peers=[seed])
        d.up(bootstrap=[seed])
        commands: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "hffs --version": hffs_argv("--version"),
            "hffs daemon status": hffs_argv("daemon", "status"),
            "hffs model ls": hffs_argv("model", "ls"),
        }
        for i in range(args.rounds):
            fresh = Path(tmp) / f"cache-{i}"
            add = hffs_argv("model", "add", REPO, "--revision", h.COMMIT, "--cache-dir", str(fresh))
            for name, argv in [*commands.items(), ("hffs model add (daemon)", add)]:
                run = h.run_timed(argv, d.env, timeout=120)
                if not run.ok:
                    raise SystemExit(f"{name} failed:\n{run.tail()}")
                runs.setdefault(name, []).append(run)
            loads.append(os.getloadavg()[0])
    ref_cpu = statistics.median(r.cpu_seconds for r in runs["python -c pass"])
    ref_wall = statistics.median(r.seconds for r in runs["python -c pass"])
    print(f"{args.rounds} rounds, interleaved; load average {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'command':<26} {'CPU s':>7} {'- ref':>7} {'wall s':>7} {'- ref':>7}")
    results = {}
    for name, rs in runs.items():
        cpu = statistics.median(r.cpu_seconds for r in rs)
        wall = statistics.median(r.seconds for r in rs)
        print(f"{name:<26} {cpu:7.3f} {cpu - ref_cpu:7.3f} {wall:7.3f} {wall - ref_wall:7.3f}")
        results[name] = {"cpu_median": cpu, "wall_median": wall}
    h.write_results("cli_start", {"rounds": args.rounds, "loads": loads, "commands": results})


if __name__ == "__main__":
    main()
