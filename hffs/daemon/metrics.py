"""``/metrics``: the daemon's counters in the Prometheus text format.

Its own ``CollectorRegistry`` (never prometheus_client's global one, so two daemons in
one process, as in tests, never mix), with one collector that reads the live values at
scrape time: nothing here keeps state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hffs.activity import KINDS, LOOKUP_BUCKETS, Activity
from swarm.peer_server import UploadStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class MetricSources:
    """Where each value comes from (the daemon fills it in)."""

    activity: Activity
    uploads: UploadStats
    upload_slots: int  # 0: unlimited
    bytes_down: Callable[[], dict[str, int]]  # kind -> bytes, downloads of this host's CLI too
    routing_size: Callable[[], int]
    peers: Callable[[], tuple[int, int]]  # (known, alive)


class _Collector(Collector):
    def __init__(self, src: MetricSources) -> None:
        self.src = src

    def collect(self) -> Iterator[Metric]:
        src, act = self.src, self.src.activity
        down = CounterMetricFamily(
            "hffs_downloaded_bytes", "Bytes downloaded, by source kind", labels=["source"]
        )
        totals = src.bytes_down()
        for k in KINDS:
            down.add_metric([k], totals.get(k, 0))
        yield down
        up = CounterMetricFamily(
            "hffs_uploaded_bytes",
            "Bytes sent: to peers (swarm protocol) and to HF clients (HF endpoint)",
            labels=["to"],
        )
        up.add_metric(["peer"], src.uploads.total)
        up.add_metric(["hf_client"], act.http_bytes.get("hf", 0))
        yield up
        for name, counts, what in (
            ("hffs_chunks_verified", act.chunks_verified, "Chunks that passed their check"),
            ("hffs_chunks_failed", act.chunks_failed, "Chunks that failed their check"),
        ):
            c = CounterMetricFamily(name, what + ", by source kind", labels=["source"])
            for k in KINDS:
                c.add_metric([k], counts.get(k, 0))
            yield c
        known, alive = src.peers()
        yield GaugeMetricFamily("hffs_peers_known", "Saved peers and peers traded with", known)
        yield GaugeMetricFamily(
            "hffs_peers_alive", "Peers that answered a probe or traded bytes lately", alive
        )
        yield GaugeMetricFamily(
            "hffs_dht_contacts", "Nodes in the DHT routing table", src.routing_size()
        )
        cumulative, buckets = 0, []
        for bound, n in zip(LOOKUP_BUCKETS, act.lookup_counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "hffs_dht_lookup_seconds",
            "Time a holder lookup in the DHT took",
            buckets=buckets,
            sum_value=act.lookup_sum,
        )
        yield GaugeMetricFamily(
            "hffs_downloads_in_progress", "Files this daemon is downloading", len(act.files)
        )
        yield GaugeMetricFamily(
            "hffs_upload_slots_in_use", "Uploads to peers running now", src.uploads.active
        )
        yield GaugeMetricFamily(
            "hffs_upload_slots", "Most uploads at once (0: unlimited)", src.upload_slots
        )
        req = CounterMetricFamily(
            "hffs_http_requests",
            "Requests answered on the daemon's port, by route (hf, peer, local) and status",
            labels=["route", "status"],
        )
        for (route, status), n in sorted(act.http_requests.items()):
            req.add_metric([route, str(status)], n)
        yield req


def make_registry(src: MetricSources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(src))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
