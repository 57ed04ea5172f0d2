"""/docs works offline (every asset from the server itself), the OpenAPI document validates and describes
every route a user calls, and /metrics is Prometheus text that prometheus_client's parser reads."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from tests.serving_support import npy, running_server

KEY = "docs-test-key"


@pytest.fixture(scope="module")
def server(bundles: list[Path]):
    with running_server(bundles, api_key=KEY) as (url, _app):
        yield url


class _References(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_load_every_asset_from_the_server_without_a_key(server: str) -> None:
    page = httpx.get(f"{server}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not re.search(r"(https?:)?//[\w.-]+", page.text), "the page names an external host"
    refs = _References()
    refs.feed(page.text)
    spec_url = re.search(r"url: '([^']+)'", page.text).group(1)  # the document Swagger UI loads
    assets = [*refs.urls, spec_url]
    assert len(assets) >= 4  # stylesheet, icon, script, document
    for ref in assets:
        url = urljoin(f"{server}/docs", ref)
        assert urlsplit(url).netloc == urlsplit(server).netloc, ref
        r = httpx.get(url)  # no API key: the page must load for anyone who may read the docs
        assert r.status_code == 200 and len(r.content) > 100, (ref, r.status_code)
    assert "SwaggerUIBundle" in httpx.get(f"{server}/docs/swagger-ui-bundle.js").text
    assert httpx.get(f"{server}/docs/secret.txt").status_code == 401  # only the page's assets are open
    assert httpx.get(f"{server}/docs/secret.txt", headers={"X-API-Key": KEY}).status_code == 404


def test_openapi_validates_and_describes_every_route(server: str) -> None:
    doc = httpx.get(f"{server}/openapi.json").json()
    validate(doc)
    paths = doc["paths"]
    for path, method in [
        ("/v1/models/{model}/tasks/{task_action}", "post"),
        ("/v1/models/{model_action}", "post"),
        ("/metrics", "get"),
        ("/v2", "get"),
        ("/v2/models/{name}/versions/{version}", "get"),
        ("/v2/models/{name}/versions/{version}/ready", "get"),
        ("/v2/models/{name}/config", "get"),
        ("/v2/models/{name}/versions/{version}/infer", "post"),
        ("/v2/models/{name}/stats", "get"),
        ("/v2/models/stats", "get"),
        ("/v2/repository/index", "post"),
    ]:
        assert method in paths[path], (path, method)
    predict = paths["/v1/models/{model}/tasks/{task_action}"]["post"]
    bodies = predict["requestBody"]["content"]
    assert {"application/json", "application/x-npy", "image/png", "image/jpeg", "multipart/form-data"} <= set(
        bodies
    )
    assert bodies["multipart/form-data"]["schema"]["properties"]["file"]["items"]["format"] == "binary"
    action = {p["name"]: p for p in predict["parameters"]}["task_action"]
    assert action["example"] == "0:predict" and re.fullmatch(action["schema"]["pattern"], "3:predict")
    assert {"top_k", "normalized"} <= {p["name"] for p in predict["parameters"]}
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert "Inference-Header-Content-Length" in {p["name"] for p in infer["parameters"]}
    assert infer["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert "application/octet-stream" in infer["responses"]["200"]["content"]


def test_metrics_parse_with_prometheus_client(server: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    url = f"{server}/v1/models/tiny-cnn/tasks/1:predict"
    for _ in range(3):
        assert httpx.post(
            url, content=npy(x), headers={**auth, "Content-Type": "application/x-npy"}
        ).is_success
    assert (
        httpx.post(url, content=b"nope", headers={**auth, "Content-Type": "application/x-npy"}).status_code
        == 400
    )
    assert httpx.post(f"{server}/v1/models/nope/tasks/1:predict", headers=auth).status_code == 404
    r = httpx.get(f"{server}/metrics", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}  # raises on malformed text

    def value(family: str, sample: str, **labels: str) -> float:
        return next(s.value for s in families[family].samples if s.name == sample and s.labels == labels)

    task = {"model": "tiny-cnn", "task": "1"}
    assert families["hatzoo_requests"].type == "counter"
    assert value("hatzoo_requests", "hatzoo_requests_total", **task, status="200") == 3
    assert value("hatzoo_requests", "hatzoo_requests_total", **task, status="400") == 1
    assert value("hatzoo_unrouted_requests", "hatzoo_unrouted_requests_total", status="404") >= 1
    assert families["hatzoo_request_latency_seconds"].type == "histogram"
    assert value("hatzoo_request_latency_seconds", "hatzoo_request_latency_seconds_count", **task) == 4
    assert (
        value("hatzoo_request_latency_seconds", "hatzoo_request_latency_seconds_bucket", **task, le="+Inf")
        == 4
    )
    assert value("hatzoo_rows", "hatzoo_rows_total", **task) == 6
    assert value("hatzoo_batched_requests", "hatzoo_batched_requests_total", **task) == 3
    assert families["hatzoo_sessions_loaded"].type == "gauge"
    assert value("hatzoo_sessions_loaded", "hatzoo_sessions_loaded") >= 1


def test_each_server_has_its_own_registry(bundles: list[Path]) -> None:
    x = npy(np.zeros((1, 1, 8, 8), np.float32))
    with running_server(bundles) as (a, _), running_server(bundles) as (b, _):
        assert httpx.post(
            f"{a}/v1/models/tiny-mlp/tasks/0:predict",
            content=x,
            headers={"Content-Type": "application/x-npy"},
        ).is_success
        counts = []
        for url in (a, b):
            text = httpx.get(f"{url}/metrics").text
            counts.append(
                sum(
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "hatzoo_requests_total"
                )
            )
    assert counts == [1, 0]
