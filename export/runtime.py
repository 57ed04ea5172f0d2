"""ONNX Runtime side of serving: a bounded LRU pool of per-task sessions and an asyncio micro-batcher.

Torch-free by design: a serving box needs only onnxruntime(-gpu) and numpy.

Process-wide settings (ONNX Runtime keeps them in its one ``Env``): with ``global_thread_pool=True`` the
pool calls ``onnxruntime.set_global_thread_pool_sizes`` once, and every session it creates sets
``use_per_session_threads = False``; with ``shared_allocator=True`` one CPU arena allocator is registered
with ``create_and_register_allocator`` and sessions opt in with ``session.use_env_allocators=1``.
Note that once the global thread pool exists, ONNX Runtime refuses to create *other* sessions in the same
process unless they also set ``use_per_session_threads = False``: use :func:`session_options` for those.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import functools
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from hatzoo.errors import InputError, OverloadedError, ServingError, UnknownModelError

from .bundle import Bundle, BundleError, TaskSpec, read_graph
from .serve_config import ServeConfig

_ENV_LOCK = threading.Lock()
_ENV = {"global_threads": False, "allocator": False}
_CUDA_USABLE: bool | None = None
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def configure_environment(
    *,
    global_thread_pool: bool = True,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    shared_allocator: bool = True,
) -> None:
    """Set ONNX Runtime's process-wide thread pool and shared CPU allocator, once per process."""
    with _ENV_LOCK:
        if global_thread_pool and not _ENV["global_threads"]:
            ort.set_global_thread_pool_sizes(intra_op_threads, inter_op_threads)
            _ENV["global_threads"] = True
        if shared_allocator and not _ENV["allocator"]:
            mem = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            # kSameAsRequested (1): grow the arena by what is asked, not by doubling; bounds resident memory
            ort.create_and_register_allocator(mem, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _ENV["allocator"] = True


def session_options() -> ort.SessionOptions:
    """Session options matching the process environment (global threads / shared allocator if set)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if _ENV["global_threads"]:
        so.use_per_session_threads = False
    if _ENV["allocator"]:
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", _no_external_data())
    return so


@functools.cache
def _no_external_data() -> str:
    """An empty folder, made on first use and removed at exit.

    Graphs are loaded from their verified bytes; ONNX Runtime would then look for external data files in
    the current folder. Pointing it at an empty folder makes a graph with external data fail to load instead.
    """
    folder = tempfile.mkdtemp(prefix="hatzoo-no-external-data-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _cuda_driver_present() -> bool:
    """True when the CUDA driver library loads and reports at least one device (no CUDA toolkit needed)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        n = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(n)) == 0 and n.value > 0
    except (OSError, AttributeError):  # no driver library, or one without these entry points
        return False


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it *and* a GPU driver is present, then CPU."""
    available = "CUDAExecutionProvider" in ort.get_available_providers() and _CUDA_USABLE is not False
    if available and _cuda_driver_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _open(spec: TaskSpec, providers: Sequence[str], so: ort.SessionOptions) -> ort.InferenceSession:
    """A session over the task's verified graph bytes; BundleError when ONNX Runtime cannot load it."""
    data = read_graph(spec)
    try:
        return ort.InferenceSession(data, so, providers=list(providers))
    except Exception as e:  # noqa: BLE001 - ORT raises its own pybind types
        hint = (
            "; bundles must be self-contained: export with external_data=False"
            if "External data" in str(e)
            else ""
        )
        raise BundleError(f"task {spec.task_id}: ONNX Runtime cannot load {spec.file}: {e}{hint}") from None


def _create_session(spec: TaskSpec, providers: Sequence[str]) -> ort.InferenceSession:
    """Create a session; a CUDA provider that fails to load (missing cuDNN...) falls back quietly to CPU."""
    global _CUDA_USABLE
    if "CUDAExecutionProvider" not in providers or _CUDA_USABLE is not None:
        provs = [p for p in providers if p != "CUDAExecutionProvider" or _CUDA_USABLE]
        return _open(spec, provs or ["CPUExecutionProvider"], session_options())
    ort.set_default_logger_severity(4)  # first CUDA try: hide ORT's error log if the libraries are absent
    try:
        sess = _open(spec, providers, session_options())
    finally:
        ort.set_default_logger_severity(2)
    _CUDA_USABLE = "CUDAExecutionProvider" in sess.get_providers()
    return sess


