"""Item 13 of issue 9: a host that is not one fails the command, in one line, with nothing
saved and no daemon left retrying it. Only invalid syntax and 999.x forms are used: they
fail before any name lookup (tests never resolve non-loopback names)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hffs.config import Config
from hffs.daemon.runfiles import is_running
from tests.nodes import Node


def _one_line_failure(result: object) -> str:
    assert result.returncode != 0  # type: ignore[attr-defined]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]
    return lines[0]


@pytest.mark.parametrize("boot", ["999.1.1.1", "not_a_host!!", "127.0.0.1:99999", "[::1"])
def test_daemon_start_refuses_a_bad_bootstrap(nodes: Callable[[str], Node], boot: str) -> None:
    node = nodes("127.0.0.2")
    _one_line_failure(node.start("--bootstrap", boot))
    assert not is_running(node.home)  # no daemon alone, retrying a name forever


@pytest.mark.parametrize("host", ["not_a_host!!", "999.1.1.1", "a..b", "[127.0.0.1]"])
def test_peer_add_refuses_a_bad_host(nodes: Callable[[str], Node], host: str) -> None:
    node = nodes("127.0.0.2")
    assert node.cli("peer", "add", "127.0.0.3").returncode == 0
    _one_line_failure(node.cli("peer", "add", host))
    assert [str(p) for p in Config.load(node.home).peers] == ["127.0.0.3:9009"]


def test_peer_add_brackets_ipv6(nodes: Callable[[str], Node]) -> None:
    node = nodes("127.0.0.2")
    result = node.cli("peer", "add", "[::1]:7000")
    assert result.returncode == 0, result.stderr
    peers = Config.load(node.home).peers
    assert [(p.host, p.port, str(p)) for p in peers] == [("::1", 7000, "[::1]:7000")]


def test_a_daemon_starts_with_a_good_bootstrap(nodes: Callable[[str], Node]) -> None:
    node = nodes("127.0.0.2")
    result = node.start("--bootstrap", "localhost:9")
    assert result.returncode == 0, result.stderr
    assert is_running(node.home)
