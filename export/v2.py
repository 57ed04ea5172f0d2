"""Open Inference Protocol (KServe v2) routes, as Triton's clients speak it. A task is the v2 model
``<model>_task<t>``, the name it has in a Triton repository exported from the same bundle, so one client works
against both servers; the v2 model ``<model>`` answers without a task id.

Inputs: FP32 or FP16 tensors are the model's input as is (already normalized, like Triton); UINT8 tensors
are 0-255 pixels the server normalizes. A body is JSON unless ``Inference-Header-Content-Length`` says where
its JSON header ends (Triton's binary tensor extension), whatever its Content-Type; it may be gzip or
deflate compressed (Content-Encoding), and answers are when Accept-Encoding asks. Outputs come as JSON
``data`` or as binary data, per output (``binary_data``) or for all (``binary_data_output``); an output's
``classification`` parameter answers Triton's "score:index:label" strings instead of its values.
``router`` holds the routes; the app includes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from hatzoo import __version__
from hatzoo.errors import InputError

from . import schemas
from .agnostic import answer, answering_specs, check_rule, default_rule, normalization_groups
from .bundle import TaskSpec
from .context import AppServing, Serving, validate_input
from .decode import RequestError, media_type
from .triton import model_config
from .v1 import ERRORS, decode, error, guarded
from .v2_codec import (
    HEADER_LENGTH,
    V2_TYPES,
    Wanted,
    accepted_encoding,
    binary_tensor,
    classification,
    compress,
    decode_infer,
    json_values,
    wanted_outputs,
)
from .v2_extensions import router as extension_routes
from .v2_routing import VERSION, model_routes, resolve

EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
    "parameters",
]
# the outputs of a whole model answering without a task id, and their datatypes
AGNOSTIC_OUTPUTS = {"task": "BYTES", "label": "BYTES", "class_index": "INT64", "scores": "FP64"}
INFER_BODIES = {
    "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
    "application/octet-stream": {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": "binary tensor extension: the JSON request (V2InferRequest, its length in the "
            "Inference-Header-Content-Length header), then each input's little-endian bytes in order, "
            "as announced by its binary_data_size parameter",
        }
    },
}
HEADER_LENGTH_PARAMETER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "binary tensor extension: byte length of the JSON header at the start of the body",
    "schema": {"type": "integer", "minimum": 0},
}
INFER_RESPONSES = {
    200: {
        "description": "JSON, or with binary outputs the JSON header (its length in the "
        "Inference-Header-Content-Length response header) followed by each binary output's bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def metadata(name: str, spec: TaskSpec, tasks: int = 0) -> dict[str, Any]:
    """The v2 metadata (-1 is the batch) of one task, or with ``tasks`` of a whole model of that many tasks
    answering without a task id: per row the inferred task, its label and class index, and every task's
    score (columns in the order of the model's tasks)."""
    dt = V2_TYPES[spec.dtype]
    outputs = [{"name": spec.output_name, "datatype": dt, "shape": [-1, spec.num_classes]}]
    if tasks:
        outputs = [
            {"name": n, "datatype": t, "shape": [-1, tasks] if n == "scores" else [-1]}
            for n, t in AGNOSTIC_OUTPUTS.items()
        ]
    return {
        "name": name,
        "versions": [VERSION],
        "platform": "hatzoo_task_agnostic" if tasks else "onnxruntime_onnx",
        "inputs": [{"name": spec.input_name, "datatype": dt, "shape": [-1, *spec.input_shape[1:]]}],
        "outputs": outputs,
    }


router = APIRouter()


@router.get("/v2", response_model=schemas.V2ServerMetadata, summary="v2 server metadata and extensions")
async def server_metadata() -> dict[str, Any]:
    return {"name": "hatzoo", "version": __version__, "extensions": EXTENSIONS}


@router.get(
    "/v2/health/live",
    response_model=schemas.V2Health,
    response_model_exclude_none=True,
    summary="v2 liveness",
)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready",
    response_model=schemas.V2Health,
    response_model_exclude_none=True,
    summary="v2 readiness (503 when not ready)",
)
async def ready(s: AppServing) -> Any:
    return {"ready": True} if s.ready else JSONResponse({"ready": False}, status_code=503)


router.include_router(extension_routes)  # before /v2/models/{name}: /v2/models/stats


