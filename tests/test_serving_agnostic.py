"""Serving without a task id: /v1/models/{model}:predict and the v2 model <model>, on a bundle exported from a
real HAT model and served by ONNX Runtime, against the library's answer."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

import hatzoo
from hatzoo.export.agnostic import task_scores
from hatzoo.export.bundle import write_manifest
from hatzoo.export.onnx_export import export_task
from hatzoo.task_inference import predict
from tests.model_support import train_random_tasks
from tests.serving_support import npy, post, running_server

SHAPE = (1, 8, 8)
RULES = ("msp", "entropy", "energy")
# per task (mean, std): tasks 0 and 2 share one normalization, task 1 has its own
NORMS = {0: (0.5, 0.25), 1: (0.2, 0.5), 2: (0.5, 0.25)}


@pytest.fixture(scope="module")
def hat() -> hatzoo.HATModel:
    """An MLP trained a few steps per task (partial masks), tasks of 2, 3 and 4 classes."""
    torch.manual_seed(0)
    model = hatzoo.hatify(
        nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2)
        )
    )
    return train_random_tasks(model, (2, 3, 4), SHAPE, steps=5, batch=16, lr=1e-2)


@pytest.fixture(scope="module")
def bundle(hat: hatzoo.HATModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every task exported (verified against the HAT model) into one bundle with per-task normalization."""
    root = tmp_path_factory.mktemp("agnostic") / "mlp"
    root.mkdir()
    entries = {}
    for t in range(3):
        entry = export_task(hat, t, root / f"task-{t}.onnx", input_shape=SHAPE).manifest_entry(root)
        entry["normalization"] = {"mean": [NORMS[t][0]], "std": [NORMS[t][1]]}
        entries[t] = entry
    write_manifest(root, model="mlp", source={"repo_id": "test/mlp", "revision": "abc"}, tasks=entries)
    return root


@pytest.fixture(scope="module")
def server(bundle: Path):
    with running_server([bundle]) as (url, _app):
        yield url


def test_normalized_floats_answer_like_the_library(hat, server: str) -> None:
    x = np.random.default_rng(1).standard_normal((9, *SHAPE)).astype(np.float32)
    body = json.dumps({"inputs": x.tolist()}).encode()
    for rule in RULES:
        status, got = post(f"{server}/v1/models/mlp:predict?rule={rule}", body)
        assert status == 200, got
        want = predict(hat, torch.from_numpy(x), rule=rule)
        assert got["model"] == "mlp" and got["rule"] == rule and got["tasks"] == ["0", "1", "2"]
        assert got["task"] == [str(t) for t in want.task.tolist()]
        assert got["class_index"] == want.class_index.tolist()
        assert got["label"] == want.label
        np.testing.assert_allclose(np.asarray(got["scores"]), want.scores.numpy(), rtol=0, atol=1e-4)
    status, default = post(f"{server}/v1/models/mlp:predict", body)
    assert status == 200 and default == got  # energy is the default rule (the last one asked above)


def test_pixels_are_normalized_per_task(hat, server: str) -> None:
    px = np.random.default_rng(2).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
    inputs = {t: ((px / 255.0 - NORMS[t][0]) / NORMS[t][1]).astype(np.float32) for t in range(3)}
    with torch.no_grad():
        logits = [hat(torch.from_numpy(inputs[t]), task=t).double().numpy() for t in range(3)]
    want = task_scores(logits, "msp")
    status, got = post(f"{server}/v1/models/mlp:predict?rule=msp", npy(px), "application/x-npy")
    assert status == 200, got
    np.testing.assert_allclose(np.asarray(got["scores"]), want, rtol=0, atol=1e-5)
    assert got["task"] == [str(c) for c in want.argmax(1)]
    # 0-1 float pixels with normalized: false are the same pixels
    body = json.dumps({"inputs": (px / 255.0).tolist(), "normalized": False}).encode()
    status, floats = post(f"{server}/v1/models/mlp:predict?rule=msp", body)
    assert status == 200 and floats["task"] == got["task"] and floats["label"] == got["label"]
    np.testing.assert_allclose(floats["scores"], got["scores"], rtol=0, atol=1e-6)
    # without the flag, 0-1 floats are taken as normalized input, with a warning
    body = json.dumps({"inputs": (px / 255.0).tolist()}).encode()
    status, warned = post(f"{server}/v1/models/mlp:predict", body)
    assert status == 200 and len(warned["warnings"]) == 2  # one per normalization


def test_v2_bare_model_name_answers_without_a_task(hat, bundle: Path, server: str) -> None:
    import tritonclient.http as tc

    client = tc.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_model_ready("mlp")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    assert [o["name"] for o in meta["outputs"]] == ["task", "label", "class_index", "scores"]
    assert meta["outputs"][3]["shape"] == [-1, 3]
    x = np.random.default_rng(3).standard_normal((4, *SHAPE)).astype(np.float32)
    status, v1 = post(
        f"{server}/v1/models/mlp:predict?rule=entropy", json.dumps({"inputs": x.tolist()}).encode()
    )
    assert status == 200
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary tensor extension both ways (the client's default)
    res = client.infer("mlp", [inp], parameters={"rule": "entropy"})
    assert [v.decode() for v in res.as_numpy("task")] == v1["task"]
    assert [v.decode() for v in res.as_numpy("label")] == v1["label"]
    assert res.as_numpy("class_index").tolist() == v1["class_index"]
    np.testing.assert_allclose(res.as_numpy("scores"), v1["scores"], rtol=0, atol=1e-9)
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [tc.InferRequestedOutput("label", binary_data=False)]
    res = client.infer(
        "mlp",
        [inp],
        outputs=outs,
        parameters={"rule": "entropy"},
        headers={"Content-Type": "application/json"},
    )
    assert res.get_response()["outputs"][0]["data"] == v1["label"]
    assert res.get_response()["parameters"] == {"rule": "entropy"}


def test_bad_requests_are_clear(server: str) -> None:
    body = json.dumps({"inputs": np.zeros((1, *SHAPE)).tolist()}).encode()
    v2_logits = {
        "inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "FP32", "data": [0.0] * 64}],
        "outputs": [{"name": "logits"}],
    }
    cases = [
        (
            "/v1/models/mlp:predict?rule=soft",
            body,
            400,
            "unknown task-inference rule 'soft'; choose one of msp, entropy, energy",
        ),
        ("/v1/models/nope:predict", body, 404, "unknown model 'nope'"),
        ("/v1/models/mlp:explain", body, 404, "/v1/models/{model}:predict"),
        ("/v1/models/mlp:predict", json.dumps({"inputs": [[1.0]]}).encode(), 400, "inputs must have shape"),
        ("/v2/models/mlp/infer", json.dumps(v2_logits).encode(), 400, "unknown outputs ['logits']"),
    ]
    for path, data, status, message in cases:
        code, got = post(server + path, data)
        assert code == status and message in got["error"], (path, code, got)


def test_openapi_documents_the_route(server: str) -> None:
    doc = httpx.get(f"{server}/openapi.json", timeout=30).json()
    route = doc["paths"]["/v1/models/{model_action}"]["post"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AgnosticPredictResponse"
    )
    enum = [*RULES, "likelihood_ratio"]
    assert any(p["name"] == "rule" and p["schema"]["enum"] == enum for p in route["parameters"])
    fields = doc["components"]["schemas"]["AgnosticPredictResponse"]["properties"]
    assert {"task", "label", "class_index", "scores", "tasks", "rule"} <= set(fields)
