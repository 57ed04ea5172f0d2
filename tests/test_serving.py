"""Serving tests: bundles, the session pool, micro-batching and the HTTP server, on the real ONNX Runtime."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from hatzoo.errors import HATError
from hatzoo.export.bundle import FORMAT, FORMAT_VERSION, BundleError, read_bundle, write_manifest
from hatzoo.export.client import ClientError, HatzooClient
from hatzoo.export.runtime import MicroBatcher, TaskSessionPool, UnknownModelError
from hatzoo.export.server import create_app
from tests.serving_support import (
    MODEL_A,
    MODEL_B,
    Reference,
    edit_manifest,
    metric,
    npy,
    post,
    running_server,
)

# --------------------------------------------------------------------------------------------- imports


def test_serving_modules_do_not_import_torch(bundles: list[Path]) -> None:
    """Fresh interpreter: importing and using the serving modules pulls in neither torch nor timm."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import hatzoo.export.bundle, hatzoo.export.runtime, hatzoo.export.server, hatzoo.export.client
        import hatzoo.export.triton
        from hatzoo.export.bundle import read_bundle
        from hatzoo.export.runtime import TaskSessionPool
        pool = TaskSessionPool([read_bundle({str(bundles[0])!r})])   # defaults: global pool + shared arena
        y = pool.run("tiny-cnn", "1", np.zeros((3, 1, 8, 8), np.float32))
        assert y.shape == (3, 4), y.shape
        bad = [m for m in ("torch", "timm", "torchvision") if m in sys.modules]
        print("PROVIDERS", pool.providers, "BAD", bad)
        sys.exit(1 if bad else 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BAD []" in r.stdout
    assert "[E:onnxruntime" not in r.stderr, r.stderr  # no CUDA error log when there is no GPU


# ---------------------------------------------------------------------------------------------- bundle


def test_read_bundle_fields(bundles: list[Path]) -> None:
    m = json.loads((bundles[0] / "manifest.json").read_text())
    assert m["format"] == FORMAT and m["format_version"] == FORMAT_VERSION and m["opset"] == 18
    b = read_bundle(bundles[0])
    assert b.model == "tiny-cnn" and list(b.tasks) == ["0", "1", "2"]
    assert b.source == {"repo_id": "test/tiny-cnn", "revision": "abc"}
    t = b.tasks["1"]
    assert (t.input_name, t.output_name, t.dtype) == ("x", "logits", "float32")
    assert t.input_shape == (None, 1, 8, 8) and t.num_classes == 4 and t.mean == (0.5,) and t.std == (0.25,)
    assert t.kept_units == {"conv": (3, 4)} and t.flops_fraction == 0.75 and t.max_abs_diff == 1e-7


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: (d / "task0.onnx").write_bytes((d / "task0.onnx").read_bytes() + b"x"), "sha256"),
        (lambda d: (d / "task1.onnx").unlink(), "missing"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json not found"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda d: edit_manifest(d, lambda m: m.update(format="other")), "'format'"),
        (lambda d: edit_manifest(d, lambda m: m.update(format_version=99)), "newer"),
        (lambda d: edit_manifest(d, lambda m: m["tasks"]["0"].update(dtype="int8")), "dtype"),
        (
            lambda d: edit_manifest(d, lambda m: m["tasks"]["0"].update(input_shape=[1, 1, 8, 8])),
            "input_shape",
        ),
        (lambda d: edit_manifest(d, lambda m: m["tasks"]["0"].update(labels=[])), "labels"),
    ],
)
def test_read_bundle_rejects_bad_bundles(bundles: list[Path], tmp_path: Path, corrupt, message: str) -> None:
    d = tmp_path / "b"
    shutil.copytree(bundles[0], d)
    corrupt(d)
    with pytest.raises(BundleError, match=message) as ei:
        read_bundle(d)
    assert isinstance(ei.value, HATError)


