"""``hatzoo demo``: the whole life cycle on this machine, in about a minute on 2 CPU cores.

Train the demo recipe (cards/hat-vit-demo.yaml) on Split-MNIST, publish it to an embedded local Hub
and pin it in a card, load task 3 in a fresh process and predict, export every task to a pruned ONNX
graphs, serve them and send a request, then shut everything down. Each step is a public library call
or a ``hatzoo`` command; the Hub settings reach only the processes started here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatzoo.cli import command_parser
from hatzoo.errors import StepFailed
from hatzoo.files import sha256_file

if TYPE_CHECKING:
    from hatzoo.hub.local_hub import LocalHub

ZOO_NAME = "hat-vit-demo"
REPO_ID = "hatzoo/hat-vit-demo"
TASK = 3
STEPS = 7

TestImages = tuple[Any, Any, list[str]]  # images (float32 N x C x H x W), class indices, label names

PREDICT = """
import json, sys, time, numpy as np, torch, hatzoo
start = time.perf_counter()
net = hatzoo.load(sys.argv[1], task=int(sys.argv[2]))
seconds = time.perf_counter() - start
data = np.load(sys.argv[3])
with torch.no_grad():
    pred = net(torch.from_numpy(data["x"])).argmax(1).numpy()
print(json.dumps({"accuracy": float((pred == data["y"]).mean()), "n": len(pred), "load_s": seconds,
                  "predicted": [net.labels[i] for i in pred[:8].tolist()]}))
"""


@contextmanager
def step(number: int, title: str) -> Iterator[None]:
    """Print and time one step; any failure becomes a StepFailed naming it."""
    print(f"\n[demo] step {number}/{STEPS}: {title}", flush=True)
    start = time.perf_counter()
    try:
        yield
    except Exception as error:
        raise StepFailed(f"step {number} ({title}) failed: {type(error).__name__}: {error}") from error
    print(f"[demo] step {number} done in {time.perf_counter() - start:.1f} s", flush=True)


def run_demo(workdir: Path, port: int | None = None) -> dict[str, Any]:
    """Run the seven steps in ``workdir``; returns the figures (also written to figures.json)."""
    figures: dict[str, Any] = {}
    start = time.perf_counter()
    with ExitStack() as stack:
        with step(1, "start the local Hub"):
            hub, env = _start_hub(stack, workdir)
        with step(2, f"train {ZOO_NAME} on Split-MNIST"):
            figures |= _train(workdir)
        with step(3, "publish to the local Hub with git and pin it in a card"):
            figures |= _publish(workdir, hub.mirror_root)
        with step(4, f"load task {TASK} in a fresh process and predict"):
            images = _test_images()
            figures |= _predict_in_fresh_process(workdir, env, images)
        with step(5, "export every task to a pruned ONNX graph"):
            figures |= _export(workdir, env)
        with step(6, "serve the bundle and send a request"):
            figures |= _serve(stack, workdir / "bundle", env, port, images)
        with step(7, "shut down the server and the Hub"):
            stack.close()
    figures["wall_seconds"] = time.perf_counter() - start
    return figures


def _start_hub(stack: ExitStack, workdir: Path) -> tuple[LocalHub, dict[str, str]]:
    """An embedded local Hub (stopped with ``stack``) and the environment of the processes that use it."""
    from hatzoo.hub.local_hub import LocalHub

    hub = stack.enter_context(LocalHub(workdir / "hub"))
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_CACHE": str(workdir / "hf-cache"),
        "HATZOO_CARDS": str(workdir / "cards"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    env.pop("HF_HUB_OFFLINE", None)  # the Hub is this machine's: an offline user can reach it
    print(f"[demo] local Hub (olah) at {hub.endpoint}, serving {hub.mirror_root}")
    return hub, env


def _train(workdir: Path) -> dict[str, Any]:
    """Train the demo recipe from scratch into ``workdir/run`` (its ``model/`` folder is push-ready)."""
    from hatzoo.training import load_recipe, train_sequence

    results = train_sequence(load_recipe(ZOO_NAME), workdir / "run", resume=False, joint=False)
    print(f"[demo] average accuracy {results.average_accuracy:.2%}, backward transfer {results.bwt:.2%}")
    return {
        "accuracy_matrix": results.accuracy,
        "average_accuracy": results.average_accuracy,
        "bwt": results.bwt,
    }


def _publish(workdir: Path, mirror_root: Path) -> dict[str, Any]:
    """Commit the trained model into the local Hub's mirror and pin that revision in a copy of its card."""
    from hatzoo.card import HubPin, update_card
    from hatzoo.hub.publish import publish_git
    from hatzoo.zoo import get_card

    model_dir = workdir / "run" / "model"
    sha = publish_git(model_dir, REPO_ID, mirror_root=mirror_root, message="hatzoo demo")
    digest = sha256_file(model_dir / "model.safetensors")
    card = workdir / "cards" / f"{ZOO_NAME}.yaml"
    update_card(get_card(ZOO_NAME).source, hub=HubPin(REPO_ID, sha, digest), to=card)
    print(f"[demo] published {REPO_ID} at {sha}; pinned in {card}")
    return {"published": f"{REPO_ID}@{sha[:12]}"}