def check_task_graph(spec: TaskSpec) -> str | None:
    """What is wrong between a task's manifest entry and its graph (None when they agree).

    Loads the graph on the CPU without optimizations and compares the input name, shape and element
    type, and the output name, element type and width (the label count).
    """
    so = session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = _open(spec, ["CPUExecutionProvider"], so)
    except BundleError as e:
        return str(e)
    where = f"task {spec.task_id} ({spec.file})"
    ins = {i.name: i for i in sess.get_inputs()}
    outs = {o.name: o for o in sess.get_outputs()}
    if spec.input_name not in ins or len(ins) != 1:
        return f"{where}: the manifest's input {spec.input_name!r} is not the graph's one input {list(ins)}"
    if spec.output_name not in outs:
        return f"{where}: the manifest's output {spec.output_name!r} is not a graph output {list(outs)}"
    i, o = ins[spec.input_name], outs[spec.output_name]
    if _ORT_DTYPES.get(i.type) != spec.dtype or _ORT_DTYPES.get(o.type) != spec.dtype:
        return f"{where}: the manifest says {spec.dtype} but the graph takes {i.type} and gives {o.type}"
    fixed = [d if isinstance(d, int) else None for d in i.shape]
    if fixed != list(spec.input_shape):
        return f"{where}: the manifest's input shape {list(spec.input_shape)} is not the graph's {i.shape}"
    if len(o.shape) != 2 or o.shape[-1] != spec.num_classes:
        return f"{where}: {spec.num_classes} labels for a graph output of shape {o.shape}"
    if spec.score_name is not None:
        score = outs.get(spec.score_name)
        if score is None or len(score.shape) != 1 or _ORT_DTYPES.get(score.type) != spec.dtype:
            return f"{where}: the manifest's score {spec.score_name!r} is not a [batch] {spec.dtype} output"
    return None


@dataclass
class _Entry:
    """A loaded session and the bytes it is charged against the budget."""

    session: ort.InferenceSession
    cost: int


