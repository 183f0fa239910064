"""hffs.selection picks what real ``hf download`` picks, on the local hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from hypothesis import given
from hypothesis import strategies as st

from hffs.selection import Selection, SelectionError, local_path, result_path, select
from tests.localhub import LocalHub

REPO = "org/sel"
FILES = {
    ".gitattributes": b"*.safetensors filter=lfs\n",
    "README.md": b"# sel\n",
    "config.json": b'{"a": 1}\n',
    "tokenizer.json": b'{"t": 1}\n',
    "model.safetensors": b"w" * 3000,
    "model-fp32.safetensors": b"x" * 2000,
    "fp32/model.safetensors": b"y" * 1000,
    "sub/x.json": b"{}\n",
    "sub/dir/notes.txt": b"hello\n",
}
# Runs real `hf download` once per argv read from stdin, in one process (its start is
# slow): prints one JSON line per run, {"ok": bool, "stdout": str}.
HF_RUNNER = """
import contextlib, io, json, sys
from huggingface_hub.cli.hf import app
for line in sys.stdin:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            app(json.loads(line), standalone_mode=False, windows_expand_args=False)
        ok = True
    except Exception:
        ok = False
    print(json.dumps({"ok": ok, "stdout": buf.getvalue()}), flush=True)
"""

CASES: list[tuple[list[str], list[str], list[str]]] = [  # (FILENAMES, --include, --exclude)
    ([], [], []),
    (["config.json"], [], []),
    (["sub/dir/notes.txt"], [], []),
    (["config.json", "sub/dir/notes.txt"], [], []),
    (["config.json", "not-there.json"], [], []),
    (["sub/"], [], []),
    (["sub/", "README.md"], [], []),
    ([], ["*.safetensors"], ["*fp32*"]),
    ([], ["*.json"], []),
    ([], [], ["sub/", "*.md"]),
    ([], ["sub/*", "*.md"], ["*.txt"]),
    (["config.json", "tokenizer.json"], ["*.safetensors"], ["config.json"]),
]


Case = tuple[list[str], list[str], list[str]]
REFUSED: list[Case] = [
    (["sub/"], ["*.json"], []),
    (["sub/"], [], ["*.txt"]),
    (["nope.json"], [], []),
]


def hf_argv(case: Case) -> list[str]:
    filenames, include, exclude = case
    argv = ["download", REPO, *filenames, "--dry-run", "--format", "agent"]
    for g in include:
        argv += ["--include", g]
    for g in exclude:
        argv += ["--exclude", g]
    return argv


@pytest.fixture(scope="module")
def hf_said(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], dict]]:
    """(the revision's paths, what `hf download --dry-run` did for each case)."""
    root = tmp_path_factory.mktemp("hf")
    with LocalHub() as hub:
        hub.add_repo(REPO, FILES)
        paths = HfApi(endpoint=hub.url, token=False).list_repo_files(REPO)
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_CACHE": str(root / "cache"),
            "HF_HOME": str(root / "hf-home"),
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_TOKEN": "",
        }
        cases = CASES + REFUSED
        r = subprocess.run(
            [sys.executable, "-c", HF_RUNNER],
            input="".join(json.dumps(hf_argv(c)) + "\n" for c in cases),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        results = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(results) == len(cases), r.stderr
        yield paths, {repr(c): res for c, res in zip(cases, results, strict=True)}


def listed(stdout: str) -> set[str]:
    """The file column of hf's dry-run table (agent format: TSV after a header)."""
    lines = stdout.splitlines()
    start = lines.index("file\tsize") + 1
    return {line.split("\t")[0] for line in lines[start:] if line}


@pytest.mark.parametrize(("filenames", "include", "exclude"), CASES)
def test_same_files_as_hf_download(
    hf_said: tuple[list[str], dict],
    filenames: list[str],
    include: list[str],
    exclude: list[str],
) -> None:
    paths, said = hf_said
    hf = said[repr((filenames, include, exclude))]
    assert hf["ok"], hf
    ours = select(paths, filenames, include, exclude)
    assert set(ours.paths) == listed(hf["stdout"])
    assert ours.paths  # every case selects something: a comparison of two empties proves little
    assert ours.single == (len(filenames) == 1 and not filenames[0].endswith("/"))
    assert bool(ours.warnings) == bool(
        [f for f in filenames if not f.endswith("/")] and (include or exclude)
    )


@pytest.mark.parametrize(("filenames", "include", "exclude"), REFUSED)
def test_refused_where_hf_download_refuses(
    hf_said: tuple[list[str], dict],
    filenames: list[str],
    include: list[str],
    exclude: list[str],
) -> None:
    paths, said = hf_said
    assert not said[repr((filenames, include, exclude))]["ok"]
    with pytest.raises(SelectionError):
        select(paths, filenames, include, exclude)


def test_result_path_is_the_folder_or_the_one_file(tmp_path: Path) -> None:
    one = Selection(("sub/dir/notes.txt",), True)
    assert result_path(tmp_path, one) == tmp_path / "sub" / "dir" / "notes.txt"
    many = Selection(("a", "b"), False)
    assert result_path(tmp_path, many) == tmp_path


@given(st.text(alphabet="ab./\\", min_size=0, max_size=12))
def test_local_path_never_leaves_the_folder(repo_path: str) -> None:
    root = Path("/x/local")
    try:
        placed = local_path(root, repo_path)
    except SelectionError:
        return
    assert placed.is_relative_to(root) and placed != root
    assert ".." not in placed.relative_to(root).parts
    assert placed.relative_to(root).parts[0] != ".cache"
