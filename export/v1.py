"""The v1 routes (``router``, included by the app): health, models, metrics and task-routed ``:predict``
taking arrays or images."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from hatzoo.errors import HATError, InputError

from . import schemas
from .agnostic import (
    LIKELIHOOD_RATIO,
    RULES,
    answer,
    answering_specs,
    check_rule,
    default_rule,
    normalization_groups,
)
from .bundle import TaskSpec
from .context import AppServing, Serving, validate_input
from .decode import JSON_TYPES, NPY_TYPES, RequestError, media_type, npy_array, number_array, parse_request
from .images import IMAGE_TYPES, decode_images, looks_like_raw_pixels, pixels_to_input, uint8_pixels
from .runtime import OverloadedError, UnknownModelError
from .triton import triton_model_name

T = TypeVar("T")
PREDICT_SUFFIX = ":predict"
INLINE_BODY_BYTES = 64 << 10  # bodies up to this size decode faster here than through a parse process
INLINE_ANSWER_ROWS = 256  # answers up to this many rows are built faster here than in a thread
AGNOSTIC_TASK = "*"  # the metrics' task label of requests answered without a task id
RULE_PARAMETER = {
    "name": "rule",
    "in": "query",
    "required": False,
    "description": (
        f"task-inference rule; default {LIKELIHOOD_RATIO} for a bundle whose graphs give each task's "
        "score, energy otherwise"
    ),
    "schema": {"type": "string", "enum": [*RULES, LIKELIHOOD_RATIO]},
}
QUERY_PARAMETERS = [
    {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "labels to return per image (default 5; a JSON body may set it too)",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "normalized",
        "in": "query",
        "required": False,
        "description": "for a float .npy body: true if already (x - mean) / std, false for 0-1 pixels",
        "schema": {"type": "boolean"},
    },
]
RAW_PIXELS_WARNING = (
    "every input value lies in [0, 1], like raw pixels, but the task normalizes with mean {mean} and std "
    "{std}; if these are pixels, send normalized: false (or uint8 pixels, or an image file)"
)
ERRORS = {s: {"model": schemas.ErrorResponse} for s in (400, 404, 408, 413, 415, 503)}
PREDICT_BODIES = {
    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
    "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/webp": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "top_k": {"type": "integer"},
            },
            "required": ["file"],
        }
    },
}


def public_source(source: dict[str, str | None]) -> dict[str, str | None]:
    """The bundle's source with a repo id that is a local folder path hidden (it would leak the layout)."""
    repo = source.get("repo_id")
    hub_id = repo is not None and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo) is not None
    return {"repo_id": repo if hub_id else None, "revision": source.get("revision")}


def error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    """The JSON error answer of every route (with Retry-After when the client should come back)."""
    headers = None if retry_after is None else {"Retry-After": str(retry_after)}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def parse_top_k(value: Any, num_classes: int) -> int:
    """Validate top_k (int >= 0); values above the class count are clamped to it."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RequestError(400, f"top_k must be a non-negative integer, got {value!r}")
    return min(value, num_classes)


def parse_flag(value: str | None, name: str) -> bool | None:
    """A true/false query parameter (None when absent)."""
    if value is None:
        return None
    if value.lower() not in ("true", "false", "1", "0"):
        raise RequestError(400, f"{name} must be true or false, got {value!r}")
    return value.lower() in ("true", "1")


def float_input(arr: np.ndarray, spec: TaskSpec, normalized: bool | None, warnings: list[str]) -> np.ndarray:
    """Normalized input from a float array, following the request's ``normalized`` flag."""
    if normalized is False:
        return pixels_to_input(arr, spec)
    if normalized is None and looks_like_raw_pixels(arr, spec):
        warnings.append(RAW_PIXELS_WARNING.format(mean=list(spec.mean), std=list(spec.std)))
    return arr


def decode_json_predict(body: bytes, spec: TaskSpec) -> tuple[np.ndarray, int, list[str]]:
    """(normalized input, top_k, warnings) of a JSON :predict body."""
    hint = '; the body is {"inputs": [B, C, H, W] lists, "top_k": k, ...}'
    req = parse_request(body, schemas.PredictRequest, hint)
    arr = number_array(req.inputs)
    warnings: list[str] = []
    if req.dtype == "uint8":
        x = pixels_to_input(uint8_pixels(arr, "with dtype uint8, inputs"), spec)
    else:
        x = float_input(arr, spec, req.normalized, warnings)
    return x, req.top_k, warnings


