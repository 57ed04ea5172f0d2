"""Serving benchmark: ``hatzoo serve`` beside a minimal Starlette + ONNX Runtime server and a direct loop.

Usage::

    python bench/bench_serving.py                         # exports hat-vit-small (all tasks) to a temp folder
    python bench/bench_serving.py BUNDLE_DIR [--batches 1 32] [--clients 8] [--rounds 5] [--requests 400]
    python bench/bench_serving.py --rss BUNDLE_DIR        # also: server RSS as sessions load

Every mode does the same work per request: parse a ``.npy`` body of ``--batch`` images, run the task's
session, answer the logits and the top-1 label. The request stream (round-robin over the bundle's tasks)
goes through one plain HTTP client (``http.client``, one kept-alive connection per client thread,
``--clients`` threads) to

- ``hatzoo serve`` (``POST /v1/models/M/tasks/T:predict?top_k=1``), and
- a minimal server started by this script (Starlette, one session per task, ``session.run`` in Starlette's
  thread pool: the 25-line way to serve ONNX Runtime), and is also run
- directly: ``session.run`` in a loop in one process, no HTTP.

The three alternate within each of ``--rounds`` rounds (the order rotates); the best round of each counts,
so a noisy neighbour on a shared machine shows as spread, not as a false ratio. Printed: requests/s and
images/s of each, the ratios, the session runs per request of hatzoo serve (below 1: merged requests), and
each server's CPU time per request (its process and children, all threads), which a busy neighbour
disturbs far less than requests/s.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hatzoo.export.bundle import read_bundle
from hatzoo.export.client import HatzooClient
from hatzoo.hub.local_hub import free_port, stop_process

MODES = ("hatzoo serve", "minimal server", "direct loop")


def minimal_app(bundle_dir: str):
    """The minimal server: parse the .npy body, run the task's session, answer logits and top-1 label."""
    import onnxruntime as ort
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    b = read_bundle(bundle_dir)
    sessions = {
        t: ort.InferenceSession(str(s.path), providers=["CPUExecutionProvider"]) for t, s in b.tasks.items()
    }

    async def predict(request):
        spec = b.tasks[request.path_params["task"]]
        x = np.load(io.BytesIO(await request.body()), allow_pickle=False)
        (logits,) = await run_in_threadpool(
            sessions[spec.task_id].run, [spec.output_name], {spec.input_name: x}
        )
        labels = [spec.labels[i] for i in logits.argmax(axis=1)]
        return JSONResponse({"logits": logits.tolist(), "label": labels})

    async def health(request):
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/models/{m}/tasks/{task}:predict", predict, methods=["POST"]),
            Route("/healthz", health),
        ]
    )


