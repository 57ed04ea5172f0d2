"""What every route shares: the config, the session pool and batcher, the metrics, and bounded,
off-loop request reading and decoding."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, Request

from .bundle import Bundle, BundleError, TaskSpec
from .decode import RequestError
from .metrics import Metrics
from .runtime import MicroBatcher, TaskSessionPool
from .serve_config import ServeConfig
from .triton import triton_model_name
from .workers import DecodeWorkers

T = TypeVar("T")


@dataclass
class Serving:
    """The state behind the routes of one app."""

    config: ServeConfig
    pool: TaskSessionPool
    batcher: MicroBatcher
    metrics: Metrics = field(default_factory=Metrics)
    workers: DecodeWorkers = field(init=False)
    v2_names: dict[str, tuple[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.v2_names = v2_task_names(self.pool.bundles.values())
        self.workers = DecodeWorkers(self.config.parse_workers)

    @property
    def ready(self) -> bool:
        """Whether a request can be answered now (False while a dead decode worker is being replaced)."""
        return self.workers.ready

    def body_limit(self, spec: TaskSpec) -> int:
        """Largest body accepted for this task (see ServeConfig.body_limit)."""
        return self.config.body_limit(math.prod(spec.input_shape[1:]))

    def pixel_limit(self, spec: TaskSpec) -> int:
        """Most decoded image values one request may hold for this task (see ServeConfig.pixel_limit)."""
        return self.config.pixel_limit(math.prod(spec.input_shape[1:]))

    async def read_body(self, request: Request, limit: int) -> bytes:
        """The body, refusing (413) more than ``limit`` bytes and (408) a client slower than the timeout."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body of {declared} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"body is over the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(
                408, f"the body did not arrive within {self.config.body_timeout_s:g} s; send it faster"
            ) from None
        return b"".join(chunks)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (a module-level function) in a decode worker, keeping the event loop free."""
        return await self.workers.run(fn, *args)

    def close(self) -> None:
        self.batcher.close()
        self.pool.close()
        self.workers.close()


async def app_serving(request: Request) -> Serving:
    """The Serving state of the app answering ``request`` (``create_app`` puts it on ``app.state``)."""
    return request.app.state.serving


AppServing = Annotated[Serving, Depends(app_serving)]  # a route's parameter that receives it


def v2_task_names(bundles: Iterable[Bundle]) -> dict[str, tuple[str, str]]:
    """The v2 model name of every task, ``<model>_task<t>`` (see ``triton_model_name``), mapped to
    (model, task). The task-free v2 model of a bundle is its model name ``<model>``. Two bundles giving
    one name (the same model name, or a task name equal to another task's or to a model name) raise a
    BundleError naming both bundles."""
    owners: dict[str, tuple[str, Bundle]] = {}
    names: dict[str, tuple[str, str]] = {}

    def claim(name: str, what: str, bundle: Bundle) -> None:
        if name in owners:
            other_what, other = owners[name]
            raise BundleError(
                f"the v2 model name {name!r} is both {other_what} of the bundle {other.root} and {what} of "
                f"the bundle {bundle.root}; export one of them under another model name (--name)"
            )
        owners[name] = (what, bundle)

    bundles = list(bundles)
    for b in bundles:
        claim(b.model, f"the model {b.model!r}", b)
    for b in bundles:
        for tid in b.tasks:
            name = triton_model_name(b.model, tid)
            claim(name, f"task {tid} of the model {b.model!r}", b)
            names[name] = (b.model, tid)
    return names


def validate_input(arr: np.ndarray, spec: TaskSpec, max_batch: int) -> np.ndarray:
    """Check shape, batch size and finiteness against the task; returns a contiguous array of its dtype."""
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
