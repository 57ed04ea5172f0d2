"""A small HTTP client for the hatzoo server, standard library plus numpy (no torch, no httpx needed)."""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

from hatzoo.errors import ClientError


class HatzooClient:
    """Talk to ``hatzoo serve``: list models and run task-routed predictions.

    Example: ``HatzooClient("http://127.0.0.1:8000").predict("hat-vit-small", 3, x)`` with x a float array
    [B, C, H, W], already normalized with the task's mean and std (see ``models()``).
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> Any:
        """Send one request and decode the JSON answer; ClientError with the server's message on failure."""
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                doc = json.loads(raw)
                msg = doc.get("error") or doc.get("detail") or raw.decode(errors="replace")
            except ValueError:
                msg = raw.decode(errors="replace")
            raise ClientError(f"{method} {path} failed with HTTP {e.code}: {msg}", status=e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise ClientError(f"cannot reach the hatzoo server at {self.base_url}: {e}") from None

    def health(self) -> dict[str, Any]:
        """The server's /healthz answer."""
        return self._request("GET", "/healthz")

    def wait_until_up(self, process: subprocess.Popen | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Poll /healthz until the server answers; ClientError if ``process`` (the server) exits first or
        ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except ClientError:
                if process is not None and process.poll() is not None:
                    raise ClientError(
                        f"the hatzoo server for {self.base_url} exited with code {process.returncode} before "
                        "answering /healthz; run its command in a terminal to see why"
                    ) from None
                if time.monotonic() > deadline:
                    raise ClientError(
                        f"the server at {self.base_url} did not answer within {timeout:g} s"
                    ) from None
                time.sleep(0.1)

    def models(self) -> list[dict[str, Any]]:
        """Models served, each with its tasks (id, labels, input_shape, dtype, normalization)."""
        return self._request("GET", "/v1/models")["models"]

    def metrics(self) -> str:
        """The Prometheus text of /metrics."""
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=self.timeout) as r:
            return r.read().decode()

    def predict(
        self, model: str, task: int | str, inputs: np.ndarray, top_k: int = 5, use_npy: bool = True
    ) -> dict[str, Any]:
        """Logits (np.float32 [B, K]) and top-k labels for a batch; .npy upload unless ``use_npy=False``."""
        x = np.asarray(inputs)
        if x.ndim == 3:
            x = x[None]
        path = (
            f"/v1/models/{urllib.parse.quote(model, safe='')}/tasks/{urllib.parse.quote(str(task), safe='')}"
        )
        if use_npy:
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(x), allow_pickle=False)
            out = self._request(
                "POST", f"{path}:predict?top_k={int(top_k)}", buf.getvalue(), "application/x-npy"
            )
        else:
            body = json.dumps({"inputs": x.tolist(), "top_k": int(top_k)}).encode()
            out = self._request("POST", f"{path}:predict", body, "application/json")
        out["logits"] = np.asarray(out["logits"], dtype=np.float32)
        return out
