"""OOD-aware task training (``recipe.ood``) and the card's validation split (``benchmark.validation``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import hatzoo
from hatzoo.card import CardError
from hatzoo.checkpoint import load_pretrained
from hatzoo.training import train_sequence
from hatzoo.training.common import held_out, load_benchmark
from hatzoo.training.loop import ood_loss
from hatzoo.training.recipe import Recipe
from tests.model_support import TINY, mlp, task_logits, tiny_recipe


def ood_recipe(**recipe):
    card = tiny_recipe(epochs=1, replay=30, ood=1.0, **recipe)
    card.benchmark.validation = 0.25
    return card


def test_ood_training_leaves_earlier_tasks_bitwise_and_resumes_exactly(tmp_path: Path) -> None:
    """Later tasks train against the buffer's images of earlier ones; every ended task's logits stay
    bitwise what they were when it ended, and a run stopped and resumed writes the same bytes."""
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    at_end: dict[int, torch.Tensor] = {}

    def record(task: int, model: hatzoo.HATModel, results: object) -> None:
        at_end[task] = task_logits(model, x)[task]

    recipe = ood_recipe()
    whole = tmp_path / "whole"
    train_sequence(recipe, whole, progress=False, model_factory=mlp, on_task_end=record)
    final = task_logits(_model(whole), x)
    for t in range(3):
        assert torch.equal(final[t], at_end[t]), f"task {t}'s logits changed after it ended"

    steps = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    ood_tasks = {s["task"] for s in steps if s["event"] == "step" and "ood" in s}
    assert ood_tasks == {1, 2}  # the first task has no earlier task to reject

    plain = tmp_path / "plain"
    train_sequence(tiny_recipe(epochs=1, replay=30), plain, progress=False, model_factory=mlp)
    assert not torch.equal(task_logits(_model(plain), x)[1], final[1])  # the loss changed task 1

    staged = tmp_path / "staged"
    train_sequence(recipe, staged, progress=False, model_factory=mlp, stop_after=0, checkpoint_every=3)
    train_sequence(recipe, staged, progress=False, model_factory=mlp, checkpoint_every=3)
    for name in ("model.safetensors", "tasks.safetensors", "task_free.safetensors", "replay.safetensors"):
        assert (whole / "model" / name).read_bytes() == (staged / "model" / name).read_bytes(), name

    card = (whole / "README.md").read_text()
    assert "held out as the validation split" in card and "| out-of-distribution loss | weight 1.0" in card


def _model(run: Path) -> hatzoo.HATModel:
    return load_pretrained(run / "model")


def test_ood_loss_rewards_confidence_inside_and_doubt_outside() -> None:
    sure = torch.tensor([[8.0, -8.0]])
    doubtful = torch.tensor([[-8.0, -8.0]])
    assert ood_loss(sure, doubtful) < 0.01
    assert ood_loss(doubtful, sure) > 15
    # the plain-torch definition: softplus(-lse(inside)) + softplus(lse(outside)), means of each side
    a, b = torch.randn(5, 3), torch.randn(7, 3)
    expected = (
        torch.log1p(torch.exp(-torch.logsumexp(a, 1))).mean()
        + torch.log1p(torch.exp(torch.logsumexp(b, 1))).mean()
    )
    assert torch.allclose(ood_loss(a, b), expected)


def test_validation_rows_are_never_trained_on() -> None:
    """The training rows and the validation split partition each task's training split; the training
    rows keep their order, the test split is untouched, and the carve is a function of the seed."""
    recipe = ood_recipe()
    trained, full = load_benchmark(recipe), load_benchmark(recipe, holdout=False)
    _, val = held_out(full, 0.25, recipe.benchmark.seed)
    _, again = held_out(full, 0.25, recipe.benchmark.seed)
    for t in range(len(full)):
        x_full = full[t].train.tensors[0].flatten(1)
        x_train, x_val = trained[t].train.tensors[0].flatten(1), val[t][0].flatten(1)
        assert len(x_val) == 50 and len(x_train) == 150 and torch.equal(x_val, again[t][0].flatten(1))
        index = {tuple(row.tolist()): i for i, row in enumerate(x_full)}
        train_rows = [index[tuple(row.tolist())] for row in x_train]
        val_rows = [index[tuple(row.tolist())] for row in x_val]
        assert sorted(train_rows + val_rows) == list(range(len(x_full)))
        assert train_rows == sorted(train_rows)  # the rest, in the split's order
        assert torch.equal(trained[t].test.tensors[0], full[t].test.tensors[0])
    assert trained.options["validation"] == 0.25


def test_card_refuses_ood_without_a_buffer_and_a_validation_split_too_large() -> None:
    with pytest.raises(CardError, match=r"recipe\.ood: needs a replay buffer"):
        tiny_recipe(ood=1.0)
    with pytest.raises(CardError, match=r"recipe\.ood: must be >= 0"):
        tiny_recipe(ood=-1.0, replay=10)

    data = yaml.safe_load(TINY)
    data["benchmark"]["validation"] = 0.9

    with pytest.raises(CardError, match=r"benchmark\.validation: must be >= 0 and <= 0\.5"):
        Recipe.from_dict(data, "<test>")
    assert "ood" not in tiny_recipe().to_dict()["recipe"]
    assert "validation" not in tiny_recipe().to_dict()["benchmark"]
