"""The server against its own faults and hostile images, from outside: a decode worker killed with
SIGKILL, decompression bombs, images in every mode, foreign Host and Origin headers, malformed and
colliding bundles. Real server processes, a real HTTP client, real ONNX Runtime."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from hatzoo.export.bundle import BundleError, read_bundle
from hatzoo.export.server import create_app
from tests.serving_support import Reference, edit_manifest, running_server, server_process

PREDICT = "/v1/models/tiny-cnn/tasks/1:predict"


def png_header_only(width: int, height: int, frames: int | None = None) -> bytes:
    """A PNG of ~100 bytes whose header declares ``width`` x ``height`` gray pixels (and ``frames``
    animation frames): what a decompression bomb or a lying header looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if frames:
        head += chunk(b"acTL", struct.pack(">II", frames, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 4))
    return b"\x89PNG\r\n\x1a\n" + head + idat + chunk(b"IEND", b"")


def encode(im: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def reference_logits(reference: Reference, pixels01: np.ndarray) -> np.ndarray:
    """What tiny-cnn task 1 answers for 0-1 gray pixels [H, W] (the bundle normalizes by 0.5 / 0.25)."""
    x = ((pixels01 - 0.5) / 0.25).astype(np.float32)[None, None]
    return reference("tiny-cnn", "1", x)


def post_image(url: str, data: bytes, ctype: str = "image/png") -> httpx.Response:
    return httpx.post(url + PREDICT, content=data, headers={"Content-Type": ctype}, timeout=30)


# ------------------------------------------------------------------------------------ killed workers


def hatzoo_serve(*args: str):
    """``hatzoo serve ARGS`` (the command's module run by this interpreter) on a free port."""
    return server_process(*args, command=("hatzoo.cli", "serve"))


def decode_workers(server_pid: int) -> list[int]:
    """The server's decode worker processes, found as an operator would: its children (from /proc)
    whose command line is multiprocessing's spawn entry point."""
    children = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        children += (task / "children").read_text().split()
    found = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.append(pid)
    return found


def wait_for(check, timeout: float = 60.0, every: float = 0.02) -> float:
    """Seconds until ``check()`` is true (AssertionError after ``timeout``)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(every)
    return time.monotonic() - t0


@pytest.mark.integration
def test_killed_decode_worker_is_replaced_and_readiness_tells_the_truth(
    bundles: list[Path], reference: Reference
) -> None:
    """kill -9 of the decode worker holding a request: that request is 503 with Retry-After, readiness
    is false until a new pool answers, then every request is answered correctly again."""
    big = encode(Image.new("L", (8000, 8000)))  # ~60 KB that take ~0.5 s each to decode
    slow = [("file", (f"{i}.png", big, "image/png")) for i in range(8)]
    args = [*map(str, bundles), "--parse-workers", "1", "--max-image-values", "1000000000"]
    args += ["--max-body-bytes", "10000000"]
    with hatzoo_serve(*args) as (proc, url):
        gray = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
        want = reference_logits(reference, gray / 255.0)
        assert post_image(url, encode(Image.fromarray(gray))).status_code == 200  # starts the worker
        (worker,) = decode_workers(proc.pid)

        held: dict[str, httpx.Response] = {}
        sender = threading.Thread(
            target=lambda: held.update(r=httpx.post(url + PREDICT, files=slow, timeout=60)), daemon=True
        )
        sender.start()
        time.sleep(1.0)  # the worker is decoding the 8 large images now
        os.kill(worker, signal.SIGKILL)
        t_kill = time.monotonic()
        ready = lambda: httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200  # noqa: E731
        saw_not_ready = not ready()
        sender.join(60)
        r = held["r"]
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "decode worker died" in r.json()["error"]
        saw_not_ready = saw_not_ready or not ready()
        assert saw_not_ready, "readiness never reported the lost worker"
        wait_for(ready)
        back = time.monotonic() - t_kill
        health = httpx.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        for _ in range(5):  # served again, correctly
            r = post_image(url, encode(Image.fromarray(gray)))
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["logits"], want, rtol=0, atol=1e-5)
        new = decode_workers(proc.pid)
        assert new and worker not in new
        print(f"\nFAULT killed decode worker: held request 503, ready again {back:.2f} s after kill -9")


@pytest.mark.integration
def test_readiness_is_false_until_the_new_pool_answers(bundle: Path) -> None:
    """A worker killed while idle: /healthz and /v2/health/ready answer 503 at once, 200 once replaced."""
    with hatzoo_serve(str(bundle), "--parse-workers", "2") as (proc, url):
        image = encode(Image.fromarray(np.zeros((8, 8), np.uint8)))
        ok = lambda: post_image(url, image)  # noqa: E731 - images are decoded by the workers
        assert ok().status_code == 200
        workers = decode_workers(proc.pid)
        t_kill = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        statuses = []

        def probe() -> tuple[int, ...]:
            codes = (httpx.get(f"{url}{p}", timeout=10).status_code for p in ("/healthz", "/v2/health/ready"))
            statuses.append(tuple(codes))
            return statuses[-1]

        wait_for(lambda: probe() != (200, 200), timeout=10)  # noticed without any request in flight
        wait_for(lambda: probe() == (200, 200))  # replaced
        back = time.monotonic() - t_kill
        assert {s[0] for s in statuses} >= {503} and {s[1] for s in statuses} >= {503}, statuses
        assert ok().status_code == 200
        print(f"\nFAULT idle decode worker killed: ready again {back:.2f} s after kill -9")


# ------------------------------------------------------------------------------------------ bombs


@pytest.mark.integration
def test_bombs_answer_413_from_the_header_and_cost_others_nothing(bundle: Path, reference: Reference) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    good = encode(Image.fromarray(gray))
    want = reference_logits(reference, gray / 255.0)
    bombs = {
        "30000x30000": png_header_only(30000, 30000),  # beyond Pillow's own bomb limit
        "9000x9000": png_header_only(9000, 9000),  # beyond the server's budget (64 Mi values here)
        "1000x1000x1001 frames": png_header_only(1000, 1000, frames=1000),
    }
    with running_server([bundle], run_threads=1) as (url, _app):
        assert post_image(url, good).status_code == 200  # workers started
        for name, data in bombs.items():
            t0 = time.monotonic()
            r = post_image(url, data)
            took = time.monotonic() - t0
            assert r.status_code == 413, (name, r.text)
            assert took < 5, f"{name}: 413 after {took:.2f} s"
            print(f"\nFAULT bomb {name} ({len(data)} bytes): 413 in {took * 1000:.0f} ms")
        assert "9000x9000" in post_image(url, bombs["9000x9000"]).json()["error"]

        alone = []
        for _ in range(10):
            t0 = time.monotonic()
            assert post_image(url, good).status_code == 200
            alone.append(time.monotonic() - t0)
        stop = threading.Event()
        other: list[tuple[int, float]] = []

        def other_client() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                r = post_image(url, good)
                np.testing.assert_allclose(r.json()["logits"], want, rtol=0, atol=1e-5)
                other.append((r.status_code, time.monotonic() - t0))

        th = threading.Thread(target=other_client, daemon=True)
        th.start()
        with ThreadPoolExecutor(4) as pool:
            codes = list(
                pool.map(lambda i: post_image(url, list(bombs.values())[i % 3]).status_code, range(40))
            )
        stop.set()
        th.join(30)
        assert codes == [413] * 40
        assert other and all(code == 200 for code, _ in other), other
        worst = max(t for _, t in other)
        print(
            f"\nFAULT 40 bombs from 4 clients: the other client got {len(other)} answers, worst {worst:.3f} s"
            f" (alone: worst {max(alone):.3f} s, median {np.median(alone):.3f} s)"
        )


# ------------------------------------------------------------------------------------ image modes


@pytest.mark.integration
def test_images_as_they_are(bundle: Path, reference: Reference) -> None:
    """8- and 16-bit, palette, alpha, bilevel, RGB, PNG/JPEG/WebP: each is the picture the task sees."""
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    want = reference_logits(reference, gray / 255.0)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    palette = Image.fromarray(gray).convert("P")  # Pillow's palette of the gray values
    alpha = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    rgba = Image.merge("RGBA", [Image.fromarray(gray)] * 3 + [Image.fromarray(alpha)])
    same = {
        "L png": encode(Image.fromarray(gray)),
        "I;16 png (x257)": encode(sixteen),
        "P png": encode(palette),
        "LA png (alpha dropped)": encode(la),
        "RGBA png (alpha dropped)": encode(rgba),
        "RGB png": encode(Image.fromarray(gray).convert("RGB")),
        "L webp lossless": encode(Image.fromarray(gray), "WEBP", lossless=True),
    }
    with running_server([bundle]) as (url, _app):
        answers = {}
        for name, data in same.items():
            ctype = "image/webp" if "webp" in name else "image/png"
            r = post_image(url, data, ctype)
            assert r.status_code == 200, (name, r.text)
            answers[name] = np.asarray(r.json()["logits"])
            np.testing.assert_allclose(answers[name], want, rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(answers["L png"], answers["I;16 png (x257)"])

        # a 16-bit picture resized to the task (bilinear in floating point) matches the 8-bit one to
        # within the 8-bit path's rounding of the resized pixels
        big = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        r8 = post_image(url, encode(Image.fromarray(big)))
        r16 = post_image(url, encode(Image.fromarray(big.astype(np.uint16) * 257)))
        l8, l16 = np.asarray(r8.json()["logits"]), np.asarray(r16.json()["logits"])
        assert np.abs(l8 - l16).max() < 0.1, (l8, l16)

        # values above 255 are kept, not clipped: a 16-bit ramp differs from its 8-bit clip
        ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
        r = post_image(url, encode(Image.fromarray(ramp)))
        np.testing.assert_allclose(
            r.json()["logits"], reference_logits(reference, ramp / 65535.0), rtol=0, atol=1e-5
        )

        jpeg = post_image(url, encode(Image.fromarray(gray), "JPEG", quality=100), "image/jpeg")
        assert jpeg.status_code == 200 and np.abs(np.asarray(jpeg.json()["logits"]) - want).max() < 0.5

        cmyk = post_image(url, encode(Image.new("CMYK", (8, 8)), "JPEG"), "image/jpeg")
        assert cmyk.status_code == 415, cmyk.text
        assert "CMYK" in cmyk.json()["error"] and "I;16" in cmyk.json()["error"]

        multipart = httpx.post(
            url + PREDICT,
            files=[
                ("file", ("a.png", same["L png"], "image/png")),
                ("file", ("b.png", same["I;16 png (x257)"])),
            ],
        )
        assert multipart.status_code == 200, multipart.text
        np.testing.assert_array_equal(multipart.json()["logits"][0], multipart.json()["logits"][1])


# ----------------------------------------------------------------------------------- Host / Origin


@pytest.mark.integration
def test_foreign_host_and_origin_are_refused_without_a_key(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HATZOO_API_KEY", raising=False)
    with running_server([bundle], allowed_hosts=("hatzoo.lan",)) as (url, _app):
        port = httpx.URL(url).port
        get = lambda **h: httpx.get(f"{url}/v1/models", headers=h)  # noqa: E731
        assert get().status_code == 200  # httpx sends Host: 127.0.0.1:PORT
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", "[::1]", f"[::1]:{port}", "hatzoo.lan"):
            assert get(Host=host).status_code == 200, host
        for host in ("rebind.evil.example", f"rebind.evil.example:{port}", "10.0.0.1", "localhost.evil"):
            r = get(Host=host)
            assert r.status_code == 421 and "--allowed-host" in r.json()["error"], host
        r = httpx.post(url + PREDICT, content=b"{}", headers={"Host": "evil.example"})
        assert r.status_code == 421
        assert get(Origin=f"http://localhost:{port}").status_code == 200
        for origin in ("http://evil.example", "null"):
            assert get(Origin=origin).status_code == 403, origin
        assert "access-control-allow-origin" not in get(Origin=f"http://localhost:{port}").headers
    monkeypatch.setenv("HATZOO_API_KEY", "k3y")
    with running_server([bundle]) as (url, _app):  # a key stops rebinding already: no Host check
        headers = {"Host": "serving.example", "X-API-Key": "k3y"}
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200


def test_host_rules() -> None:
    from hatzoo.export.guard import allowed_host_names, host_allowed

    loopback = allowed_host_names("127.0.0.1", ["Serving.Example."])
    assert {"localhost", "127.0.0.1", "::1", "serving.example"} <= loopback
    assert not host_allowed("10.0.0.7", loopback) and not host_allowed("evil.example", loopback)
    wildcard = allowed_host_names("0.0.0.0", [])
    assert host_allowed("10.0.0.7", wildcard) and host_allowed("fe80::1", wildcard)
    assert not host_allowed("rebind.evil.example", wildcard)
    assert allowed_host_names("127.0.0.1", ["*"]) is None


def test_allowed_host_flag(bundle: Path) -> None:
    from hatzoo.export.serve_config import from_namespace
    from hatzoo.export.server import parser

    cfg = from_namespace(parser().parse_args([str(bundle), "--allowed-host", "a.lan", "--allowed-host", "b"]))
    assert cfg.allowed_hosts == ("a.lan", "b")
    assert from_namespace(parser().parse_args([str(bundle)])).allowed_hosts == ()


# ------------------------------------------------------------------------------- bundles at start


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hatzoo.cli", "serve", *args, "--port", "9"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


BAD_FIELDS = [
    ("model", lambda m: m.update(model=5), "model must be a string"),
    ("source", lambda m: m.update(source="x"), "source must be a mapping"),
    ("opset", lambda m: m.update(opset="18"), "opset must be an integer"),
    ("tasks", lambda m: m.update(tasks=[]), "tasks must be a non-empty mapping"),
    ("task", lambda m: m["tasks"].update({"0": 7}), "tasks.0 must be a mapping"),
    ("file", lambda m: m["tasks"]["0"].pop("file"), "tasks.0.file is missing"),
    ("input_name", lambda m: m["tasks"]["0"].update(input_name=["x"]), "tasks.0.input_name must be a string"),
    ("input_shape", lambda m: m["tasks"]["0"].update(input_shape=[None, 1, "8", 8]), "input_shape[2]"),
    ("dtype", lambda m: m["tasks"]["0"].update(dtype="int8"), "tasks.0.dtype must be one of"),
    ("mean", lambda m: m["tasks"]["0"]["normalization"].update(mean=[0.1, 0.2]), "mean must have 1"),
    ("std", lambda m: m["tasks"]["0"]["normalization"].update(std=[0]), "tasks.0.normalization.std[0]"),
    ("labels", lambda m: m["tasks"]["0"].update(labels=["a", 2, "c"]), "tasks.0.labels[1] must be"),
    ("kept_units", lambda m: m["tasks"]["0"].update(kept_units={"g": ["3", 4]}), "kept_units.g[0]"),
    ("kept>total", lambda m: m["tasks"]["0"].update(kept_units={"g": [5, 4]}), "kept_units.g[0]"),
    ("flops", lambda m: m["tasks"]["0"].update(flops_fraction="0.5"), "flops_fraction must be"),
    ("sha256", lambda m: m["tasks"]["0"].update(sha256="abc"), "tasks.0.sha256 must be 64"),
]


@pytest.mark.parametrize("edit, message", [b[1:] for b in BAD_FIELDS], ids=[b[0] for b in BAD_FIELDS])
def test_each_malformed_manifest_field_is_named(bundle: Path, tmp_path: Path, edit, message: str) -> None:
    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    edit_manifest(d, edit)
    with pytest.raises(BundleError, match=message.replace("[", r"\[")) as ei:
        read_bundle(d)
    assert "\n" not in str(ei.value)


@pytest.mark.integration
def test_serve_names_every_bad_field_on_one_line_and_exits_2(bundle: Path, tmp_path: Path) -> None:
    d = tmp_path / "b"
    shutil.copytree(bundle, d)

    def break_fields(m: dict) -> None:
        m["tasks"]["0"]["dtype"] = "int8"
        m["tasks"]["1"]["labels"] = "abc"
        del m["tasks"]["2"]["output_name"]

    edit_manifest(d, break_fields)
    r = serve_cli(str(d))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for field in ("tasks.0.dtype", "tasks.1.labels", "tasks.2.output_name is missing"):
        assert field in r.stderr, r.stderr


@pytest.mark.integration
def test_v2_name_collisions_are_refused_naming_both_bundles(bundles: list[Path], tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(bundles[0], twin)  # a second bundle of the model tiny-cnn
    r = serve_cli(str(bundles[0]), str(twin))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(bundles[0].resolve()) in r.stderr and str(twin.resolve()) in r.stderr, r.stderr

    shadow = tmp_path / "shadow"  # a model named like tiny-cnn's task 0 in v2
    shutil.copytree(bundles[1], shadow)
    edit_manifest(shadow, lambda m: m.update(model="tiny-cnn_task0"))
    with pytest.raises(BundleError, match="'tiny-cnn_task0' is both the model") as ei:
        create_app([bundles[0], shadow], global_thread_pool=False)
    assert str(shadow.resolve()) in str(ei.value) and str(bundles[0].resolve()) in str(ei.value)
