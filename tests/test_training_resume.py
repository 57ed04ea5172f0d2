"""Resume within a task: ``hatzoo train`` killed with SIGKILL in the middle of a task and run again ends
bitwise equal to a run that was never interrupted."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CARD = """\
name: hat-resume
arch: hat-vit-tiny
model_args: {img_size: 28, patch_size: 7, in_chans: 1, embed_dim: 32, depth: 1, num_heads: 2,
  global_pool: avg, class_token: false}
hat: {smax: 400, reg_c: 0.1}
benchmark: {name: split-mnist, seed: 0, max_train_per_task: 400, max_tasks: 2}
recipe: {epochs: 2, batch_size: 16, joint: false}
"""
EVERY = 4  # 25 steps per epoch, 50 per task: checkpoints inside epochs and across an epoch's end


def train(card: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hatzoo.cli",
        "train",
        "--card",
        str(card),
        "--out",
        str(out),
        "--checkpoint-every",
        str(EVERY),
        "--threads",
        "1",
        "--no-progress",
    ]


def step_checkpoints(out: Path, task: int) -> list[Path]:
    return [d for d in (out / "checkpoints").glob(f"step-{task}-*") if (d / "training_state.json").is_file()]


def saved_model(out: Path) -> dict[str, torch.Tensor]:
    folder = out / "model"
    return {**load_file(folder / "model.safetensors"), **load_file(folder / "tasks.safetensors")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.integration
def test_a_run_killed_mid_task_and_resumed_ends_bitwise_equal(tmp_path):
    card = tmp_path / "hat-resume.yaml"
    card.write_text(CARD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(train(card, whole), env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(train(card, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not step_checkpoints(killed, task=1) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before a checkpoint of task 1 was seen"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "task-1").exists(), "killed after task 1 ended, not within it"
    assert (killed / "checkpoints" / "task-0").is_dir()
    left = step_checkpoints(killed, task=1)
    assert len(left) == 1

    done = subprocess.run(train(card, killed), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resume"]
    assert resumed and resumed[-1]["position"]["task"] == 1 and resumed[-1]["position"]["step"] >= EVERY
    assert not step_checkpoints(killed, task=1), "step checkpoints are removed once the task ends"

    for name in ("model.safetensors", "tasks.safetensors"):
        assert sha256(killed / "model" / name) == sha256(whole / "model" / name), name
    expected, got = saved_model(whole), saved_model(killed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    a, b = (json.loads((d / "results.json").read_text())["accuracy"] for d in (whole, killed))
    assert a == b
