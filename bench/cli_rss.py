"""Who moves the bytes of `hffs model add`: the daemon, when one runs (issue 10).

A seed daemon (127.0.0.2) holds one file; the downloader machine (127.0.0.3) runs
`hffs model add` twice into fresh caches: once with its own daemon running (the CLI
submits a job and draws progress), once with no daemon (the same code in the CLI
process). Prints the CLI's peak RSS in both, the ratio, and the daemon's byte
counters (they must show the file: the daemon did the transfer).

    .venv/bin/python bench/cli_rss.py [--size 1G]
"""

from __future__ import annotations

import shutil
from pathlib import Path

import harness as h

REPO = "org/cli-rss"
NAME = "model.safetensors"


def main() -> None:
    ap = h.arguments(__doc__, size="1G")
    args = ap.parse_args()
    size: int = args.size
    src = h.cached_random_file(size)
    with h.scratch("cli_rss") as tmp, h.nodes(Path(tmp)) as make:
        seed = make("127.0.0.2")
        seed.add_file(REPO, NAME, src)
        seed.up()
        d = make("127.0.0.3", peers=[seed])
        d.up(bootstrap=[seed])
        with_daemon = d.cli_timed("model", "add", REPO, "--revision", h.COMMIT)
        status = d.status()
        d.cli("daemon", "stop")
        shutil.rmtree(d.hub, ignore_errors=True)
        shutil.rmtree(d.home / "partial", ignore_errors=True)
        alone = d.cli_timed("model", "add", REPO, "--revision", h.COMMIT)
    for name, run in (("with daemon", with_daemon), ("no daemon", alone)):
        if not run.ok:
            raise SystemExit(f"{name}: model add failed:\n{run.tail()}")
    moved = status["bytes_down_peers"] + status["bytes_down_upstream"]
    mib = 1 << 20
    print(f"file: {size / mib:.0f} MiB from one peer")
    print(f"daemon's download counters: {moved / mib:.0f} MiB ({moved / size:.2f} of the file)")
    print(f"CLI peak RSS with a daemon: {with_daemon.max_rss / mib:.1f} MiB")
    print(f"CLI peak RSS without:       {alone.max_rss / mib:.1f} MiB")
    print(f"ratio (with / without):     {with_daemon.max_rss / alone.max_rss:.2f}")
    h.write_results(
        "cli_rss",
        {
            "size": size,
            "daemon_bytes": moved,
            "cli_rss_with_daemon": with_daemon.max_rss,
            "cli_rss_alone": alone.max_rss,
            "seconds_with_daemon": with_daemon.seconds,
            "seconds_alone": alone.seconds,
        },
    )


if __name__ == "__main__":
    main()