async def model_metadata(s: Serving, name: str, version: str | None, _request: Request) -> Any:
    """Inputs and outputs (name, datatype, shape; -1 is the batch) of the task ``<model>_task<t>``, or of
    the model ``<model>`` answering without a task id."""
    try:
        model, _task, spec = resolve(s, name, version)
        if spec is None:
            specs = answering_specs(s.pool.bundles[model])
            return metadata(name, specs[0], len(specs))
        return metadata(name, spec)
    except RequestError as e:
        return error(e.status, str(e))
    except InputError as e:  # the tasks of the model take different inputs
        return error(400, str(e))


async def model_ready(s: Serving, name: str, version: str | None, _request: Request) -> Any:
    """200 when the model (and version) can answer; 404 for an unknown one."""
    try:
        resolve(s, name, version)
    except RequestError as e:
        return error(e.status, str(e))
    if not s.ready:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return {"name": name, "ready": True}


async def config(s: Serving, name: str, version: str | None, _request: Request) -> Any:
    """The model's Triton configuration (JSON), as this server runs it: its batching and instances."""
    try:
        model, _task, spec = resolve(s, name, version)
        return server_model_config(s, name, model, spec)
    except RequestError as e:
        return error(e.status, str(e))


async def infer(s: Serving, name: str, version: str | None, request: Request) -> Response:
    """Run the task ``<model>_task<t>`` on the input, or every task of ``<model>`` (the best-scoring task
    answers). JSON body, or the binary tensor extension; gzip or deflate Content-Encoding."""
    try:
        model, task, spec = resolve(s, name, version)
    except RequestError as e:
        s.metrics.observe_unrouted(e.status)
        return error(e.status, str(e))
    if spec is None:
        return await guarded(s, model, task, _infer_agnostic(s, request, model))
    return await guarded(s, model, task, _infer(s, request, model, task, name, spec))


model_routes(
    router,
    "GET",
    "",
    model_metadata,
    response_model=schemas.V2ModelMetadata,
    responses=ERRORS,
    summary="v2 model metadata",
)
model_routes(
    router,
    "GET",
    "/ready",
    model_ready,
    response_model=schemas.V2ModelReady,
    responses=ERRORS,
    summary="v2 model readiness",
)
model_routes(
    router,
    "GET",
    "/config",
    config,
    response_model=dict[str, Any],
    responses=ERRORS,
    summary="the model's Triton configuration (model_configuration extension)",
)
model_routes(
    router,
    "POST",
    "/infer",
    infer,
    response_model=schemas.V2InferResponse,
    responses={**ERRORS, **INFER_RESPONSES},
    summary="run one task <model>_task<t>, or every task of <model> without a task id (KServe v2)",
    openapi_extra={
        "requestBody": {"required": True, "content": INFER_BODIES},
        "parameters": [HEADER_LENGTH_PARAMETER],
    },
)


def server_model_config(s: Serving, name: str, model: str, spec: TaskSpec | None) -> dict[str, Any]:
    """The Triton model config of a task as this server batches it; for the task-free model ``<model>``
    the same form with its four outputs (platform hatzoo_task_agnostic)."""
    kind = "KIND_GPU" if "CUDAExecutionProvider" in s.pool.providers else "KIND_CPU"
    options = {
        "max_batch_size": s.config.micro_batch,
        "instance_count": s.config.run_threads,
        "kind": kind,
        "preferred_batch_sizes": [],
        "max_queue_delay_us": round(s.config.max_wait_ms * 1000),
    }
    if spec is not None:
        return model_config(name, spec, **options)
    specs = answering_specs(s.pool.bundles[model])
    cfg = model_config(name, specs[0], **options)
    types = {"BYTES": "TYPE_STRING", "INT64": "TYPE_INT64", "FP64": "TYPE_FP64"}
    cfg["platform"] = "hatzoo_task_agnostic"
    cfg["output"] = [
        {"name": n, "data_type": types[t], "dims": [len(specs)] if n == "scores" else [1]}
        for n, t in AGNOSTIC_OUTPUTS.items()
    ]
    return cfg


def _header_length(request: Request) -> int | None:
    """The binary extension's JSON header length; None without it (the whole body is JSON)."""
    raw = request.headers.get(HEADER_LENGTH)
    if raw is not None and not raw.isdigit():
        raise RequestError(400, f"{HEADER_LENGTH} must be a byte count, got {raw!r}")
    return None if raw is None else int(raw)


