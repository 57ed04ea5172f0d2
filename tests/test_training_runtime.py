"""`hatzoo train` end to end: bf16 autocast on the CPU, device checks, progress bars and the help text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import hatzoo
from hatzoo.data import get_benchmark
from hatzoo.training import Recipe, train_sequence
from hatzoo.training.cli import train_command
from tests.model_support import TINY_VIT_TRAIN_ARGS

RECIPE = {"name": "tiny", "arch": "hat-vit-tiny", "benchmark": {"name": "split-mnist"}}


def _task0_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    model = hatzoo.HATModel.from_pretrained(folder).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x, task=0)


def test_bf16_autocast_trains_end_to_end_with_fp32_weights(tmp_path, capsys):
    bf16, fp32 = tmp_path / "bf16", tmp_path / "fp32"
    assert train_command([*TINY_VIT_TRAIN_ARGS, "--device", "cpu", "--amp", "bf16", "--out", str(bf16)]) == 0
    captured = capsys.readouterr()
    for bar in ("task 1/2 epoch 1/1", "task 2/2 epoch 1/1", "evaluate task 1", "joint epoch 1/1"):
        assert bar in captured.err  # progress bars on training, evaluation and joint training
    results = json.loads((bf16 / "results.json").read_text())
    assert results["metrics"]["bwt"] == 0.0 and results["accuracy"][1][0] == results["accuracy"][0][0]
    assert len(results["joint"]) == 2
    start = json.loads((bf16 / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["amp"] == "bf16"

    model = hatzoo.HATModel.from_pretrained(bf16 / "model")
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights stay float32
    x = get_benchmark("split-mnist", max_train_per_task=16)[0].train.tensors[0]
    before = _task0_logits(bf16 / "checkpoints" / "task-0", x)
    assert before.dtype == torch.bfloat16  # the forward pass really ran under autocast
    assert torch.equal(before, _task0_logits(bf16 / "checkpoints" / "task-1", x))  # nothing forgotten

    argv = [*TINY_VIT_TRAIN_ARGS, "--amp", "fp32", "--no-joint", "--no-progress", "--out", str(fp32)]
    assert train_command(argv) == 0
    assert "epoch 1/1" not in capsys.readouterr().err  # --no-progress: no bars
    plain = hatzoo.HATModel.from_pretrained(fp32 / "model")
    pairs = zip(model.parameters(), plain.parameters(), strict=True)
    assert not all(torch.equal(p, q) for p, q in pairs)  # same seeds; bf16 arithmetic changed the training


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "'cuda' is not available on this machine"),
        ("cuda:3", "'cuda:3' is not available on this machine"),
        ("gpu0", "unknown device 'gpu0'; use cpu, cuda or cuda:N"),
    ],
)
def test_bad_device_is_one_clear_line(device, message, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert train_command([*TINY_VIT_TRAIN_ARGS, "--device", device, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists()  # refused before any work
    with pytest.raises(hatzoo.HATError, match="use --device cpu" if device != "gpu0" else "unknown device"):
        train_sequence(Recipe.from_dict(RECIPE), tmp_path / "api", device=device)


def test_bad_precision_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(hatzoo.HATError, match="unknown precision 'fp16'; choose one of fp32, bf16"):
        train_sequence(Recipe.from_dict(RECIPE), tmp_path, amp="fp16")
    assert train_command([*TINY_VIT_TRAIN_ARGS, "--amp", "fp16"]) == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_help_shows_every_default_and_examples(capsys):
    assert train_command(["--help"]) == 0
    text = capsys.readouterr().out
    options = text.split("options:")[1].split("examples:")[0]
    entries = re.split(r"\n  (?=-)", options.strip())
    assert len(entries) >= 30
    for entry in entries[1:]:  # every option but --help says what it does and its default
        assert "(default: " in " ".join(entry.split()), entry
    assert "--epochs EPOCHS" in text and "(default: the card's, else 3)" in text
    assert "--amp {fp32,bf16}" in text and "--device DEVICE" in text
    examples = text.split("examples:")[1]
    assert "hatzoo train --card hat-vit-small --out runs/hat-vit-small" in examples
    assert "--device cuda --amp bf16" in examples and "torchrun" in examples
