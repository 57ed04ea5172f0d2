"""Task-routed HTTP serving of hatzoo bundles (FastAPI app + uvicorn), torch-free.

Endpoints:
- ``POST /v1/models/{model}/tasks/{task}:predict``: body JSON ``{"inputs": [B, C, H, W] nested lists,
  "top_k": 5}`` or raw ``.npy`` bytes (Content-Type ``application/x-npy`` or ``application/octet-stream``,
  ``top_k`` as a query parameter). Inputs are already normalized (see the manifest's ``normalization``).
  Answer: ``{"model", "task", "logits": [[...]], "top_k": [[{"label", "index", "score"}]]}`` where score
  is the softmax probability.
- ``GET /v1/models``: models, their source and tasks (labels, input shape, dtype, normalization).
- ``GET /healthz``: liveness. ``GET /metrics``: Prometheus text (requests, errors, latency, batching).
Errors answer ``{"error": message}`` with a 4xx status (404 unknown model/task, 400 bad input, 413 body or
batch too large, 415 unsupported content type, 503 queue full); the server keeps serving.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from hatzoo.errors import HATError

from .bundle import TaskSpec, read_bundle
from .runtime import MicroBatcher, OverloadedError, TaskSessionPool, UnknownModelError

PREDICT_SUFFIX = ":predict"
NPY_TYPES = ("application/x-npy", "application/octet-stream", "application/npy")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RequestError(HATError):
    """A bad request: carries the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
                for le, n in zip(LATENCY_BUCKETS, b, strict=True):
                    out.append(f"hatzoo_request_latency_seconds_bucket{lab(model=m, task=t, le=le)} {n}")
                out.append(
                    f"hatzoo_request_latency_seconds_bucket{lab(model=m, task=t, le='+Inf')} "
                    f"{self.lat_count[(m, t)]}"
                )
                out.append(
                    f"hatzoo_request_latency_seconds_sum{lab(model=m, task=t)} {self.lat_sum[(m, t)]:.6f}"
                )
                out.append(
                    f"hatzoo_request_latency_seconds_count{lab(model=m, task=t)} {self.lat_count[(m, t)]}"
                )
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


