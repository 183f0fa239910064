"""A real daemon under a bounded flood of DHT datagrams keeps answering HTTP: every
/v1/ping sent while the flood runs is answered within a generous deadline."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import httpx
import umsgpack

from tests.nodes import Node

FLOOD = 60_000  # datagrams
SOURCES = 8  # addresses, each with several ports
PING_DEADLINE = 10.0  # seconds: generous; a starved loop misses it by far


def flood(target: tuple[str, int], done: threading.Event, sent: list[int]) -> None:
    socks = []
    for i in range(SOURCES):
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.6.{i + 10}", 0))
            socks.append(s)
    try:
        for n in range(FLOOD):
            me = os.urandom(20)
            # a find_node padded as an honest first request is: the costliest to answer
            data = (
                b"\x00"
                + os.urandom(20)
                + umsgpack.packb(["find_node", [me, me], b"", b"\0" * 1300])
            )
            try:
                socks[n % len(socks)].sendto(data, target)
            except OSError:
                time.sleep(0.001)  # the local buffer is full: the flood is bounded anyway
            sent[0] += 1
    finally:
        for s in socks:
            s.close()
        done.set()


def test_http_stays_responsive_during_a_datagram_flood(nodes: Callable[[str], Node]) -> None:
    a = nodes("127.0.0.2")
    assert a.start().returncode == 0
    done, sent = threading.Event(), [0]
    flooder = threading.Thread(target=flood, args=((a.host, a.port), done, sent), daemon=True)
    answered = 0
    with httpx.Client(timeout=PING_DEADLINE, trust_env=False) as http:
        assert http.get(f"{a.url}/v1/ping").status_code == 200
        flooder.start()
        for _ in range(2000):  # bounded; ends when the flood does
            if done.is_set():
                break
            r = http.get(f"{a.url}/v1/ping")  # raises if not answered within the deadline
            assert r.status_code == 200
            answered += 1
            time.sleep(0.02)
        flooder.join(timeout=120)
    assert sent[0] == FLOOD
    assert answered >= 5, "the flood ended before the pings could overlap it"
    # and the daemon still serves its control API and the DHT afterwards
    status = a.client().status()
    assert status["pid"] == a.info()["pid"]
