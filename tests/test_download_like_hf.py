"""``hffs model add`` next to real ``hf download`` on the same local hub: the same files
selected, the same layout, the same stdout (the path alone; everything else on stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.localhub import LocalHub
from tests.nodes import free_port

REPO = "org/like-hf"
FILES = {
    ".gitattributes": b"*.safetensors filter=lfs\n",
    "config.json": b'{"a": 1}\n',
    "tokenizer.json": b'{"t": 1}\n',
    "model.safetensors": b"w" * 3000,
    "model-fp32.safetensors": b"x" * 2000,
    "fp32/model.safetensors": b"y" * 1000,
    "sub/dir/notes.txt": b"hello\n",
}
HF = [sys.executable, "-c", "from huggingface_hub.cli.hf import main; main()"]
HFFS = [sys.executable, "-m", "hffs"]


@dataclass
class Side:
    name: str
    cache: Path
    root: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def like_hub() -> Iterator[tuple[LocalHub, str]]:
    with LocalHub() as hub:
        yield hub, hub.add_repo(REPO, FILES)


def sides(tmp_path: Path, hub: LocalHub) -> tuple[Side, Side]:
    made = []
    for name in ("hf", "hffs"):
        root = tmp_path / name
        root.mkdir()
        env = {
            **os.environ,
            "HF_HUB_CACHE": str(root / "cache"),
            "HF_HOME": str(root / "hf-home"),
            "HFFS_HOME": str(root / "hffs-home"),
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "XDG_CONFIG_HOME": str(root / "xdg"),
        }
        env.pop("HF_TOKEN", None)
        env.pop("HF_HUB_OFFLINE", None)
        if name == "hf":
            env["HF_ENDPOINT"] = hub.url
        else:
            env.pop("HF_ENDPOINT", None)
            env["HFFS_ENDPOINTS"] = hub.url
        made.append(Side(name, root / "cache", root, env))
    return made[0], made[1]


def run(side: Side, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*(HF if side.name == "hf" else HFFS), "download", REPO, *args]
    return subprocess.run(
        argv, env=side.env, cwd=side.root, capture_output=True, text=True, timeout=120
    )


def files_under(root: Path, skip_trees: bool = True) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not (skip_trees and "trees" in p.relative_to(root).parts)
    }


def relative_out(side: Side, stdout: str) -> str:
    """The printed path, relative to the side's own folder (so two sides compare)."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return Path(lines[0]).relative_to(side.root.resolve()).as_posix()


CASES = [
    ["config.json", "sub/dir/notes.txt"],
    ["config.json"],
    ["--include", "*.safetensors", "--exclude", "*fp32*"],
    ["sub/"],
    [],
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a) or "whole-repo")
def test_cache_layout_and_stdout_like_hf(
    like_hub: tuple[LocalHub, str], tmp_path: Path, args: list[str]
) -> None:
    hub, _ = like_hub
    hf, ours = sides(tmp_path, hub)
    theirs = run(hf, *args, "--quiet")
    assert theirs.returncode == 0, theirs.stderr
    got = run(ours, *args)
    assert got.returncode == 0, got.stderr
    assert relative_out(ours, got.stdout) == relative_out(hf, theirs.stdout)
    # the same files, linked the same way, in each side's cache
    snap = "cache/models--org--like-hf/snapshots"
    assert files_under(ours.root / snap) == files_under(hf.root / snap)
    # --quiet: the path and nothing else, anywhere
    quiet = run(ours, *args, "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == got.stdout and quiet.stderr == ""


@pytest.mark.parametrize(
    "args",
    [["--include", "*.json", "--local-dir", "m"], ["sub/dir/notes.txt", "--local-dir", "m"]],
    ids=["many", "one"],
)
def test_local_dir_like_hf(like_hub: tuple[LocalHub, str], tmp_path: Path, args: list[str]) -> None:
    hub, _ = like_hub
    hf, ours = sides(tmp_path, hub)
    theirs = run(hf, *args, "--quiet")
    assert theirs.returncode == 0, theirs.stderr
    got = run(ours, *args)
    assert got.returncode == 0, got.stderr
    assert relative_out(ours, got.stdout) == relative_out(hf, theirs.stdout)
    a, b = files_under(ours.root / "m"), files_under(hf.root / "m")
    assert set(a) == set(b)
    for name in a:
        if name.endswith(".metadata"):
            assert a[name].splitlines()[:2] == b[name].splitlines()[:2], name
        else:
            assert a[name] == b[name], name
    # the bytes also landed in the HF cache, where the swarm shares them
    assert any((ours.root / "cache" / "models--org--like-hf" / "blobs").iterdir())


def test_dry_run_fetches_nothing_and_says_what(
    like_hub: tuple[LocalHub, str], tmp_path: Path
) -> None:
    hub, _ = like_hub
    _, ours = sides(tmp_path, hub)
    hub.reset_stats()
    r = run(ours, "--include", "*.safetensors", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert hub.bytes_served == 0 and not (ours.root / "cache" / "models--org--like-hf").exists()
    for name in ("model.safetensors", "model-fp32.safetensors", "fp32/model.safetensors"):
        assert name in r.stdout
    assert "config.json" not in r.stdout
    assert r.stdout.startswith("[dry-run] ") and "3 file(s)" in r.stdout
    assert "5.9 KiB" in r.stdout  # 6000 bytes, in binary units


def test_token_force_and_cache_dir(like_hub: tuple[LocalHub, str], tmp_path: Path) -> None:
    hub, _ = like_hub
    _, ours = sides(tmp_path, hub)
    other = tmp_path / "other-cache"
    r = run(ours, "config.json", "--cache-dir", str(other), "--token", "hf_t", "--max-workers", "2")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(other) and Path(r.stdout.strip()).is_file()
    assert not (ours.root / "cache" / "models--org--like-hf").exists()
    assert any(auth == "Bearer hf_t" for _, auth in hub.auth_log)  # upstream got the token
    hub.reset_stats()
    again = run(ours, "config.json", "--cache-dir", str(other))
    assert again.returncode == 0 and hub.bytes_served == 0  # cached: nothing fetched
    forced = run(ours, "config.json", "--cache-dir", str(other), "--force-download")
    assert forced.returncode == 0, forced.stderr
    assert hub.bytes_served == len(FILES["config.json"])
    both = run(ours, "config.json", "--cache-dir", str(other), "--local-dir", "x")
    assert both.returncode != 0 and "--local-dir" in both.stderr


def test_through_a_running_daemon_too(like_hub: tuple[LocalHub, str], tmp_path: Path) -> None:
    """The daemon runs the job (the CLI submits it): same selection, layout and stdout."""
    hub, _ = like_hub
    hf, ours = sides(tmp_path, hub)
    port = free_port("127.0.0.6")
    start = [*HFFS, "daemon", "start", "--host", "127.0.0.6", "--port", str(port)]
    started = subprocess.run(start, env=ours.env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        args = ["sub/", "config.json", "--local-dir", "m", "--quiet"]
        theirs = run(hf, *args)
        got = run(ours, *args)
        assert got.returncode == 0 and got.stderr == "", got.stderr
        assert relative_out(ours, got.stdout) == relative_out(hf, theirs.stdout)
        assert set(files_under(ours.root / "m")) == set(files_under(hf.root / "m"))
        dry = run(ours, "--include", "*.safetensors", "--dry-run")
        assert dry.returncode == 0 and "model-fp32.safetensors" in dry.stdout, dry.stderr
    finally:
        subprocess.run(
            [*HFFS, "daemon", "stop"], env=ours.env, capture_output=True, text=True, timeout=60
        )
