"""Request bodies to arrays, strictly: JSON and .npy decoding, numbers only, bounded depth and range.

Runs in a worker thread (never on the event loop). Every fault is a RequestError carrying the HTTP status.
"""

from __future__ import annotations

import io
import json
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from hatzoo.errors import RequestError

JSON_TYPES = ("application/json",)
NPY_TYPES = ("application/x-npy", "application/octet-stream", "application/npy")
M = TypeVar("M", bound=BaseModel)


def media_type(content_type: str | None) -> str:
    """The lower-cased media type of a Content-Type header ('' when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


def parse_json(body: bytes) -> Any:
    """The JSON document of a body; 400 for invalid JSON, too deep nesting or non-finite constants."""

    def refuse_constant(name: str) -> Any:
        raise RequestError(400, f"body is not valid JSON: {name} is not a JSON number")

    try:
        return json.loads(body, parse_constant=refuse_constant)
    except RecursionError:
        raise RequestError(400, "body is not valid JSON here: arrays or objects nest too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"body is not valid JSON: {e}") from None


def parse_request(body: bytes, model: type[M], hint: str = "") -> M:
    """A JSON body validated by a request model; 400 naming the first bad field (then ``hint``) otherwise."""
    try:
        return model.model_validate(parse_json(body))
    except ValidationError as e:
        first = e.errors()[0]
        raise RequestError(
            400, f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}{hint}"
        ) from None


def number_array(value: Any, what: str = "inputs") -> np.ndarray:
    """A float64 array of a rectangular nested list of JSON numbers; 400 for anything else.

    Booleans, strings (numeric or not) and nulls are refused, and so are numbers beyond float64.
    """
    try:
        obj = np.asarray(value, dtype=object)
    except (ValueError, TypeError):
        raise RequestError(400, f"{what} must be a rectangular nested list of numbers") from None
    kinds = set(map(type, obj.ravel().tolist())) if obj.size else set()
    if kinds - {int, float}:
        bad = sorted(k.__name__ for k in kinds - {int, float})
        detail = "not rectangular" if "list" in bad else f"holds {', '.join(bad)} values"
        raise RequestError(400, f"{what} must be a rectangular nested list of numbers; it is {detail}")
    try:
        arr = obj.astype(np.float64)
    except OverflowError:
        raise RequestError(400, f"{what} holds a number too large for floating point") from None
    if not np.isfinite(arr).all():
        raise RequestError(400, f"{what} holds a number too large for floating point")
    return arr


def npy_array(body: bytes) -> np.ndarray:
    """The one array of a .npy body (never unpickled); 400 otherwise."""
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises several types for bad files
        raise RequestError(400, f"body is not a valid .npy array: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise RequestError(400, "body must hold one .npy array, not an .npz archive")
    if arr.dtype.kind not in "fu" or (arr.dtype.kind == "u" and arr.dtype != np.uint8):
        raise RequestError(
            400, f"inputs dtype must be float (normalized or 0-1 pixels) or uint8 (pixels), got {arr.dtype}"
        )
    return arr
