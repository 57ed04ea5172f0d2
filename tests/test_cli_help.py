"""The ``hatzoo`` command answers at once and teaches right: ``list`` without torch, and every example in
every ``--help`` runs as written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hatzoo.cli import COMMANDS, main
from hatzoo.export.client import HatzooClient
from hatzoo.hub.local_hub import free_port, stop_process
from hatzoo.zoo import default_zoo


@pytest.mark.integration
def test_list_reads_the_cards_without_importing_torch_or_timm():
    code = (
        "import sys; from hatzoo.cli import main; main(['list']); "
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *listing, imported = done.stdout.strip().splitlines()
    assert imported == "False False"
    zoo = default_zoo()
    assert [line.split()[0] for line in listing] == zoo.list_models()
    card = zoo.get_card(zoo.list_models()[0])
    assert f"{card.hub.repo_id}@{card.hub.revision}" in listing[0]


@pytest.mark.integration
def test_info_on_a_zoo_release_reads_its_card_without_importing_torch_or_timm():
    code = (
        "import sys; from hatzoo.cli import main; main(['info', 'hat-vit-tiny']); "
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *info, imported = done.stdout.strip().splitlines()
    assert imported == "False False"
    results = default_zoo().get_card("hat-vit-tiny").results
    assert info[0].startswith("hat-vit-tiny: 5 tasks, architecture hat-vit-tiny")
    assert info[1] == f"  task 0: {results.tasks[0]}, test accuracy {results.shipped[0]:.2f}% (card)"
    assert f"average accuracy {results.release['average_accuracy']:.2f}%" in done.stdout
    full = sum(1 for g in results.capacity.values() if g["free"] == 0)
    assert f"free units per group after the release's tasks (card; {full} groups full):" in done.stdout
    mlp = results.capacity["blocks.0.mlp.hidden"]
    assert f"  {'blocks.0.mlp.hidden':<28} {mlp['free']:>5} of {mlp['size']:<5} free" in info
    heads = results.task_agnostic["rules"]["likelihood_ratio (release)"]
    assert (
        f"  likelihood_ratio (release) task predicted {heads['task']:.2f}%, "
        f"class-incremental accuracy {heads['class_incremental']:.2f}%"
    ) in info


# ------------------------------------------------------------------ every example of every --help runs
ORDER = ["train", "list", "info", "load", "export", "push", "serve"]  # later ones use what earlier ones made
PORT = re.compile(r"(--port |127\.0\.0\.1:)(\d+)")


def help_examples(command: str) -> list[str]:
    """The example lines of ``hatzoo COMMAND --help``, continuation lines joined."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"])
    text = out.getvalue().split("\nexamples:\n", 1)[1]
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def all_examples() -> list[tuple[str, int, str]]:
    commands = sorted(COMMANDS, key=lambda c: ORDER.index(c) if c in ORDER else len(ORDER))
    return [(c, i, line) for c in commands for i, line in enumerate(help_examples(c))]


EXAMPLES = all_examples()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with what the examples name (batch.npy, digit.png), and the environment they run in."""
    from PIL import Image

    from hatzoo.data import get_benchmark

    folder = tmp_path_factory.mktemp("examples")
    seq = get_benchmark("split-mnist", seed=0)
    np.save(folder / "batch.npy", seq[3].test.tensors[0][:8].numpy())
    pixels = seq[0].test.tensors[0][0, 0].numpy() * seq.std[0] + seq.mean[0]
    Image.fromarray(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)).save(folder / "digit.png")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_CACHE": str(folder / "hf-cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HATZOO_CARDS", None)
    servers: list[subprocess.Popen] = []
    yield folder, env, {}, servers
    for server in servers:
        stop_process(server)


def run_example(line: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def serve_example(line: str, folder: Path, env: dict[str, str], ports: dict[str, int]) -> subprocess.Popen:
    """Start a ``hatzoo serve`` example on a free port (its port in the examples mapped to it)."""

    if "--port" not in line:
        line = line.split("#")[0].rstrip() + " --port 8000"
    line = PORT.sub(lambda m: m.group(1) + str(ports.setdefault(m.group(2), free_port())), line)
    # exec env: the server (with the example's VAR=value settings) replaces bash, so stopping it stops it
    server = subprocess.Popen(
        ["bash", "-c", "exec env " + line], cwd=folder, env=env, stderr=subprocess.DEVNULL
    )
    port = int(PORT.search(line).group(2))
    HatzooClient(f"http://127.0.0.1:{port}", timeout=30).wait_until_up(server, timeout=120)
    return server


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(("command", "index", "line"), EXAMPLES, ids=[f"{c}-{i}" for c, i, _ in EXAMPLES])
def test_every_help_example_runs_as_written(command, index, line, workdir):
    folder, env, ports, servers = workdir
    if line.startswith("curl") or " hatzoo serve " in f" {line}":
        if line.startswith("curl"):  # against the server an earlier example started
            line = PORT.sub(lambda m: m.group(1) + str(ports[m.group(2)]), line)
            answer = json.loads(run_example(line, folder, env).stdout)
            assert answer["top_k"][0][0]["label"] == "0"  # digit.png is a 0 of the test split
        else:
            servers.append(serve_example(line, folder, env, ports))
        return
    if "--device cuda" in line and not torch.cuda.is_available():
        pytest.skip("a GPU example: runs where torch finds a CUDA device")
    done = run_example(line, folder, env)
    if "--arch" in line:  # the defaults learn: well above chance on every task
        accuracy = re.search(r"accuracy % on tasks 1-2: ([\d.]+) ([\d.]+)", done.stdout)
        assert accuracy and min(map(float, accuracy.groups())) > 60, done.stdout
