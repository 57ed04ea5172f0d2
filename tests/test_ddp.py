"""DDP: ``torchrun --nproc_per_node 2`` (gloo, CPU) trains the same model as one process, forgetting nothing.

A tiny LayerNorm-only ViT (no BatchNorm: per-rank batch statistics would differ from one process's)
on 64 Split-MNIST images per task. Both runs use the same global batch of 16; under DDP each rank
takes 8 rows and DDP averages the gradients, so the results agree up to float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from hatzoo import HATModel
from hatzoo.training import load_recipe, train_sequence
from tests.model_support import task_logits

CARD = """\
name: ddp-tiny
arch: hat-vit-tiny
model_args: {img_size: 28, patch_size: 7, in_chans: 1, embed_dim: 32, depth: 1, num_heads: 2}
benchmark: {name: split-mnist, seed: 0, max_train_per_task: 64, max_test_per_task: 64, max_tasks: 2}
recipe: {optimizer: sgd, lr: 0.01, momentum: 0.9, epochs: 2, batch_size: 16, seed: 0, joint: false}
hub: {repo_id: test-org/ddp-tiny}
"""


def test_ddp_matches_single_process(tmp_path: Path) -> None:
    card = tmp_path / "ddp-tiny.yaml"
    card.write_text(CARD)
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    train = ["-m", "hatzoo.training.cli", "--card", str(card), "--out", str(ddp_out), "--no-progress"]
    proc = subprocess.run([*torchrun, *train], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = train_sequence(load_recipe(card), single_out, progress=False)
    ddp = json.loads((ddp_out / "results.json").read_text())
    assert ddp["benchmark"]["num_tasks"] == 2 and ddp["metrics"]["bwt"] == 0.0
    for row_ddp, row_single in zip(ddp["accuracy"], single.accuracy, strict=True):
        for a, b in zip(row_ddp, row_single, strict=True):
            assert (a is None and b is None) or abs(a - b) <= 1 / 64 + 1e-12  # at most one test image flips

    from hatzoo.data import get_benchmark

    x = get_benchmark("split-mnist", max_train_per_task=16)[1].train.tensors[0]
    ddp_model = HATModel.from_pretrained(ddp_out / "checkpoints" / "task-1")
    single_model = HATModel.from_pretrained(single_out / "checkpoints" / "task-1")
    for a, b in zip(task_logits(ddp_model, x), task_logits(single_model, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for (name, p), (_, q) in zip(ddp_model.named_parameters(), single_model.named_parameters(), strict=True):
        if not name.startswith("embeddings."):  # gate embeddings: compared through their binary masks below
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4, msg=name)
    for group in ddp_model.groups:  # HAT's compensation scales embedding gradients by up to smax**2,
        assert torch.equal(ddp_model.masks(group), single_model.masks(group))  # so only their signs agree
    # zero forgetting under DDP: task 0's logits are bitwise the same before and after training task 1
    after_task0 = task_logits(HATModel.from_pretrained(ddp_out / "checkpoints" / "task-0"), x)
    assert torch.equal(after_task0[0], task_logits(ddp_model, x)[0])
    assert ddp["accuracy"][1][0] == ddp["accuracy"][0][0]