class TaskSessionPool:
    """One InferenceSession per (model, task), created on first use, least recently used closed first.

    Budget: at most ``max_sessions`` sessions and at most ``max_bytes`` estimated bytes, where a session
    costs ``bytes_per_file_byte`` times its graph file size (weights plus arena; the default 2.0 matches a
    ViT-S with the shared allocator). ``None`` disables a limit. Thread-safe: ``run`` may be called from
    many threads; a session evicted while running finishes its run (it is freed when the last user drops it).
    """

    def __init__(
        self,
        bundles: Iterable[Bundle],
        *,
        max_sessions: int | None = 16,
        max_bytes: int | None = None,
        bytes_per_file_byte: float = 2.0,
        providers: Sequence[str] | None = None,
        global_thread_pool: bool = True,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        shared_allocator: bool = True,
    ) -> None:
        self.bundles: dict[str, Bundle] = {}
        for b in bundles:
            if b.model in self.bundles:
                raise ServingError(f"two bundles both name model {b.model!r}; model names must be unique")
            self.bundles[b.model] = b
        if max_sessions is not None and max_sessions < 1:
            raise InputError(f"max_sessions must be >= 1 or None, got {max_sessions}")
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.bytes_per_file_byte = bytes_per_file_byte
        configure_environment(
            global_thread_pool=global_thread_pool,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            shared_allocator=shared_allocator,
        )
        self.providers = list(providers) if providers is not None else default_providers()
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}
        self._sessions: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.loads = 0
        self.evictions = 0

    @classmethod
    def from_config(cls, bundles: Iterable[Bundle], config: ServeConfig) -> TaskSessionPool:
        """A pool with the session budget and ONNX Runtime settings of a ServeConfig."""
        return cls(
            bundles,
            max_sessions=config.max_sessions,
            max_bytes=config.max_session_bytes,
            providers=config.providers,
            global_thread_pool=config.global_thread_pool,
            intra_op_threads=config.intra_op_threads,
            shared_allocator=config.shared_allocator,
        )

    def spec(self, model: str, task: str) -> TaskSpec:
        """The manifest entry for (model, task); UnknownModelError listing the known names otherwise."""
        b = self.bundles.get(model)
        if b is None:
            raise UnknownModelError(f"unknown model {model!r}; known models: {sorted(self.bundles)}")
        s = b.tasks.get(str(task))
        if s is None:
            raise UnknownModelError(f"model {model!r} has no task {task!r}; known tasks: {list(b.tasks)}")
        return s

    def loaded(self) -> list[tuple[str, str]]:
        """Keys of the sessions currently open, least recently used first."""
        with self._lock:
            return list(self._sessions)

    def loaded_bytes(self) -> int:
        """Estimated bytes of the sessions currently open."""
        with self._lock:
            return sum(e.cost for e in self._sessions.values())

    def session(self, model: str, task: str) -> ort.InferenceSession:
        """The session for (model, task), loading it (and evicting LRU sessions) when needed."""
        key = (model, str(task))
        if (sess := self._cached(key)) is not None:
            return sess
        spec = self.spec(*key)
        with self._lock:
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one load per key even when many requests arrive at once
            if (sess := self._cached(key)) is not None:  # loaded while this request waited
                return sess
            cost = int(spec.file_size * self.bytes_per_file_byte)
            if self.max_bytes is not None and cost > self.max_bytes:
                raise ServingError(
                    f"{model}/{task} needs ~{cost} bytes, more than the session budget "
                    f"max_bytes={self.max_bytes}; raise max_session_bytes"
                )
            sess = _create_session(spec, self.providers)
            with self._lock:
                self._sessions[key] = _Entry(sess, cost)
                self.loads += 1
                self._evict_locked(keep=key)
            return sess

    def _cached(self, key: tuple[str, str]) -> ort.InferenceSession | None:
        """The open session for key, marked most recently used (None when it is not open)."""
        with self._lock:
            if key not in self._sessions:
                return None
            self._sessions.move_to_end(key)
            return self._sessions[key].session

    def _evict_locked(self, keep: tuple[str, str]) -> None:
        """Close least recently used sessions until both budgets hold (never the one just loaded)."""
        while len(self._sessions) > 1 and (
            (self.max_sessions is not None and len(self._sessions) > self.max_sessions)
            or (self.max_bytes is not None and sum(e.cost for e in self._sessions.values()) > self.max_bytes)
        ):
            key = next(k for k in self._sessions if k != keep)
            del self._sessions[key]  # dropping the last reference releases the session
            self.evictions += 1

    def run(self, model: str, task: str, x: np.ndarray) -> np.ndarray:
        """Run task's graph on a validated batch x [B, C, H, W]; returns logits [B, K]."""
        return self.run_outputs(model, task, x)[0]

    def run_outputs(self, model: str, task: str, x: np.ndarray) -> list[np.ndarray]:
        """Every output the manifest names: logits [B, K], then the task's score [B] if it has one."""
        spec = self.spec(model, task)
        sess = self.session(model, task)
        return sess.run(spec.output_names, {spec.input_name: x})

    def close(self) -> None:
        """Close every session (they reload on the next request)."""
        with self._lock:
            self._sessions.clear()


@dataclass
class _Pending:
    """One queued request: its rows, the future its caller awaits, and when it was queued."""

    x: np.ndarray
    future: asyncio.Future
    queued: float


