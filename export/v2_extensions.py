"""Triton's v2 extensions besides inference: statistics and the repository index, answered as Triton does;
and, for those this server does not implement (loading models at run time, shared memory, tracing,
logging), the status Triton answers when the feature is off, with a message that says why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request

from . import schemas
from .context import Serving
from .decode import RequestError
from .v1 import ERRORS, error

Resolve = Callable[[str, str | None], tuple[str, str, Any]]
NO_MODEL_CONTROL = (
    "this server loads its bundles at start and never loads or unloads a model at run time; restart "
    "'hatzoo serve' with the bundles to serve"
)
NO_SHARED_MEMORY = "shared-memory tensors are not supported by hatzoo serve; send tensor data in the body"


def add_extension_routes(
    app: FastAPI, s: Serving, resolve: Resolve, model_routes: Callable[..., None]
) -> None:
    """Register the statistics, repository, shared-memory, trace and logging routes."""

    def model_stats(name: str, model: str, task: str) -> dict[str, Any]:
        success, fail, rows, last_ms = s.metrics.tally(model, task)
        st = s.batcher.stats.get((model, task))
        stats = {
            "success": {"count": success[0], "ns": success[1]},
            "fail": {"count": fail[0], "ns": fail[1]},
        }
        if st is not None:
            stats["queue"] = {"count": st.requests, "ns": st.queue_ns}
            stats["compute_infer"] = {"count": st.batches, "ns": st.run_ns}
        return {
            "name": name,
            "version": "1",
            "last_inference": last_ms,
            "inference_count": rows,
            "execution_count": st.batches if st is not None else 0,
            "inference_stats": stats,
            "batch_stats": [],
        }

    def every_model() -> list[tuple[str, str, str]]:
        names = [(name, m, t) for name, (m, t) in s.v2_names.items()]
        return names + [(m, m, "*") for m in s.pool.bundles]

    @app.get(
        "/v2/models/stats",
        response_model=schemas.V2Statistics,
        summary="inference statistics of every model (statistics extension)",
    )
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": [model_stats(*key) for key in every_model()]}

    async def stats(name: str, version: str | None, _request: Request) -> Any:
        try:
            model, task, _spec = resolve(name, version)
        except RequestError as e:
            return error(e.status, str(e))
        return {"model_stats": [model_stats(name, model, task)]}

    model_routes(
        app,
        "GET",
        "/stats",
        stats,
        response_model=schemas.V2Statistics,
        responses=ERRORS,
        summary="inference statistics of one model (statistics extension)",
    )

    @app.post(
        "/v2/repository/index",
        response_model=list[schemas.V2RepositoryModel],
        summary="every model this server answers (model_repository extension)",
    )
    async def repository_index() -> list[dict[str, str]]:
        return [{"name": name, "version": "1", "state": "READY"} for name, _m, _t in every_model()]

    @app.post("/v2/repository/models/{name}/{action}", include_in_schema=False)
    async def load_unload(name: str, action: str) -> Any:
        if action not in ("load", "unload"):
            return error(404, f"no route POST /v2/repository/models/{name}/{action}; use load or unload")
        return error(503, NO_MODEL_CONTROL)  # Triton's answer when model control is off

    for kind in ("systemsharedmemory", "cudasharedmemory"):

        @app.get(f"/v2/{kind}/status", include_in_schema=False)
        @app.get(f"/v2/{kind}/region/{{region}}/status", include_in_schema=False)
        async def shm_status() -> list[Any]:
            return []  # no region is ever registered

        @app.post(f"/v2/{kind}/region/{{region}}/register", include_in_schema=False)
        async def shm_register() -> Any:
            return error(501, NO_SHARED_MEMORY)  # Triton's answer when client shared memory is off

        @app.post(f"/v2/{kind}/unregister", include_in_schema=False)
        @app.post(f"/v2/{kind}/region/{{region}}/unregister", include_in_schema=False)
        async def shm_unregister() -> dict[str, Any]:
            return {}

    @app.api_route("/v2/trace/setting", methods=["GET", "POST"], include_in_schema=False)
    @app.api_route("/v2/models/{name}/trace/setting", methods=["GET", "POST"], include_in_schema=False)
    @app.api_route("/v2/logging", methods=["GET", "POST"], include_in_schema=False)
    async def not_implemented(request: Request) -> Any:
        return error(
            501, f"{request.url.path} is not implemented by hatzoo serve; see GET /v2 for its extensions"
        )
