"""Open Inference Protocol (KServe v2) routes. A task is the v2 model ``<model>_task<t>``, the name it has
in a Triton repository exported from the same bundle, so one client works against both servers.

Inputs: FP32 or FP16 tensors are the model's input as is (already normalized, like Triton); UINT8 tensors
are 0-255 pixels the server normalizes. Data come as JSON ``data`` or with Triton's binary tensor
extension (``Inference-Header-Content-Length``); outputs are binary when the request asks for it.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from hatzoo.errors import InputError

from . import schemas
from .agnostic import DEFAULT_RULE, answer, answering_specs, check_rule, normalization_groups
from .bundle import TaskSpec
from .context import Serving, validate_input
from .decode import RequestError, media_type, number_array, parse_request
from .images import pixels_to_input, uint8_pixels
from .v1 import AGNOSTIC_TASK, ERRORS, error, guarded

HEADER_LENGTH = "inference-header-content-length"
V2_TYPES = {"float32": "FP32", "float16": "FP16"}
IN_DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}
OUT_DTYPES = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}  # binary outputs: little-endian
# the outputs of a whole model answering without a task id, and their datatypes
AGNOSTIC_OUTPUTS = {"task": "BYTES", "label": "BYTES", "class_index": "INT64", "scores": "FP64"}
INFER_BODIES = {
    "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary", "description": "binary tensor extension"}
    },
}


def decode_infer(
    body: bytes, header_length: int | None, spec: TaskSpec
) -> tuple[schemas.V2InferRequest, np.ndarray]:
    """The request and its input tensor (as model input) from a JSON or binary-extension body."""
    head, tail = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    if header_length is not None and header_length > len(body):
        raise RequestError(
            400, f"{HEADER_LENGTH} {header_length} is longer than the body ({len(body)} bytes)"
        )
    req = parse_request(head, schemas.V2InferRequest)
    if len(req.inputs) != 1 or req.inputs[0].name != spec.input_name:
        got = [i.name for i in req.inputs]
        raise RequestError(400, f"this model takes one input named {spec.input_name!r}, got {got}")
    t = req.inputs[0]
    if t.datatype not in IN_DTYPES:
        raise RequestError(400, f"input datatype must be one of {sorted(IN_DTYPES)}, got {t.datatype!r}")
    if any(d < 0 for d in t.shape) or len(t.shape) > 8:
        raise RequestError(400, f"input shape must be non-negative sizes, got {t.shape}")
    dtype = np.dtype(IN_DTYPES[t.datatype])
    n = math.prod(t.shape)
    size = t.parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != n * dtype.itemsize or size > len(tail):  # a bool is no size
            raise RequestError(
                400, f"binary_data_size {size!r} does not match shape {t.shape} of {t.datatype}"
            )
        arr = np.frombuffer(tail[:size], dtype=dtype.newbyteorder("<")).astype(dtype)
    elif t.data is not None:
        values = number_array(t.data, "data").ravel()
        if values.size != n:
            raise RequestError(400, f"data has {values.size} values for shape {t.shape} ({n} values)")
        arr = uint8_pixels(values, "UINT8 data") if dtype == np.uint8 else values.astype(dtype)
    else:
        raise RequestError(400, "the input has neither 'data' nor a binary_data_size parameter")
    arr = arr.reshape(t.shape)
    if dtype == np.uint8:
        if arr.ndim != 4:
            raise RequestError(400, f"UINT8 pixels must have shape [B, C, H, W], got {t.shape}")
        return req, pixels_to_input(arr, spec)
    return req, arr


def _header_length(request: Request) -> int | None:
    """The binary extension's JSON header length (None without the extension); checks the Content-Type."""
    ctype = media_type(request.headers.get("content-type"))
    raw_length = request.headers.get(HEADER_LENGTH)
    if raw_length is not None and not raw_length.isdigit():
        raise RequestError(400, f"{HEADER_LENGTH} must be a byte count, got {raw_length!r}")
    # No Content-Type is accepted only with the binary extension header, which a browser cannot send
    # cross-site without a preflight.
    if not (ctype == "application/json" or ctype == "application/octet-stream" or (not ctype and raw_length)):
        raise RequestError(415, f"unsupported Content-Type {ctype or '(none)'!r}; send application/json")
    return None if raw_length is None else int(raw_length)


def _binary_output(req: schemas.V2InferRequest) -> bool:
    """Whether the client asked for the output with the binary tensor extension."""
    if req.outputs:
        return bool(req.outputs[0].parameters.get("binary_data", False))
    return bool(req.parameters.get("binary_data_output", False))


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
        "versions": ["1"],
        "platform": "hatzoo_task_agnostic" if tasks else "onnxruntime_onnx",
        "inputs": [{"name": spec.input_name, "datatype": dt, "shape": [-1, *spec.input_shape[1:]]}],
        "outputs": outputs,
    }