def decode_npy_predict(body: bytes, spec: TaskSpec, normalized: bool | None) -> tuple[np.ndarray, list[str]]:
    """(normalized input, warnings) of a .npy body: uint8 pixels or floats (see ``normalized``)."""
    arr = npy_array(body)
    if arr.dtype == np.uint8:
        return pixels_to_input(arr, spec), []
    warnings: list[str] = []
    return float_input(arr, spec, normalized, warnings), warnings


async def read_form(headers: Mapping[str, str], body: bytes) -> tuple[list[bytes], str | None]:
    """The image files (parts named 'file') and the 'top_k' field of a multipart body."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(
            headers, stream(), max_files=1024, max_fields=8, max_part_size=1 << 20
        ).parse()
    except MultiPartException as e:
        raise RequestError(400, f"malformed multipart body: {e.message}") from None
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise RequestError(400, "a multipart body needs one or more image parts named 'file'")
    k = form.get("top_k")
    return [await f.read() for f in files], k if isinstance(k, str) else None


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


router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, summary="health: 503 while the server cannot answer")
async def healthz(s: AppServing) -> Any:
    doc = {"status": "ok", "models": len(s.pool.bundles), "sessions_loaded": len(s.pool.loaded())}
    if not s.ready:
        return JSONResponse({**doc, "status": "unavailable"}, status_code=503, headers={"Retry-After": "1"})
    return doc


@router.get("/v1/models", response_model=schemas.ModelList, summary="models, tasks, labels, input shapes")
async def models(s: AppServing) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": b.model,
                "source": public_source(b.source),
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
                        "v2_name": triton_model_name(b.model, t.task_id),
                    }
                    for t in b.tasks.values()
                ],
            }
            for b in s.pool.bundles.values()
        ]
    }


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics (text exposition format)",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics_text(s: AppServing) -> Response:
    return Response(s.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/v1/models/{model}/tasks/{task_action}",
    response_model=schemas.PredictResponse,
    responses=ERRORS,
    summary="predict with one task: arrays (JSON, .npy) or images (PNG/JPEG body or multipart)",
    openapi_extra={
        "requestBody": {"required": True, "content": PREDICT_BODIES},
        "parameters": QUERY_PARAMETERS,
    },
)
async def predict(model: str, task_action: str, request: Request, s: AppServing) -> JSONResponse:
    """``task_action`` is ``<task>:predict``. JSON floats are normalized input unless
    ``normalized: false``; uint8 arrays and images are pixels the server normalizes."""
    if not task_action.endswith(PREDICT_SUFFIX):
        return error(
            404,
            f"unknown action in {request.url.path!r}; use /v1/models/{{model}}/tasks/{{task}}:predict",
        )
    task = task_action[: -len(PREDICT_SUFFIX)]
    try:
        spec = s.pool.spec(model, task)
    except UnknownModelError as e:
        s.metrics.observe_unrouted(404)
        return error(404, str(e))

    async def work() -> tuple[JSONResponse, int]:
        ctype = predict_media_type(request)
        body = await s.read_body(request, s.body_limit(spec))
        x, k, warnings = await decode_body(s, request, ctype, body, spec)
        x = validate_input(x, spec, s.config.max_request_batch)
        logits = await s.batcher.predict(model, task, x)
        top_k = parse_top_k(k, spec.num_classes)

        def answer_doc() -> dict[str, Any]:
            return {
                "model": model,
                "task": task,
                "logits": logits.astype(np.float32).tolist(),
                "top_k": top_k_answer(logits, top_k, spec.labels),
                "warnings": warnings,
            }

        return await json_answer(answer_doc, len(x)), len(x)

    return await guarded(s, model, task, work())


@router.post(
    "/v1/models/{model_action}",
    response_model=schemas.AgnosticPredictResponse,
    responses=ERRORS,
    summary="predict without a task id: every task runs, the best-scoring task answers",
    openapi_extra={
        "requestBody": {"required": True, "content": PREDICT_BODIES},
        "parameters": [RULE_PARAMETER],
    },
)
async def predict_any_task(model_action: str, request: Request, s: AppServing) -> JSONResponse:
    """``model_action`` is ``<model>:predict``; the same bodies as a task's :predict (top_k unused).
    ``?rule=`` picks the task-inference rule (msp, entropy, energy, or likelihood_ratio for a bundle
    exported with each task's score, its default; energy otherwise)."""
    if not model_action.endswith(PREDICT_SUFFIX):
        return error(404, f"unknown action in {request.url.path!r}; use /v1/models/{{model}}:predict")
    model = model_action[: -len(PREDICT_SUFFIX)]
    bundle = s.pool.bundles.get(model)
    if bundle is None:
        s.metrics.observe_unrouted(404)
        return error(404, f"unknown model {model!r}; known models: {sorted(s.pool.bundles)}")

    async def work() -> tuple[JSONResponse, int]:
        rule = check_rule(request.query_params.get("rule", default_rule(bundle)), bundle)
        specs = answering_specs(bundle)
        ctype = predict_media_type(request)
        body = await s.read_body(request, s.body_limit(specs[0]))
        inputs: dict[str, np.ndarray] = {}
        warnings: list[str] = []
        for group in normalization_groups(specs):
            x, _, found = await decode_body(s, request, ctype, body, group[0])
            x = validate_input(x, group[0], s.config.max_request_batch)
            inputs.update({spec.task_id: x for spec in group})
            warnings += found
        ids = list(bundle.tasks)
        outs = await asyncio.gather(*(s.batcher.predict_outputs(model, t, inputs[t]) for t in ids))
        logits, claims = [o[0] for o in outs], [o[-1] for o in outs] if bundle.scored else None
        labels = {t: bundle.tasks[t].labels for t in ids}

        def answer_doc() -> dict[str, Any]:
            return {
                "model": model,
                **answer(ids, labels, logits, rule, claims),
                "warnings": list(dict.fromkeys(warnings)),
            }

        return await json_answer(answer_doc, len(logits[0])), len(logits[0])

    return await guarded(s, model, AGNOSTIC_TASK, work())


async def guarded(s: Serving, model: str, task: str, work: Awaitable[tuple[Response, int]]) -> Response:
    """The answer of a route's work, timed and counted under (model, task) in the metrics: every failure
    becomes a JSON error, never a crash."""
    t0, rows = time.perf_counter(), 0
    try:
        resp, rows = await work
    except RequestError as e:
        resp = error(e.status, str(e), e.retry_after)
    except OverloadedError as e:
        resp = error(503, str(e), 1)
    except InputError as e:  # a library rule refused what the request asked for
        resp = error(400, str(e))
    except HATError as e:
        resp = error(500, f"server error: {e}")
    except Exception as e:  # noqa: BLE001 - one bad request must never take the server down
        resp = error(500, f"server error: {type(e).__name__}: {e}")
    s.metrics.observe(model, task, resp.status_code, time.perf_counter() - t0, rows)
    return resp


def predict_media_type(request: Request) -> str:
    """The media type of a :predict request; 415 for one no decoder reads."""
    ctype = media_type(request.headers.get("content-type"))
    if ctype not in (*JSON_TYPES, *NPY_TYPES, *IMAGE_TYPES, "multipart/form-data"):
        raise RequestError(
            415,
            f"unsupported Content-Type {ctype or '(none)'!r}; use application/json, application/x-npy, "
            "image/png, image/jpeg, image/webp or multipart/form-data",
        )
    return ctype


async def json_answer(build: Callable[[], dict[str, Any]], rows: int) -> JSONResponse:
    """The JSON answer ``build()`` makes: here for a few rows, in a thread for many, so that building and
    encoding a large answer leaves the event loop free to answer other clients between GIL switches."""
    if rows <= INLINE_ANSWER_ROWS:
        return JSONResponse(build())
    return await asyncio.to_thread(lambda: JSONResponse(build()))


async def decode(s: Serving, fn: Callable[..., T], body: bytes, *args: Any) -> T:
    """``fn(body, *args)``: here for a small JSON or array body, in a parse process for a large one (which
    would hold the event loop and its GIL). Images always go to a parse process: a small file can hold
    many pixels."""
    if len(body) <= INLINE_BODY_BYTES:
        return fn(body, *args)
    return await s.offload(fn, body, *args)


async def decode_body(
    s: Serving, request: Request, ctype: str, body: bytes, spec: TaskSpec
) -> tuple[np.ndarray, Any, list[str]]:
    """(input normalized for ``spec``, top_k, warnings) of a :predict body already read."""
    query_k = request.query_params.get("top_k")
    if ctype in JSON_TYPES:
        x, k, warnings = await decode(s, decode_json_predict, body, spec)
        return x, query_k if query_k is not None else k, warnings
    k = query_k if query_k is not None else 5
    if ctype in NPY_TYPES:
        normalized = parse_flag(request.query_params.get("normalized"), "normalized")
        x, warnings = await decode(s, decode_npy_predict, body, spec, normalized)
        return x, k, warnings
    if ctype in IMAGE_TYPES:
        return await s.offload(decode_images, [body], spec, s.pixel_limit(spec)), k, []
    files, form_k = await read_form(request.headers, body)
    x = await s.offload(decode_images, files, spec, s.pixel_limit(spec))
    return x, form_k if form_k is not None else k, []