def test_write_manifest_errors(bundles: list[Path], tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        write_manifest(tmp_path, model="m", source=None, tasks={0: {"file": "nope.onnx"}})
    shutil.copy(bundles[0] / "task0.onnx", tmp_path / "t.onnx")
    with pytest.raises(BundleError, match="labels"):
        write_manifest(
            tmp_path, model="m", source=None, tasks={0: {"file": "t.onnx", "input_shape": [None, 1, 8, 8]}}
        )
    with pytest.raises(BundleError, match="model name"):
        write_manifest(tmp_path, model="a/b", source=None, tasks={0: {"file": "t.onnx"}})


# ------------------------------------------------------------------------------------------------ pool


def test_pool_lru_eviction_by_count_and_bytes(bundles: list[Path], reference: Reference) -> None:
    b = read_bundle(bundles[0])
    pool = TaskSessionPool([b], max_sessions=2, global_thread_pool=False)
    assert pool.providers == ["CPUExecutionProvider"] or pool.providers[0] == "CUDAExecutionProvider"
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    refs = weakref.WeakValueDictionary()
    for t in ("0", "1", "2"):
        np.testing.assert_allclose(
            pool.run("tiny-cnn", t, x), reference("tiny-cnn", t, x), rtol=1e-6, atol=1e-6
        )
        refs[t] = pool.session("tiny-cnn", t)
    assert pool.loaded() == [("tiny-cnn", "1"), ("tiny-cnn", "2")]
    assert (pool.loads, pool.evictions) == (3, 1)
    gc.collect()
    assert "0" not in refs, "an evicted session must be released"
    pool.run("tiny-cnn", "1", x)  # touch 1: now 2 is the least recently used
    np.testing.assert_allclose(
        pool.run("tiny-cnn", "0", x), reference("tiny-cnn", "0", x), rtol=1e-6, atol=1e-6
    )
    assert pool.loaded() == [("tiny-cnn", "1"), ("tiny-cnn", "0")]
    assert (pool.loads, pool.evictions) == (4, 2)

    cost = int(b.tasks["0"].file_size * 2.0)
    bpool = TaskSessionPool([b], max_sessions=None, max_bytes=int(cost * 2.5), global_thread_pool=False)
    for t in ("0", "1", "2", "0"):
        bpool.run("tiny-cnn", t, x)
        assert bpool.loaded_bytes() <= bpool.max_bytes
    assert len(bpool.loaded()) == 2 and bpool.evictions == 2


def test_pool_unknown_names(bundles: list[Path]) -> None:
    pool = TaskSessionPool([read_bundle(d) for d in bundles], global_thread_pool=False)
    with pytest.raises(UnknownModelError, match="known models: \\['tiny-cnn', 'tiny-mlp'\\]"):
        pool.spec("nope", "0")
    with pytest.raises(UnknownModelError, match="known tasks: \\['0', '5'\\]"):
        pool.spec("tiny-mlp", "1")


def test_micro_batcher_merges_concurrent_requests(bundles: list[Path], reference: Reference) -> None:
    pool = TaskSessionPool([read_bundle(d) for d in bundles], global_thread_pool=False)
    batcher = MicroBatcher(pool, max_batch=16, max_wait_ms=50)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((n, 1, 8, 8)).astype(np.float32) for n in (1, 2, 3, 1, 4, 1, 2, 6)]  # 20 rows

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.predict("tiny-cnn", "2", x) for x in xs))

    outs = asyncio.run(main())
    for x, y in zip(xs, outs, strict=True):
        np.testing.assert_allclose(y, reference("tiny-cnn", "2", x), rtol=1e-6, atol=1e-6)
    st = batcher.stats[("tiny-cnn", "2")]
    assert st.requests == 8 and st.rows == 20
    assert st.batches == 2 and st.max_rows <= 16  # 20 rows with max 16 per run: two runs, not eight
    batcher.close()


def test_a_dead_batching_worker_is_replaced_and_its_queue_served(
    bundles: list[Path], reference: Reference
) -> None:
    pool = TaskSessionPool([read_bundle(d) for d in bundles], global_thread_pool=False)
    batcher = MicroBatcher(pool, max_batch=16)
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)

    async def main() -> np.ndarray:
        await batcher.predict("tiny-cnn", "1", x)
        worker = batcher._workers[("tiny-cnn", "1")]
        worker.cancel()  # the task's batching loop dies, as an unexpected error would end it
        await asyncio.gather(worker, return_exceptions=True)
        return await asyncio.wait_for(batcher.predict("tiny-cnn", "1", x), 30)  # not a hang

    np.testing.assert_allclose(asyncio.run(main()), reference("tiny-cnn", "1", x), rtol=1e-6, atol=1e-6)
    batcher.close()


# ---------------------------------------------------------------------------------------------- server