async def _read_request(
    s: Serving, request: Request, specs: Sequence[TaskSpec]
) -> tuple[schemas.V2InferRequest, list[np.ndarray]]:
    """The request and its input, validated, for each of ``specs`` (tasks sharing one input)."""
    header_length = _header_length(request)
    limit = s.body_limit(specs[0])
    body = await s.read_body(request, limit)
    encoding = media_type(request.headers.get("content-encoding"))
    args = (body, header_length, encoding, limit, list(specs))
    if encoding in ("", "identity"):
        req, arrays = await decode(s, decode_infer, *args)
    else:  # a small compressed body may inflate to the body limit: never on the event loop
        req, arrays = await s.offload(decode_infer, *args)
    return req, [
        validate_input(a, spec, s.config.max_request_batch) for a, spec in zip(arrays, specs, strict=True)
    ]


async def _infer(
    s: Serving, request: Request, model: str, task: str, name: str, spec: TaskSpec
) -> tuple[Response, int]:
    """Decode, run and encode one v2 inference request; returns the answer and its row count."""
    req, (x,) = await _read_request(s, request, [spec])
    wanted = wanted_outputs(req, [spec.output_name], classifies=True)
    logits = await s.batcher.predict(model, task, x)
    outputs = []
    for w in wanted:
        if w.class_count:
            values = classification(logits, w.class_count, spec.labels)
            outputs.append((w, "BYTES", list(values.shape), values))
        else:
            outputs.append((w, V2_TYPES[spec.dtype], list(logits.shape), logits))
    return _answer(request, _head(req, name), outputs), len(x)


async def _infer_agnostic(s: Serving, request: Request, model: str) -> tuple[Response, int]:
    """Every task of ``model`` on one v2 input; the request's ``parameters.rule`` picks the rule."""
    bundle = s.pool.bundles[model]
    specs = answering_specs(bundle)
    groups = normalization_groups(specs)
    req, arrays = await _read_request(s, request, [g[0] for g in groups])
    inputs = {spec.task_id: x for group, x in zip(groups, arrays, strict=True) for spec in group}
    rule = check_rule(str(req.parameters.get("rule", default_rule(bundle))), bundle)
    wanted = wanted_outputs(req, list(AGNOSTIC_OUTPUTS), classifies=False)
    ids = [spec.task_id for spec in specs]
    outs = await asyncio.gather(*(s.batcher.predict_outputs(model, t, inputs[t]) for t in ids))
    logits, claims = [o[0] for o in outs], [o[-1] for o in outs] if bundle.scored else None
    found = answer(ids, {spec.task_id: spec.labels for spec in specs}, logits, rule, claims)
    rows = len(logits[0])
    outputs = [
        (w, AGNOSTIC_OUTPUTS[w.name], [rows, len(ids)] if w.name == "scores" else [rows], found[w.name])
        for w in wanted
    ]
    head = {**_head(req, model), "parameters": {"rule": rule}}
    return _answer(request, head, outputs), rows


def _head(req: schemas.V2InferRequest, name: str) -> dict[str, Any]:
    """The answer's envelope: the model, its version, and the request's id only when it sent one."""
    head: dict[str, Any] = {"model_name": name, "model_version": VERSION}
    if req.id is not None:
        head["id"] = req.id
    return head


def _answer(
    request: Request, head: dict[str, Any], outputs: list[tuple[Wanted, str, list[int], Any]]
) -> Response:
    """A v2 answer: each output (wanted, datatype, shape, values) as JSON ``data`` or, when asked, as binary
    data after the JSON header; compressed when the client's Accept-Encoding asks for it."""
    raws, docs = [], []
    for w, dt, shape, values in outputs:
        doc: dict[str, Any] = {"name": w.name, "datatype": dt, "shape": shape}
        if w.binary:
            raw = binary_tensor(dt, values)
            doc["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            doc["data"] = json_values(dt, values)
        docs.append(doc)
    text = json.dumps({**head, "outputs": docs}, separators=(",", ":")).encode()
    headers = {HEADER_LENGTH: str(len(text))} if raws else {}
    body = text + b"".join(raws)
    encoding = accepted_encoding(request.headers.get("accept-encoding"))
    if encoding is not None:
        body = compress(body, encoding)
        headers["Content-Encoding"] = encoding
    ctype = "application/octet-stream" if raws else "application/json"
    return Response(body, media_type=ctype, headers=headers)
