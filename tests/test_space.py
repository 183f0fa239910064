"""Room on disk for a job (hffs/space.py): the rules alone, then real jobs on a small
filesystem of their own (``small_disk``: a 24 MiB tmpfs the test mounts, as root)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from hffs import space
from hffs.space import Need
from swarm import portable
from swarm.chunking import MIN_CHUNK_SIZE
from tests.localhub import LocalHub, make_random_file
from tests.nodes import Node
from tests.test_model_add import hffs

MIB = 1 << 20


def test_a_partial_file_counts_for_what_it_holds() -> None:
    assert space.still_to_write(10 * MIB, 0) == 10 * MIB
    assert space.still_to_write(10 * MIB, 4 * MIB) == 6 * MIB
    assert space.still_to_write(10 * MIB, 12 * MIB) == 0  # blocks past the end: nothing
    assert space.still_to_write(10 * MIB, -5) == 10 * MIB


def test_needs_of_a_job_on_one_filesystem_and_on_two(tmp_path: Path) -> None:
    files = [(10 * MIB, 4 * MIB), (3 * MIB, 0), (5 * MIB, 5 * MIB)]
    part, cache = tmp_path / "partial", tmp_path / "cache"
    # One filesystem: the published file is renamed, so only the rest is written.
    assert space.needs(files, part, cache, same_fs=True) == [Need(part, 9 * MIB)]
    # Two: each file is also copied whole into the cache.
    assert space.needs(files, part, cache, same_fs=False) == [
        Need(part, 9 * MIB),
        Need(cache, 18 * MIB),
    ]
    assert space.needs([(5 * MIB, 5 * MIB)], part, cache, same_fs=True) == []


def test_refusal_says_what_is_needed_and_what_is_free(tmp_path: Path) -> None:
    need = Need(tmp_path, 10 * MIB)
    assert space.shortfall(10 * MIB, 20 * MIB, margin=MIB) == 0
    assert space.shortfall(10 * MIB, 10 * MIB, margin=MIB) == MIB
    assert space.shortfall(0, 0) == 0  # nothing to write always fits
    assert space.refusal(need, 20 * MIB) is None
    line = space.refusal(need, 3 * MIB, where="the daemon ")
    assert line is not None and "\n" not in line
    assert line.startswith(f"the daemon cannot fit this download in {tmp_path}")
    assert "10.0 MiB more and 3.0 MiB is free" in line


def test_a_sparse_partial_file_counts_its_blocks(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    assert portable.bytes_on_disk(part) == 0
    with part.open("wb") as f:
        f.truncate(64 * MIB)  # a download's sparse file: its length, no blocks
        f.seek(8 * MIB)
        f.write(b"\1" * MIB)
    held = portable.bytes_on_disk(part)
    if portable.enabled():  # Windows: an extended file takes its whole length
        assert held == 64 * MIB
    else:
        assert MIB <= held < 4 * MIB  # the one MiB written (and a block or so), not 64


def test_check_judges_real_filesystems_and_not_those_that_report_no_size(
    tmp_path: Path,
) -> None:
    space.check([Need(tmp_path, MIB)])  # room for a MiB here
    with pytest.raises(space.NoSpace, match="cannot fit this download in"):
        space.check([Need(tmp_path / "not" / "made" / "yet", 1 << 60)])  # an exabyte
    if Path("/proc/self").is_dir():  # procfs reports no size, as some FUSE mounts do
        space.check([Need(Path("/proc"), 1 << 60)])


def test_needs_on_one_filesystem_add_up(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    part, copies = tmp_path / "partial", tmp_path / "copies"
    each = int(free * 0.6)  # either fits alone; both do not
    space.check([Need(part, each)])
    space.check([Need(copies, each)])
    with pytest.raises(space.NoSpace):
        space.check([Need(part, each), Need(copies, each)])


# -- real jobs on a small filesystem ---------------------------------------------------


@pytest.fixture
def on_hub(hffs_env: dict[str, str], hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    """The local hub as the only endpoint of an isolated hffs home and HF cache."""
    monkeypatch.setenv("HFFS_ENDPOINTS", hub.url)
    return hub


def test_a_job_the_disk_cannot_hold_is_refused_before_a_byte(
    on_hub: LocalHub, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = on_hub
    monkeypatch.setenv("HFFS_HOME", str(small_disk / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(small_disk / "cache"))
    big = make_random_file(tmp_path / "src-big", 28 * MIN_CHUNK_SIZE, seed=7)  # 28 MiB > 24
    small = make_random_file(tmp_path / "src-small", 3 * MIN_CHUNK_SIZE, seed=8)
    hub.add_repo("org/space", {"big.safetensors": big, "small.safetensors": small})
    hub.reset_stats()

    code, out = hffs("model", "add", "org/space", "--dry-run")  # says so, fetches nothing
    assert code == 0 and "cannot fit this download in" in out, out
    code, out = hffs("model", "add", "org/space")
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert "cannot fit this download in" in out and "31.0 MiB more and" in out
    # Nothing was fetched and nothing was written: the disk is as it was.
    assert hub.bytes_served == 0
    partial = small_disk / "home" / "partial"
    assert not any(partial.glob("*.part")) if partial.exists() else True
    assert not list((small_disk / "cache").rglob("*.safetensors"))

    # What fits is fetched as usual.
    code, out = hffs("model", "add", "org/space", "small.safetensors")
    assert code == 0, out
    assert Path(out.strip().splitlines()[-1]).read_bytes() == small.read_bytes()


def test_an_hf_client_asking_for_more_than_the_disk_holds_is_told_so(
    small_disk: Path, hub: LocalHub, tmp_path: Path
) -> None:
    huge = make_random_file(tmp_path / "src-huge", 28 * MIN_CHUNK_SIZE, seed=9)
    hub.add_repo("org/huge", {"huge.bin": huge})
    node = Node(small_disk, "127.0.0.141")  # its home and HF cache on the 24 MiB disk
    node.env["HFFS_ENDPOINTS"] = hub.url
    try:
        started = node.start()
        assert started.returncode == 0, started.stderr
        hub.reset_stats()
        with httpx.Client(trust_env=False, timeout=30) as http:
            r = http.get(f"{node.url}/org/huge/resolve/main/huge.bin")
        assert r.status_code == 502 and "cannot fit this download" in r.text, r.text
        # No byte of it was fetched or written.
        assert hub.bytes_served == 0
        assert not list(small_disk.rglob("*.part"))
    finally:
        node.kill()


def test_a_local_dir_copy_that_cannot_fit_is_refused_before_the_download(
    on_hub: LocalHub, small_disk: Path, tmp_path: Path
) -> None:
    # The cache has room (tmp_path); the folder the files are copied to does not.
    hub = on_hub
    shard = make_random_file(tmp_path / "src-shard", 28 * MIN_CHUNK_SIZE, seed=10)
    small = make_random_file(tmp_path / "src-cfg", 2 * MIN_CHUNK_SIZE, seed=11)
    hub.add_repo("org/copies", {"shard.safetensors": shard, "cfg.bin": small})
    local = small_disk / "model"
    hub.reset_stats()
    code, out = hffs("download", "org/copies", "--local-dir", str(local))
    assert code == 1 and f"cannot fit this download in {local}" in out, out
    assert "30.0 MiB more" in out
    assert hub.bytes_served == 0  # and no file was copied (hf's bookkeeping folders aside)
    copied = [p for p in local.rglob("*") if p.is_file()] if local.exists() else []
    assert not copied, copied
    code, out = hffs("download", "org/copies", "cfg.bin", "--local-dir", str(local))
    assert code == 0, out
    assert (local / "cfg.bin").read_bytes() == small.read_bytes()
