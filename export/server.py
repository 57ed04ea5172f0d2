"""Task-routed HTTP serving of hatzoo bundles (FastAPI app + uvicorn), torch-free.

Routes (OpenAPI at ``/openapi.json``, browsable at ``/docs``):
- ``POST /v1/models/{model}/tasks/{task}:predict``: a JSON body ``{"inputs": [B, C, H, W] lists, "top_k": 5,
  "normalized": true|false}``, a ``.npy`` body (``application/x-npy``; ``?top_k=&normalized=``), a PNG,
  JPEG or WebP body, or a multipart form with ``file`` parts. Float arrays are normalized input unless
  ``normalized`` is false (then 0-1 pixels); uint8 arrays and images are pixels the server normalizes with
  the bundle's mean and std. Answer: ``{"model", "task", "logits", "top_k", "warnings"}``.
- ``POST /v1/models/{model}:predict?rule=energy``: the same bodies without a task id. Every task's graph runs
  (pixels normalized per task), the task scoring highest under the rule (msp, entropy, energy) answers:
  ``{"model", "rule", "tasks", "task", "class_index", "label", "scores", "warnings"}``, per row.
- ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus, from prometheus_client).
- KServe v2 (Open Inference Protocol) as Triton speaks it: ``GET /v2`` (server metadata, extensions),
  ``/v2/health/{live,ready}``, ``/v2/models/<model>_task<t>[/versions/1][/ready|/config|/stats]``,
  ``POST /v2/models/<model>_task<t>[/versions/1]/infer`` (JSON or binary tensors, gzip/deflate, the
  classification extension); the v2 model ``<model>`` answers without a task id (outputs task, label,
  class_index, scores; ``parameters.rule`` picks the rule). See export/v2.py.
- ``/docs``: Swagger UI from the installed fastapi-offline package (no CDN).
Errors answer ``{"error": message}`` with a 4xx status; the server keeps serving. A dead decode worker
is replaced: the request it held answers 503 with ``Retry-After``, and ``/healthz`` and ``/v2/health/ready``
answer 503 until the new workers answer. Without an API key, only the Host names the server was started
for are answered (421 otherwise; 403 for a foreign Origin).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from hatzoo.errors import HATError, StartupError

from . import schemas, v1, v2
from .bundle import read_bundle
from .context import Serving, v2_task_names
from .docs import add_docs_routes
from .guard import Guard, allowed_host_names, header_timeout_protocol
from .runtime import MicroBatcher, TaskSessionPool, check_task_graph
from .serve_config import API_KEY_ENV, LOOPBACK, ServeConfig, add_arguments, from_namespace
from .triton import triton_model_name
from .v1 import error

EXAMPLES = """examples:
  hatzoo serve bundles/demo                                # http://127.0.0.1:8000, docs at /docs
  hatzoo serve bundles/demo bundles/vit --port 9000 --max-sessions 4
  HATZOO_API_KEY=secret hatzoo serve bundles/demo --port 9001   # clients send the key (needed with --host)
  curl -s -X POST -H 'Content-Type: image/png' --data-binary @digit.png \\
       'http://127.0.0.1:8000/v1/models/hat-vit-demo/tasks/0:predict?top_k=3'
"""


def check_bundles(pool: TaskSessionPool) -> None:
    """Refuse to start when any task's manifest entry and graph disagree (one line per bad task)."""
    problems = [
        f"{b.model}: {msg}"
        for b in pool.bundles.values()
        for spec in b.tasks.values()
        if (msg := check_task_graph(spec)) is not None
    ]
    if problems:
        raise StartupError("cannot serve: " + "; ".join(problems) + "; re-export the bundle")


def create_app(
    bundle_dirs: Sequence[str | os.PathLike[str]], config: ServeConfig | None = None, **options: Any
) -> FastAPI:
    """The serving app for one or more bundles (one model each): ``config``, with ``options`` (ServeConfig
    field names) replacing its fields. Checks every task's graph against its manifest first."""
    cfg = dataclasses.replace(config or ServeConfig(), **options)
    state = start_serving(bundle_dirs, cfg)
    app = FastAPI(
        title="hatzoo serving",
        version="1",
        description="Task-routed inference of HAT models: one pruned ONNX graph per task.",
        lifespan=lifespan,
        docs_url=None,  # /docs is served from the installed Swagger UI files, not a CDN
        redoc_url=None,
    )
    app.state.pool = state.pool
    app.state.serving = state
    app.include_router(v1.router)
    app.include_router(v2.router)
    add_docs_routes(app)
    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, wrong_method)
    app.openapi = functools.partial(openapi_document, app)
    app.add_middleware(
        Guard,
        api_key=cfg.key(),
        max_concurrency=cfg.max_concurrency,
        allowed_hosts=allowed_host_names(cfg.host, cfg.allowed_hosts),
    )
    return app


