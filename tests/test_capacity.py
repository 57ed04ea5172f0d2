"""Capacity that lasts: the budgeted start of a new task's gates, the full-group warning, the summary."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hatzoo
from hatzoo.core.capacity import CapacityWarning
from tests.model_support import ARCHS, OPTIMIZERS, task_logits


def wide_mlp(**options) -> hatzoo.HATModel:
    """One masked hidden layer of 1024 units: wide enough that unit counts follow their expectation."""
    return hatzoo.hatify(nn.Sequential(nn.Linear(16, 1024), nn.ReLU(), nn.Linear(1024, 4)), **options)


def end_untrained_tasks(model: hatzoo.HATModel, count: int) -> None:
    """Add and end ``count`` tasks without training: each keeps the mask its gates started with."""
    for _ in range(count):
        model.end_task(model.add_task(num_classes=2))


def test_a_new_task_starts_on_about_half_the_used_units_and_its_budget_of_free_ones():
    torch.manual_seed(0)
    model = wide_mlp(task_budget=1 / 16)
    end_untrained_tasks(model, 3)
    used = model.masks("0")[:3].any(0)
    task = model.add_task(num_classes=2)
    start = model.embedding("0", task).detach()
    reused, new = int((start[used] > 0).sum()), int((start[~used] > 0).sum())
    assert 0.35 * int(used.sum()) <= reused <= 0.65 * int(used.sum())  # the paper's N(0, 1) there
    assert 64 - 3 * 8 <= new <= 64 + 3 * 8  # 1024 / 16 expected, binomial sd about 7.6


def test_budgeted_tasks_leave_room_where_the_papers_start_runs_out():
    torch.manual_seed(0)
    budgeted, paper = wide_mlp(task_budget=1 / 32), wide_mlp(mask_init="normal")
    end_untrained_tasks(budgeted, 10)
    end_untrained_tasks(paper, 10)
    # N(0, 1) opens half of what is free per task: 1024 / 2**10 = 1 unit left; the budget takes ~32 a task
    assert paper.capacity()["0"]["free"] <= 8
    assert 1024 - 320 - 60 <= budgeted.capacity()["0"]["free"] <= 1024 - 320 + 60


def test_a_narrow_group_starts_its_first_tasks_as_the_paper_does_and_then_fills_up():
    torch.manual_seed(0)
    model = hatzoo.hatify(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2)), task_budget=1 / 32)
    end_untrained_tasks(model, 1)
    assert 32 - 12 <= model.capacity()["0"]["used"][0] <= 32 + 12  # half of 64, not 64 / 32 = 2
    with pytest.warns(CapacityWarning, match="0 have no free units"):
        end_untrained_tasks(model, 40)
    assert model.capacity()["0"]["free"] == 0


@pytest.mark.filterwarnings("ignore::hatzoo.CapacityWarning")  # the ViT's 3 heads fill up
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_budgeted_training_keeps_every_earlier_task_bitwise(arch):
    torch.manual_seed(0)
    model = ARCHS[arch]()
    assert model.config.mask_init == "budget"  # the default
    x = torch.randn(8, 1, 16, 16)
    optimizer, after_learning = None, []
    for _ in range(3):
        task = model.add_task(num_classes=3)
        if optimizer is None:
            optimizer = OPTIMIZERS["adam"](model.parameters())
        else:
            optimizer.add_param_group({"params": model.task_parameters(task)})
        model.train()
        y = torch.randint(0, 3, (8,))
        for step in range(3):
            logits = model(x, task=task, scale=hatzoo.schedules.get_schedule("linear", 400)(step, 3))
            loss = F.cross_entropy(logits, y) + model.regularization(task=task)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.end_task(task)
        after_learning.append(task_logits(model, x)[task])
    for task, logits in enumerate(task_logits(model, x)):
        assert torch.equal(logits, after_learning[task])


def test_adding_a_task_to_a_full_group_warns_once_and_says_what_to_do():
    model = hatzoo.hatify(
        nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)),
        mask_init="dense",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first task finds every group empty: no warning
        model.end_task(model.add_task(num_classes=2))
    with pytest.warns(CapacityWarning) as caught:
        model.end_task(model.add_task(num_classes=2))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "0, 2" in message and "no free units" in message
    assert "model.forget" in message and "capacity_summary" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per group, not on every task
        model.add_task(num_classes=2)


def test_capacity_keeps_its_contract_and_the_summary_reads_it():
    model = hatzoo.hatify(
        nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)),
        mask_init="dense",
    )
    model.end_task(model.add_task(num_classes=2))
    capacity = model.capacity()
    assert capacity == {
        "0": {"size": 4, "used": {0: 4}, "free": 0},
        "2": {"size": 6, "used": {0: 6}, "free": 0},
    }
    lines = model.capacity_summary().splitlines()
    assert lines[0].split() == ["0", "4", "/", "4", "used", "0", "free", "FULL"]
    assert lines[-1] == "0 of 10 units free (0.0%) after 1 ended task(s); 2 of 2 groups full"


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_a_budget_outside_zero_to_one_is_refused(budget):
    with pytest.raises(hatzoo.InputError, match="task_budget must be in"):
        hatzoo.HATConfig(task_budget=budget)


def test_the_budget_saves_and_loads_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = wide_mlp(task_budget=0.25)
    end_untrained_tasks(model, 2)
    model.save_pretrained(tmp_path / "m")
    loaded = hatzoo.HATModel.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert loaded.capacity() == model.capacity()
    task = loaded.add_task(num_classes=2)  # continues with the stored budget
    opened = loaded.embedding("0", task).detach() > 0
    assert 256 - 48 <= int((opened & ~loaded.masks("0")[:2].any(0)).sum()) <= 256 + 48


def test_hatzoo_info_shows_the_free_units_the_card_records(tmp_path, monkeypatch, capsys):
    from hatzoo.cli import main

    model = hatzoo.hatify(
        nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)),
        mask_init="dense",
    )
    model.end_task(model.add_task(num_classes=2))
    model.save_pretrained(tmp_path / "hat-room")
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "hat-room.yaml").write_text(
        "name: hat-room\narch: hat-vit-tiny\nresults:\n  complete: true\n  accuracy:\n  - [99.5]\n"
        "  capacity:\n    '0': {size: 4, free: 0}\n    '2': {size: 6, free: 6}\n"
    )
    monkeypatch.setenv("HATZOO_CARDS", str(cards))
    monkeypatch.chdir(tmp_path)
    assert main(["info", "hat-room"]) == 0
    out = capsys.readouterr().out
    assert "free units per group after the release's tasks (card; 1 groups full):" in out
    assert re.search(r"\n  2 +6 of 6 +free\n", out)  # the card's numbers, not the model's (0 free)
