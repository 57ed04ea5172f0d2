"""``hatzoo demo``: the whole life cycle on this machine, in a few minutes on 2 CPU cores.

1. start an embedded local Hub (olah over a folder in the working directory);
2. train the demo recipe (cards/hat-vit-demo.yaml) on Split-MNIST, task after task;
3. publish it into the Hub with git and pin it in a zoo card;
4. in a fresh process, ``hatzoo.load("hat-vit-demo", task=3)`` through the Hub and predict on real
   test images;
5. export task 3 to a pruned ONNX graph and measure it against the dense graph and PyTorch;
6. start ``hatzoo serve`` on the bundle and send it a request;
7. shut everything down and print the figures.
A failing step says which step failed and why, and everything started is stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from hatzoo.errors import HATError

REPO_ID = "hatzoo/hat-vit-demo"
ZOO_NAME = "hat-vit-demo"
DEMO_TASK = 3


class StepFailed(HATError):
    """A demo step that failed, with its number and name."""


class Demo:
    """Runs the steps in order, keeping what they produce and timing each."""

    def __init__(self, workdir: Path, port: int | None) -> None:
        self.workdir = workdir
        self.port = port
        self.figures: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        self.stack = ExitStack()
        self.step_number = 0

    # ------------------------------------------------------------------ plumbing
    def step(self, title: str, fn) -> Any:
        self.step_number += 1
        print(f"\n[demo] step {self.step_number}/7: {title}", flush=True)
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as error:  # every failure is reported with its step, then re-raised as one type
            raise StepFailed(
                f"step {self.step_number} ({title}) failed: {type(error).__name__}: {error}"
            ) from error
        print(f"[demo] step {self.step_number} done in {time.perf_counter() - start:.1f} s", flush=True)
        return value

    # ------------------------------------------------------------------ steps
    def start_hub(self) -> None:
        from hatzoo.hub.local_hub import LocalHub

        hub = LocalHub(self.workdir / "hub")
        self.stack.enter_context(hub)
        self.hub = hub
        self.env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": str(self.workdir / "hf-cache"),
            "HATZOO_CARDS": str(self.workdir / "cards"),
        }
        (self.workdir / "cards").mkdir(parents=True, exist_ok=True)
        os.environ.update(self.env)
        print(f"[demo] local Hub (olah) at {hub.endpoint}, serving {hub.mirror_root}")

    def train(self) -> None:
        from hatzoo.training import load_recipe, train_sequence

        recipe = load_recipe(ZOO_NAME)
        results = train_sequence(recipe, self.workdir / "run", resume=False, joint=False, progress=True)
        self.figures["accuracy_matrix"] = results.accuracy
        self.figures["average_accuracy"] = results.average_accuracy
        self.figures["bwt"] = results.bwt
        print(f"[demo] average accuracy {results.average_accuracy:.2%}, backward transfer {results.bwt}")

    def publish(self) -> None:
        from hatzoo.hub.publish import publish_git

        folder = self.workdir / "run" / "model"
        sha = publish_git(
            folder, REPO_ID, mirror_root=self.hub.mirror_root, message="hatzoo demo: Split-MNIST"
        )
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        from hatzoo.registry import get_card

        shipped = dict(get_card(ZOO_NAME).raw)
        shipped["hub"] = {"repo_id": REPO_ID, "revision": sha, "sha256": digest}
        cards = self.workdir / "cards"
        cards.mkdir(parents=True, exist_ok=True)
        (cards / f"{ZOO_NAME}.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
        self.figures["published"] = f"{REPO_ID}@{sha[:12]}"
        print(f"[demo] published {REPO_ID} at {sha}; card pinned in {cards / (ZOO_NAME + '.yaml')}")

    def load_fresh(self) -> None:
        x, y = self._test_images()
        images = self.workdir / "task3-test.npz"
        import numpy as np

        np.savez(images, x=x.numpy(), y=y.numpy())
        script = textwrap.dedent(
            f"""
            import json, time, numpy as np, torch, hatzoo
            start = time.perf_counter()
            net = hatzoo.load({ZOO_NAME!r}, task={DEMO_TASK})
            loaded = time.perf_counter() - start
            data = np.load({str(images)!r})
            with torch.no_grad():
                pred = net(torch.from_numpy(data["x"])).argmax(1).numpy()
            print(json.dumps({{"accuracy": float((pred == data["y"]).mean()), "n": int(len(pred)),
                              "load_s": loaded, "labels": net.labels,
                              "first": [net.labels[i] for i in pred[:8].tolist()]}}))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "the process failed")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        truth = [report["labels"][i] for i in y[:8].tolist()]
        self.figures["fresh_process_accuracy"] = report["accuracy"]
        print(
            f"[demo] fresh process loaded {ZOO_NAME} task {DEMO_TASK} in {report['load_s']:.2f} s; "
            f"accuracy on {report['n']} real test images: {report['accuracy']:.2%}"
        )
        print(f"[demo] predicted {report['first']}\n[demo] truth     {truth}")

    def export(self) -> None:
        import hatzoo
        from hatzoo.export.onnx_export import export_bundle

        model = hatzoo.load(ZOO_NAME)
        data_config = model.data_config
        normalization = {"mean": data_config["mean"], "std": data_config["std"]} if data_config else None
        self.bundle = export_bundle(
            model,
            self.workdir / "bundle",
            model_name=ZOO_NAME,
            source={"repo_id": REPO_ID, "revision": self.figures["published"].split("@")[1]},
            tasks=[DEMO_TASK],
            normalization=normalization,
        )
        self.figures.update(self._measure_pruned(model))

    def serve(self) -> None:
        import numpy as np

        from hatzoo.export.client import HatzooClient
        from hatzoo.hub.local_hub import free_port

        port = self.port or free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "hatzoo.cli", "serve", str(self.bundle), "--port", str(port)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stack.callback(_stop, server)
        client = HatzooClient(f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.health()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not come up: {server.stderr.read()[-500:]}") from None
                time.sleep(0.2)
        x, y = self._test_images()
        answer = client.predict(ZOO_NAME, DEMO_TASK, x[:8].numpy().astype(np.float32), top_k=1)
        labels = [row[0]["label"] for row in answer["top_k"]]
        truth = self._label_names(y[:8])
        correct = sum(a == b for a, b in zip(labels, truth, strict=True))
        self.figures["server_answers_correct"] = f"{correct}/{len(labels)}"
        print(f"[demo] POST /v1/models/{ZOO_NAME}/tasks/{DEMO_TASK}:predict on 127.0.0.1:{port}")
        print(f"[demo] server answered {labels}\n[demo] truth          {truth}")

    # ------------------------------------------------------------------ helpers
    def _test_images(self):
        """Task 3's test images, shuffled with a fixed seed (the split stores them sorted by class)."""
        import torch

        from hatzoo.data import get_benchmark

        task = get_benchmark("split-mnist", seed=0)[DEMO_TASK]
        x, y = task.test.tensors
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        self._labels = task.labels
        return x[order], y[order]

    def _label_names(self, y) -> list[str]:
        return [self._labels[i] for i in y.tolist()]

    def _measure_pruned(self, model) -> dict[str, Any]:
        """Pruned vs dense ONNX graph (size, time) and vs the PyTorch HAT model, side by side."""
        import numpy as np
        import torch

        from hatzoo.export.baking import dense_masked
        from hatzoo.export.onnx_export import export_module, ort_session

        pruned_path = self.bundle / f"task-{DEMO_TASK}.onnx"
        dense_path = self.workdir / "dense-task3.onnx"
        x, _ = self._test_images()
        example = x[:2]
        export_module(dense_masked(model, DEMO_TASK).eval(), example, dense_path)
        pruned, dense = ort_session(pruned_path), ort_session(dense_path)
        batch = x[:32].numpy()
        feed = lambda s: {s.get_inputs()[0].name: batch}  # noqa: E731
        times: dict[str, list[float]] = {"pruned": [], "dense": [], "torch": []}
        model.eval()
        for _ in range(30):
            for name, run in (
                ("pruned", lambda: pruned.run(None, feed(pruned))),
                ("dense", lambda: dense.run(None, feed(dense))),
                ("torch", lambda: _torch_run(model, x[:32])),
            ):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        median = {k: statistics.median(v) for k, v in times.items()}
        manifest = json.loads((self.bundle / "manifest.json").read_text())["tasks"][str(DEMO_TASK)]
        with torch.no_grad():
            diff = float(
                np.abs(pruned.run(None, feed(pruned))[0] - model(x[:32], task=DEMO_TASK).numpy()).max()
            )
        figures = {
            "kept_flops_fraction": manifest["flops_fraction"],
            "pruned_onnx_bytes": pruned_path.stat().st_size,
            "dense_onnx_bytes": dense_path.stat().st_size,
            "pruned_vs_dense_time": median["pruned"] / median["dense"],
            "onnx_vs_torch_speedup": median["torch"] / median["pruned"],
            "max_abs_diff": diff,
        }
        print(
            f"[demo] task {DEMO_TASK}: pruned graph {figures['pruned_onnx_bytes'] / 1e6:.2f} MB vs dense "
            f"{figures['dense_onnx_bytes'] / 1e6:.2f} MB; kept FLOPs {figures['kept_flops_fraction']:.2f}; "
            f"time pruned/dense {figures['pruned_vs_dense_time']:.2f} (batch 32); ONNX Runtime "
            f"{figures['onnx_vs_torch_speedup']:.1f}x faster than PyTorch; max |diff| {diff:.1e}"
        )
        return figures

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        with self.stack:
            self.step("start the local Hub", self.start_hub)
            self.step("train hat-vit-demo on Split-MNIST", self.train)
            self.step("publish to the local Hub with git", self.publish)
            self.step(f"load task {DEMO_TASK} in a fresh process and predict", self.load_fresh)
            self.step(f"export task {DEMO_TASK} to a pruned ONNX graph", self.export)
            self.step("serve the bundle and send a request", self.serve)
            self.step("shut down the server and the Hub", self.stack.close)
        self.figures["wall_seconds"] = time.perf_counter() - start
        return self.figures


def _torch_run(model, x) -> None:
    import torch

    with torch.no_grad():
        model(x, task=DEMO_TASK)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hatzoo demo", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="demo-output", help="where the Hub, run, cache and bundle go")
    p.add_argument("--port", type=int, help="server port (default: a free one)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir, args.port)
    try:
        figures = demo.run()
    except StepFailed as error:
        print(f"\n[demo] FAILED: {error}", file=sys.stderr)
        return 1
    (workdir / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    print("\n[demo] figures")
    for key, value in figures.items():
        if key != "accuracy_matrix":
            print(f"  {key:<24} {value:.4g}" if isinstance(value, float) else f"  {key:<24} {value}")
    print(f"[demo] all done in {figures['wall_seconds']:.0f} s; figures in {workdir / 'figures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
