"""The CLI's conventions: --version, -h everywhere, ``python -m hffs``, one byte formatter."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

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


def test_ls_and_rm_take_hf_download_selection(hffs_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel, data in {
        "config.json": b"{}\n",
        "tokenizer.json": b'{"t": 1}\n',
        "model.safetensors": b"w" * 100,
        "sub/a.txt": b"a\n",
        "sub/b.txt": b"b\n",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    assert runner.invoke(app, ["model", "import", str(src), "org/m"]).exit_code == 0

    r = runner.invoke(app, ["model", "ls", "-q"])
    assert r.exit_code == 0 and r.output.splitlines() == ["org/m"]
    r = runner.invoke(app, ["model", "ls", "--repo-id", "org/m", "-q", "--include", "*.json"])
    paths = [Path(p) for p in r.output.splitlines()]
    assert sorted(p.name for p in paths) == ["config.json", "tokenizer.json"]
    assert all(p.is_absolute() and p.read_bytes() for p in paths)
    r = runner.invoke(app, ["model", "ls", "-q", "--cache-dir", str(tmp_path / "elsewhere")])
    assert r.exit_code == 0 and "org/m" not in r.output

    # --dry-run says, on stdout, what would go, and removes nothing
    r = runner.invoke(app, ["model", "rm", "org/m", "--include", "*.json", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert {"config.json", "tokenizer.json"} <= set(r.output.splitlines())
    listed = runner.invoke(app, ["model", "ls", "--repo-id", "org/m", "-q"]).output.splitlines()
    assert len(listed) == 5
    # a folder, then two names, then a glob, as hf download takes them
    assert runner.invoke(app, ["model", "rm", "org/m", "sub/"]).exit_code == 0
    left = runner.invoke(app, ["model", "ls", "--repo-id", "org/m", "-q"]).output
    assert "a.txt" not in left and "config.json" in left
    assert (
        runner.invoke(app, ["model", "rm", "org/m", "config.json", "tokenizer.json"]).exit_code == 0
    )
    left = runner.invoke(app, ["model", "ls", "--repo-id", "org/m", "-q"]).output.splitlines()
    assert [Path(p).name for p in left] == ["model.safetensors"]
    r = runner.invoke(app, ["model", "rm", "org/m", "sub/", "--include", "*.txt"])
    assert r.exit_code == 1 and "cannot combine" in r.output
    r = runner.invoke(app, ["model", "rm", "org/m", "--exclude", "*.safetensors"])
    assert r.exit_code == 1 and "nothing removed" in r.output
    assert len(runner.invoke(app, ["model", "ls", "--repo-id", "org/m", "-q"]).output.split()) == 1
