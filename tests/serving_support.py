"""Serving test helpers: the two tiny test bundles, their ONNX Runtime reference, and a real server.

The ``bundles``, ``bundle`` and ``reference`` fixtures (tests/conftest.py) are built from these.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Tasks of the two test models: (task id, number of classes, seed). Different weights per task, so routing
# to the wrong task gives visibly wrong logits.
MODEL_A = ("tiny-cnn", [(0, 3, 10), (1, 4, 11), (2, 5, 12)])
MODEL_B = ("tiny-mlp", [(0, 2, 20), (5, 3, 21)])
SHAPE = (1, 8, 8)


def _net(kind: str, k: int, seed: int):
    """A tiny torch model taking [B, 1, 8, 8] (tests may use torch; serving may not)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, k)).eval()
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, k)).eval()


def build_bundles(root: Path) -> list[Path]:
    """Export both test models' tasks (dynamic batch, one file each) and write their manifests."""
    import torch

    from hatzoo.export.bundle import write_manifest
    from hatzoo.export.onnx_export import export_module

    dirs = []
    for (name, tasks), kind in ((MODEL_A, "cnn"), (MODEL_B, "mlp")):
        d = root / name
        d.mkdir(parents=True)
        entries = {}
        for tid, k, seed in tasks:
            export_module(_net(kind, k, seed), torch.randn(2, *SHAPE), d / f"task{tid}.onnx")
            entries[tid] = {
                "file": f"task{tid}.onnx",
                "input_shape": [None, *SHAPE],
                "normalization": {"mean": [0.5], "std": [0.25]},
                "labels": [f"{name}-t{tid}-c{i}" for i in range(k)],
                "kept_units": {"conv": [3, 4]},
                "flops_fraction": 0.75,
                "max_abs_diff": 1e-7,
            }
        write_manifest(d, model=name, source={"repo_id": f"test/{name}", "revision": "abc"}, tasks=entries)
        dirs.append(d)
    return dirs


def edit_manifest(d: Path, fn: Callable[[dict], object]) -> None:
    """Change a bundle's manifest.json in place: ``fn`` edits the decoded manifest."""
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


class Reference:
    """Runs a task's graph directly with ONNX Runtime (the ground truth the server must match)."""

    def __init__(self, dirs: list[Path]) -> None:
        from hatzoo.export.bundle import read_bundle

        self.bundles = {b.model: b for b in map(read_bundle, dirs)}
        self._s: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str, task: str | int, x: np.ndarray) -> np.ndarray:
        from hatzoo.export.onnx_export import ort_session

        key = (model, str(task))
        with self._lock:
            if key not in self._s:
                self._s[key] = ort_session(self.bundles[model].tasks[str(task)].path)
        return self._s[key].run(["logits"], {"x": x})[0]


@contextmanager
def running_server(dirs: list[Path], **options) -> Iterator[tuple[str, object]]:
    """A real uvicorn server on 127.0.0.1 in a thread of this process, with serve()'s protocol (header
    timeout); ``options`` are ServeConfig fields. Yields (base_url, app)."""
    import uvicorn

    from hatzoo.export.guard import header_timeout_protocol
    from hatzoo.export.server import create_app
    from hatzoo.hub.local_hub import free_port

    options.setdefault("global_thread_pool", False)  # keep this pytest process's other ORT sessions legal
    app = create_app(dirs, **options)
    port = free_port()
    http = header_timeout_protocol(app.state.serving.config.header_timeout_s)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=http))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not server.started:
        if time.monotonic() - t0 > 20 or not th.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        th.join(10)


def post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
    """POST raw bytes; returns (status, decoded JSON) for success and error answers alike."""
    import httpx

    r = httpx.post(url, content=body, headers={"Content-Type": ctype}, timeout=30)
    return r.status_code, r.json()


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one Prometheus sample with exactly these labels (0 if absent), read by prometheus_client's
    own parser (which also refuses text that breaks the exposition format)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@contextmanager
def server_process(
    *args: str, command: tuple[str, ...] = ("hatzoo.export.server",)
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m COMMAND ARGS`` (the server module, or ``("hatzoo.cli", "serve")`` for the command) on
    a free port; yields (process, url) once /healthz answers, and stops it afterwards (terminate, then
    kill) unless the test already did."""
    from hatzoo.export.client import ClientError, HatzooClient
    from hatzoo.hub.local_hub import free_port, stop_process

    port = free_port()
    cmd = [sys.executable, "-m", *command, *args, "--port", str(port)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            HatzooClient(url, timeout=5).wait_until_up(proc)
        except ClientError as e:
            proc.kill()
            raise RuntimeError(f"{e}: {proc.stdout.read()}") from None
        yield proc, url
    finally:
        stop_process(proc)
