"""KServe v2 with the real Triton client, images and pixel arrays in, and the OpenAPI schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving_support import Reference, npy, running_server

MEAN, STD = 0.5, 0.25  # the test bundles' normalization


@pytest.fixture(scope="module")
def server(bundles: list[Path]):
    with running_server(bundles) as (url, _app):
        yield url


def test_v2_with_tritonclient_matches_onnx_runtime(server: str, reference: Reference) -> None:
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny-cnn_task1")
    meta = client.get_model_metadata("tiny-cnn_task1")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    for model, task in (("tiny-cnn", 1), ("tiny-mlp", 5)):
        name = f"{model}_task{task}"
        inp = tc.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)  # binary tensor extension, binary output (the client's defaults)
        got = client.infer(name, [inp]).as_numpy("logits")
        np.testing.assert_array_equal(got, reference(model, task, x))
        inp = tc.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)  # plain JSON both ways
        out = tc.InferRequestedOutput("logits", binary_data=False)
        got = client.infer(name, [inp], outputs=[out], headers={"Content-Type": "application/json"})
        np.testing.assert_allclose(got.as_numpy("logits"), reference(model, task, x), rtol=1e-6, atol=1e-6)
    h = x.astype(np.float16)
    inp = tc.InferInput("x", list(x.shape), "FP16")
    inp.set_data_from_numpy(h)
    got = client.infer("tiny-cnn_task0", [inp]).as_numpy("logits")
    np.testing.assert_array_equal(got, reference("tiny-cnn", 0, h.astype(np.float32)))
    assert client.get_model_metadata("tiny-cnn")["platform"] == "hatzoo_task_agnostic"  # no task id
    with pytest.raises(InferenceServerException, match="unknown v2 model"):
        client.infer("tiny-cnn_task9", [inp])
    bad = tc.InferInput("y", list(x.shape), "FP32")
    bad.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="one input named 'x'"):
        client.infer("tiny-cnn_task0", [bad])


def test_v2_uint8_pixels_and_content_type(server: str, reference: Reference) -> None:
    px = np.random.default_rng(1).integers(0, 256, (2, 1, 8, 8), dtype=np.uint8)
    body = {
        "inputs": [{"name": "x", "shape": [2, 1, 8, 8], "datatype": "UINT8", "data": px.ravel().tolist()}]
    }
    r = httpx.post(f"{server}/v2/models/tiny-cnn_task2/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    want = reference("tiny-cnn", 2, ((px / 255.0 - MEAN) / STD).astype(np.float32))
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), want, rtol=1e-5, atol=1e-5)
    # v2: a body without Inference-Header-Content-Length is JSON, whatever its Content-Type (Triton's clients
    # send none)
    for headers in ({}, {"Content-Type": "text/plain"}):
        r = httpx.post(
            f"{server}/v2/models/tiny-cnn_task2/infer", content=json.dumps(body).encode(), headers=headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == [out]


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_images_and_pixels_give_the_normalized_array_logits(server: str) -> None:
    rng = np.random.default_rng(2)
    px = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    norm = ((px / 255.0 - MEAN) / STD)[:, None]
    url = f"{server}/v1/models/tiny-cnn/tasks/1:predict"
    want = np.asarray(httpx.post(url, json={"inputs": norm.tolist()}).json()["logits"])

    as_png = {"Content-Type": "image/png"}
    raw = (px / 255.0)[:, None]
    rgb = np.repeat(px[0][:, :, None], 3, axis=2)  # converted to the task's one channel
    same_pixels = [  # (request, how many rows of want it answers)
        ({"content": png(px[0]), "headers": as_png}, 1),
        ({"files": [("file", (f"{i}.png", png(px[i]), "image/png")) for i in range(2)]}, 2),
        ({"content": png(rgb), "headers": as_png}, 1),
        ({"json": {"inputs": raw.tolist(), "normalized": False}}, 2),
        ({"json": {"inputs": px[:, None].tolist(), "dtype": "uint8"}}, 2),
        ({"content": npy(px[:, None]), "headers": {"Content-Type": "application/x-npy"}}, 2),
    ]
    for request, rows in same_pixels:
        r = httpx.post(url + "?top_k=2", **request)
        assert r.status_code == 200 and r.json()["warnings"] == [], r.text
        np.testing.assert_allclose(np.asarray(r.json()["logits"]), want[:rows], rtol=1e-5, atol=1e-5)
        assert [len(top) for top in r.json()["top_k"]] == [2] * rows
    # raw 0-1 pixels sent without saying so still run, but the answer says they look unnormalized
    r = httpx.post(url, json={"inputs": raw.tolist()})
    assert r.status_code == 200 and "normalized: false" in r.json()["warnings"][0]
    r = httpx.post(url, json={"inputs": (raw * 255).tolist(), "normalized": False})
    assert r.status_code == 400 and "[0, 1]" in r.json()["error"]
    r = httpx.post(url, content=b"GIF89a....", headers=as_png)
    assert r.status_code == 400 and "PNG or JPEG" in r.json()["error"]


def test_openapi_schema_and_docs(server: str) -> None:
    doc = httpx.get(f"{server}/openapi.json").json()
    paths = doc["paths"]
    for path, method in [
        ("/healthz", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{model}/tasks/{task_action}", "post"),
        ("/v2/health/live", "get"),
        ("/v2/health/ready", "get"),
        ("/v2/models/{name}", "get"),
        ("/v2/models/{name}/ready", "get"),
        ("/v2/models/{name}/infer", "post"),
    ]:
        assert method in paths[path], path
    schemas = doc["components"]["schemas"]
    for name in ("PredictRequest", "PredictResponse", "V2InferRequest", "V2InferResponse", "ErrorResponse"):
        assert name in schemas, name
    assert {"inputs", "top_k", "normalized"} <= set(schemas["PredictRequest"]["properties"])
    predict = paths["/v1/models/{model}/tasks/{task_action}"]["post"]
    assert set(predict["requestBody"]["content"]) >= {"application/json", "image/png", "multipart/form-data"}
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PredictResponse"}
    assert predict["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    assert httpx.get(f"{server}/docs").status_code == 200