def start_serving(bundle_dirs: Sequence[str | os.PathLike[str]], cfg: ServeConfig) -> Serving:
    """The state behind the routes: every bundle read and checked, its sessions, batcher and metrics."""
    if not bundle_dirs:
        raise HATError("serve needs at least one bundle folder")
    bundles = [read_bundle(d, verify=cfg.verify) for d in bundle_dirs]
    v2_task_names(bundles)  # refuse colliding names before any session exists
    pool = TaskSessionPool.from_config(bundles, cfg)
    check_bundles(pool)
    batcher = MicroBatcher(
        pool,
        max_batch=cfg.micro_batch,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
        workers=cfg.run_threads,
    )
    state = Serving(cfg, pool, batcher)
    state.metrics.watch(pool, batcher)
    return state


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's life: its sessions, batcher and decode workers are closed when it stops."""
    yield
    app.state.serving.close()


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    """A path no route takes answers the JSON error of every route, with where to look."""
    return error(404, f"no route {request.method} {request.url.path}; see GET /v1/models or /docs")


async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
    """A method the path does not take answers the JSON error with the methods it takes (Allow)."""
    allowed = (getattr(exc, "headers", None) or {}).get("Allow", "another method")
    resp = error(405, f"{request.url.path} takes {allowed}, not {request.method}; see /docs")
    resp.headers["Allow"] = allowed
    return resp


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (built once), with the bodies the routes read themselves."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        comps = doc.setdefault("components", {}).setdefault("schemas", {})
        for m in (schemas.PredictRequest, schemas.V2InferRequest):  # bodies the routes read themselves
            js = m.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[m.__name__] = js
        describe_actions(doc)
        app.openapi_schema = doc
    return app.openapi_schema


ACTIONS = {  # path parameters that carry the ':predict' action after their value
    ("/v1/models/{model}/tasks/{task_action}", "task_action"): (
        "<task>:predict, e.g. 0:predict",
        "0:predict",
    ),
    ("/v1/models/{model_action}", "model_action"): (
        "<model>:predict, e.g. my-model:predict",
        "my-model:predict",
    ),
}


def describe_actions(doc: dict[str, Any]) -> None:
    """Say in the OpenAPI document that the action routes' last segment is ``<name>:predict`` (the
    routes themselves accept any value and answer a clear 404 for another action)."""
    for (path, name), (description, example) in ACTIONS.items():
        for param in doc["paths"][path]["post"]["parameters"]:
            if param["name"] == name:
                param.update(description=description, example=example)
                param["schema"]["pattern"] = "^[^/]+:predict$"


def startup_lines(app: FastAPI, cfg: ServeConfig) -> list[str]:
    """What the server says when it starts: its URL, docs, and every bundle with its tasks."""
    url = f"http://{cfg.host if ':' not in cfg.host else f'[{cfg.host}]'}:{cfg.port}"
    lines = [f"hatzoo serve: listening on {url} (docs {url}/docs)"]
    for b in app.state.pool.bundles.values():
        tasks = ", ".join(
            f"{t} ({len(s.labels)} labels, v2 {triton_model_name(b.model, t)})" for t, s in b.tasks.items()
        )
        lines.append(f"hatzoo serve: model {b.model} from {b.root}: tasks {tasks}")
    lines.append(f"hatzoo serve: API key {'required' if cfg.key() else 'not required'}")
    hosts = allowed_host_names(cfg.host, cfg.allowed_hosts)
    if not cfg.key() and hosts is not None:
        lines.append(
            f"hatzoo serve: answers the Host names {', '.join(sorted(hosts))} only (add one: --allowed-host)"
        )
    return lines


def serve(
    bundle_dirs: Sequence[str | os.PathLike[str]], config: ServeConfig | None = None, **options: Any
) -> None:
    """Serve bundles over HTTP with uvicorn until interrupted (127.0.0.1 unless told otherwise).

    Binding anything but loopback without an API key is refused unless ``allow_no_api_key`` is set.
    """
    import uvicorn

    cfg = dataclasses.replace(config or ServeConfig(), **options)
    if cfg.host not in LOOPBACK and not cfg.key() and not cfg.allow_no_api_key:
        raise StartupError(
            f"serving on {cfg.host} without an API key lets anyone who reaches the port use it; set "
            f"${API_KEY_ENV} (or --api-key), or pass --allow-no-api-key"
        )
    app = create_app(bundle_dirs, cfg)
    for line in startup_lines(app, cfg):
        print(line, file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        workers=1,
        access_log=False,
        http=header_timeout_protocol(cfg.header_timeout_s),
        timeout_keep_alive=5,
    )


def parser() -> argparse.ArgumentParser:
    """The ``hatzoo serve`` command line: bundles plus one option per ServeConfig field."""
    p = argparse.ArgumentParser(
        prog="hatzoo serve",
        description="Serve hatzoo bundles over HTTP: v1 task routes, KServe v2, OpenAPI at /docs.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folders written by 'hatzoo export'")
    add_arguments(p)
    return p


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default and keeps the examples' line breaks."""


def main(argv: Sequence[str] | None = None) -> None:
    """``hatzoo serve BUNDLE [BUNDLE...]`` (also ``python -m hatzoo.export.server``)."""
    a = parser().parse_args(argv)
    serve(a.bundles, from_namespace(a))


if __name__ == "__main__":
    try:
        main()
    except HATError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
