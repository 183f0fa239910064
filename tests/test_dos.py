"""Denial of service against a real daemon's peer port (issue 9 item 7): clients that
never read, and half-sent requests, must not lock an honest peer out."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from tests.nodes import Node, nodes, wait_for

__all__ = ["nodes"]

HOST = "127.0.0.41"
SIZE = 16 << 20  # more than the socket buffers of a client that never reads


def _honest_range(node: Node, file_id: str, source: str) -> bytes:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10, trust_env=False) as c:
        r = c.get(f"{node.url}/v1/blobs/{file_id}", headers={"Range": "bytes=0-1048575"})
    assert r.status_code == 206, r.text[:200]
    return r.content


def _ping(node: Node, source: str) -> bool:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5, trust_env=False) as c:
        return c.get(f"{node.url}/v1/ping").json()["service"] == "hffs-peer"


def _connect_many(n: int, source: str, node: Node) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        s.bind((source, 0))
        with contextlib.suppress(BlockingIOError):
            s.connect((node.host, node.port))
        socks.append(s)
    return socks


def _send_all(socks: list[socket.socket], payload: bytes) -> None:
    deadline = time.monotonic() + 10
    for s in socks:
        while time.monotonic() < deadline:
            try:
                s.send(payload)
                break
            except BlockingIOError:
                time.sleep(0.01)  # still connecting
            except OSError:
                break  # refused by the per-address cap: that is the point


@pytest.fixture
def daemon(nodes: Callable[[str], Node]) -> tuple[Node, str]:
    node = nodes(HOST)
    node.env["HFFS_STALL_TIMEOUT"] = "2"
    node.env["HFFS_HEADER_TIMEOUT"] = "2"
    file_id = node.add_model_file("big.bin", os.urandom(SIZE))
    assert node.start().returncode == 0
    wait_for(lambda: _ping(node, "127.0.0.42"), 20, "the daemon's peer port")
    return node, file_id


def test_downloads_that_never_read_do_not_lock_out_an_honest_peer(
    daemon: tuple[Node, str],
) -> None:
    node, file_id = daemon
    hogs = _connect_many(32, "127.0.0.43", node)
    try:
        _send_all(hogs, f"GET /v1/blobs/{file_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.5)
        got = _honest_range(node, file_id, "127.0.0.44")
        blob = next(node.hub.rglob(file_id))
        assert got == blob.read_bytes()[: 1 << 20]

        # The stalled uploads are cut (the hogs' sockets see the end) and slots freed.
        def all_cut() -> bool:
            return node.client().status()["uploads_active"] == 0

        wait_for(all_cut, 20, "stalled uploads to be cut")
        assert _honest_range(node, file_id, "127.0.0.43") == got  # even from the hogs' host
    finally:
        for s in hogs:
            s.close()


def test_half_sent_requests_do_not_exhaust_the_daemon(daemon: tuple[Node, str]) -> None:
    node, file_id = daemon
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(hard, 1300), 4096), hard))
    socks = _connect_many(1100, "127.0.0.45", node)
    try:
        _send_all(socks, b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert _ping(node, "127.0.0.46")
        assert node.cli("daemon", "status").returncode == 0
        assert len(_honest_range(node, file_id, "127.0.0.46")) == 1 << 20

        def all_closed() -> bool:  # the header deadline ends every half-sent request
            alive = 0
            for s in socks:
                try:
                    alive += s.recv(1, socket.MSG_PEEK) != b""
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            return alive == 0

        wait_for(all_closed, 20, "half-sent requests to be closed")
        assert _ping(node, "127.0.0.45")  # the attacker's address is not banned for good
    finally:
        for s in socks:
            s.close()