@dataclass
class BatchStats:
    """Per-task micro-batching counters (read by /metrics and the v2 statistics)."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    max_rows: int = 0
    queue_ns: int = 0
    run_ns: int = 0


class MicroBatcher:
    """Merge concurrent requests for the same task into one ``session.run`` (asyncio, bounded).

    Each (model, task) has a queue and a worker coroutine. The worker takes the first waiting request and
    every request already queued, up to ``max_batch`` rows, and runs them at once in a worker thread; the
    requests that arrive while a run is in progress form the next batch. So a lone request runs at once,
    and under load batches grow by themselves. ``max_wait_ms`` > 0 also waits that long for more requests
    before a run that is not full. A request larger than ``max_batch`` runs alone. A full queue
    (``max_queue`` requests) raises OverloadedError.
    """

    def __init__(
        self,
        pool: TaskSessionPool,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        workers: int = 4,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1 or workers < 1:
            raise InputError("max_batch, max_queue and workers must be >= 1 and max_wait_ms >= 0")
        self.pool = pool
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hatzoo-ort")
        self.stats: dict[tuple[str, str], BatchStats] = {}
        self._queues: dict[tuple[str, str], asyncio.Queue[_Pending]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _queue(self, key: tuple[str, str]) -> asyncio.Queue[_Pending]:
        """The queue for key in the running loop, starting its worker on first use."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests, server restart): old workers are gone
            self._loop, self._queues, self._workers = loop, {}, {}
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = asyncio.Queue(maxsize=self.max_queue)
        worker = self._workers.get(key)
        if worker is None or worker.done():  # first use, or a worker that died: what is queued is served
            self._workers[key] = loop.create_task(self._work(key, q), name=f"hatzoo-batch-{key[0]}-{key[1]}")
        return q

    async def predict(self, model: str, task: str, x: np.ndarray) -> np.ndarray:
        """Logits for x [B, C, H, W] (already validated), batched with concurrent callers of this task."""
        return (await self.predict_outputs(model, task, x))[0]

    async def predict_outputs(self, model: str, task: str, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the task's graph for x (logits, then its score if it has one), batched."""
        key = (model, str(task))
        self.pool.spec(model, str(task))
        q = self._queue(key)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        try:
            q.put_nowait(_Pending(x, fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise OverloadedError(
                f"{model}/{task}: {self.max_queue} requests already queued; retry later"
            ) from None
        return await fut

    async def _work(self, key: tuple[str, str], q: asyncio.Queue[_Pending]) -> None:
        """Worker loop for one task: take what is queued (up to max_batch rows), run it, repeat."""
        loop = asyncio.get_running_loop()
        held: _Pending | None = None  # a request that did not fit the previous batch
        while True:
            first = held if held is not None else await q.get()
            batch, rows, held = [first], len(first.x), None
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch:
                if not q.empty():
                    nxt = q.get_nowait()
                elif (remaining := deadline - loop.time()) > 0:
                    try:
                        nxt = await asyncio.wait_for(q.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    break
                if rows + len(nxt.x) > self.max_batch:
                    held = nxt  # it opens the next batch
                    break
                batch.append(nxt)
                rows += len(nxt.x)
            await self._run(key, batch)

    async def _run(self, key: tuple[str, str], batch: list[_Pending]) -> None:
        """Run one merged batch and resolve each caller's future with its rows (or the error)."""
        batch = [p for p in batch if not p.future.done()]  # callers that gave up
        if not batch:
            return
        xs = [p.x for p in batch]
        start = time.perf_counter()
        try:
            x = xs[0] if len(xs) == 1 else np.concatenate(xs, axis=0)
            y = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.pool.run_outputs, key[0], key[1], x
            )
        except Exception as e:  # noqa: BLE001 - every caller gets the error
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        st = self.stats.setdefault(key, BatchStats())
        st.batches += 1
        st.rows += len(x)
        st.requests += len(batch)
        st.max_rows = max(st.max_rows, len(x))
        st.queue_ns += int(sum(start - p.queued for p in batch) * 1e9)
        st.run_ns += int((time.perf_counter() - start) * 1e9)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(y)
            return
        ends = np.cumsum([len(p.x) for p in batch])[:-1]
        parts = zip(*(np.split(out, ends) for out in y), strict=True)  # each caller's rows, in order
        for p, rows in zip(batch, parts, strict=True):
            if not p.future.done():
                p.future.set_result(list(rows))

    def close(self) -> None:
        """Stop the workers and the thread pool."""
        for t in self._workers.values():
            t.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