def parse_top_k(value: Any, num_classes: int) -> int:
    """Validate top_k (int >= 0); values above the class count are clamped to it."""
    if isinstance(value, bool):
        raise RequestError(400, f"top_k must be a non-negative integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise RequestError(400, f"top_k must be a non-negative integer, got {value!r}") from None
    if not isinstance(value, int) or value < 0:
        raise RequestError(400, f"top_k must be a non-negative integer, got {value!r}")
    return min(value, num_classes)


def decode_body(body: bytes, content_type: str) -> tuple[np.ndarray, Any]:
    """Array and top_k (or None) from a JSON or .npy request body; RequestError on malformed input."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in NPY_TYPES:
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - numpy raises several types for bad files
            raise RequestError(400, f"body is not a valid .npy array: {e}") from None
        if not isinstance(arr, np.ndarray):
            raise RequestError(400, "body must hold one .npy array, not an .npz archive")
        return arr, None
    if ctype not in ("application/json", ""):
        raise RequestError(
            415, f"unsupported Content-Type {ctype!r}; use application/json or application/x-npy"
        )
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise RequestError(
            400, 'JSON body must be an object {"inputs": [B, C, H, W] nested lists, "top_k": k}'
        )
    try:
        arr = np.asarray(doc["inputs"], dtype=np.float64)
    except (ValueError, TypeError):
        raise RequestError(400, "inputs must be a rectangular nested list of numbers [B, C, H, W]") from None
    return arr, doc.get("top_k")


def validate_input(arr: np.ndarray, spec: TaskSpec, max_batch: int) -> np.ndarray:
    """Check dtype, shape, batch size and finiteness against the task; returns a contiguous array."""
    if arr.dtype.kind != "f":
        raise RequestError(400, f"inputs must be floating point ({spec.dtype}), got dtype {arr.dtype}")
    want = spec.input_shape
    if arr.ndim != len(want):
        raise RequestError(
            400, f"inputs must have shape [B, {', '.join(map(str, want[1:]))}], got {list(arr.shape)}"
        )
    if arr.shape[1] != want[1]:
        raise RequestError(
            400, f"task expects {want[1]} channels, got {arr.shape[1]} (shape {list(arr.shape)})"
        )
    if tuple(arr.shape[2:]) != tuple(want[2:]):
        raise RequestError(400, f"task expects images of {list(want[2:])}, got {list(arr.shape[2:])}")
    if arr.shape[0] == 0:
        raise RequestError(400, "empty batch: send at least one image")
    if arr.shape[0] > max_batch:
        raise RequestError(413, f"batch of {arr.shape[0]} is above the limit of {max_batch}; split it")
    x = np.ascontiguousarray(arr, dtype=np.float16 if spec.dtype == "float16" else np.float32)
    if not np.isfinite(x).all():
        raise RequestError(400, "inputs contain NaN or infinity (or values out of range for the dtype)")
    return x


def top_k_answer(logits: np.ndarray, k: int, labels: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Top-k labels with softmax probabilities for every row of logits."""
    if k == 0:
        return [[] for _ in range(len(logits))]
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return [
        [{"label": labels[i], "index": int(i), "score": float(row[i])} for i in ids]
        for ids, row in zip(idx, p, strict=True)
    ]


def _error(status: int, message: str) -> JSONResponse:
    """The JSON error answer used by every endpoint."""
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """Request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    bundle_dirs: Sequence[str | os.PathLike[str]],
    *,
    max_sessions: int | None = 16,
    max_session_bytes: int | None = None,
    max_request_batch: int = 256,
    max_body_bytes: int = 64 << 20,
    micro_batch: int = 32,
    max_wait_ms: float = 1.0,
    max_queue: int = 1024,
    run_threads: int = 4,
    global_thread_pool: bool = True,
    shared_allocator: bool = True,
    intra_op_threads: int = 0,
    providers: Sequence[str] | None = None,
    verify: bool = True,
) -> FastAPI:
    """Build the serving app for one or more bundles (one model each); options bound memory and batching.

    ``max_sessions`` / ``max_session_bytes``: LRU budget of open sessions; ``max_request_batch``: largest
    batch one request may send; ``max_body_bytes``: request body limit; ``micro_batch`` / ``max_wait_ms``:
    rows and wait of the per-task micro-batcher (``micro_batch=1`` turns merging off).
    """
    if not bundle_dirs:
        raise HATError("serve needs at least one bundle folder")
    bundles = [read_bundle(d, verify=verify) for d in bundle_dirs]
    pool = TaskSessionPool(
        bundles,
        max_sessions=max_sessions,
        max_bytes=max_session_bytes,
        providers=providers,
        global_thread_pool=global_thread_pool,
        shared_allocator=shared_allocator,
        intra_op_threads=intra_op_threads,
    )
    batcher = MicroBatcher(
        pool, max_batch=micro_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, workers=run_threads
    )
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        pool.close()

    app = FastAPI(
        title="hatzoo serving",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.pool, app.state.batcher, app.state.metrics = pool, batcher, metrics

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(pool.bundles), "sessions_loaded": len(pool.loaded())}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": b.model,
                    "source": b.source,
                    "opset": b.opset,
                    "tasks": [
                        {
                            "id": t.task_id,
                            "labels": list(t.labels),
                            "num_classes": t.num_classes,
                            "input_shape": list(t.input_shape),
                            "dtype": t.dtype,
                            "normalization": {"mean": list(t.mean), "std": list(t.std)},
                            "flops_fraction": t.flops_fraction,
                            "kept_units": t.kept_units,
                        }
                        for t in b.tasks.values()
                    ],
                }
                for b in pool.bundles.values()
            ]
        }

    @app.get("/metrics")
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(pool, batcher), media_type="text/plain; version=0.0.4")

    @app.post("/v1/models/{model}/tasks/{task_action}")
    async def predict(model: str, task_action: str, request: Request) -> JSONResponse:
        if not task_action.endswith(PREDICT_SUFFIX):
            return _error(
                404,
                f"unknown action in {request.url.path!r}; use /v1/models/{{model}}/tasks/{{task}}:predict",
            )
        task = task_action[: -len(PREDICT_SUFFIX)]
        t0 = time.perf_counter()
        try:
            spec = pool.spec(model, task)
        except UnknownModelError as e:
            metrics.observe_unrouted(404)
            return _error(404, str(e))
        status, rows = 200, 0
        try:
            body = await _read_body(request, max_body_bytes)
            arr, body_k = decode_body(body, request.headers.get("content-type", "application/json"))
            k = request.query_params.get("top_k", body_k if body_k is not None else 5)
            k = parse_top_k(k, spec.num_classes)
            x = validate_input(arr, spec, max_request_batch)
            rows = len(x)
            logits = await batcher.predict(model, task, x)
            answer = {
                "model": model,
                "task": task,
                "logits": logits.astype(np.float32).tolist(),
                "top_k": top_k_answer(logits, k, spec.labels),
            }
            resp = JSONResponse(answer)
        except RequestError as e:
            status, resp = e.status, _error(e.status, str(e))
        except OverloadedError as e:
            status, resp = 503, _error(503, str(e))
        except HATError as e:
            status, resp = 500, _error(500, f"server error: {e}")
        except Exception as e:  # noqa: BLE001 - one bad request must never take the server down
            status, resp = 500, _error(500, f"server error: {type(e).__name__}: {e}")
        metrics.observe(model, task, status, time.perf_counter() - t0, rows)
        return resp

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, f"no route {request.method} {request.url.path}; see GET /v1/models")

    return app


def serve(
    bundle_dirs: Sequence[str | os.PathLike[str]],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve bundles over HTTP with uvicorn until interrupted (127.0.0.1 unless told otherwise)."""
    import uvicorn

    app = create_app(bundle_dirs, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, access_log=False)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hatzoo.export.server BUNDLE [BUNDLE...]``: the same as ``hatzoo serve``."""
    p = argparse.ArgumentParser(prog="hatzoo-serve", description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--max-request-batch", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=1.0)
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    serve(
        a.bundles,
        a.host,
        a.port,
        log_level=a.log_level,
        max_sessions=a.max_sessions,
        max_request_batch=a.max_request_batch,
        micro_batch=a.micro_batch,
        max_wait_ms=a.max_wait_ms,
    )


if __name__ == "__main__":
    main()
