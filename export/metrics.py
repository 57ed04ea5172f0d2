"""Prometheus counters: requests, errors and latency per (model, task), batching and pool state."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from .runtime import MicroBatcher, TaskSessionPool

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request, error and latency counters per (model, task), rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.rows: dict[tuple[str, str], int] = defaultdict(int)
        self.lat_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.lat_count: dict[tuple[str, str], int] = defaultdict(int)
        self.lat_buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.unrouted: dict[int, int] = defaultdict(int)

    def observe(self, model: str, task: str, status: int, seconds: float, rows: int) -> None:
        """Record one routed request (model and task are known names)."""
        key = (model, task)
        with self._lock:
            self.requests[(model, task, status)] += 1
            self.rows[key] += rows
            self.lat_sum[key] += seconds
            self.lat_count[key] += 1
            b = self.lat_buckets[key]
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    b[i] += 1

    def observe_unrouted(self, status: int) -> None:
        """Record a request for an unknown model or task (not labelled by name: unbounded cardinality)."""
        with self._lock:
            self.unrouted[status] += 1

    def render(self, pool: TaskSessionPool, batcher: MicroBatcher) -> str:
        """Prometheus exposition text of every counter, plus pool and batching state."""
        out: list[str] = []

        def lab(**kw: Any) -> str:
            return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in kw.items()) + "}"

        with self._lock:
            out += [
                "# HELP hatzoo_requests_total Predict requests by model, task and HTTP status.",
                "# TYPE hatzoo_requests_total counter",
            ]
            out += [
                f"hatzoo_requests_total{lab(model=m, task=t, status=s)} {n}"
                for (m, t, s), n in sorted(self.requests.items())
            ]
            out += [
                "# HELP hatzoo_errors_total Predict requests answered with a 4xx/5xx status.",
                "# TYPE hatzoo_errors_total counter",
            ]
            errs: dict[tuple[str, str], int] = defaultdict(int)
            for (m, t, s), n in self.requests.items():
                if s >= 400:
                    errs[(m, t)] += n
            out += [f"hatzoo_errors_total{lab(model=m, task=t)} {n}" for (m, t), n in sorted(errs.items())]
            out += [
                f"hatzoo_unrouted_requests_total{lab(status=s)} {n}" for s, n in sorted(self.unrouted.items())
            ]
            out += ["# TYPE hatzoo_rows_total counter"]
            out += [f"hatzoo_rows_total{lab(model=m, task=t)} {n}" for (m, t), n in sorted(self.rows.items())]
            out += [
                "# HELP hatzoo_request_latency_seconds Server-side predict latency.",
                "# TYPE hatzoo_request_latency_seconds histogram",
            ]
            for (m, t), b in sorted(self.lat_buckets.items()):
                name, count = "hatzoo_request_latency_seconds", self.lat_count[(m, t)]
                for le, n in zip((*LATENCY_BUCKETS, "+Inf"), (*b, count), strict=True):
                    out.append(f"{name}_bucket{lab(model=m, task=t, le=le)} {n}")
                out.append(f"{name}_sum{lab(model=m, task=t)} {self.lat_sum[(m, t)]:.6f}")
                out.append(f"{name}_count{lab(model=m, task=t)} {count}")
        out += [
            "# HELP hatzoo_batches_total session.run calls made by the micro-batcher.",
            "# TYPE hatzoo_batches_total counter",
        ]
        for (m, t), st in sorted(batcher.stats.items()):
            out.append(f"hatzoo_batches_total{lab(model=m, task=t)} {st.batches}")
            out.append(f"hatzoo_batched_requests_total{lab(model=m, task=t)} {st.requests}")
            out.append(f"hatzoo_batch_rows_total{lab(model=m, task=t)} {st.rows}")
            out.append(f"hatzoo_batch_rows_max{lab(model=m, task=t)} {st.max_rows}")
        out += [
            "# TYPE hatzoo_sessions_loaded gauge",
            f"hatzoo_sessions_loaded {len(pool.loaded())}",
            f"hatzoo_sessions_loaded_bytes {pool.loaded_bytes()}",
            "# TYPE hatzoo_session_loads_total counter",
            f"hatzoo_session_loads_total {pool.loads}",
            "# TYPE hatzoo_session_evictions_total counter",
            f"hatzoo_session_evictions_total {pool.evictions}",
        ]
        return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    """Escape a Prometheus label value."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
