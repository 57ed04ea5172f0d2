"""What every route shares: the config, the session pool and batcher, the metrics, and bounded,
off-loop request reading and decoding."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import Request

from .bundle import TaskSpec
from .decode import RequestError
from .metrics import Metrics
from .runtime import MicroBatcher, TaskSessionPool
from .serve_config import ServeConfig
from .triton import triton_model_name

T = TypeVar("T")


@dataclass
class Serving:
    """The state behind the routes of one app."""

    config: ServeConfig
    pool: TaskSessionPool
    batcher: MicroBatcher
    metrics: Metrics = field(default_factory=Metrics)
    parser: ProcessPoolExecutor = field(init=False)
    v2_names: dict[str, tuple[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        # Processes, not threads: json.loads and numpy conversions hold the GIL for a whole large body.
        ctx = multiprocessing.get_context("spawn")
        self.parser = ProcessPoolExecutor(
            self.config.parse_workers, mp_context=ctx, initializer=exit_with_parent, initargs=(os.getpid(),)
        )
        self.v2_names = {}
        for b in self.pool.bundles.values():
            for tid in b.tasks:
                name = triton_model_name(b.model, tid)
                if name in self.v2_names:
                    raise RequestError(500, f"two tasks share the v2 model name {name!r}; rename a model")
                self.v2_names[name] = (b.model, tid)

    def body_limit(self, spec: TaskSpec) -> int:
        """Largest body accepted for this task (see ServeConfig.body_limit)."""
        return self.config.body_limit(math.prod(spec.input_shape[1:]))

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
        """Run ``fn(*args)`` (a module-level function) in a parse process, keeping the event loop free."""
        return await asyncio.get_running_loop().run_in_executor(self.parser, fn, *args)

    def close(self) -> None:
        self.batcher.close()
        self.pool.close()
        self.parser.shutdown(wait=True, cancel_futures=True)


def exit_with_parent(parent: int) -> None:
    """In a decode worker: exit as soon as the server is gone, however it ended (even SIGKILL).

    A worker holds both ends of its task queue and the server's stdout, so it would otherwise
    outlive a killed server and keep the pipes of whoever started it open.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="hatzoo-exit-with-server").start()


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