def _predict_in_fresh_process(workdir: Path, env: dict[str, str], images: TestImages) -> dict[str, Any]:
    """Load the published task in a new process, as a user would, and measure it on the test images."""
    import numpy as np

    x, y, labels = images
    path = workdir / f"task{TASK}-test.npz"
    np.savez(path, x=x, y=y)
    report = json.loads(_run([sys.executable, "-c", PREDICT, ZOO_NAME, str(TASK), str(path)], env))
    print(
        f"[demo] loaded in {report['load_s']:.2f} s; accuracy on {report['n']} real test images: "
        f"{report['accuracy']:.2%}\n[demo] predicted {report['predicted']}\n"
        f"[demo] truth     {[labels[i] for i in y[:8]]}"
    )
    return {"fresh_process_accuracy": report["accuracy"]}


def _export(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """``hatzoo export --all-tasks`` of the published model, as a user would run it."""
    bundle = workdir / "bundle"
    export = ["export", ZOO_NAME, "--all-tasks", "-o", str(bundle)]
    _run([sys.executable, "-m", "hatzoo.cli", *export], env)
    exported = json.loads((bundle / "manifest.json").read_text())["tasks"][str(TASK)]
    print(
        f"[demo] {bundle / exported['file']}: {exported['flops_fraction']:.0%} of the dense FLOPs, "
        f"max |pruned - HAT model| {exported['max_abs_diff']:.1e} (timings: bench/bench_export.py)"
    )
    return {"kept_flops_fraction": exported["flops_fraction"], "max_abs_diff": exported["max_abs_diff"]}


def _serve(
    stack: ExitStack, bundle: Path, env: dict[str, str], port: int | None, images: TestImages
) -> dict[str, Any]:
    """Serve ``bundle`` (stopped with ``stack``) and ask it about eight of the task's test images."""
    from hatzoo.export.client import HatzooClient
    from hatzoo.hub.local_hub import free_port, stop_process

    port = port or free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hatzoo.cli", "serve", str(bundle), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(stop_process, server)
    client = HatzooClient(f"http://127.0.0.1:{port}", timeout=30)
    client.wait_until_up(server)
    x, y, labels = images
    answer = client.predict(ZOO_NAME, TASK, x[:8], top_k=1)
    served = [row[0]["label"] for row in answer["top_k"]]
    truth = [labels[i] for i in y[:8]]
    print(f"[demo] POST /v1/models/{ZOO_NAME}/tasks/{TASK}:predict on 127.0.0.1:{port}")
    print(f"[demo] server answered {served}\n[demo] truth          {truth}")
    return {"server_answers_correct": f"{sum(a == b for a, b in zip(served, truth, strict=True))}/8"}


def _test_images() -> TestImages:
    """Task 3's test images (float32, normalized), shuffled with a fixed seed; labels and label names."""
    import torch

    from hatzoo.data import get_benchmark

    task = get_benchmark("split-mnist", seed=0)[TASK]
    x, y = task.test.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order].numpy(), y[order].numpy(), task.labels


def _run(argv: list[str], env: dict[str, str]) -> str:
    """Run a command; its last stdout line, or a RuntimeError with its last stderr line."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["the process failed"])[-1])
    return done.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    p = command_parser(
        "demo",
        "Train, publish, load, export and serve a small HAT model on this machine.",
        "  hatzoo demo --workdir demo-output",
    )
    p.add_argument("--workdir", default="demo-output", help="where the Hub, run, cache and bundle go")
    p.add_argument("--port", type=int, help="server port (default: a free one)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        figures = run_demo(workdir, args.port)
    except StepFailed as error:
        print(f"\n[demo] FAILED: {error}", file=sys.stderr)
        return 1
    (workdir / "figures.json").write_text(json.dumps(figures, indent=2))
    print("\n[demo] figures")
    for key, value in figures.items():
        if key != "accuracy_matrix":
            print(f"  {key:<24} {value:.4g}" if isinstance(value, float) else f"  {key:<24} {value}")
    print(f"[demo] all done in {figures['wall_seconds']:.0f} s; figures in {workdir / 'figures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
