"""The Prometheus series of ``edgekit serve``, on a registry of its own.

Two kinds of series, told apart because several collectors may share one store:

* **this process** (counters and histograms it updates as it works): messages stored,
  duplicates dropped, messages refused, batch sizes and times, ingestion lag, resend
  requests and their outcomes. Sum them over the collectors.
* **the fleet** (read from the store every few seconds, so every collector of one store
  exports the same values — aggregate them with ``max``, not ``sum``): devices by status,
  and per device served, rejected, errors, latency, RSS, CPU, free disk, outbox depth.

More series slot in through :meth:`CollectorMetrics.register`: anything with a
``collect()`` that yields metric families (the alert service registers
``edgekit_alerts{rule,severity}`` and its counters that way).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from .status import DeviceStatus

STATUSES = ("online", "stale", "offline", "unknown")
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)


class Source(Protocol):
    """What :meth:`CollectorMetrics.register` accepts: prometheus_client's collector interface."""

    def collect(self) -> Iterable[Metric]: ...


class FleetView:
    """Devices by status and per-device numbers from the latest snapshot of the store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: Mapping[str, DeviceStatus] = {}
        self._at = 0.0

    def update(self, devices: Mapping[str, DeviceStatus], now: float | None = None) -> None:
        with self._lock:
            self._devices = dict(devices)
            self._at = time.time() if now is None else now

    def statuses(self, now: float | None = None) -> dict[str, int]:
        with self._lock:
            devices, at = self._devices, self._at
        counts = dict.fromkeys(STATUSES, 0)
        for status in devices.values():
            key = status.connectivity(now if now is not None else at)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            devices, at = self._devices, self._at
        by_status = GaugeMetricFamily("edgekit_devices", "Devices by status (fleet, from the store)", labels=["status"])
        for key, n in self.statuses().items():
            by_status.add_metric([key], n)
        yield by_status
        per: dict[str, Any] = {
            "served": CounterMetricFamily(
                "edgekit_device_served", "Rows served since the agent started", labels=["device"]
            ),
            "rejected": CounterMetricFamily(
                "edgekit_device_rejected", "Rows refused since the agent started", labels=["device"]
            ),
            "errors": CounterMetricFamily(
                "edgekit_device_errors", "Failures reported since the agent started", labels=["device"]
            ),
            "latency": GaugeMetricFamily(
                "edgekit_device_latency_seconds", "Per-row serving latency", labels=["device", "quantile"]
            ),
            "rss": GaugeMetricFamily("edgekit_device_rss_bytes", "Resident memory of the agent", labels=["device"]),
            "cpu": GaugeMetricFamily(
                "edgekit_device_cpu_percent", "Agent CPU, % of one core, last interval", labels=["device"]
            ),
            "disk": GaugeMetricFamily(
                "edgekit_device_disk_free_bytes", "Free disk under the agent's state dir", labels=["device"]
            ),
            "outbox": GaugeMetricFamily(
                "edgekit_device_outbox_queued", "Messages waiting in the agent's outbox", labels=["device"]
            ),
            "seen": GaugeMetricFamily(
                "edgekit_device_last_seen_seconds", "Seconds since the device's last document", labels=["device"]
            ),
        }
        for name in sorted(devices):
            status = devices[name]
            hb, rep = status.hb, status.reported
            counters = hb.stats.counters if hb is not None else rep.counters if rep is not None else {}
            per["served"].add_metric([name], counters.get("served", 0))
            per["rejected"].add_metric([name], counters.get("rejected", 0))
            per["errors"].add_metric([name], sum(rep.failures.values()) if rep is not None else 0)
            seen = status.last_seen()
            if seen is not None:
                per["seen"].add_metric([name], max(0.0, at - seen))
            if hb is None:
                continue
            lat, res, box = hb.stats.latency, hb.stats.resources, hb.stats.outbox
            if lat is not None:
                for q, us in (("0.5", lat.p50_us), ("0.9", lat.p90_us), ("0.99", lat.p99_us)):
                    per["latency"].add_metric([name, q], us / 1e6)
            if res is not None:
                per["rss"].add_metric([name], res.rss_bytes)
                per["cpu"].add_metric([name], res.cpu_pct)
                per["disk"].add_metric([name], res.disk_free_bytes)
            if box is not None:
                per["outbox"].add_metric([name], box.queued)
        yield from per.values()


class CollectorMetrics:
    """Every series of one ``serve`` process; ``registry`` is what the HTTP endpoint serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.stored = Counter("edgekit_ingested_messages", "Messages stored, by topic leaf", ["leaf"], registry=r)
        self.duplicates = Counter(
            "edgekit_ingest_duplicates", "Messages already in the store (redelivered or resent)", ["leaf"], registry=r
        )
        self.invalid = Counter("edgekit_ingest_invalid", "Messages refused as unreadable", ["leaf"], registry=r)
        self.unverified = Counter(
            "edgekit_ingest_unverified",
            "Messages on an enrolled device's topic its telemetry key did not sign (not stored)",
            ["leaf"],
            registry=r,
        )
        self.lag = Histogram(
            "edgekit_ingest_lag_seconds",
            "From the device's timestamp to the commit (events and drift windows)",
            ["leaf"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "edgekit_store_batch_seconds", "Time to write one batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "edgekit_store_batch_messages", "Messages per batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.store_errors = Counter("edgekit_store_errors", "Batches that failed to write (retried)", registry=r)
        self.queue = Gauge("edgekit_ingest_queue_messages", "Messages received, not yet stored", registry=r)
        self.resend_requests = Counter("edgekit_resend_requests", "Resend commands sent to devices", registry=r)
        self.resend_messages = Counter(
            "edgekit_resend_messages",
            "Messages in devices' resend replies: requeued, still queued, or missing (lost)",
            ["outcome"],
            registry=r,
        )
        self.gap_messages = Gauge(
            "edgekit_gap_open_messages", "Sequence numbers missing in the store at the last gap scan", registry=r
        )
        self.connected = Gauge("edgekit_broker_connected", "1 while connected to the broker", registry=r)
        self.fleet = FleetView()
        self.register(self.fleet)

    def register(self, source: Source) -> None:
        self.registry.register(source)


def serve_http(metrics: CollectorMetrics, port: int, addr: str = "127.0.0.1") -> tuple[Any, int]:
    """Start the ``/metrics`` endpoint on a thread; (server, port actually bound)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return server, int(server.server_port)
