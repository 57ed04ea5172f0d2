"""Triton's v2 extensions besides inference: statistics and the repository index, answered as Triton does;
and, for those this server does not implement (loading models at run time, shared memory, tracing,
logging), the status Triton answers when the feature is off, with a message that says why. ``router`` holds
them; export/v2.py includes it before its own per-model routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from . import schemas
from .context import AppServing, Serving
from .decode import RequestError
from .v1 import ERRORS, error
from .v2_routing import model_routes, resolve

NO_MODEL_CONTROL = (
    "this server loads its bundles at start and never loads or unloads a model at run time; restart "
    "'hatzoo serve' with the bundles to serve"
)
NO_SHARED_MEMORY = "shared-memory tensors are not supported by hatzoo serve; send tensor data in the body"


router = APIRouter()


def model_stats(s: Serving, name: str, model: str, task: str) -> dict[str, Any]:
    """The statistics extension's entry of the v2 model ``name`` (task ``task`` of ``model``)."""
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


def every_model(s: Serving) -> list[tuple[str, str, str]]:
    """(v2 name, model, task) of every v2 model the server answers: each task, then each task-free model."""
    names = [(name, m, t) for name, (m, t) in s.v2_names.items()]
    return names + [(m, m, "*") for m in s.pool.bundles]


@router.get(
    "/v2/models/stats",
    response_model=schemas.V2Statistics,
    summary="inference statistics of every model (statistics extension)",
)
async def all_stats(s: AppServing) -> dict[str, Any]:
    return {"model_stats": [model_stats(s, *key) for key in every_model(s)]}


async def stats(s: Serving, name: str, version: str | None, _request: Request) -> Any:
    try:
        model, task, _spec = resolve(s, name, version)
    except RequestError as e:
        return error(e.status, str(e))
    return {"model_stats": [model_stats(s, name, model, task)]}


model_routes(
    router,
    "GET",
    "/stats",
    stats,
    response_model=schemas.V2Statistics,
    responses=ERRORS,
    summary="inference statistics of one model (statistics extension)",
)


@router.post(
    "/v2/repository/index",
    response_model=list[schemas.V2RepositoryModel],
    summary="every model this server answers (model_repository extension)",
)
async def repository_index(s: AppServing) -> list[dict[str, str]]:
    return [{"name": name, "version": "1", "state": "READY"} for name, _m, _t in every_model(s)]


@router.post("/v2/repository/models/{name}/{action}", include_in_schema=False)
async def load_unload(name: str, action: str) -> Any:
    if action not in ("load", "unload"):
        return error(404, f"no route POST /v2/repository/models/{name}/{action}; use load or unload")
    return error(503, NO_MODEL_CONTROL)  # Triton's answer when model control is off


for kind in ("systemsharedmemory", "cudasharedmemory"):

    @router.get(f"/v2/{kind}/status", include_in_schema=False)
    @router.get(f"/v2/{kind}/region/{{region}}/status", include_in_schema=False)
    async def shm_status() -> list[Any]:
        return []  # no region is ever registered

    @router.post(f"/v2/{kind}/region/{{region}}/register", include_in_schema=False)
    async def shm_register() -> Any:
        return error(501, NO_SHARED_MEMORY)  # Triton's answer when client shared memory is off

    @router.post(f"/v2/{kind}/unregister", include_in_schema=False)
    @router.post(f"/v2/{kind}/region/{{region}}/unregister", include_in_schema=False)
    async def shm_unregister() -> dict[str, Any]:
        return {}


@router.api_route("/v2/trace/setting", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/v2/models/{name}/trace/setting", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/v2/logging", methods=["GET", "POST"], include_in_schema=False)
async def not_implemented(request: Request) -> Any:
    return error(
        501, f"{request.url.path} is not implemented by hatzoo serve; see GET /v2 for its extensions"
    )