def _serve_minimal(bundle_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(minimal_app(bundle_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start(kind: str, bundle: Path, options: Sequence[str] = ()) -> tuple[subprocess.Popen, int]:
    """Start hatzoo serve (with ``options``) or the minimal server on a free port; returns the process and
    port once it answers."""
    port = free_port()
    if kind == "hatzoo serve":
        cmd = [sys.executable, "-m", "hatzoo.export.server", str(bundle), "--port", str(port), *options]
    else:
        cmd = [sys.executable, __file__, "--serve-minimal", str(port), str(bundle)]
    proc = subprocess.Popen(cmd)
    HatzooClient(f"http://127.0.0.1:{port}", timeout=2).wait_until_up(proc, timeout=120)
    return proc, port


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def http_rate(
    port: int, model: str, route: list[str], bodies: list[bytes], clients: int
) -> tuple[float, int]:
    """Requests/s of the stream through ``clients`` threads (one kept-alive connection each), and errors."""
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/x-npy"}
        for i in range(k, len(bodies), clients):
            conn.request("POST", f"/v1/models/{model}/tasks/{route[i]}:predict?top_k=1", bodies[i], headers)
            r = conn.getresponse()
            answer = json.loads(r.read())
            if r.status != 200 or not (answer.get("top_k") or answer.get("label")):
                with lock:
                    errors[0] += 1
        conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return len(bodies) / (time.perf_counter() - t0), errors[0]


def direct_rate(bundle: Path, route: list[str], xs: list[np.ndarray]) -> Callable[[], float]:
    """A function timing ``session.run`` plus the top-1 label over the stream in one loop (sessions kept)."""
    import onnxruntime as ort

    b = read_bundle(bundle)
    sessions = {
        t: ort.InferenceSession(str(s.path), providers=["CPUExecutionProvider"]) for t, s in b.tasks.items()
    }

    def run() -> float:
        t0 = time.perf_counter()
        for x, t in zip(xs, route, strict=True):
            spec = b.tasks[t]
            (logits,) = sessions[t].run([spec.output_name], {spec.input_name: x})
            [spec.labels[i] for i in logits.argmax(axis=1)]
        return len(xs) / (time.perf_counter() - t0)

    run()  # warm-up
    return run


def session_runs(port: int) -> float:
    """hatzoo serve's session runs and requests so far (from /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = HatzooClient(f"http://127.0.0.1:{port}").metrics()
    runs = reqs = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            runs += s.value if s.name == "hatzoo_batches_total" else 0
            reqs += s.value if s.name == "hatzoo_batched_requests_total" else 0
    return runs / max(reqs, 1)


def bench(
    bundle: Path, batch: int, clients: int, requests: int, rounds: int, options: Sequence[str] = ()
) -> dict[str, list[float]]:
    """req/s per mode and round, with the modes alternating (rotated order) inside each round."""
    b = read_bundle(bundle)
    tids = list(b.tasks)
    rng = np.random.default_rng(batch)
    shape = b.tasks[tids[0]].input_shape[1:]
    xs = [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(requests)]
    bodies = [npy(x) for x in xs]
    route = [tids[i % len(tids)] for i in range(requests)]
    servers = {kind: start(kind, bundle, options) for kind in MODES[:2]}
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu = dict.fromkeys(servers, 0.0)
    errors = 0
    try:
        for _proc, port in servers.values():  # load every session, warm the paths
            http_rate(port, b.model, tids * 4, bodies[: len(tids) * 4], clients)
        direct = direct_rate(bundle, route, xs)
        for r in range(rounds):
            order = MODES[r % 3 :] + MODES[: r % 3]
            for mode in order:
                if mode == "direct loop":
                    rates[mode].append(direct())
                else:
                    proc, port = servers[mode]
                    used = cpu_seconds(proc.pid)
                    rate, errs = http_rate(port, b.model, route, bodies, clients)
                    cpu[mode] += cpu_seconds(proc.pid) - used
                    rates[mode].append(rate)
                    errors += errs
        runs = session_runs(servers["hatzoo serve"][1])
    finally:
        for proc, _port in servers.values():
            stop_process(proc)
    rates["errors"] = [errors]
    rates["cpu ms per request"] = [cpu[m] * 1000 / (rounds * requests) for m in MODES[:2]]
    rates["runs per request"] = [runs]
    return rates


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its live children, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids, total = [pid], 0.0
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_rss(bundle: Path) -> list[tuple[int, float]]:
    """Server RSS (MiB) at start and after a batch-32 request to each task in turn."""
    b = read_bundle(bundle)
    x = np.random.default_rng(1).standard_normal((32, *b.tasks[next(iter(b.tasks))].input_shape[1:]))
    proc, port = start("hatzoo serve", bundle)
    try:
        rows = [(0, _rss_mb(proc.pid))]
        for i, t in enumerate(b.tasks, 1):
            HatzooClient(f"http://127.0.0.1:{port}").predict(b.model, t, x.astype(np.float32))
            rows.append((i, _rss_mb(proc.pid)))
    finally:
        stop_process(proc)
    return rows


def export_bundle(model: str, out: Path) -> Path:
    """``hatzoo export MODEL --all-tasks -o OUT`` (once: an existing bundle is reused)."""
    if not (out / "manifest.json").exists():
        hatzoo = Path(sys.executable).with_name("hatzoo")
        subprocess.run([str(hatzoo), "export", model, "--all-tasks", "-o", str(out)], check=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", type=Path, help="bundle folder (default: export --model first)")
    p.add_argument("--model", default="hat-vit-small", help="zoo model to export when no bundle is given")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=400, help="requests per mode and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rss", action="store_true", help="also measure server RSS as sessions load")
    p.add_argument("--serve-options", default="", help="extra 'hatzoo serve' options, e.g. '--micro-batch 8'")
    p.add_argument("--serve-minimal", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_minimal is not None:
        return _serve_minimal(str(a.bundle), a.serve_minimal)
    bundle = a.bundle or export_bundle(a.model, Path(tempfile.gettempdir()) / f"hatzoo-bench-{a.model}")
    b = read_bundle(bundle)
    size = sum(t.file_size for t in b.tasks.values()) / len(b.tasks) / 2**20
    print(
        f"bundle {b.model}: {len(b.tasks)} tasks, {size:.1f} MiB per graph, cpu={os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for batch in a.batches:
        requests = a.requests // (4 if batch > 8 else 1)
        r = bench(bundle, batch, a.clients, requests, a.rounds, a.serve_options.split())
        best = {m: max(r[m]) for m in MODES}
        print(f"\nbatch {batch}, {a.clients} clients, best of {a.rounds} alternated rounds:")
        print(f"{'mode':<18}{'req/s':>9}{'img/s':>10}   rounds (req/s)")
        for m in MODES:
            rounds = " ".join(f"{v:.0f}" for v in r[m])
            print(f"{m:<18}{best[m]:>9.1f}{best[m] * batch:>10.1f}   {rounds}")
        print(
            f"hatzoo serve / minimal server = {best['hatzoo serve'] / best['minimal server']:.2f}x, "
            f"hatzoo serve / direct loop = {best['hatzoo serve'] / best['direct loop']:.2f}x, "
            f"minimal / direct = {best['minimal server'] / best['direct loop']:.2f}x; "
            f"errors {r['errors'][0]:.0f}, session runs per request {r['runs per request'][0]:.2f}"
        )
        hz, mini = r["cpu ms per request"]
        print(
            f"server CPU time per request (all threads and child processes; steadier than req/s on a shared "
            f"machine): hatzoo serve {hz:.2f} ms, minimal server {mini:.2f} ms ({hz / mini:.2f}x)"
        )
    if a.rss:
        rss = bench_rss(bundle)
        print(f"\n{'sessions loaded':<18}{'server RSS MiB':>16}")
        for n, mb in rss:
            print(f"{n:<18}{mb:>16.1f}")


if __name__ == "__main__":
    main()
