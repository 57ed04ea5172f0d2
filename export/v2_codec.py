"""The Open Inference Protocol's bodies as Triton's HTTP clients send and read them: the JSON envelope, the
binary tensor extension, Content-Encoding, requested outputs and the classification extension.

Decoding runs off the event loop for large bodies (in a parse process), so these functions are module-level
and raise RequestError (which crosses processes) for every fault.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import schemas
from .bundle import TaskSpec
from .decode import RequestError, number_array, parse_request
from .images import pixels_to_input, uint8_pixels

HEADER_LENGTH = "inference-header-content-length"
V2_TYPES = {"float32": "FP32", "float16": "FP16"}
IN_DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}
OUT_DTYPES = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}  # binary outputs: little-endian
# Content-Encoding -> zlib window bits: gzip framing, or zlib framing (what HTTP calls "deflate")
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class Wanted:
    """One output the client asked for: as binary data or JSON, and with how many classifications."""

    name: str
    binary: bool
    class_count: int = 0


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate), refusing more than ``limit`` bytes."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ENCODINGS:
        raise RequestError(501, f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or none")
    d = zlib.decompressobj(ENCODINGS[encoding])
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise RequestError(400, f"the body is not valid {encoding} data: {e}") from None
    if len(out) > limit:
        raise RequestError(413, f"the decompressed body is over the limit of {limit} bytes")
    if not d.eof:
        raise RequestError(400, f"the {encoding} body ends before its compressed stream does")
    return out


def decode_infer(
    body: bytes, header_length: int | None, encoding: str, limit: int, specs: Sequence[TaskSpec]
) -> tuple[schemas.V2InferRequest, list[np.ndarray]]:
    """The request and its input tensor as model input for each of ``specs`` (tasks that share an input
    but may normalize pixels differently), from a JSON or binary-extension body, compressed or not."""
    body = decompress(body, encoding, limit)
    if header_length is not None and header_length > len(body):
        raise RequestError(
            400, f"{HEADER_LENGTH} {header_length} is longer than the body ({len(body)} bytes)"
        )
    head, tail = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    req = parse_request(head, schemas.V2InferRequest)
    spec = specs[0]
    if len(req.inputs) != 1 or req.inputs[0].name != spec.input_name:
        got = [i.name for i in req.inputs]
        raise RequestError(400, f"this model takes one input named {spec.input_name!r}, got {got}")
    arr = _tensor(req.inputs[0], tail)
    if arr.dtype == np.uint8:
        if arr.ndim != 4:
            raise RequestError(400, f"UINT8 pixels must have shape [B, C, H, W], got {list(arr.shape)}")
        return req, [pixels_to_input(arr, s) for s in specs]
    return req, [arr] * len(specs)


def _tensor(t: schemas.V2InferInput, tail: bytes) -> np.ndarray:
    """One input's values: from its binary data in ``tail`` or its JSON ``data``."""
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
    return arr.reshape(t.shape)


def wanted_outputs(req: schemas.V2InferRequest, available: Sequence[str], classifies: bool) -> list[Wanted]:
    """The outputs to answer, in order: those the request lists (each with its own ``binary_data``, else the
    request's ``binary_data_output``), or every output. ``classifies``: whether ``classification`` applies."""
    default_binary = _flag(req.parameters.get("binary_data_output", False), "binary_data_output")
    if req.outputs is None:
        return [Wanted(n, default_binary) for n in available]
    unknown = [o.name for o in req.outputs if o.name not in available]
    if unknown:
        raise RequestError(400, f"unknown outputs {unknown}; this model has {list(available)}")
    out = []
    for o in req.outputs:
        binary = _flag(o.parameters.get("binary_data", default_binary), f"{o.name}.binary_data")
        k = o.parameters.get("classification", 0)
        if type(k) is not int or k < 0:
            raise RequestError(400, f"{o.name}.classification must be a class count >= 0, got {k!r}")
        if k and not classifies:
            raise RequestError(400, f"output {o.name!r} holds no class scores to classify")
        out.append(Wanted(o.name, binary, k))
    return out


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(400, f"{name} must be true or false, got {value!r}")
    return value


def classification(logits: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: per row the ``k`` highest scores as "score:index:label" strings,
    best first (shape [B, k]; ``k`` is clamped to the class count)."""
    k = min(k, logits.shape[1])
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    rows = [[f"{row[i]:f}:{i}:{labels[i]}" for i in ids] for ids, row in zip(idx, logits, strict=True)]
    return np.asarray(rows, dtype=object).reshape(len(logits), k)


def accepted_encoding(accept_encoding: str | None) -> str | None:
    """The response Content-Encoding to use for an Accept-Encoding header: gzip, else deflate, else none."""
    offered = {}
    for part in (accept_encoding or "").lower().split(","):
        name, _, q = part.strip().partition(";")
        weight = q.strip().removeprefix("q=")
        try:
            offered[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            continue
    return next((e for e in ENCODINGS if offered.get(e, 0) > 0), None)


def compress(data: bytes, encoding: str) -> bytes:
    """``data`` in the Content-Encoding ``encoding`` (gzip or deflate, as zlib-framed data)."""
    return gzip.compress(data, compresslevel=6, mtime=0) if encoding == "gzip" else zlib.compress(data)


def binary_tensor(datatype: str, data: Any) -> bytes:
    """Triton's binary tensor encoding: little-endian numbers, or length-prefixed UTF-8 strings (BYTES)."""
    if datatype == "BYTES":
        parts = [str(v).encode() for v in np.asarray(data, dtype=object).ravel()]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    return np.asarray(data, dtype=OUT_DTYPES[datatype]).tobytes()


def json_values(datatype: str, data: Any) -> list[Any]:
    """An output's flat values as JSON ``data``."""
    flat = np.asarray(data, dtype=object if datatype == "BYTES" else None).ravel()
    return [str(v) for v in flat] if datatype == "BYTES" else flat.tolist()
