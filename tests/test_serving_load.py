"""Bounded load test: a real server process on 127.0.0.1, concurrent clients, several tasks, zero errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hatzoo.export.client import HatzooClient
from tests.serving_support import Reference, metric, server_process

CLIENTS = 8
REQUESTS_PER_CLIENT = 50
ROUTES = [("tiny-cnn", 0), ("tiny-cnn", 1), ("tiny-cnn", 2), ("tiny-mlp", 0), ("tiny-mlp", 5)]


def test_concurrent_load_zero_errors_and_exact_answers(bundles: list[Path], reference: Reference) -> None:
    """8 client threads x 50 requests over 5 tasks against ``python -m hatzoo.export.server`` (defaults)."""
    args = [*map(str, bundles), "--max-sessions", "4", "--log-level", "warning"]
    with server_process(*args) as (_proc, url):
        errors: list[str] = []

        def worker(i: int) -> list[float]:
            """This client's max |diff| per answer; wrong or failed answers go to ``errors``."""
            rng = np.random.default_rng(1000 + i)
            c = HatzooClient(url, timeout=30)
            diffs = []
            for j in range(REQUESTS_PER_CLIENT):
                model, task = ROUTES[(i + j) % len(ROUTES)]
                x = rng.standard_normal((int(rng.integers(1, 5)), 1, 8, 8)).astype(np.float32)
                try:
                    y = c.predict(model, task, x, top_k=1, use_npy=bool(j % 4))
                    diffs.append(float(np.abs(y["logits"] - reference(model, task, x)).max()))
                    if diffs[-1] > 1e-5 or y["task"] != str(task) or y["model"] != model:
                        errors.append(f"{model}/{task}: wrong answer (max diff {diffs[-1]})")
                except Exception as e:  # noqa: BLE001 - collect every failure
                    errors.append(f"{model}/{task}: {e}")
            return diffs

        t1 = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as clients:
            diffs = [d for client in clients.map(worker, range(CLIENTS)) for d in client]
        elapsed = time.monotonic() - t1
        assert not errors, errors[:5]
        assert len(diffs) == CLIENTS * REQUESTS_PER_CLIENT
        worst = max(diffs)
        assert worst <= 1e-5
        text = HatzooClient(url).metrics()
        total = sum(
            metric(text, "hatzoo_requests_total", model=m, task=str(t), status="200") for m, t in ROUTES
        )
        assert total == CLIENTS * REQUESTS_PER_CLIENT
        assert all(metric(text, "hatzoo_errors_total", model=m, task=str(t)) == 0 for m, t in ROUTES)
        assert metric(text, "hatzoo_sessions_loaded") <= 4
        print(f"\n{total} requests in {elapsed:.2f} s ({total / elapsed:.0f} req/s), max |diff| {worst:.2e}")


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_a_stopped_server_leaves_no_process_holding_its_output(bundle: Path, stop: str) -> None:
    """Decode workers exit with the server, even on SIGKILL: the server's output pipe reaches EOF."""
    with server_process(str(bundle)) as (proc, url):
        HatzooClient(url, timeout=30).predict(  # JSON: decoded in a worker
            *ROUTES[0], np.zeros((2, 1, 8, 8), np.float32), use_npy=False
        )
        getattr(proc, stop)()
        proc.wait(30)
        closed = threading.Event()
        threading.Thread(target=lambda: (proc.stdout.read(), closed.set()), daemon=True).start()
        assert closed.wait(20), "a decode worker outlived the server and holds its output open"
