"""The CLI's conventions: --version, -h everywhere, ``python -m hffs``, one byte formatter."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from hffs.cli import app
from hffs.hub import RemoteFile, RemoteRevision
from hffs.progress import DownloadProgress, human_bytes

runner = CliRunner()


def test_version_on_stdout_and_python_dash_m() -> None:
    from importlib.metadata import version

    r = subprocess.run(
        [sys.executable, "-m", "hffs", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hffs {version('hffs')}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["model"],
        ["model", "add"],
        ["model", "ls"],
        ["model", "rm"],
        ["model", "search"],
        ["model", "import"],
        ["download"],
        ["daemon"],
        ["daemon", "start"],
        ["daemon", "status"],
        ["peer"],
        ["peer", "add"],
        ["conf", "cache", "set"],
        ["uninstall"],
    ],
)
def test_dash_h_is_help_everywhere(argv: list[str]) -> None:
    short = runner.invoke(app, [*argv, "-h"])
    long = runner.invoke(app, [*argv, "--help"])
    assert short.exit_code == 0, short.output
    assert "Usage: " in short.output
    assert short.output == long.output


def test_bootstrap_shows_what_it_takes() -> None:
    r = runner.invoke(app, ["daemon", "start", "-h"], terminal_width=200)
    line = next(x for x in r.output.splitlines() if "--bootstrap" in x)
    assert "HOST[:PORT]" in line and "list" not in line


def test_download_is_model_add() -> None:
    a = runner.invoke(app, ["download", "-h"], terminal_width=200).output
    b = runner.invoke(app, ["model", "add", "-h"], terminal_width=200).output
    options = re.compile(r"--[a-z][a-z-]*")
    assert options.findall(a) == options.findall(b) and "--revision" in options.findall(a)


def test_progress_bytes_are_binary_like_the_summary() -> None:
    size = 13 * 1024 * 1024 + 5
    f = RemoteFile("w.bin", size, "ab" * 32, True)
    rev = RemoteRevision("model", "org/r", "c" * 40, (f,), "http://127.0.0.1:9")
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False)
    with DownloadProgress(console, rev, [f]) as progress:
        on_bytes = progress.callback(f)
        on_bytes("http://127.0.0.1:9", True, size // 2)
        on_bytes("127.0.0.2:9009", False, size - size // 2)
        progress.file_done(f)
    text = buf.getvalue()
    assert f"{human_bytes(size)}/{human_bytes(size)}" in text, text
    assert "13.0 MiB/13.0 MiB" in text
    # no decimal units anywhere (rich's default columns print "MB" and "MB/s")
    assert not re.search(r"\d (kB|MB|GB)\b", text), text
    assert "peers 6.5 MiB · hub 6.5 MiB" in text
