"""The status page in a real headless Chromium, while a real download runs between two
daemons: what a person would see (the seed in the peer list, the chunk map filling with
peer chunks, the file listed as complete at the end).

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them); skipped
when they are missing outside CI. HFFS_SCREENSHOTS=DIR keeps the screenshots there.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swarm.chunking import MIN_CHUNK_SIZE
from tests.localhub import make_random_file
from tests.nodes import COMMIT, REPO, Node, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
SIZE = 24 * MIN_CHUNK_SIZE + 1000  # 25 chunks
RATE = "3M"  # the seed's upload cap: the download lasts several seconds, whatever the machine
# (cells, cells filled by peers) of the first chunk map on the page, or null
CHUNK_MAP = """
const m = document.querySelector('#files .file .chunks');
return m ? [m.querySelectorAll('.chunk').length, m.querySelectorAll('.chunk.peer').length] : null;
"""
TEXT = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "chromium and chromium-driver must be installed"
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,1300",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_a_download_between_daemons(
    nodes: Callable[[str], Node], browser: object, tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download

    driver: object = browser
    data = make_random_file(tmp_path / "big", SIZE, seed=5).read_bytes()
    a, b = nodes("127.0.0.2"), nodes("127.0.0.3")
    a.add_model_file("big.bin", data)  # as huggingface_hub lays it out
    assert a.start("--max-upload-rate", RATE).returncode == 0
    assert b.cli("peer", "add", a.host, "--port", str(a.port)).returncode == 0
    assert b.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0

    driver.get(f"{b.url}/")  # redirects to /ui
    assert driver.current_url.endswith("/ui")
    wait_for(lambda: driver.execute_script(TEXT, "#node"), 20, "the page's first update")
    assert driver.execute_script(TEXT, "#endpoint") == f"export HF_ENDPOINT={b.url}"
    assert driver.execute_script(TEXT, "#nofiles") == "nothing downloading"

    result: dict[str, object] = {}

    def download() -> None:
        try:
            result["path"] = hf_hub_download(
                REPO,
                "big.bin",
                revision=COMMIT,
                endpoint=b.url,
                cache_dir=tmp_path / "client",
                token=False,
            )
        except Exception as exc:  # reported by the main thread
            result["error"] = exc

    worker = threading.Thread(target=download, daemon=True)
    worker.start()
    shots = Path(os.environ.get("HFFS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    # The chunk map appears and fills with peer chunks, in more than one step. The page
    # redraws every second, so each look is one script run (no stale element handles).
    seen: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and worker.is_alive():
        look = driver.execute_script(CHUNK_MAP)
        if look is not None:
            cells, peer = look
            assert cells == 25
            if not seen or peer != seen[-1]:
                seen.append(peer)
            if len(seen) == 2:
                driver.save_screenshot(str(shots / "status-during.png"))
        time.sleep(0.3)
    worker.join(60)
    assert "error" not in result, result
    assert Path(str(result["path"])).read_bytes() == data
    assert len(seen) >= 2 and seen == sorted(seen), seen  # it filled, and never emptied
    assert any(0 < n < 25 for n in seen), seen  # seen part-way

    # The seed is listed, with what it sent; the file is listed as complete.
    def seed_row() -> str:
        return driver.execute_script(TEXT, f'#peers tr[data-peer="{a.host}"]') or ""

    wait_for(lambda: "active" in seed_row() and "MiB" in seed_row(), 20, "the seed listed")
    assert f"{a.host}:{a.port}" in seed_row()
    wait_for(lambda: "complete" in driver.execute_script(TEXT, "#recent"), 20, "the finished file")
    assert f"{REPO}/big.bin" in driver.execute_script(TEXT, "#recent")
    assert driver.execute_script(TEXT, "#nofiles") == "nothing downloading"
    # the throughput plot drew the peer bytes above its baseline
    points = driver.execute_script(
        "return document.querySelector('#plot polyline[data-kind=peer]').getAttribute('points')"
    )
    ys = [float(p.split(",")[1]) for p in points.split()]
    assert min(ys) < 136 - 1, ys
    driver.save_screenshot(str(shots / "status-after.png"))
