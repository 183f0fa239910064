"""DHT nodes over real UDP on loopback addresses (127.0.0.x), in one process."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import umsgpack
from kademlia.node import Node

from hffs.daemon.announcer import Announcer
from swarm.dht import DHTNode, DHTProtocol, NodeCrawl, dht_key
from swarm.providers import ProviderStore
from tests.dht_nodes import Start, node_starter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # kademlia is asyncio-only; the daemon runs anyio on asyncio


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Starts nodes on loopback addresses; stops them while the loop still runs."""
    async with node_starter(1.0) as start:
        yield start


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture):
    """Nothing may raise in a callback or an unawaited task (asyncio logs those)."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_dht_key() -> None:
    assert len(dht_key("file", "ab" * 32)) == 20
    assert dht_key("a", "bc") != dht_key("ab", "c")
    assert dht_key("model", "org/name", "c0ffee") == dht_key(b"model", "org/name", b"c0ffee")
    assert dht_key() != dht_key("")
    with pytest.raises(TypeError):
        dht_key(1)  # type: ignore[arg-type]


async def test_chain_bootstrap(start: Start) -> None:
    with anyio.fail_after(10):
        a = await start("127.0.0.2")
        b = await start("127.0.0.3")
        assert await b.bootstrap([a.address]) == 1
        key = dht_key("file", "a" * 64)
        assert await a.provide(key) == 1  # only B is known to A
        c = await start("127.0.0.4")
        assert await c.bootstrap([b.address]) == 2  # learnt A through B
        found = await c.find_providers(key)
        assert [(p.host, p.port) for p in found] == [a.address]
        assert found[0].ttl(time.monotonic()) > 60
        assert a.routing_size() == 2 and len(a.node_id) == 40


async def test_twenty_nodes_every_node_finds_every_provider(start: Start) -> None:
    with anyio.fail_after(20):
        nodes = [await start(f"127.0.0.{10 + i}") for i in range(20)]
        rng = random.Random(7)
        for i, node in enumerate(nodes[1:], 1):
            await node.bootstrap([nodes[rng.randrange(i)].address])
        shared = dht_key("model", "org/name", "0" * 40)
        singles = {dht_key("file", str(i)): nodes[i] for i in (2, 5, 17)}
        for holder in (nodes[3], nodes[7], nodes[11]):
            assert await holder.provide(shared) > 0
        for key, holder in singles.items():
            assert await holder.provide(key) > 0

        async def check(node: DHTNode) -> None:
            got = {(p.host, p.port) for p in await node.find_providers(shared)}
            # three holders of one key merge, none overwrites another
            assert got == {nodes[3].address, nodes[7].address, nodes[11].address}
            for key, holder in singles.items():
                found = [(p.host, p.port) for p in await node.find_providers(key)]
                assert found == [holder.address]

        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(check, node)
        # no node id was learnt wrong, and one table entry per address
        for node in nodes:
            contacts = node.protocol.router.contacts()
            assert len({(c.ip, c.port) for c in contacts}) == len(contacts)


async def test_provider_that_stops_reannouncing_expires(start: Start) -> None:
    with anyio.fail_after(15):
        nodes = [await start(f"127.0.0.{40 + i}", ttl=2.0) for i in range(5)]
        for node in nodes[1:]:
            await node.bootstrap([nodes[0].address])
        key = dht_key("file", "expiring")
        keeper, quitter, seeker = nodes[1], nodes[2], nodes[4]
        async with anyio.create_task_group() as tg:
            # the daemon's own announce loop keeps the keeper's record alive
            announcer = Announcer(keeper, keeper.address[1], lambda: [key], period=0.5, tick=0.1)
            tg.start_soon(announcer.run)
            await quitter.provide(key)

            async def found() -> set[tuple[str, int]]:
                return {(p.host, p.port) for p in await seeker.find_providers(key)}

            # polled within fail_after: both records show, then (ttl 2 s) only the kept one
            while await found() != {keeper.address, quitter.address}:
                await anyio.sleep(0.05)
            while await found() != {keeper.address}:
                await anyio.sleep(0.1)
            assert announcer.rounds >= 2  # it was the loop that kept the record alive
            tg.cancel_scope.cancel()


def _request(msg: object, msg_id: bytes = b"\x07" * 20) -> bytes:
    return b"\x00" + msg_id + umsgpack.packb(msg)


def _rpc(
    name: str, args: list, token: bytes = b"", pad: int = 0, msg_id: bytes = b"\x07" * 20
) -> bytes:
    return _request([name, args, token, b"\0" * pad], msg_id)


async def test_malformed_datagrams_are_dropped_and_node_keeps_serving(start: Start) -> None:
    with anyio.fail_after(10):
        node = await start("127.0.0.60", timeout=0.5)
        helper = await start("127.0.0.61", timeout=0.5)
        host, port = node.address
        me, key = b"\x11" * 20, dht_key("file", "x")
        bad = [
            b"\xff" * 50,  # garbage
            b"\x00" * 5,  # too short
            b"\x00" + b"\x01" * 20 + b"\x90" * 9000,  # oversized
            b"\x00" + b"\x01" * 20 + b"\xc1",  # invalid msgpack
            b"\x00" + b"\x01" * 20 + b"\x91" * 4000 + b"\xc0",  # deep nesting
            b"\x05" + b"\x01" * 20 + umsgpack.packb(1),  # unknown kind
            b"\x01" + b"\x09" * 20 + umsgpack.packb([me, True, b""]),  # unsolicited response
            _request({"a": 1}),
            _request(["ping"]),
            _request(["ping", [me]]),  # no token nor pad fields
            _request(["ping", [me], 5, b""]),  # a token that is not bytes
            _rpc("ping", me),
            _rpc("nosuch", [me]),
            _rpc("store", [me, key, b"v"]),  # kademlia's own rpc: not served
            _rpc("find_value", [me, key]),
            _rpc("ping", [me, me]),
            _rpc("ping", [b"short"]),
            _rpc("find_node", [me, b"x" * 19]),
            _rpc("add_provider", [me, key, 9000]),  # the port is no longer a field
            _rpc("add_provider", [me, key, "10.9.9.9", 9000]),  # forged holder
            _rpc("add_provider", [me, b"k"]),
            _rpc("get_providers", [me, None]),
            _request([1, [me], b"", b""]),
        ]
        async with await anyio.create_udp_socket(local_host="127.0.0.62") as sock:
            lport = sock.extra(anyio.abc.SocketAttribute.local_port)
            for data in bad:
                await sock.sendto(data, host, port)
            while node.protocol.drops.total() < len(bad):
                await anyio.sleep(0.01)
            with anyio.move_on_after(0.2) as quiet:
                await sock.receive()
            assert quiet.cancelled_caught, "a dropped datagram was answered"

            # an announcement without a token is refused: the source may be spoofed
            await sock.sendto(_rpc("add_provider", [me, key], pad=200), host, port)
            reply, _ = await sock.receive()
            assert umsgpack.unpackb(reply[21:])[:2] == [node.node.id, False]
            assert node.store.get(key, time.monotonic()) == []
            # a padded ping earns a token bound to this address; with it the
            # announcement is stored under the UDP source address and port
            await sock.sendto(_rpc("ping", [me], pad=200), host, port)
            reply, _ = await sock.receive()
            responder, ok, token = umsgpack.unpackb(reply[21:])
            assert (responder, ok, len(token)) == (node.node.id, True, 8)
            await sock.sendto(_rpc("add_provider", [me, key], token), host, port)
            reply, _ = await sock.receive()
            assert reply[:21] == b"\x01" + b"\x07" * 20
            assert umsgpack.unpackb(reply[21:])[:2] == [node.node.id, True]
            await sock.sendto(_rpc("get_providers", [me, key], token), host, port)
            reply, _ = await sock.receive()
            body = umsgpack.unpackb(reply[21:])[1]
            assert body["providers"] == [["127.0.0.62", lport, 1800]]
            assert len(reply) < 1400

        # the node still works for real peers
        assert await helper.bootstrap([node.address]) >= 1
        assert await helper.provide(key) == 1
        got = {(p.host, p.port) for p in await helper.find_providers(key)}
        assert got == {("127.0.0.62", lport), helper.address}


async def test_bad_replies_from_a_peer_are_dropped(start: Start) -> None:
    """A peer answering with junk node lists / provider entries cannot poison a crawl."""
    with anyio.fail_after(10):
        node = await start("127.0.0.65", timeout=0.5)
        async with await anyio.create_udp_socket(local_host="127.0.0.66") as liar:
            liar_id = b"\x22" * 20
            lport = liar.extra(anyio.abc.SocketAttribute.local_port)
            node.protocol.welcome_if_new(Node(liar_id, "127.0.0.66", lport))
            key = dht_key("file", "y")

            async def answer() -> None:
                data, addr = await liar.receive()
                junk = {
                    "providers": [
                        ["0.0.0.0", 1, 10],
                        ["example.com", 80, 10],
                        ["10.0.0.1", 70000, 10],
                        ["10.0.0.2", 80, -5],
                        ["10.0.0.3", 80, 10],
                        "x",
                    ],
                    "nodes": [[b"x", "10.0.0.1", 1], [b"\x33" * 20, "::ffff:127.0.0.67", 5]],
                }
                reply = b"\x01" + data[1:21] + umsgpack.packb([liar_id, junk, b"t" * 8])
                await liar.sendto(reply, *addr[:2])

            async with anyio.create_task_group() as tg:
                tg.start_soon(answer)
                lookup = await node.lookup(key)
            assert [(p.host, p.port) for p in lookup.providers] == [("10.0.0.3", 80)]
            assert node.protocol.drops.total() >= 6


async def test_swarm_secret_blocks_outsiders(start: Start) -> None:
    with anyio.fail_after(15):
        secret = b"correct horse battery staple"
        a = await start("127.0.0.80", secret=secret, timeout=0.5)
        b = await start("127.0.0.81", secret=secret, timeout=0.5)
        plain = await start("127.0.0.82", timeout=0.5)
        wrong = await start("127.0.0.83", secret=b"guess", timeout=0.5)
        assert await b.bootstrap([a.address]) == 1
        key = dht_key("file", "secret")
        assert await a.provide(key) == 1
        assert [p.host for p in await b.find_providers(key)] == ["127.0.0.80"]
        for outsider in (plain, wrong):
            assert await outsider.bootstrap([a.address, b.address]) == 0
            assert await outsider.find_providers(key) == []
            fake = Node(a.node.id, *a.address)
            assert not await outsider.protocol.call_add_provider(fake, key)
        assert a.protocol.drops["no tag"] + a.protocol.drops["bad tag"] >= 2
        assert {p.port for p in a.store.get(key, time.monotonic())} == set()
        assert all(c.ip in ("127.0.0.80", "127.0.0.81") for c in a.protocol.router.contacts())

        # a captured request cannot be replayed, nor kept for later: a member's
        # protocol object frames requests as if sent from 127.0.0.84
        forger = DHTProtocol(Node(b"\x44" * 20), ProviderStore(), 20, secret=secret)
        forger._bound = ("127.0.0.84", 0)
        me = forger.source_node.id
        ping = umsgpack.packb(["ping", [me], b"", b"\0" * 100])
        async with await anyio.create_udp_socket(local_host="127.0.0.84") as sock:
            forger._bound = ("127.0.0.84", sock.extra(anyio.abc.SocketAttribute.local_port))
            fresh = forger._frame(b"\x00", b"\x05" * 20, ping, a.address, a.node.id)
            await sock.sendto(fresh, *a.address)
            reply, _ = await sock.receive()
            assert forger._unframe(reply, a.address) is not None
            await sock.sendto(fresh, *a.address)
            real_time = time.time
            try:
                time.time = lambda: real_time() - 1000  # type: ignore[assignment]
                stale = forger._frame(b"\x00", b"\x06" * 20, ping, a.address, a.node.id)
            finally:
                time.time = real_time  # type: ignore[assignment]
            await sock.sendto(stale, *a.address)
            while a.protocol.drops["stale timestamp"] < 1:
                await anyio.sleep(0.01)
            with anyio.move_on_after(0.2) as quiet:
                await sock.receive()
            assert quiet.cancelled_caught
        assert a.protocol.drops["replayed request"] == 1


async def test_routing_table_ranks_every_contact() -> None:
    """kademlia walks buckets outwards from the target's and can stop early with
    contacts that are not the closest; ours must equal a brute-force ranking."""
    rng = random.Random(3)
    me = Node(rng.randbytes(20))
    proto = DHTProtocol(me, ProviderStore(), 8)
    for i in range(400):
        proto.welcome_if_new(Node(rng.randbytes(20), f"10.0.{i // 250}.{i % 250 + 1}", 4000))
    contacts = proto.router.contacts()
    assert len(contacts) > 30
    for _ in range(50):
        target = Node(rng.randbytes(20))
        want = sorted(contacts, key=target.distance_to)[:8]
        assert proto.router.find_neighbors(target) == want
    # a restarted peer (same address, new id) replaces its old entry
    old = contacts[0]
    proto.welcome_if_new(Node(b"\x00" * 20, old.ip, old.port))
    assert all(c.id != old.id for c in proto.router.contacts())
    proto.shutdown()


async def test_crawl_never_readmits_a_node_that_failed() -> None:
    """kademlia's NodeHeap forgets removals: a later reply naming a node that had
    timed out put it back, already marked contacted, into the result."""
    ids = {name: bytes([i]) * 20 for i, name in enumerate("ABCDE", 1)}
    node = {name: Node(nid, f"10.0.0.{i}", 9) for i, (name, nid) in enumerate(ids.items(), 1)}
    replies = {"A": ["C"], "B": [], "C": ["D"], "D": None, "E": []}

    class Fake:
        async def call_find_node(self, peer: Node, target: Node) -> tuple[bool, object]:
            name = next(n for n, nid in ids.items() if nid == peer.id)
            got = replies[name]
            return (False, None) if got is None else (True, [node[n] for n in got])

    crawl = NodeCrawl(Fake(), Node(b"\x00" * 20), [node["A"], node["B"], node["D"]], 20, 3)
    found = await crawl.find()
    assert sorted(n.id for n in found) == [ids["A"], ids["B"], ids["C"]]
    assert crawl.failed == {ids["D"]} and crawl.queried == 4


async def test_lookups_route_around_dead_nodes(start: Start) -> None:
    with anyio.fail_after(15):
        nodes = [await start(f"127.0.0.{100 + i}", timeout=0.5) for i in range(8)]
        for node in nodes[1:]:
            await node.bootstrap([nodes[0].address])
        dead = nodes[5:]
        for node in dead:
            node.stop()
        key = dht_key("file", "churn")
        closest = await nodes[1]._closest_nodes(key)
        # kademlia's heap let a later reply re-add a node that had timed out
        assert {(n.ip, n.port) for n in closest} == {n.address for n in nodes[:5]} - {
            nodes[1].address
        }
        assert await nodes[1].provide(key) == 4
        assert [p.host for p in await nodes[4].find_providers(key)] == ["127.0.0.101"]


async def test_stop_fails_pending_requests_and_api_guards(start: Start) -> None:
    with anyio.fail_after(5):
        a = await start("127.0.0.90", timeout=30)
        async with await anyio.create_udp_socket(local_host="127.0.0.91") as silent:
            port = silent.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                result: list[object] = []

                async def ask() -> None:
                    result.append(await a.bootstrap([("127.0.0.91", port)]))

                tg.start_soon(ask)
                await anyio.sleep(0.1)
                a.stop()  # the 30 s request must end now, not at its timeout
            assert result == [0]
        with pytest.raises(ValueError):
            await a.bootstrap([("localhost", 1)])
        with pytest.raises(ValueError):
            await a.provide(b"short", 80)
        with pytest.raises(NotImplementedError):
            await a.get("k")
        with pytest.raises(NotImplementedError):
            await DHTNode.load_state("state.pickle", 0)


async def test_announce_after_a_node_restarts_with_new_tokens(start: Start) -> None:
    """A token cached from before a node restarted is refused; the reply carries a
    fresh one and the announcement is retried with it, not lost for a whole round."""
    with anyio.fail_after(10):
        a = await start("127.0.0.120")
        b = await start("127.0.0.121")
        assert await b.bootstrap([a.address]) == 1
        key = dht_key("file", "restart")
        assert await b.provide(key) == 1
        a.protocol.tokens = type(a.protocol.tokens)(b"\x09" * 32)  # as after a restart
        key2 = dht_key("file", "restart2")
        (contact,) = b.protocol.router.contacts()
        assert await b.protocol.call_add_provider(contact, key2)  # no crawl: the old token
        assert {p.addr for p in a.store.get(key2, time.monotonic())} == {b.address}
        assert a.protocol.handled["add_provider refused: no token"] >= 1
