"""Decode workers under supervision: a pool of processes that is replaced when one of its workers dies.

``concurrent.futures.ProcessPoolExecutor`` breaks for good when a worker process dies (killed, out of
memory): every later call raises ``BrokenProcessPool``. ``DecodeWorkers`` watches for that, answers the
calls the broken pool held with a 503 that says when to retry, starts a new pool, and reports itself not
ready until the new pool has answered a call.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from .decode import RequestError

T = TypeVar("T")
RETRY_AFTER_S = 1
WATCH_INTERVAL_S = 0.2


class WorkerLostError(RequestError):
    """The decode worker holding this request died; the pool is being replaced, so a retry will be served."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "a decode worker died while handling this request; it is being replaced, "
            f"retry in {RETRY_AFTER_S} s",
            retry_after=RETRY_AFTER_S,
        )

    def __reduce__(self) -> tuple:
        return (type(self), ())


class DecodeWorkers:
    """``size`` spawned worker processes, replaced as a whole when one dies; ``ready`` says whether a call
    can be answered now (False from the moment a death is seen until the new pool has answered)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._recovered = threading.Event()
        self._recovered.set()
        self._executor = self._start()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="hatzoo-decode-watch")
        self._watcher.start()

    def _start(self) -> ProcessPoolExecutor:
        # Processes, not threads: json.loads and numpy conversions hold the GIL for a whole large body.
        return ProcessPoolExecutor(
            self.size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )

    @property
    def ready(self) -> bool:
        return self._recovered.is_set() and not self._broken(self._executor)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a module-level function) in a worker; WorkerLostError (503) when the pool breaks."""
        for _ in range(3):  # a pool may break or be replaced between reading it and handing the call over
            executor = self._executor
            try:
                future = executor.submit(fn, *args)
                break
            except BrokenProcessPool:
                self._replace(executor)
            except RuntimeError:  # shut down: another caller replaced it meanwhile, unless the server stops
                if executor is self._executor or self._closed.is_set():
                    raise
        else:
            raise WorkerLostError()
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._replace(executor)
            raise WorkerLostError() from None

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """The pool that follows ``broken`` (started once, whoever notices first); readiness waits for it."""
        with self._lock:
            if self._executor is broken and not self._closed.is_set():
                self._recovered.clear()
                broken.shutdown(wait=False)  # its pending calls fail with BrokenProcessPool
                self._executor = self._start()
                threading.Thread(
                    target=self._warm, args=(self._executor,), daemon=True, name="hatzoo-decode-warm"
                ).start()
            return self._executor

    def _warm(self, executor: ProcessPoolExecutor) -> None:
        """Start every worker of a new pool and mark the workers ready once they all answer."""
        try:
            for f in [executor.submit(time.sleep, 0.05) for _ in range(self.size)]:
                f.result()
        except BrokenProcessPool:
            return  # broke again while starting: the watcher replaces it and warms the next one
        if executor is self._executor:
            self._recovered.set()

    def _watch(self) -> None:
        """Notice a dead worker even when no request is in flight, so readiness turns false at once."""
        while not self._closed.wait(WATCH_INTERVAL_S):
            executor = self._executor
            if self._broken(executor):
                self._replace(executor)

    @staticmethod
    def _broken(executor: ProcessPoolExecutor) -> bool:
        return bool(getattr(executor, "_broken", False))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._executor.shutdown(wait=True, cancel_futures=True)


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
