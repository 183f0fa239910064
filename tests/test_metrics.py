"""``/metrics`` of real daemons: Prometheus text that prometheus_client parses, whose
counters match the bytes the test moved between them; loopback only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
from huggingface_hub import hf_hub_download
from prometheus_client.parser import text_string_to_metric_families

from hffs.activity import Activity, host_of
from hffs.cache import HubCache
from hffs.daemon.metrics import MetricSources, make_registry
from hffs.daemon.status_page import LocalSurface, loopback_host
from hffs.visibility import VisibilityStore
from swarm.chunking import MIN_CHUNK_SIZE, chunk_count, chunk_size_for
from swarm.peer_server import UploadStats
from tests.localhub import LocalHub, make_random_file
from tests.nodes import Node, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: Node) -> Samples:
    r = httpx.get(f"{node.url}/metrics", trust_env=False, timeout=20)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def seed(node: Node, hub: LocalHub, repo_id: str, commit: str, path: str) -> None:
    f = hub.get_file(repo_id, path, commit)
    cache = HubCache(node.hub)
    blob = cache.blob_path("model", repo_id, f.etag)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(f.read())
    cache.link("model", repo_id, commit, path, f.etag)
    cache.write_ref("model", repo_id, "main", commit)
    # as if hffs had fetched it anonymously: public, so the node shares it
    VisibilityStore(node.home).record("model", repo_id, "public", [f.etag])


def test_counters_match_the_bytes_moved_between_daemons(
    nodes: Callable[[str], Node], hub: LocalHub, tmp_path: Path
) -> None:
    swarmed = make_random_file(tmp_path / "w", 3 * MIN_CHUNK_SIZE + 4321, seed=11).read_bytes()
    upstream_only = make_random_file(tmp_path / "u", MIN_CHUNK_SIZE + 77, seed=12).read_bytes()
    c1 = hub.add_repo("org/metrics-swarmed", {"w.bin": swarmed})
    c2 = hub.add_repo("org/metrics-upstream", {"u.bin": upstream_only})
    a, b = nodes("127.0.0.2"), nodes("127.0.0.3")
    seed(a, hub, "org/metrics-swarmed", c1, "w.bin")
    assert a.start().returncode == 0
    b.env["HFFS_ENDPOINTS"] = hub.url
    assert b.cli("peer", "add", a.host, "--port", str(a.port)).returncode == 0
    assert b.start("--bootstrap", f"{a.host}:{a.port}").returncode == 0
    wait_for(lambda: value(scrape(b), "hffs_dht_contacts") >= 1, 30, "B in the DHT")

    cache = tmp_path / "client"
    got = hf_hub_download(
        "org/metrics-swarmed", "w.bin", revision=c1, endpoint=b.url, cache_dir=cache, token=False
    )
    assert hashlib.sha256(Path(got).read_bytes()).digest() == hashlib.sha256(swarmed).digest()
    got = hf_hub_download(
        "org/metrics-upstream", "u.bin", revision=c2, endpoint=b.url, cache_dir=cache, token=False
    )
    assert Path(got).read_bytes() == upstream_only

    # A counts what it sent as it goes: wait, bounded, until it has counted it all.
    wait_for(
        lambda: value(scrape(a), "hffs_uploaded_bytes_total", to="peer") >= len(swarmed),
        20,
        "A's upload count",
    )
    sa, sb = scrape(a), scrape(b)
    # every byte of the swarmed file went from A to B, and no more
    assert value(sa, "hffs_uploaded_bytes_total", to="peer") == len(swarmed)
    assert value(sb, "hffs_downloaded_bytes_total", source="peer") == len(swarmed)
    assert value(sb, "hffs_downloaded_bytes_total", source="upstream") == len(upstream_only)
    assert value(sa, "hffs_downloaded_bytes_total", source="peer") == 0
    # B served both files to its HF client (plus a few headers' worth of JSON at most)
    served = value(sb, "hffs_uploaded_bytes_total", to="hf_client")
    assert len(swarmed) + len(upstream_only) <= served < len(swarmed) + len(upstream_only) + 65536
    n_w = chunk_count(len(swarmed), chunk_size_for(len(swarmed)))
    n_u = chunk_count(len(upstream_only), chunk_size_for(len(upstream_only)))
    assert value(sb, "hffs_chunks_verified_total", source="peer") == n_w
    assert value(sb, "hffs_chunks_verified_total", source="upstream") == n_u
    assert value(sb, "hffs_chunks_failed_total", source="peer") == 0
    assert value(sb, "hffs_downloads_in_progress") == 0
    assert value(sb, "hffs_http_requests_total", route="hf", status="200") >= 2
    assert value(sa, "hffs_http_requests_total", route="peer", status="200") >= 1  # manifest, have
    assert value(sb, "hffs_dht_lookup_seconds_count") >= 1
    assert value(sb, "hffs_peers_known") >= 1 and value(sb, "hffs_peers_alive") >= 1
    assert value(sa, "hffs_upload_slots") == 32 and value(sa, "hffs_upload_slots_in_use") == 0

    # Only local callers, under a local name: a page that rebinds its name to 127.0.0.1
    # cannot read the metrics or the status page.
    for path in ("/metrics", "/ui", "/ui/state.json"):
        r = httpx.get(f"{b.url}{path}", headers={"host": "evil.example"}, trust_env=False)
        assert r.status_code == 403 and b"hffs_" not in r.content and b"node_id" not in r.content


def test_a_remote_caller_gets_neither_metrics_nor_page() -> None:
    activity = Activity()

    async def hf_app(scope: object, receive: object, send: Callable) -> None:  # type: ignore[type-arg]
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"hf"})

    src = MetricSources(activity, UploadStats(), 32, dict, lambda: 0, lambda: (0, 0))
    surface = LocalSurface(hf_app, activity, make_registry(src), lambda: {"secret": "state"})

    async def get(client: tuple[str, int], path: str, lan: bool = False) -> httpx.Response:
        if lan:  # what uvicorn reports for a connection from 192.0.2.5 to 192.0.2.5:9009
            return await call_lan(path)
        transport = httpx.ASGITransport(app=surface, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9009") as c:
            return await c.get(path)

    async def call_lan(path: str) -> httpx.Response:
        sent: dict[str, object] = {}

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]

        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"192.0.2.5:9009")],
            "client": ("192.0.2.5", 41000),
            "server": ("192.0.2.5", 9009),
            "scheme": "http",
            "http_version": "1.1",
            "root_path": "",
        }
        await surface(scope, receive, send)
        return httpx.Response(int(sent["status"]))  # type: ignore[call-overload]

    async def main() -> None:
        for path in ("/metrics", "/ui", "/ui/state.json"):
            assert (await get(("127.0.0.1", 5000), path)).status_code == 200
            # a browser on the daemon's machine using its LAN address (client = server)
            assert (await get(("127.0.0.1", 5000), path, lan=True)).status_code == 200
            far = await get(("192.0.2.7", 5000), path)
            assert far.status_code == 403 and b"hffs_" not in far.content
            assert b"secret" not in far.content
        # "/" from afar is the HF endpoint's as before, not a redirect to the page
        assert (await get(("192.0.2.7", 5000), "/")).content == b"hf"
        assert (await get(("127.0.0.1", 5000), "/")).status_code == 307

    anyio.run(main)
    assert activity.http_requests[("local", 403)] == 3
    assert activity.http_requests[("local", 200)] == 6
    assert activity.http_requests[("hf", 404)] == 1


def test_names_of_this_machine() -> None:
    for ok in ("127.0.0.1", "127.0.0.3:9009", "localhost:80", "[::1]:9009", "LOCALHOST"):
        assert loopback_host(ok), ok
    for bad in (None, "", "evil.example", "10.0.0.1:9009", "127.0.0.1.evil.example", "[::2]:1"):
        assert not loopback_host(bad), bad
    # the address the daemon was reached on, literally, names it too; another does not
    assert loopback_host("192.0.2.5:9009", "192.0.2.5")
    assert not loopback_host("192.0.2.6:9009", "192.0.2.5")
    assert host_of("127.0.0.2:9009") == "127.0.0.2"
    assert host_of("[::1]:9009") == "::1"


def test_activity_rates_chunk_maps_and_forgetting() -> None:
    now = [100.0]
    act = Activity(clock=lambda: now[0])
    act.sample({})
    file_id = "ab" * 32
    watch = act.file_started(file_id, "org/x/w.bin", 4 << 20, [True, False, False, False])
    act.bytes_in("127.0.0.2:9009", False, 2048)
    watch.chunk_verified(1, "127.0.0.2:9009", False)
    act.bytes_in("http://127.0.0.1:9", True, 1024)
    watch.chunk_verified(2, "http://127.0.0.1:9", True)
    watch.chunk_failed(3, "127.0.0.9:9009", False)
    now[0] += 2
    act.sample({"127.0.0.2": 4096})
    point = act.history[-1]
    assert (point["peer"], point["upstream"], point["up"]) == (1024, 512, 2048)
    peer = act.peers["127.0.0.2"]  # both directions of one peer meet under its host
    assert (peer.down, peer.up, peer.down_rate, peer.up_rate) == (2048, 4096, 1024, 2048)
    (f,) = act.snapshot()["files"]
    assert bytes.fromhex(f["chunks"]) == bytes([3, 1, 2, 0]) and f["done"] == 3
    assert act.chunks_verified == {"peer": 1, "upstream": 1} and act.chunks_failed == {"peer": 1}
    act.file_finished(file_id, "no source left")
    snap = act.snapshot()
    assert not snap["files"] and snap["recent"][0]["error"] == "no source left"
    assert any("no source left" in e["message"] for e in snap["errors"])
    # an idle peer leaves the list after a while, and comes back when it trades again
    for _ in range(3):
        now[0] += 1
        act.sample({"127.0.0.2": 4096})
    assert act.peers["127.0.0.2"].down_rate == 0
    now[0] += 700
    act.sample({"127.0.0.2": 4096})
    assert "127.0.0.2" not in act.peers
    now[0] += 1
    act.sample({"127.0.0.2": 5096})
    assert act.peers["127.0.0.2"].up == 5096


def test_lookup_histogram_buckets() -> None:
    act = Activity()
    for s in (0.005, 0.3, 0.3, 20.0):
        act.dht_lookup(s)
    src = MetricSources(act, UploadStats(), 0, dict, lambda: 0, lambda: (0, 0))
    text = make_registry(src)
    from hffs.daemon.metrics import render

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(render(text).decode())
        for s in fam.samples
    }
    assert value(samples, "hffs_dht_lookup_seconds_bucket", le="0.01") == 1
    assert value(samples, "hffs_dht_lookup_seconds_bucket", le="0.25") == 1
    assert value(samples, "hffs_dht_lookup_seconds_bucket", le="0.5") == 3
    assert value(samples, "hffs_dht_lookup_seconds_bucket", le="+Inf") == 4
    assert value(samples, "hffs_dht_lookup_seconds_count") == 4
    assert abs(value(samples, "hffs_dht_lookup_seconds_sum") - 20.605) < 1e-9
