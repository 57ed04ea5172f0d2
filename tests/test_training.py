"""Training: recipes, the accuracy matrix and BWT, resume after an interruption, the card, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import hatzoo
from hatzoo.training import Recipe, RecipeError, load_recipe, train_sequence
from hatzoo.training.cli import train_command
from hatzoo.training.metrics import backward_transfer
from tests.model_support import TINY_VIT_TRAIN_ARGS, mlp, task_logits, tiny_recipe

CARDS = Path(__file__).resolve().parent.parent / "cards"


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    from hatzoo.data import get_benchmark

    return get_benchmark("split-mnist", max_train_per_task=50)[0].train.tensors[0][:16]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("full")
    return out, train_sequence(tiny_recipe(joint=True), out, progress=False, model_factory=mlp)


def test_results_matrix_and_bwt(full_run):
    out, results = full_run
    assert len(results.accuracy) == 3 and all(len(row) == 3 for row in results.accuracy)
    for i, row in enumerate(results.accuracy):
        assert all(v is not None for v in row[: i + 1]) and all(v is None for v in row[i + 1 :])
    matrix = results.accuracy
    assert backward_transfer(matrix) == 0.0  # computed from the matrix: HAT forgets nothing
    assert results.bwt == 0.0 and results.fwt is None
    assert all(matrix[2][j] == matrix[j][j] for j in range(3))
    assert results.average_accuracy == sum(matrix[2]) / 3 and results.average_accuracy > 0.85
    assert results.joint is not None and len(results.joint) == 3
    assert len(results.capacity) == 3 and set(results.capacity[-1]["1"]["used"]) == {"0", "1", "2"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["accuracy"] == matrix and saved["metrics"]["bwt"] == 0.0
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "capacity.png").stat().st_size > 1000
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("task_end") == 3 and "step" in events and "epoch" in events and "joint" in events


def test_card_has_real_numbers(full_run):
    out, results = full_run
    card = (out / "README.md").read_text()
    assert (out / "model" / "README.md").read_text() == card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "hatzoo" and {"hat", "continual-learning", "timm"} <= set(meta["tags"])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics[:3]] == [round(100 * a, 2) for a in results.final]
    assert f"{100 * results.average_accuracy:.2f}" in card and "| backward transfer (BWT) | 0.00 |" in card
    assert f"{100 * results.joint_average:.2f}" in card and 'hatzoo.load("tiny", task=0)' in card


def test_resume_after_interruption(tmp_path, full_run, probe):
    recipe = tiny_recipe(joint=True)
    out = tmp_path / "run"

    class Interrupt(Exception):
        pass

    def stop(task, model, results):
        if task == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_sequence(recipe, out, progress=False, model_factory=mlp, on_task_end=stop)
    before = task_logits(hatzoo.HATModel.from_pretrained(out / "checkpoints" / "task-1"), probe)
    results = train_sequence(recipe, out, progress=False, model_factory=mlp)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["task"] for e in log if e["event"] == "task_end"] == [0, 1, 2]  # 0 and 1 not retrained
    assert any(e["event"] == "resume" and e["completed"] == 2 for e in log)
    final = hatzoo.HATModel.from_pretrained(out / "checkpoints" / "task-2")
    after = task_logits(final, probe)
    assert len(after) == 3 and all(torch.equal(a, b) for a, b in zip(before, after[:2], strict=False))
    # optimizer state and per-task seeds are restored: the resumed run equals the uninterrupted one
    full_out, full = full_run
    assert results.accuracy == full.accuracy and results.bwt == 0.0
    reference = task_logits(hatzoo.HATModel.from_pretrained(full_out / "checkpoints" / "task-2"), probe)
    assert all(torch.equal(a, b) for a, b in zip(after, reference, strict=True))
    # a finished run resumes to nothing and keeps its results
    again = train_sequence(recipe, out, progress=False, model_factory=mlp)
    assert again.accuracy == results.accuracy and again.joint == results.joint


def test_resume_refuses_other_recipe(tmp_path):
    out = tmp_path / "run"
    train_sequence(tiny_recipe(epochs=1), out, progress=False, model_factory=mlp, stop_after=0)
    with pytest.raises(hatzoo.HATError, match="recipe.lr"):
        train_sequence(tiny_recipe(epochs=1, lr=0.01), out, progress=False, model_factory=mlp)


def test_recipe_cards_and_errors(tmp_path):
    for name in ("hat-vit-small", "hat-vit-tiny", "hat-resnet18", "hat-resnet18-mixed", "hat-vit-demo"):
        recipe = load_recipe(CARDS / f"{name}.yaml")
        assert recipe.name == name
        assert recipe.benchmark.name in ("split-fashion-mnist", "split-mnist", "mixed")
        assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()
    bad = tmp_path / "bad.yaml"
    for text, key in (
        ("name: x\narch: hat-vit-tiny\nrecipe: {epochz: 3}\n", "recipe.epochz"),
        ("name: x\narch: hat-vit-tiny\nrecipe: {lr: -1}\n", "recipe.lr"),
        ("name: x\narch: hat-vit-tiny\nrecipe: {optimizer: lion}\n", "recipe.optimizer"),
        ("name: x\narch: hat-vit-huge\n", "arch"),
        ("name: x\narch: hat-vit-tiny\nhat: {smax: 0}\n", "hat"),
        ("name: x\narch: hat-vit-tiny\nbenchmark: {name: split-cifar}\n", "benchmark.name"),
        ("name: x\narch: hat-vit-tiny\ncolour: red\n", "colour"),
    ):
        bad.write_text(text)
        with pytest.raises(RecipeError, match=key) as info:
            load_recipe(bad)
        assert str(bad) in str(info.value) and isinstance(info.value, hatzoo.HATError)


def test_cli_bad_inputs(tmp_path, capsys):
    assert train_command(["--card", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert train_command(["--card", str(CARDS / "hat-vit-demo.yaml"), "--benchmark", "split-cifar"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark" in err and "split-fashion-mnist" in err
    assert train_command(["--arch", "hat-vit-tiny", "--epochs", "0"]) == 2
    assert "recipe.epochs" in capsys.readouterr().err
    assert train_command(["--epochs", "1"]) == 2
    assert "--card" in capsys.readouterr().err
    assert train_command(["--card", str(CARDS / "hat-vit-demo.yaml"), "--bogus"]) == 2


def test_cli_missing_data_passes_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HATZOO_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    code = train_command(
        ["--card", str(CARDS / "hat-vit-demo.yaml"), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err
    from hatzoo.data import get_benchmark

    with pytest.raises(hatzoo.DataError) as info:
        get_benchmark("split-mnist")
    assert code == 2 and str(info.value) in err


def test_cli_trains_tiny_vit(tmp_path, capsys):
    out = tmp_path / "cli"
    assert train_command([*TINY_VIT_TRAIN_ARGS, "--no-joint", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    task_lines = [line for line in printed.splitlines() if line.startswith("task ")]
    assert len(task_lines) == 2 and task_lines[0].startswith("task 1/2 (0 vs 1) done in ")
    results = json.loads((out / "results.json").read_text())
    first, second = results["accuracy"][0][0], results["accuracy"][1]
    assert task_lines[0].endswith(f"accuracy % on tasks 1-1: {100 * first:.2f}; average {100 * first:.2f}%")
    assert f"on tasks 1-2: {100 * second[0]:.2f} {100 * second[1]:.2f};" in task_lines[1]
    assert f"average accuracy {100 * sum(second) / 2:.2f}%, backward transfer 0.00 points" in printed
    assert "2 of 2 tasks trained" in printed and f"hatzoo push {out / 'model'}" in printed
    assert (out / "model" / "README.md").is_file() and (out / "checkpoints" / "task-1").is_dir()


def test_card_results_block_is_generated(tmp_path, full_run):
    from hatzoo.training import card_results, write_card_results

    out, results = full_run
    card = tmp_path / "tiny.yaml"
    head = yaml.safe_dump(tiny_recipe(joint=True).to_dict(), sort_keys=False)
    card.write_text(head + "results: {stale: 1}\n")
    block = write_card_results(card, out / "results.json")
    data = yaml.safe_load(card.read_text())
    assert data["results"] == block == card_results(results) and "stale" not in card.read_text()
    assert block["bwt"] == 0.0 and block["accuracy"][-1] == [round(100 * a, 2) for a in results.final]
    assert block["average_accuracy"] == round(100 * results.average_accuracy, 2)
    assert card.read_text().startswith(head) and load_recipe(card).name == "tiny"
    write_card_results(card, results)  # idempotent: one results block
    assert card.read_text().count("results:") == 1
    card.write_text(yaml.safe_dump(tiny_recipe(lr=0.01).to_dict(), sort_keys=False))
    with pytest.raises(RecipeError, match="recipe.lr"):
        write_card_results(card, results)


def test_task_titles_name_pairs_or_data_sets():
    from hatzoo.training.report import task_title

    assert task_title({"name": "split/5-6", "labels": ["Coat", "Sandal"]}) == "Coat vs Sandal"
    digits = {"name": "mixed/mnist", "dataset": "mnist", "labels": [str(d) for d in range(10)]}
    assert task_title(digits) == "mnist (10 classes)"
    assert task_title({"name": "permuted/3", "labels": digits["labels"]}) == "permuted/3 (10 classes)"


def test_mask_lr_groups_keep_old_tasks_exact(tmp_path, probe):
    recipe = tiny_recipe(optimizer="adam", lr=0.003, mask_lr=0.05, scale_ramp="task", lr_schedule="cosine")
    seen = {}

    def check(task, model, results):
        seen[task] = task_logits(model, probe)

    results = train_sequence(recipe, tmp_path / "run", progress=False, model_factory=mlp, on_task_end=check)
    assert results.bwt == 0.0 and results.average_accuracy > 0.85
    for t in range(3):  # every ended task's logits are bitwise unchanged by later tasks
        assert all(torch.equal(seen[t][j], seen[2][j]) for j in range(t + 1))
    meta = json.loads((tmp_path / "run" / "checkpoints" / "task-2" / "optimizer.json").read_text())
    lrs = sorted({g["base_lr"] for g in meta["param_groups"]})
    assert lrs == [0.003, 0.05]
    assert any(g["params"][0].startswith("embeddings.") for g in meta["param_groups"])
    with pytest.raises(RecipeError, match="recipe.lr_schedule"):
        tiny_recipe(lr_schedule="step")
    demo = Recipe.from_dict({**tiny_recipe().to_dict(), "demo": True})
    assert demo.demo and Recipe.from_dict(demo.to_dict()).demo and "demo" not in tiny_recipe().to_dict()