def add_v2_routes(app: FastAPI, s: Serving) -> None:
    """Register the /v2 routes on ``app``."""

    def resolve(name: str) -> tuple[str, str, TaskSpec]:
        if name not in s.v2_names:
            known = sorted([*s.v2_names, *s.pool.bundles])
            raise RequestError(404, f"unknown v2 model {name!r}; known: {known}")
        model, task = s.v2_names[name]
        return model, task, s.pool.spec(model, task)

    @app.get("/v2/health/live", response_model=schemas.V2Health, summary="v2 liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=schemas.V2Health, summary="v2 readiness (503 when not ready)")
    async def ready() -> Any:
        return {"ready": True} if s.ready else JSONResponse({"ready": False}, status_code=503)

    @app.get("/v2/models/{name}", response_model=schemas.V2ModelMetadata, responses=ERRORS)
    async def model_metadata(name: str) -> Any:
        """Inputs and outputs (name, datatype, shape; -1 is the batch) of the task ``<model>_task<t>``, or of
        the model ``<model>`` answering without a task id."""
        try:
            if name in s.pool.bundles:
                specs = answering_specs(s.pool.bundles[name])
                return metadata(name, specs[0], len(specs))
            return metadata(name, resolve(name)[2])
        except RequestError as e:
            return error(e.status, str(e))
        except InputError as e:  # the tasks of the model take different inputs
            return error(400, str(e))

    @app.get("/v2/models/{name}/ready", response_model=schemas.V2ModelReady, responses=ERRORS)
    async def model_ready(name: str) -> Any:
        try:
            if name not in s.pool.bundles:
                resolve(name)
        except RequestError as e:
            return error(e.status, str(e))
        if not s.ready:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        return {"name": name, "ready": True}

    @app.post(
        "/v2/models/{name}/infer",
        response_model=schemas.V2InferResponse,
        responses=ERRORS,
        summary="run one task <model>_task<t>, or every task of <model> without a task id (KServe v2)",
        openapi_extra={"requestBody": {"required": True, "content": INFER_BODIES}},
    )
    async def infer(name: str, request: Request) -> Response:
        if name in s.pool.bundles:
            return await guarded(s, name, AGNOSTIC_TASK, _infer_agnostic(s, request, name))
        try:
            model, task, spec = resolve(name)
        except RequestError as e:
            s.metrics.observe_unrouted(e.status)
            return error(e.status, str(e))
        return await guarded(s, model, task, _infer(s, request, model, task, name, spec))


async def _infer(
    s: Serving, request: Request, model: str, task: str, name: str, spec: TaskSpec
) -> tuple[Response, int]:
    """Decode, run and encode one v2 inference request; returns the answer and its row count."""
    header_length = _header_length(request)
    body = await s.read_body(request, s.body_limit(spec))
    req, arr = await s.offload(decode_infer, body, header_length, spec)
    if req.outputs and (len(req.outputs) != 1 or req.outputs[0].name != spec.output_name):
        raise RequestError(400, f"this model has one output, {spec.output_name!r}")
    x = validate_input(arr, spec, s.config.max_request_batch)
    logits = await s.batcher.predict(model, task, x)
    head = {"model_name": name, "model_version": "1", "id": req.id}
    output = (spec.output_name, V2_TYPES[spec.dtype], list(logits.shape), logits.ravel())
    return _answer(head, [output], _binary_output(req)), len(x)


async def _infer_agnostic(s: Serving, request: Request, model: str) -> tuple[Response, int]:
    """Every task of ``model`` on one v2 input; the request's ``parameters.rule`` picks the rule."""
    specs = answering_specs(s.pool.bundles[model])
    header_length = _header_length(request)
    body = await s.read_body(request, s.body_limit(specs[0]))
    inputs: dict[str, np.ndarray] = {}
    req = None
    for group in normalization_groups(specs):
        req, arr = await s.offload(decode_infer, body, header_length, group[0])
        x = validate_input(arr, group[0], s.config.max_request_batch)
        inputs.update({spec.task_id: x for spec in group})
    rule = check_rule(str(req.parameters.get("rule", DEFAULT_RULE)))
    wanted = [o.name for o in req.outputs] if req.outputs else list(AGNOSTIC_OUTPUTS)
    unknown = [n for n in wanted if n not in AGNOSTIC_OUTPUTS]
    if unknown:
        raise RequestError(400, f"unknown outputs {unknown}; this model has {list(AGNOSTIC_OUTPUTS)}")
    ids = [spec.task_id for spec in specs]
    logits = await asyncio.gather(*(s.batcher.predict(model, t, inputs[t]) for t in ids))
    found = answer(ids, {spec.task_id: spec.labels for spec in specs}, logits, rule)
    rows = len(logits[0])
    values = {**found, "scores": [v for row in found["scores"] for v in row]}
    outputs = [
        (n, AGNOSTIC_OUTPUTS[n], [rows, len(ids)] if n == "scores" else [rows], values[n]) for n in wanted
    ]
    head = {"model_name": model, "model_version": "1", "id": req.id, "parameters": {"rule": rule}}
    return _answer(head, outputs, _binary_output(req)), rows


def _answer(head: dict[str, Any], outputs: list[tuple[str, str, list[int], Any]], binary: bool) -> Response:
    """A v2 answer: each output (name, datatype, shape, flat values) as JSON ``data``, or, when the client
    asked for it, with the binary tensor extension (the JSON header, then the outputs' bytes in order)."""
    if not binary:
        head["outputs"] = [
            {
                "name": n,
                "datatype": dt,
                "shape": shape,
                "data": v if dt == "BYTES" else np.asarray(v).tolist(),
            }
            for n, dt, shape, v in outputs
        ]
        return JSONResponse(head)
    raws = [_binary_tensor(dt, v) for _, dt, _, v in outputs]
    head["outputs"] = [
        {"name": n, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
        for (n, dt, shape, _), raw in zip(outputs, raws, strict=True)
    ]
    text = json.dumps(head).encode()
    return Response(
        text + b"".join(raws), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(text))}
    )


def _binary_tensor(datatype: str, data: Any) -> bytes:
    """Triton's binary tensor encoding: little-endian numbers, or length-prefixed UTF-8 strings (BYTES)."""
    if datatype == "BYTES":
        parts = [str(v).encode() for v in data]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    return np.asarray(data, dtype=OUT_DTYPES[datatype]).tobytes()
