"""Prometheus metrics of one server (prometheus_client, a registry per server): requests by status, latency
and rows per (model, task), micro-batching and session-pool state read at scrape time; plus the running
tallies the v2 statistics extension answers."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .runtime import MicroBatcher, TaskSessionPool

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TASK = ("model", "task")


class Metrics:
    """Request counters and latency histograms per (model, task) in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hatzoo_requests",
            "Predict requests by model, task and HTTP status.",
            [*TASK, "status"],
            registry=r,
        )
        self.errors = Counter(
            "hatzoo_errors", "Predict requests answered with a 4xx/5xx status.", TASK, registry=r
        )
        self.unrouted = Counter(
            "hatzoo_unrouted_requests",
            "Requests for an unknown model or task, by status.",
            ["status"],
            registry=r,
        )
        self.rows = Counter("hatzoo_rows", "Input rows (images) answered.", TASK, registry=r)
        self.latency = Histogram(
            "hatzoo_request_latency_seconds",
            "Server-side predict latency.",
            TASK,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._lock = threading.Lock()
        # (model, task) -> [success count, success ns, fail count, fail ns, rows, last inference ms]
        self._tally: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * 6)

    def watch(self, pool: TaskSessionPool, batcher: MicroBatcher) -> None:
        """Report the pool's sessions and the batcher's runs at every scrape."""
        self.registry.register(_StateCollector(pool, batcher))

    def observe(self, model: str, task: str, status: int, seconds: float, rows: int) -> None:
        """Record one routed request (model and task are known names)."""
        self.requests.labels(model, task, str(status)).inc()
        self.latency.labels(model, task).observe(seconds)
        failed = status >= 400
        if failed:
            self.errors.labels(model, task).inc()
        else:
            self.rows.labels(model, task).inc(rows)
        with self._lock:
            t = self._tally[(model, task)]
            t[2 if failed else 0] += 1
            t[3 if failed else 1] += int(seconds * 1e9)
            if not failed:
                t[4] += rows
                t[5] = int(time.time() * 1000)

    def observe_unrouted(self, status: int) -> None:
        """Record a request for an unknown model or task (not labelled by name: unbounded cardinality)."""
        self.unrouted.labels(str(status)).inc()

    def tally(self, model: str, task: str) -> tuple[tuple[int, int], tuple[int, int], int, int]:
        """((success count, ns), (fail count, ns), rows, last inference in ms since the epoch) of a task."""
        with self._lock:
            s_n, s_ns, f_n, f_ns, rows, last = self._tally.get((model, task), [0] * 6)
        return (s_n, s_ns), (f_n, f_ns), rows, last

    def render(self) -> bytes:
        """The Prometheus text exposition of this server's registry."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Micro-batching counters and session-pool state, read when Prometheus scrapes."""

    def __init__(self, pool: TaskSessionPool, batcher: MicroBatcher) -> None:
        self.pool = pool
        self.batcher = batcher

    def collect(self) -> Iterator[Metric]:
        families = {
            "batches": CounterMetricFamily(
                "hatzoo_batches", "session.run calls made by the micro-batcher.", labels=TASK
            ),
            "requests": CounterMetricFamily(
                "hatzoo_batched_requests", "Requests answered by those runs.", labels=TASK
            ),
            "rows": CounterMetricFamily("hatzoo_batch_rows", "Rows run by the micro-batcher.", labels=TASK),
            "max_rows": GaugeMetricFamily("hatzoo_batch_rows_max", "Largest batch run so far.", labels=TASK),
        }
        for (m, t), st in sorted(self.batcher.stats.items()):
            for key, family in families.items():
                family.add_metric([m, t], getattr(st, key))
        yield from families.values()
        yield GaugeMetricFamily(
            "hatzoo_sessions_loaded", "ONNX Runtime sessions open.", len(self.pool.loaded())
        )
        yield GaugeMetricFamily(
            "hatzoo_sessions_loaded_bytes", "Estimated bytes of the open sessions.", self.pool.loaded_bytes()
        )
        yield CounterMetricFamily("hatzoo_session_loads", "Sessions created.", self.pool.loads)
        yield CounterMetricFamily(
            "hatzoo_session_evictions", "Sessions closed by the budget.", self.pool.evictions
        )