def test_server_predict_routes_and_matches_direct(bundles: list[Path], reference: Reference) -> None:
    rng = np.random.default_rng(2)
    with running_server(bundles) as (url, _app):
        c = HatzooClient(url)
        assert c.health()["status"] == "ok"
        models = {m["name"]: m for m in c.models()}
        assert set(models) == {"tiny-cnn", "tiny-mlp"}
        assert [t["id"] for t in models["tiny-mlp"]["tasks"]] == ["0", "5"]
        assert models["tiny-cnn"]["tasks"][2]["input_shape"] == [None, 1, 8, 8]
        assert models["tiny-cnn"]["tasks"][2]["labels"][0] == "tiny-cnn-t2-c0"
        for model, tasks in (MODEL_A, MODEL_B):
            for tid, k, _ in tasks:
                x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
                want = reference(model, tid, x)
                for use_npy in (True, False):
                    out = c.predict(model, tid, x, top_k=2, use_npy=use_npy)
                    assert out["model"] == model and out["task"] == str(tid)
                    assert out["logits"].shape == (3, k)
                    np.testing.assert_allclose(out["logits"], want, rtol=1e-6, atol=1e-6)
                    p = np.exp(want - want.max(1, keepdims=True))
                    p /= p.sum(1, keepdims=True)
                    for row, tops in zip(p, out["top_k"], strict=True):
                        order = np.argsort(-row)[:2]
                        assert [t["index"] for t in tops] == order.tolist()
                        assert [t["label"] for t in tops] == [f"{model}-t{tid}-c{i}" for i in order]
                        np.testing.assert_allclose([t["score"] for t in tops], row[order], rtol=1e-5)
        # float64 .npy is accepted (cast to float32); so is a 3-D single image (the client adds the batch)
        x = rng.standard_normal((1, 8, 8))
        np.testing.assert_allclose(
            c.predict("tiny-mlp", 5, x)["logits"],
            reference("tiny-mlp", 5, x[None].astype(np.float32)),
            atol=1e-6,
        )
        # top_k larger than the class count is clamped; 0 gives empty lists
        assert len(c.predict("tiny-mlp", 0, x, top_k=50)["top_k"][0]) == 2
        assert c.predict("tiny-mlp", 0, x, top_k=0)["top_k"] == [[]]


def test_server_bad_inputs_answer_4xx_and_keep_serving(bundles: list[Path], reference: Reference) -> None:
    good = np.zeros((2, 1, 8, 8), np.float32)
    with running_server(bundles, max_request_batch=8, max_body_bytes=64 << 10) as (url, _app):
        base = f"{url}/v1/models/tiny-cnn/tasks/0:predict"
        j = lambda a, **fields: json.dumps({"inputs": a, **fields}).encode()  # noqa: E731
        cases = [
            (f"{url}/v1/models/nope/tasks/0:predict", npy(good), "application/x-npy", 404, "tiny-cnn"),
            (f"{url}/v1/models/tiny-cnn/tasks/9:predict", npy(good), "application/x-npy", 404, "known tasks"),
            (f"{url}/v1/models/tiny-cnn/tasks/0:explain", npy(good), "application/x-npy", 404, ":predict"),
            (base, npy(np.zeros((2, 8, 8), np.float32)), "application/x-npy", 400, "shape"),
            (base, npy(np.zeros((2, 3, 8, 8), np.float32)), "application/x-npy", 400, "channels"),
            (base, npy(np.zeros((2, 1, 9, 8), np.float32)), "application/x-npy", 400, "images of"),
            (base, npy(np.zeros((2, 1, 8, 8), np.int64)), "application/x-npy", 400, "dtype"),
            (base, npy(np.zeros((0, 1, 8, 8), np.float32)), "application/x-npy", 400, "empty batch"),
            (base, npy(np.zeros((9, 1, 8, 8), np.float32)), "application/x-npy", 413, "limit of 8"),
            (base, npy(np.full((1, 1, 8, 8), np.nan, np.float32)), "application/x-npy", 400, "NaN"),
            (base, b"\x93NUMPY garbage", "application/x-npy", 400, ".npy"),
            (base, b'{"inputs": [[[1, 2', "application/json", 400, "not valid JSON"),
            (base, b'{"pixels": []}', "application/json", 400, "inputs"),
            (base, j([[[1.0, 2.0], [3.0]]]), "application/json", 400, "rectangular"),
            (base, j([[["a"] * 8] * 8]), "application/json", 400, "rectangular"),
            (base, j(good.tolist(), top_k=-1), "application/json", 400, "top_k"),
            (base, npy(np.zeros((8, 1, 64, 64), np.float32)), "application/x-npy", 413, "over the limit"),
            (base, b"hello", "text/plain", 415, "Content-Type"),
        ]
        for u, body, ctype, status, msg in cases:
            code, doc = post(u, body, ctype)
            assert code == status, (u, ctype, code, doc)
            assert msg in doc["error"], (msg, doc)
            out = HatzooClient(url).predict("tiny-cnn", 0, good)  # still serving, still right
            np.testing.assert_allclose(out["logits"], reference("tiny-cnn", 0, good), atol=1e-6)
        assert httpx.get(f"{url}/v1/nothing").status_code == 404
        with pytest.raises(ClientError, match="known models") as ei:
            HatzooClient(url).predict("nope", 0, good)
        assert ei.value.status == 404
        with pytest.raises(ClientError, match="channels"):
            HatzooClient(url).predict("tiny-cnn", 0, np.zeros((1, 2, 8, 8), np.float32), use_npy=False)
        text = HatzooClient(url).metrics()
        assert metric(text, "hatzoo_errors_total", model="tiny-cnn", task="0") >= 14
        assert metric(text, "hatzoo_unrouted_requests_total", status="404") >= 3
    with pytest.raises(ClientError, match="cannot reach"):
        HatzooClient(url, timeout=2).models()
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(ClientError, match="exited with code 3 before answering"):
        HatzooClient(url, timeout=2).wait_until_up(exited)
    with pytest.raises(ClientError, match="did not answer within 0.5 s"):
        HatzooClient(url, timeout=2).wait_until_up(timeout=0.5)


