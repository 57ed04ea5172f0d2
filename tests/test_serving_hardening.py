"""Hostile bundles and clients: confined files, manifest/graph agreement, strict bodies, timeouts, keys."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hatzoo.errors import HATError
from hatzoo.export.bundle import BundleError, read_bundle, write_manifest
from hatzoo.export.server import StartupError, create_app, main, serve
from hatzoo.hub.local_hub import free_port
from tests.serving_support import edit_manifest, running_server, server_process


def copy(bundle: Path, tmp_path: Path, edit=None) -> Path:
    """A copy of the bundle in tmp_path/b; ``edit`` changes its task 0 manifest entry."""
    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    if edit:
        edit_manifest(d, lambda m: edit(m["tasks"]["0"]))
    return d


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_bundle_files_cannot_leave_the_folder(bundle: Path, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "x.onnx"
    shutil.copy(bundle / "task0.onnx", outside)
    file = {"dotdot": "../x.onnx", "absolute": str(outside)}.get(kind)
    d = copy(bundle, tmp_path, (lambda t: t.update(file=file)) if file else None)
    if kind == "symlink":
        (d / "task0.onnx").unlink()
        (d / "task0.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="inside the bundle folder|outside the bundle folder"):
        read_bundle(d)


def test_external_data_is_refused(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((64, 3), np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(m, tmp_path / "task0.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    labels = ["a", "b", "c"]
    write_manifest(
        tmp_path,
        model="ext",
        source=None,
        tasks={0: {"file": "task0.onnx", "input_shape": [None, 1, 8, 8], "labels": labels}},
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)  # where ONNX Runtime would find w.bin if it looked beside the current folder
    try:
        with pytest.raises(StartupError, match="external_data=False"):
            create_app([tmp_path], global_thread_pool=False)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.update(input_name="pixels"), "input 'pixels'"),
        (lambda t: t.update(input_shape=[None, 1, 9, 8]), "input shape"),
        (lambda t: t.update(dtype="float16"), "float16"),
        (lambda t: t.update(labels=["a", "b", "c", "d", "e"]), "5 labels"),
        (lambda t: t.update(output_name="probs"), "output 'probs'"),
    ],
)
def test_manifest_and_graph_must_agree_at_startup(bundle: Path, tmp_path: Path, edit, message: str) -> None:
    d = copy(bundle, tmp_path, edit)
    with pytest.raises(StartupError, match=message) as ei:
        create_app([d], global_thread_pool=False)
    assert "\n" not in str(ei.value) and "task 0" in str(ei.value)


def test_manifest_values_mode_and_labels(bundle: Path, tmp_path: Path) -> None:
    shutil.copy(bundle / "task0.onnx", tmp_path / "t.onnx")
    spec = {"file": "t.onnx", "input_shape": [None, 1, 8, 8], "labels": ["a", "b", "c"]}
    old = os.umask(0o022)
    try:
        path = write_manifest(tmp_path, model="m", source=None, tasks={0: spec})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(BundleError, match="labels"):
        write_manifest(tmp_path, model="m", source=None, tasks={0: {**spec, "labels": "abc"}})
    for std in (float("nan"), 0.0, -1.0):
        norm = {"mean": [0.5], "std": [std]}
        with pytest.raises(BundleError, match="std"):
            write_manifest(tmp_path, model="m", source=None, tasks={0: {**spec, "normalization": norm}})
    d = copy(bundle, tmp_path / "nan", lambda t: t["normalization"].update(std=[float("nan")]))
    with pytest.raises(BundleError, match="std"):
        read_bundle(d)


def test_hostile_bodies_answer_4xx(bundle: Path) -> None:
    with running_server([bundle], max_request_batch=8) as (url, _app):
        p = f"{url}/v1/models/tiny-cnn/tasks/0:predict"
        row = [[[0.0] * 8] * 8]
        cases = [
            (b'{"inputs": [[[[1e400]]]]}', "application/json", 400, "too large"),
            (b'{"inputs": [[[[1' + b"0" * 400 + b"]]]]}", "application/json", 400, "too large"),
            (b'{"inputs": ' + b"[" * 30000 + b"]" * 30000 + b"}", "application/json", 400, "deeply"),
            (json.dumps({"inputs": [[[["1"] * 8] * 8]]}).encode(), "application/json", 400, "str"),
            (json.dumps({"inputs": [[[[True] + [0.0] * 7] * 8]]}).encode(), "application/json", 400, "bool"),
            (json.dumps({"inputs": [row], "top_k": "2"}).encode(), "application/json", 400, "top_k"),
            (json.dumps({"inputs": [row]}).encode(), "", 415, "Content-Type"),
            (json.dumps({"inputs": [row]}).encode(), "text/plain", 415, "Content-Type"),
            (b"x" * 100_000, "application/json", 413, "limit"),  # bound follows --max-request-batch
        ]
        for body, ctype, status, msg in cases:
            r = httpx.post(p, content=body, headers={"Content-Type": ctype} if ctype else {})
            assert r.status_code == status, (body[:40], r.status_code, r.text[:200])
            assert msg in r.json()["error"], (msg, r.json())
        models = httpx.get(f"{url}/v1/models").text
        assert str(bundle) not in models and str(bundle.parent) not in models


def test_healthz_answers_while_a_large_body_is_parsed(bundle: Path) -> None:
    n = 16384  # 1M numbers, about 20 MB of JSON
    # the server in its own process, as deployed: in this one it would share the GIL and the garbage
    # collector with every model the test session has built
    with server_process(str(bundle), "--max-request-batch", str(n), "--micro-batch", str(n)) as (_, url):
        body = json.dumps(
            {"inputs": np.random.default_rng(0).random((n, 1, 8, 8)).round(6).tolist()}
        ).encode()

        def big() -> tuple[int, float]:
            t0 = time.monotonic()
            r = httpx.post(
                f"{url}/v1/models/tiny-cnn/tasks/0:predict",
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=120,
            )
            return r.status_code, time.monotonic() - t0

        lat = []
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(big)
            while not answer.done():
                t0 = time.monotonic()
                assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
                lat.append(time.monotonic() - t0)
                time.sleep(0.02)
        status, took = answer.result()
        assert status == 200
        print(
            f"\nlarge body {len(body) / 1e6:.0f} MB answered in {took:.2f} s; "
            f"/healthz worst {max(lat) * 1000:.0f} ms over {len(lat)} probes"
        )
        assert max(lat) < max(0.5, took / 3)


def test_slow_clients_are_cut_off(bundle: Path) -> None:
    with running_server([bundle], header_timeout_s=0.5, body_timeout_s=0.5) as (url, _app):
        port = httpx.URL(url).port
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finish
            assert s.recv(1024) == b""
        assert time.monotonic() - t0 < 5
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            s.sendall(
                b"POST /v1/models/tiny-cnn/tasks/0:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inputs"'
            )
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert time.monotonic() - t0 < 10


def test_api_key_and_concurrency_limit(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATZOO_API_KEY", "s3cret")
    with running_server([bundle], max_concurrency=1, body_timeout_s=5) as (url, _app):
        port = httpx.URL(url).port
        assert httpx.get(f"{url}/healthz").status_code == 200
        r = httpx.get(f"{url}/v1/models")
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        with socket.create_connection(("127.0.0.1", port)) as s:  # one request in flight, body pending
            s.sendall(
                b"POST /v1/models/tiny-cnn/tasks/0:predict HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            time.sleep(0.3)
            r = httpx.get(f"{url}/v1/models", headers={"X-API-Key": "s3cret"})
            assert r.status_code == 503 and "retry" in r.json()["error"]
    monkeypatch.delenv("HATZOO_API_KEY")
    with pytest.raises(StartupError, match="API key"):
        serve([bundle], host="0.0.0.0", port=free_port())
    assert isinstance(StartupError("x"), HATError)


def test_serve_help_names_itself_and_shows_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: hatzoo serve") and "examples:" in out
    assert "(default: 256)" in out and "--max-body-bytes" in out and "--api-key" in out
