"""What ``GET /metrics`` reports, in the Prometheus text format (``prometheus_client``).

One registry per gateway process, not the library's global one, so that nothing else a process
imports adds to what the service reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # any other: "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The service's counters, histograms and gauges; every one carries the notebook it counts
    (``notebook``: the file's stem; empty for the gateway's own paths)."""

    def __init__(self, queue_depths: Callable[[], dict[str, int]],
                 pending_bytes: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "notebook", "endpoint")
        self.requests = Counter(
            "gradbook_requests", "HTTP requests answered, by notebook, endpoint (the notebook's "
            "annotated path) and status", (*labels, "status"), registry=self.registry)
        self.latency = Histogram(
            "gradbook_request_duration_seconds", "Time from a request's arrival to its answer",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(
            "gradbook_batch_size", "Requests run in one kernel execution", ("notebook",),
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.kernels_replaced = Counter(
            "gradbook_kernels_replaced", "Kernels that stopped and were replaced by a newly "
            "seeded one", ("notebook",), registry=self.registry)
        self.reloads = Counter(
            "gradbook_reloads", "Reloads of a notebook whose file changed, by result: ok (the "
            "new version serves) or failed (the old one still does)", ("notebook", "result"),
            registry=self.registry)
        self.registry.register(QueueDepths(queue_depths))
        pending = Gauge("gradbook_pending_bytes", "Bytes of requests and answers the gateway "
                        "holds (GRADBOOK_MAX_PENDING_BYTES bounds them)", registry=self.registry)
        pending.set_function(pending_bytes)

    def observe(self, method: str, notebook: str, endpoint: str, status: int,
                seconds: float) -> None:
        """Count one answered request."""
        method = method if method in METHODS else "other"  # a label the client cannot inflate
        self.requests.labels(method, notebook, endpoint, str(status)).inc()
        self.latency.labels(method, notebook, endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class QueueDepths(Collector):
    """``gradbook_queue_depth``: the requests waiting for a free kernel, by notebook, read when
    the metrics are (notebooks come and go with a served folder)."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self.depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("gradbook_queue_depth", "Requests waiting for a free kernel",
                                   labels=("notebook",))
        for notebook, depth in sorted(self.depths().items()):
            family.add_metric((notebook,), depth)
        yield family
