"""The CLI's light commands never load the daemon (uvicorn, Starlette, kademlia)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from hffs.cli import app
sys.argv = ["hffs", *json.loads(sys.argv[1])]
try:
    app(prog_name="hffs")
except SystemExit:
    pass
heavy = ("uvicorn", "starlette", "kademlia", "hffs.daemon", "swarm.dht", "swarm.download")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["model", "ls"], ["model", "add", "--help"]])
def test_light_commands_do_not_import_the_daemon(argv: list[str], hffs_env: dict[str, str]) -> None:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        env=hffs_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    loaded = json.loads(r.stderr.strip().splitlines()[-1])
    assert loaded == [], r.stderr