def test_server_micro_batches_concurrent_requests(bundles: list[Path], reference: Reference) -> None:
    n = 16
    xs = [np.random.default_rng(100 + i).standard_normal((1, 1, 8, 8)).astype(np.float32) for i in range(n)]
    with running_server(bundles, micro_batch=64, max_wait_ms=30) as (url, app):
        barrier = threading.Barrier(n)

        def one(x: np.ndarray) -> np.ndarray:
            c = HatzooClient(url)
            barrier.wait()
            return c.predict("tiny-mlp", 5, x)["logits"]

        with ThreadPoolExecutor(n) as clients:
            outs = list(clients.map(one, xs))
        text = HatzooClient(url).metrics()
    for x, y in zip(xs, outs, strict=True):
        np.testing.assert_allclose(y, reference("tiny-mlp", 5, x), rtol=1e-6, atol=1e-6)
    batches = metric(text, "hatzoo_batches_total", model="tiny-mlp", task="5")
    assert metric(text, "hatzoo_batched_requests_total", model="tiny-mlp", task="5") == n
    assert metric(text, "hatzoo_requests_total", model="tiny-mlp", task="5", status="200") == n
    assert 1 <= batches < n and metric(text, "hatzoo_batch_rows_max", model="tiny-mlp", task="5") > 1
    assert metric(text, "hatzoo_request_latency_seconds_count", model="tiny-mlp", task="5") == n


def test_server_lru_budget_reloads_correctly(bundles: list[Path], reference: Reference) -> None:
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with running_server(bundles, max_sessions=2) as (url, app):
        c = HatzooClient(url)
        order = [("tiny-cnn", 0), ("tiny-cnn", 1), ("tiny-mlp", 5), ("tiny-cnn", 0), ("tiny-mlp", 0)]
        for model, t in order:
            np.testing.assert_allclose(c.predict(model, t, x)["logits"], reference(model, t, x), atol=1e-6)
            assert len(app.state.pool.loaded()) <= 2
        text = c.metrics()
        assert metric(text, "hatzoo_session_loads_total") == 5
        assert metric(text, "hatzoo_session_evictions_total") == 3
        assert app.state.pool.loaded() == [("tiny-cnn", "0"), ("tiny-mlp", "0")]


def test_create_app_needs_bundles() -> None:
    with pytest.raises(HATError):
        create_app([])
    with pytest.raises(HATError, match="not a hatzoo bundle"):
        create_app([os.devnull + "-missing"])
