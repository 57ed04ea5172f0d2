"""KServe v2 exactly as Triton's HTTP client speaks it (tritonclient, sync and aio), used as its README shows:
no header added by the test, default modes, versions, compression, the classification extension, the
model configuration, statistics and the extensions the server does not implement."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from tests.serving_support import Reference, running_server

MICRO_BATCH = 16


@pytest.fixture(scope="module")
def server(bundles: list[Path]):
    with running_server(bundles, micro_batch=MICRO_BATCH) as (url, _app):
        yield url.removeprefix("http://")


@pytest.fixture(scope="module")
def client(server: str):
    c = httpclient.InferenceServerClient(url=server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def model_config_pb2():
    """Triton's ModelConfig message, loaded from tritonclient without its grpc-only package init."""
    path = Path(
        importlib.metadata.distribution("tritonclient").locate_file("tritonclient/grpc/model_config_pb2.py")
    )
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rows(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_server_metadata_lists_the_extensions(client) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "hatzoo"
    assert {"classification", "binary_tensor_data", "model_configuration", "statistics"} <= set(
        meta["extensions"]
    )
    assert client.is_server_live() and client.is_server_ready()


def test_model_metadata_and_readiness_with_and_without_a_version(client) -> None:
    for version in ("", "1"):
        assert client.is_model_ready("tiny-cnn_task1", model_version=version)
        assert client.is_model_ready("tiny-cnn", model_version=version)  # the model without a task id
        meta = client.get_model_metadata("tiny-cnn_task1", model_version=version)
        assert meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    assert not client.is_model_ready("tiny-cnn_task1", model_version="2")
    assert not client.is_model_ready("tiny-cnn_task9")
    with pytest.raises(InferenceServerException, match="no version '2'") as e:
        client.get_model_metadata("tiny-cnn_task1", model_version="2")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_json_and_binary_match_onnx_runtime(client, reference: Reference, binary: bool) -> None:
    x = rows(0)
    for model, task, version in (("tiny-cnn", 1, ""), ("tiny-mlp", 5, "1")):
        inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer(f"{model}_task{task}", inputs, model_version=version, outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("logits"), reference(model, task, x), rtol=1e-6, atol=1e-6)
        answer = result.get_response()
        assert answer["model_version"] == "1" and "id" not in answer  # no id sent, none answered
        assert ("data" in answer["outputs"][0]) is not binary


def test_request_id_is_echoed(client) -> None:
    inputs = [httpclient.InferInput("x", [1, 1, 8, 8], "FP32")]
    inputs[0].set_data_from_numpy(rows(1, 1))
    assert client.infer("tiny-cnn_task0", inputs, request_id="req-7").get_response()["id"] == "req-7"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_request_and_response_compression(client, reference: Reference, algorithm: str) -> None:
    x = rows(2)
    for binary in (False, True):
        inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer(
            "tiny-cnn_task2",
            inputs,
            outputs=outputs,
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(
            result.as_numpy("logits"), reference("tiny-cnn", 2, x), rtol=1e-6, atol=1e-6
        )


def test_class_count_answers_score_index_label(client, reference: Reference) -> None:
    x = rows(3)
    want = reference("tiny-cnn", 2, x)
    for binary in (False, True):
        inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=2)]
        got = client.infer("tiny-cnn_task2", inputs, outputs=outputs).as_numpy("logits")
        assert got.shape == (3, 2)
        for row, logits in zip(got, want, strict=True):
            best = np.argsort(-logits)[:2]
            parts = [(v.decode() if isinstance(v, bytes) else v).split(":") for v in row]
            assert [int(p[1]) for p in parts] == best.tolist()
            assert [p[2] for p in parts] == [f"tiny-cnn-t2-c{i}" for i in best]
            np.testing.assert_allclose([float(p[0]) for p in parts], logits[best], atol=1e-5)


def test_task_free_model_outputs_each_in_its_own_format(client) -> None:
    x = rows(4)
    inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    outputs = [
        httpclient.InferRequestedOutput("task", binary_data=False),
        httpclient.InferRequestedOutput("scores", binary_data=True),
    ]
    result = client.infer("tiny-cnn", inputs, outputs=outputs)
    task, scores = result.as_numpy("task"), result.as_numpy("scores")
    docs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "data" in docs["task"] and "binary_data_size" in docs["scores"]["parameters"]
    assert scores.shape == (3, 3) and task.shape == (3,)
    assert [str(t.decode() if isinstance(t, bytes) else t) for t in task] == [
        str(i) for i in scores.argmax(axis=1)
    ]


def test_get_model_config_is_the_triton_config(client, model_config_pb2) -> None:
    for version in ("", "1"):
        doc = client.get_model_config("tiny-cnn_task1", model_version=version)
        cfg = json_format.ParseDict(doc, model_config_pb2.ModelConfig())
        assert cfg.name == "tiny-cnn_task1" and cfg.platform == "onnxruntime_onnx"
        assert cfg.max_batch_size == MICRO_BATCH
        (inp,), (out,) = cfg.input, cfg.output
        assert (inp.name, inp.data_type, list(inp.dims)) == ("x", model_config_pb2.TYPE_FP32, [1, 8, 8])
        assert (out.name, list(out.dims), out.label_filename) == ("logits", [4], "labels.txt")
    with pytest.raises(InferenceServerException, match="unknown v2 model"):
        client.get_model_config("nope")


