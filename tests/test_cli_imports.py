"""The CLI's light commands never load the daemon (uvicorn, Starlette, kademlia), and its
common commands load only what they use (no timing here: bench/cli_start.py measures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from tests.localhub import LocalHub, make_random_file
from tests.nodes import REPO, Node, put_model_file

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
    assert loaded == [], _why(loaded, r)


# What the CLI's client path must not load (issue 11: each `hffs` run cost ~0.5 CPU s before
# a byte moved). The daemon imports them; the CLI only submits a job and draws its progress.
CLIENT_HEAVY = {
    "huggingface_hub",  # ~140 ms: only the in-process fallback and the token file need it
    "httpx",  # the control client is http.client over loopback
    "httpx2",
    "pydantic",  # typer 0.29 coerces options through it (pinned below 0.29)
    "anyio",
    "asyncio",
    "uvicorn",
    "starlette",
    "kademlia",
    "hffs.daemon",
    "hffs.fetch",
    "hffs.downloads",
    "swarm.download",
}
if not portable.enabled():  # swarm.portable's Windows branches use them (forced in CI too)
    CLIENT_HEAVY |= {"psutil", "filelock"}
# Nothing of rich or HTTP at all for the import itself and for --version
BARE_HEAVY = CLIENT_HEAVY | {"rich", "http.client", "hffs.jobs", "hffs.daemonctl.client"}

LOADED = """
import json, sys
heavy = json.loads(sys.argv[2])
{run}
print(json.dumps(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)),
      file=sys.stderr)
"""
RUN_CLI = """
from hffs.cli import app
sys.argv = ["hffs", *json.loads(sys.argv[1])]
try:
    app(prog_name="hffs")
except SystemExit as exc:
    print("exit", exc.code, file=sys.stderr)
"""


def _loaded(
    run: str, argv: list[str], heavy: set[str], env: dict[str, str]
) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    r = subprocess.run(
        [sys.executable, "-c", LOADED.format(run=run), json.dumps(argv), json.dumps(sorted(heavy))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(r.stderr.strip().splitlines()[-1]), r


def _why(loaded: list[str], r: subprocess.CompletedProcess[str]) -> str:
    from importlib.metadata import version

    hint = ""
    if any(m.split(".")[0] == "pydantic" for m in loaded):
        hint = f"typer {version('typer')} here; pyproject pins typer<0.29: pip install -e .\n"
    return hint + r.stderr


def test_importing_the_cli_loads_nothing_heavy(hffs_env: dict[str, str]) -> None:
    loaded, r = _loaded("import hffs.cli", [], BARE_HEAVY, hffs_env)
    assert loaded == [], _why(loaded, r)


def test_version_loads_nothing_heavy(hffs_env: dict[str, str]) -> None:
    loaded, r = _loaded(RUN_CLI, ["--version"], BARE_HEAVY, hffs_env)
    assert loaded == [], _why(loaded, r)
    assert r.stdout.startswith("hffs "), r.stdout


def test_model_ls_loads_only_what_it_lists_with(hffs_env: dict[str, str], tmp_path: Path) -> None:
    put_model_file(Path(hffs_env["HF_HUB_CACHE"]), tmp_path / "home", "w.bin", b"w" * 100)
    loaded, r = _loaded(RUN_CLI, ["model", "ls"], CLIENT_HEAVY | {"http.client"}, hffs_env)
    assert loaded == [], _why(loaded, r)
    assert REPO in r.stdout, r.stdout  # it did list the repo (through rich's table)


def test_model_add_and_status_through_a_daemon_load_nothing_heavy(
    nodes: Callable[[str], Node], hub: LocalHub, tmp_path: Path
) -> None:
    src = make_random_file(tmp_path / "w.bin", 3 * MIN_CHUNK_SIZE + 5, seed=11)
    hub.add_repo("org/light", {"w.bin": src})
    a = nodes("127.0.0.2")
    a.env["HFFS_ENDPOINTS"] = hub.url
    assert a.start().returncode == 0
    loaded, r = _loaded(RUN_CLI, ["model", "add", "org/light"], CLIENT_HEAVY, a.env)
    assert loaded == [], _why(loaded, r)
    assert "1 file(s) downloaded" in r.stderr, r.stderr
    # the daemon moved the bytes (not an in-process fallback), and they are in the cache
    assert a.client().status()["bytes_down_upstream"] >= src.stat().st_size
    path = Path(r.stdout.strip())
    assert path.is_dir() and (path / "w.bin").read_bytes() == src.read_bytes()
    loaded, r = _loaded(RUN_CLI, ["daemon", "status"], CLIENT_HEAVY, a.env)
    assert loaded == [], _why(loaded, r)
    assert "DHT contacts" in r.stdout, r.stdout


def _we_accept(repo_id: str) -> bool:
    from hffs.cache import CacheError, check_repo_id

    try:
        check_repo_id(repo_id)
    except CacheError:
        return False
    return True


def test_the_repo_id_fast_path_accepts_only_what_huggingface_hub_accepts() -> None:
    """check_repo_id skips huggingface_hub for plain ids: it must never accept one the hub's
    validator refuses (and whatever it does not accept, the hub's validator decides)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from hffs.cache import _PLAIN_REPO_ID

    def hub_accepts(repo_id: str) -> bool:
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            return False
        return True

    near = st.text(alphabet="aZ09_.-/é", max_size=100)
    plain = st.from_regex(_PLAIN_REPO_ID, fullmatch=True)

    @settings(max_examples=3000, deadline=None)
    @given(st.one_of(near, st.text(max_size=200), plain))
    def agree(repo_id: str) -> None:
        assert _we_accept(repo_id) == hub_accepts(repo_id), repo_id

    agree()
    for edge in ("a" * 96, "a" * 97, f"{'o' * 96}/{'n' * 96}", "a/b.git", "a--b", "_a", "a_"):
        assert _we_accept(edge) == hub_accepts(edge), edge


@pytest.mark.parametrize("where", ["none", "hf_home", "xdg", "token_path", "env_token"])
def test_the_token_fast_path_agrees_with_huggingface_hub(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hf_token skips huggingface_hub only where get_token would find no token either."""
    for key in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_TOKEN_PATH",
        "HUGGINGFACE_CO_STAGING",
        "HF_HOME",
        "XDG_CACHE_HOME",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    token = "hf_" + "x" * 30
    if where == "hf_home":
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hfh"))
        (tmp_path / "hfh").mkdir()
        (tmp_path / "hfh" / "token").write_text(token)
    elif where == "xdg":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        (tmp_path / "xdg" / "huggingface").mkdir(parents=True)
        (tmp_path / "xdg" / "huggingface" / "token").write_text(token)
    elif where == "token_path":
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "elsewhere"))
        (tmp_path / "elsewhere").write_text(token)
    elif where == "env_token":
        monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    # a fresh process: huggingface_hub reads its paths once, at import
    probe = "from hffs import config; print(config.hf_token()); print(config._surely_no_token())"
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=os.environ
    )
    ours, surely_none = r.stdout.split()
    truth = subprocess.run(
        [sys.executable, "-c", "from huggingface_hub import get_token; print(get_token())"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    ).stdout.strip()
    assert ours == truth == (token if where != "none" else "None")
    assert surely_none == str(where == "none")
