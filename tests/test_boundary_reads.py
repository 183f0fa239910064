"""Bounded reads (swarm/bounded.py) against hostile servers, and the host[:port] parser."""

from __future__ import annotations

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hffs.daemon.upstream import MAX_API_BYTES, Answer, Upstream
from swarm.bounded import BoundedReadError, TooLarge, TooSlow, fetch_bounded
from swarm.hostport import (
    HostPort,
    HostPortError,
    format_hostport,
    parse_host,
    parse_hostport,
    parse_port,
)
from tests.hostile import RawHostile, RawMode

CAP = 256 * 1024


def _fetch(url: str, *, limit: int = CAP, timeout: float = 10.0) -> object:
    async def go() -> object:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await fetch_bounded(client, url, limit=limit, timeout=timeout)

    return anyio.run(go)


def test_an_endless_body_stops_at_the_cap() -> None:
    with RawHostile("127.0.0.1", "endless") as server:
        with pytest.raises(TooLarge):
            _fetch(server.url + "/v1/blobs/x/manifest")
        server.stop()
        # The client hung up soon after the cap: what it took is the cap plus what sat in
        # socket buffers, never the gigabytes an unbounded read would have taken.
        assert server.bytes_sent < CAP + (16 << 20)


def test_a_drip_stops_at_the_deadline() -> None:
    with RawHostile("127.0.0.1", "drip", drip_s=0.05) as server:
        with pytest.raises(TooSlow):
            _fetch(server.url, timeout=1.0)
        # Dripping never resets the deadline: far fewer bytes came than a per-read
        # timeout would have let through over the server's whole patience.
        assert server.bytes_sent < 200


@pytest.mark.parametrize("mode", ["drip", "silent", "endless"])
def test_the_hf_endpoints_upstream_reads_are_bounded_too(mode: RawMode) -> None:
    """hffs/daemon/upstream.py reads upstream API answers through the same bounded reader:
    a dripping or silent upstream is a timeout after the deadline (a refusal, 504, never
    "unreachable"), an endless one stops at the cap (no answer), memory bounded either way."""
    with RawHostile("127.0.0.1", mode) as server:

        async def go() -> Answer | None:
            async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
                upstream = Upstream([server.url], client, deadline=2.0)
                return await upstream.ask("GET", "/api/models/org/m", {})

        ans = anyio.run(go)
        server.stop()
        if mode == "endless":
            assert ans is None and server.bytes_sent < MAX_API_BYTES + (16 << 20)
        else:
            assert ans is not None and ans.status == 504 and b"[" not in ans.body
            assert server.bytes_sent < 100


def test_a_redirect_is_never_followed() -> None:
    with RawHostile("127.0.0.1", "endless") as target:
        with RawHostile("127.0.0.1", "redirect", location=target.url + "/internal") as server:
            answer = _fetch(server.url)
            assert answer.status == 302  # type: ignore[attr-defined]
        assert target.requests == []  # nothing reached the address the peer named


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    with RawHostile("127.0.0.1", "drip", drip_s=0.01) as server:  # says 100 kB
        with pytest.raises(TooLarge):
            _fetch(server.url, limit=1000)
        assert server.bytes_sent < 100


def test_nothing_listening_is_a_read_error() -> None:
    with pytest.raises(BoundedReadError):
        _fetch("http://127.0.0.1:9/", timeout=5)


# -- host[:port] -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.2", HostPort("127.0.0.2", 9009)),
        ("127.0.0.2:7000", HostPort("127.0.0.2", 7000)),
        ("[::1]:7000", HostPort("::1", 7000)),
        ("[::1]", HostPort("::1", 9009)),
        ("::1", HostPort("::1", 9009)),
        ("fe80:0:0::1", HostPort("fe80::1", 9009)),
        ("Node-7.Lab.Example", HostPort("node-7.lab.example", 9009)),
        ("localhost:1", HostPort("localhost", 1)),
        (" host-a:65535 ", HostPort("host-a", 65535)),
    ],
)
def test_hostport_accepts(text: str, want: HostPort) -> None:
    assert parse_hostport(text, 9009) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not_a_host!!",
        "999.1.1.1",
        "1.2.3",
        "127.1",
        "256.0.0.1",
        "host:0",
        "host:65536",
        "host:-1",
        "host:",
        "host:80a",
        "[127.0.0.1]:80",
        "[::1",
        "[::1]x",
        "[::g]:1",
        "a..b",
        "-a.b",
        "a-.b",
        "a b",
        "a/b",
        "user@host",
        "x" * 64 + ".com",
        "host.123",
        "ünïcode.de",
    ],
)
def test_hostport_refuses(text: str) -> None:
    with pytest.raises(HostPortError):
        parse_hostport(text, 9009)


def test_port_is_an_int_not_a_bool() -> None:
    with pytest.raises(HostPortError):
        parse_port(True)
    assert parse_port("80") == 80


@given(st.ip_addresses(), st.integers(1, 65535))
def test_format_and_parse_round_trip(ip: object, port: int) -> None:
    host = str(ip)
    text = format_hostport(host, port)
    assert parse_hostport(text, 1) == HostPort(parse_host(host), port)
    assert str(parse_hostport(text, 1)) == text


@given(st.text(max_size=40))
def test_hostport_never_raises_anything_else(text: str) -> None:
    try:
        hp = parse_hostport(text, 9009)
    except HostPortError:
        return
    assert 1 <= hp.port <= 65535 and hp.host and " " not in hp.host
