"""`hffs model import`, `model rm`, `conf cache` and `uninstall`, on the real cache layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir
from typer.testing import CliRunner

from hffs.cli import app
from hffs.config import ZERO_COMMIT
from swarm import portable

runner = CliRunner()


def hffs(*args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.output


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}\n')
    (folder / "sub" / "weights.safetensors").write_bytes(b"\x01" * 4096)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return folder


def cache(env: dict[str, str]) -> Path:
    return Path(env["HF_HUB_CACHE"])


@pytest.mark.parametrize("method", ["cp", "mv", "ln"])
def test_import_folder_keeps_tree_and_names_blobs_as_the_hub(
    hffs_env: dict[str, str], src: Path, method: str
) -> None:
    if method == "ln" and portable.enabled():
        pytest.skip("refused under Windows rules: test_import_ln_is_refused_on_windows")
    weights = (src / "sub" / "weights.safetensors").read_bytes()
    code, out = hffs("model", "import", str(src), "org/local", "--method", method)
    assert code == 0, out
    repo = cache(hffs_env) / "models--org--local"
    assert (repo / "refs" / "main").read_text() == ZERO_COMMIT
    path = hf_hub_download(
        "org/local", "sub/weights.safetensors", cache_dir=cache(hffs_env), local_files_only=True
    )
    assert Path(path).read_bytes() == weights
    # LFS-type files are named by sha256, others by git blob sha1, as the hub names them
    blob_names = {p.name for p in (repo / "blobs").iterdir()}
    assert hashlib.sha256(weights).hexdigest() in blob_names
    cfg = b'{"a": 1}\n'
    assert hashlib.sha1(b"blob %d\0" % len(cfg) + cfg).hexdigest() in blob_names
    assert not (repo / "snapshots" / ZERO_COMMIT / ".git").exists()
    assert (src / "config.json").exists() == (method != "mv")
    if method == "ln":
        assert (repo / "blobs" / hashlib.sha256(weights).hexdigest()).is_symlink()
    assert not scan_cache_dir(cache(hffs_env)).warnings


def test_import_ln_is_refused_on_windows(
    hffs_env: dict[str, str], src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(portable, "FORCED", True)
    code, out = hffs("model", "import", str(src), "org/local", "--method", "ln")
    assert code == 1 and "not offered on Windows" in out
    assert len(out.strip().splitlines()) == 1, out
    assert not (cache(hffs_env) / "models--org--local").exists()
    assert (src / "sub" / "weights.safetensors").read_bytes() == b"\x01" * 4096


def test_import_revision_rules(hffs_env: dict[str, str], src: Path) -> None:
    commit = "a" * 40
    code, out = hffs(
        "model",
        "import",
        str(src / "config.json"),
        "org/r",
        "--file",
        "c.json",
        "--revision",
        commit,
    )
    assert code == 0, out
    refs = cache(hffs_env) / "models--org--r" / "refs"
    assert (refs / "main").read_text() == commit
    code, out = hffs(
        "model",
        "import",
        str(src / "config.json"),
        "org/r",
        "--file",
        "c.json",
        "--revision",
        "v1.0",
    )
    assert code == 0, out
    assert (refs / "v1.0").read_text() == ZERO_COMMIT
    assert (cache(hffs_env) / "models--org--r" / "snapshots" / ZERO_COMMIT / "c.json").exists()


def test_import_single_file_needs_file(hffs_env: dict[str, str], src: Path) -> None:
    code, out = hffs("model", "import", str(src / "config.json"), "org/x")
    assert code == 1 and "--file" in out
    code, out = hffs("model", "import", str(src), "org/x", "--method", "zip")
    assert code == 1 and "cp, mv or ln" in out
    code, out = hffs("model", "import", str(src / "config.json"), "org/x", "--file", "../up")
    assert code == 1 and "invalid path" in out


def test_rm_file_then_revision_keeps_shared_blobs(hffs_env: dict[str, str], src: Path) -> None:
    assert hffs("model", "import", str(src), "org/m")[0] == 0
    assert hffs("model", "import", str(src), "org/m", "--revision", "b" * 40)[0] == 0
    repo = cache(hffs_env) / "models--org--m"
    assert len(list((repo / "blobs").iterdir())) == 2
    # removing a file from main keeps the blob: the other revision still uses it
    code, out = hffs("model", "rm", "org/m", "--file", "config.json", "--revision", "b" * 40)
    assert code == 0, out
    assert len(list((repo / "blobs").iterdir())) == 2
    code, out = hffs("model", "rm", "org/m", "--file", "config.json", "--revision", "b" * 40)
    assert code == 1 and "nothing removed" in out
    code, out = hffs("model", "rm", "org/m", "--revision", ZERO_COMMIT)
    assert code == 0, out
    # only the weights remain in use (revision b), so the config blob is freed
    assert len(list((repo / "blobs").iterdir())) == 1
    code, out = hffs("model", "rm", "org/m", "--revision", "b" * 40)
    assert code == 0 and not repo.exists()
    code, out = hffs("model", "ls")
    assert "no models" in out


def test_conf_cache_set_get_reset(hffs_env: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HFFS_HOME")
    target = tmp_path / "work"
    target.mkdir()
    default = hffs("conf", "cache", "get")[1].strip()
    code, out = hffs("conf", "cache", "set", str(target))
    assert code == 0 and hffs("conf", "cache", "get")[1].strip() == str(target)
    monkeypatch.setenv("HFFS_HOME", str(tmp_path / "env-wins"))
    assert hffs("conf", "cache", "get")[1].strip() == str(tmp_path / "env-wins")
    monkeypatch.delenv("HFFS_HOME")
    assert hffs("conf", "cache", "reset")[0] == 0
    assert hffs("conf", "cache", "get")[1].strip() == default
    code, out = hffs("conf", "cache", "set", str(tmp_path / "missing"))
    assert code == 1 and "not an existing directory" in out


def test_uninstall_removes_only_what_hffs_added(hffs_env: dict[str, str], src: Path) -> None:
    assert hffs("model", "import", str(src), "org/mine")[0] == 0
    other = cache(hffs_env) / "models--someone--else" / "snapshots" / ("c" * 40)
    other.mkdir(parents=True)
    code, out = hffs("uninstall", input="n\n")
    assert code != 0 and (cache(hffs_env) / "models--org--mine").exists()
    code, out = hffs("uninstall", "--yes")
    assert code == 0, out
    assert not (cache(hffs_env) / "models--org--mine").exists()
    assert other.exists()  # not hffs's to remove
    assert not Path(hffs_env["HFFS_HOME"]).exists()
