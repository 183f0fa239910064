"""What starting the `hffs` CLI costs: CPU s and wall of the common commands.

A seed daemon (127.0.0.2) holds small files, one per `model add` run; a downloader
daemon (127.0.0.3) has it as a saved peer. Round after round, interleaved, runs:
`python -c pass` (the reference: the interpreter alone), `hffs --version`,
`hffs daemon status`, `hffs model ls` and `hffs model add` of one of those files through
the downloader's daemon (a file of its own each time, so every run really downloads).
Prints the median CPU s (user + system) and wall per command, and each minus the reference.

``--compare PATH`` also runs each hffs command with another install's ``hffs`` script
(e.g. a clone of an older commit with its own venv), interleaved in the same rounds,
against the same daemons (the control API is the same).

Python compiles a module without a .pyc from source on each run: with
PYTHONDONTWRITEBYTECODE set (as in some CI and dev shells) hffs's own modules are
compiled at every start, which a pip-installed hffs never does. The line printed first
says which case was measured.

    .venv/bin/python bench/cli_start.py [--rounds 9] [--size 1M] [--compare PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import harness as h

REPO = "org/cli-start"


def hffs_argv(*args: str, script: Path | None = None) -> list[str]:
    """The installed `hffs` script when there is one (what a user runs), else -m."""
    script = script or Path(sys.executable).parent / "hffs"
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "hffs", *args]


HFFS_COMMANDS = {
    "hffs --version": ("--version",),
    "hffs daemon status": ("daemon", "status"),
    "hffs model ls": ("model", "ls"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="runs per command (default 9)")
    ap.add_argument("--size", type=h.parse_size, default="1M", help="file size (default 1M)")
    ap.add_argument("--compare", type=Path, help="another install's hffs script, run alike")
    args = ap.parse_args()
    scripts: dict[str, Path | None] = {"": None}
    if args.compare:
        scripts[" (compared)"] = args.compare
    files = args.rounds * len(scripts)  # one of its own per model add: each one downloads
    loads = [os.getloadavg()[0]]
    runs: dict[str, list[h.CliRun]] = {}
    with h.scratch("cli_start") as tmp, h.nodes(Path(tmp)) as make:
        seed = make("127.0.0.2")
        for k in range(files):
            seed.add_file(REPO, f"w{k}.bin", h.cached_random_file(args.size, seed=k))
        seed.up()
        d = make("127.0.0.3", peers=[seed])
        d.up(bootstrap=[seed])
        k = 0
        for _ in range(args.rounds):
            commands: dict[str, list[str]] = {"python -c pass": [sys.executable, "-c", "pass"]}
            for label, script in scripts.items():
                for name, cmd in HFFS_COMMANDS.items():
                    commands[name + label] = hffs_argv(*cmd, script=script)
                cache = str(Path(tmp) / "cli-cache")
                add = ("model", "add", REPO, f"w{k}.bin", "--revision", h.COMMIT)
                add += ("--cache-dir", cache)
                commands["hffs model add (daemon)" + label] = hffs_argv(*add, script=script)
                k += 1
            for name, argv in commands.items():
                run = h.run_timed(argv, d.env, timeout=120)
                if not run.ok:
                    raise SystemExit(f"{name} failed:\n{run.tail()}")
                runs.setdefault(name, []).append(run)
            loads.append(os.getloadavg()[0])
        moved = d.status()["bytes_down_peers"]
    ref_cpu = statistics.median(r.cpu_seconds for r in runs["python -c pass"])
    ref_wall = statistics.median(r.seconds for r in runs["python -c pass"])
    bytecode = "off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    print(f"{args.rounds} rounds, interleaved; load average {min(loads):.1f}-{max(loads):.1f}")
    print(f".pyc writing {bytecode} (PYTHONDONTWRITEBYTECODE)")
    print(f"{'command':<37} {'CPU s':>7} {'- ref':>7} {'wall s':>7} {'- ref':>7}")
    results = {}
    for name, rs in runs.items():
        cpu = statistics.median(r.cpu_seconds for r in rs)
        wall = statistics.median(r.seconds for r in rs)
        print(f"{name:<37} {cpu:7.3f} {cpu - ref_cpu:7.3f} {wall:7.3f} {wall - ref_wall:7.3f}")
        results[name] = {"cpu_median": cpu, "wall_median": wall}
    print(f"the daemon downloaded {moved / args.size:.1f} x {args.size} B from the seed")
    h.write_results(
        "cli_start",
        {"rounds": args.rounds, "loads": loads, "bytecode": bytecode, "commands": results},
    )


if __name__ == "__main__":
    main()