def test_statistics_and_repository_index(client) -> None:
    x = rows(5, 2)
    inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    before = client.get_inference_statistics("tiny-mlp_task0")["model_stats"][0]
    client.infer("tiny-mlp_task0", inputs)
    (after,) = client.get_inference_statistics("tiny-mlp_task0", model_version="1")["model_stats"]
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["execution_count"] >= 1 and after["last_inference"] > 0
    names = {m["name"] for m in client.get_inference_statistics()["model_stats"]}
    assert {"tiny-cnn_task0", "tiny-mlp_task5", "tiny-cnn"} <= names
    index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert index["tiny-cnn_task2"] == "READY" and index["tiny-mlp"] == "READY"


def test_unimplemented_extensions_answer_tritons_status(client) -> None:
    cases = [
        (lambda: client.load_model("tiny-cnn_task0"), "503", "loads its bundles at start"),
        (lambda: client.unload_model("tiny-cnn_task0"), "503", "loads its bundles at start"),
        (lambda: client.register_system_shared_memory("r", "/r", 64), "501", "shared-memory"),
        (lambda: client.get_trace_settings(), "501", "not implemented"),
        (lambda: client.get_log_settings(), "501", "not implemented"),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException, match=message) as e:
            call()
        assert e.value.status() == status
    assert client.get_system_shared_memory_status() == []


def test_aio_client(server: str, reference: Reference, model_config_pb2) -> None:
    async def session() -> None:
        client = aioclient.InferenceServerClient(url=server)
        try:
            assert (await client.get_server_metadata())["name"] == "hatzoo"
            assert await client.is_model_ready("tiny-mlp_task5", model_version="1")
            meta = await client.get_model_metadata("tiny-mlp_task5", model_version="1")
            assert meta["outputs"][0]["shape"] == [-1, 3]
            x = rows(6)
            for binary, algorithm in ((False, "gzip"), (True, "deflate"), (True, None)):
                inputs = [aioclient.InferInput("x", list(x.shape), "FP32")]
                inputs[0].set_data_from_numpy(x, binary_data=binary)
                outputs = [aioclient.InferRequestedOutput("logits", binary_data=binary)]
                result = await client.infer(
                    "tiny-mlp_task5",
                    inputs,
                    outputs=outputs,
                    request_compression_algorithm=algorithm,
                    response_compression_algorithm=algorithm,
                )
                np.testing.assert_allclose(
                    result.as_numpy("logits"), reference("tiny-mlp", 5, x), rtol=1e-6, atol=1e-6
                )
            inputs = [aioclient.InferInput("x", list(x.shape), "FP32")]
            inputs[0].set_data_from_numpy(x)
            outputs = [aioclient.InferRequestedOutput("logits", class_count=1)]
            top = (await client.infer("tiny-mlp_task5", inputs, outputs=outputs)).as_numpy("logits")
            assert [int(v.decode().split(":")[1]) for v in top.ravel()] == reference("tiny-mlp", 5, x).argmax(
                axis=1
            ).tolist()
            doc = await client.get_model_config("tiny-mlp_task5")
            assert json_format.ParseDict(doc, model_config_pb2.ModelConfig()).output[0].dims == [3]
        finally:
            await client.close()

    asyncio.run(session())


def test_content_encoding_faults_answer_clearly(server: str, bundles: list[Path]) -> None:
    import gzip
    import json

    import httpx

    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    ).encode()
    url = f"http://{server}/v2/models/tiny-cnn_task0/infer"
    cases = [
        (body, "br", 501, "unsupported Content-Encoding"),  # Triton's status for an unknown encoding
        (b"not gzip at all", "gzip", 400, "not valid gzip"),
        (gzip.compress(body)[:-12], "gzip", 400, "ends before"),
    ]
    for data, encoding, status, message in cases:
        r = httpx.post(url, content=data, headers={"Content-Encoding": encoding})
        assert r.status_code == status and message in r.json()["error"], (encoding, r.text)
    r = httpx.post(
        url, content=gzip.compress(body), headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"}
    )
    assert (
        r.status_code == 200
        and r.headers["content-encoding"] == "gzip"
        and r.json()["outputs"][0]["shape"] == [1, 3]
    )
    r = httpx.get(url)  # infer takes POST only
    assert (
        r.status_code == 405 and "takes POST, not GET" in r.json()["error"] and r.headers["allow"] == "POST"
    )
    with running_server(bundles, max_body_bytes=4096) as (small, _app):
        bomb = gzip.compress(b" " * 100_000 + body)  # 100 kB of JSON in a body of about 200 bytes
        r = httpx.post(
            f"{small}/v2/models/tiny-cnn_task0/infer", content=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert r.status_code == 413 and "decompressed body" in r.json()["error"], r.text
