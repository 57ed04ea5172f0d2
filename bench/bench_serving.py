"""Serving benchmark: HTTP throughput with concurrent clients vs. direct session calls, and server RSS.

Usage::

    python bench/bench_serving.py BUNDLE_DIR [--clients 8] [--requests 400] [--batch 1]
    python bench/bench_serving.py --demo /tmp/demo_bundle [--demo-arch cnn|vit]   # build a bundle first

Throughput: the same request stream (``--requests`` arrays of ``--batch`` images, round-robin over the
bundle's tasks) is sent by ``--clients`` threads to a real server process on 127.0.0.1 (.npy bodies), and
run directly with ``session.run`` in one loop in this process; the ratio server/direct is printed
(target >= 0.7). Memory: the RSS of a fresh server process after one batch-32 request to each of the first
N tasks. The benchmark itself needs torch only for ``--demo``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from hatzoo.export.bundle import read_bundle
from hatzoo.export.client import HatzooClient

from hatzoo.hub.local_hub import free_port, stop_process


def build_demo_bundle(out: Path, arch: str = "cnn", tasks: int = 4) -> Path:
    """Export ``tasks`` small models (random weights) into a bundle (needs torch; timm for 'vit')."""
    import torch
    from hatzoo.export.bundle import write_manifest
    from hatzoo.export.onnx_export import export_module
    from torch import nn

    out.mkdir(parents=True, exist_ok=True)
    shape = (3, 32, 32)
    entries = {}
    for t in range(tasks):
        torch.manual_seed(t)
        if arch == "vit":
            import timm

            net = timm.create_model(
                "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=10
            )
        else:
            net = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, 128, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(128, 128, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(128, 10),
            )
        export_module(net.eval(), torch.randn(2, *shape), out / f"task{t}.onnx")
        entries[t] = {
            "file": f"task{t}.onnx",
            "input_shape": [None, *shape],
            "labels": [str(i) for i in range(10)],
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        }
    write_manifest(out, model=f"demo-{arch}", source={"repo_id": None, "revision": None}, tasks=entries)
    return out


def _rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(bundle: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start ``python -m hatzoo.export.server`` on a free port and wait for /healthz."""
    port = free_port()
    args = [str(bundle), "--port", str(port), "--log-level", "warning", *extra]
    proc = subprocess.Popen([sys.executable, "-m", "hatzoo.export.server", *args])
    url = f"http://127.0.0.1:{port}"
    HatzooClient(url, timeout=2).wait_until_up(proc)
    return proc, url


def bench_throughput(
    bundle: Path, clients: int, requests: int, batch: int, wait_ms: float
) -> dict[str, float]:
    """Requests/s through the server with ``clients`` threads vs. direct session.run in a loop."""
    import onnxruntime as ort

    b = read_bundle(bundle)
    tids = list(b.tasks)
    rng = np.random.default_rng(0)
    shape = b.tasks[tids[0]].input_shape[1:]
    xs = [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(requests)]
    route = [tids[i % len(tids)] for i in range(requests)]

    sessions = {
        t: ort.InferenceSession(str(b.tasks[t].path), providers=["CPUExecutionProvider"]) for t in tids
    }
    for t in tids:
        sessions[t].run(None, {b.tasks[t].input_name: xs[0]})
    t0 = time.perf_counter()
    for x, t in zip(xs, route, strict=True):
        sessions[t].run(None, {b.tasks[t].input_name: x})
    direct = requests / (time.perf_counter() - t0)
    del sessions

    proc, url = start_server(bundle, "--max-wait-ms", str(wait_ms))
    try:
        for t in tids:  # load every session before timing
            HatzooClient(url).predict(b.model, t, xs[0])
        errors: list[str] = []

        def worker(k: int) -> None:
            c = HatzooClient(url)
            for i in range(k, requests, clients):
                try:
                    c.predict(b.model, route[i], xs[i], top_k=1)
                except Exception as e:  # noqa: BLE001
                    errors.append(str(e))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, range(clients)))
        served = requests / (time.perf_counter() - t0)
        metrics = HatzooClient(url).metrics()
    finally:
        stop_process(proc)
    batches = sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("hatzoo_batches_total{")
    )
    return {
        "direct_rps": direct,
        "server_rps": served,
        "ratio": served / direct,
        "errors": len(errors),
        "runs_per_request": batches / (requests + len(tids)),
    }


def bench_rss(bundle: Path, n_tasks: int) -> list[tuple[int, float]]:
    """Server RSS (MiB) at start and after a batch-32 request to each of the first 1..N tasks."""
    b = read_bundle(bundle)
    tids = list(b.tasks)[:n_tasks]
    x = np.random.default_rng(1).standard_normal((32, *b.tasks[tids[0]].input_shape[1:])).astype(np.float32)
    proc, url = start_server(bundle, "--max-sessions", str(max(1, len(tids))))
    try:
        rows = [(0, _rss_mb(proc.pid))]
        for i, t in enumerate(tids, 1):
            HatzooClient(url).predict(b.model, t, x)
            rows.append((i, _rss_mb(proc.pid)))
    finally:
        stop_process(proc)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", type=Path)
    p.add_argument("--demo", type=Path, help="build a demo bundle here first (needs torch)")
    p.add_argument("--demo-arch", choices=("cnn", "vit"), default="cnn")
    p.add_argument("--demo-tasks", type=int, default=4)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-wait-ms", type=float, default=1.0)
    p.add_argument("--rss-tasks", type=int, default=None, help="N task sessions for the RSS figure (all)")
    a = p.parse_args()
    bundle = a.bundle
    if a.demo is not None:
        if not (a.demo / "manifest.json").exists():
            build_demo_bundle(a.demo, a.demo_arch, a.demo_tasks)
            # torch's idle threads would slow this process's direct loop: measure in a fresh, torch-free one
            argv = [x for x in sys.argv[1:] if x not in ("--demo", str(a.demo))]
            os.execv(sys.executable, [sys.executable, __file__, str(a.demo), *argv])
        bundle = a.demo
    if bundle is None:
        p.error("give a bundle folder or --demo DIR")
    b = read_bundle(bundle)
    size = sum(t.file_size for t in b.tasks.values()) / len(b.tasks) / 2**20
    print(f"bundle {b.model}: {len(b.tasks)} tasks, {size:.1f} MiB per graph, cpu={os.cpu_count()}")
    tp = bench_throughput(bundle, a.clients, a.requests, a.batch, a.max_wait_ms)
    print(f"{'mode':<28}{'req/s':>10}{'img/s':>10}")
    print(f"{'direct session.run loop':<28}{tp['direct_rps']:>10.1f}{tp['direct_rps'] * a.batch:>10.1f}")
    print(f"{f'server, {a.clients} clients':<28}{tp['server_rps']:>10.1f}{tp['server_rps'] * a.batch:>10.1f}")
    print(
        f"ratio server/direct = {tp['ratio']:.2f}x (target >= 0.7), errors = {tp['errors']}, "
        f"session runs per request = {tp['runs_per_request']:.2f}"
    )
    rss = bench_rss(bundle, a.rss_tasks or len(b.tasks))
    print(f"{'sessions loaded':<18}{'server RSS MiB':>16}")
    for n, mb in rss:
        print(f"{n:<18}{mb:>16.1f}")
    if len(rss) > 1:
        print(f"per session after batch-32: {(rss[-1][1] - rss[0][1]) / (len(rss) - 1):.1f} MiB")


if __name__ == "__main__":
    main()
