"""Plots and the Hub model card, generated from :class:`Results` (never typed by hand).

``render_card`` writes the README.md the Hub shows: YAML front matter (library_name, tags, datasets,
and a ``model-index`` with one accuracy metric per task plus average accuracy and BWT), then the
description, the recipe, the accuracy matrix, the joint upper bound, capacity, and how to load it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from hatzoo.card import BenchmarkSpec, update_card
from hatzoo.training.metrics import FWT_REASON, Results
from hatzoo.training.recipe import Recipe, RecipeError

HUB_DATASETS = {
    "split-fashion-mnist": ("zalando-datasets/fashion_mnist", "Split-Fashion-MNIST"),
    "tv-fashion-mnist": ("zalando-datasets/fashion_mnist", "Split-Fashion-MNIST"),
    "split-mnist": ("ylecun/mnist", "Split-MNIST"),
    "tv-mnist": ("ylecun/mnist", "Split-MNIST"),
    "permuted-mnist": ("ylecun/mnist", "Permuted-MNIST"),
    "tv-cifar10": ("uoft-cs/cifar10", "Split-CIFAR-10"),
    "tv-cifar100": ("uoft-cs/cifar100", "Split-CIFAR-100"),
}
# the licenses under which a release may carry a data set's images (its replay buffer)
DATASET_LICENSES = {"zalando-datasets/fashion_mnist": "MIT", "ylecun/mnist": "CC BY-SA 3.0"}


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def task_title(task: dict[str, Any]) -> str:
    """A task's name on cards: its labels ("Coat vs Sandal"), or its data set and class count when long."""
    labels = task["labels"]
    if len(labels) <= 3:
        return " vs ".join(labels)
    return f"{task.get('dataset') or task['name']} ({len(labels)} classes)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_heatmap(image, xlabel: str, title: str, path: str | os.PathLike[str]) -> None:
    """Label a heat map (an ``imshow`` image), add its colour bar, write its figure to ``path``, close it."""
    ax, fig = image.axes, image.axes.figure
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_accuracy(results: Results, path: str | os.PathLike[str]) -> None:
    """Heat map of the accuracy matrix R[i][j] (rows: after task i, columns: task j)."""
    plt = _pyplot()
    n = results.num_trained
    cols = len(results.tasks)
    grid = [[float("nan") if v is None else 100 * v for v in row[:cols]] for row in results.accuracy]
    _, ax = plt.subplots(figsize=(1.2 + 0.9 * cols, 1.0 + 0.8 * max(n, 1)))
    image = ax.imshow(grid if grid else [[float("nan")]], vmin=50, vmax=100, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w" if v < 85 else "k", fontsize=8)
    ax.set_xticks(range(cols), [f"T{j}" for j in range(cols)])
    ax.set_yticks(range(n), [f"after T{i}" for i in range(n)])
    title = f"{results.name}: test accuracy (%)  BWT={_pct(results.bwt)}"
    _save_heatmap(image, "evaluated task", title, path)


def plot_capacity(results: Results, path: str | os.PathLike[str]) -> None:
    """Share of each mask group's units used by the tasks trained so far, after every task."""
    plt = _pyplot()
    used = results.capacity_used()
    groups = list(used[0]) if used else []
    _, ax = plt.subplots(figsize=(1.8 + 0.9 * max(len(used), 1), 1.2 + 0.22 * max(len(groups), 1)))
    grid = [[100 * used[i][g] for i in range(len(used))] for g in groups] or [[float("nan")]]
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(used)), [f"T{i}" for i in range(len(used))])
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    _save_heatmap(image, "after task", f"{results.name}: units used (%)", path)


def model_index(
    results: Results, recipe: Recipe, release: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The Hub's ``model-index`` entry: one accuracy per task, average accuracy and BWT.

    With a ``release`` block the accuracies are those of the published files, else the final row.
    """
    dataset_id, dataset_name = HUB_DATASETS.get(recipe.benchmark.name, (recipe.benchmark.name,) * 2)
    final = release["accuracy"] if release else [round(100 * a, 2) for a in results.final]
    metrics: list[dict[str, Any]] = [
        {"type": "accuracy", "name": f"Task {j} ({task_title(task)}) accuracy", "value": acc}
        for j, (task, acc) in enumerate(zip(results.tasks, final, strict=False))
    ]
    if results.average_accuracy is not None:
        average = release["average_accuracy"] if release else round(100 * results.average_accuracy, 2)
        metrics.append({"type": "accuracy", "name": "Average accuracy", "value": average})
    if results.bwt is not None:
        metrics.append({"type": "bwt", "name": "Backward transfer", "value": round(100 * results.bwt, 4)})
    return [
        {
            "name": recipe.name,
            "results": [
                {
                    "task": {"type": "image-classification", "name": "Task-incremental continual learning"},
                    "dataset": {"type": dataset_id, "name": dataset_name, "split": "test"},
                    "metrics": metrics,
                }
            ],
        }
    ]


def render_card(results: Results, recipe: Recipe, release: dict[str, Any] | None = None) -> str:
    """The model card README.md for ``results`` of ``recipe`` (and of its published files, ``release``)."""
    dataset_id, dataset_name = HUB_DATASETS.get(recipe.benchmark.name, (recipe.benchmark.name,) * 2)
    front = {
        "library_name": "hatzoo",
        "license": "apache-2.0",
        "tags": ["hat", "continual-learning", "image-classification", "timm"],
        "datasets": [dataset_id],
        "pipeline_tag": "image-classification",
        "model-index": model_index(results, recipe, release),
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {recipe.name}", "", recipe.description or f"A HAT model trained on {dataset_name}.", ""]
    lines += _recipe_section(results, recipe, dataset_name)
    lines += _results_section(results, release)
    lines += _capacity_section(results)
    lines += _how_to_load(recipe)
    return "\n".join(lines)


def _recipe_section(results: Results, recipe: Recipe, dataset_name: str) -> list[str]:
    """What was trained and how: one paragraph, then the recipe's settings as a table."""
    status = "" if results.complete else f" (partial: {results.num_trained} of {len(results.tasks)} tasks)"
    lines = [
        f"HAT (Hard Attention to the Task) `{recipe.arch}` trained task after task on **{dataset_name}**"
        f"{status}, task-incremental (the task id is given at inference). Binary per-task masks and locked "
        "weights make forgetting exactly zero.",
        "",
        "## Recipe",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    bench = recipe.benchmark
    r = recipe.recipe
    rows = [
        ("architecture", f"`{recipe.arch}` {_inline(recipe.model_args)}"),
        ("HAT", _inline(recipe.hat.to_dict())),
        ("benchmark", f"`{bench.name}` seed {bench.seed}, {len(results.tasks)} tasks"),
        ("training data per task", _training_data_text(bench)),
        ("optimizer", _optimizer_text(recipe)),
        ("epochs per task / batch", f"{r.epochs} / {r.batch_size}"),
        (
            "scale schedule",
            f"{r.schedule} from 1/smax to smax {recipe.hat.smax} over each "
            f"{'task' if r.scale_ramp == 'task' else 'epoch'}, clip grad {r.clip_grad}",
        ),
        ("seed", str(r.seed)),
    ]
    if r.replay:
        rows.append(("replay buffer", replay_text(recipe, dataset_name)))
    if r.ood:
        rows.append(("out-of-distribution loss", f"weight {r.ood}: {OOD_TEXT}"))
    return lines + [f"| {k} | {v} |" for k, v in rows]


OOD_TEXT = (
    "from the second task on, each batch also brings as many buffer images of earlier tasks, on which the "
    "task learns a low log-sum-exp of its logits (energy outlier exposure)"
)


def _training_data_text(bench: BenchmarkSpec) -> str:
    """Which training images each task was trained on."""
    text = (
        "all"
        if bench.max_train_per_task is None
        else f"seeded class-balanced subset of {bench.max_train_per_task}"
    )
    if bench.validation:
        text += f", less a seeded {bench.validation:.0%} held out as the validation split"
    return text


def replay_text(recipe: Recipe, dataset_name: str) -> str:
    """What the release's replay buffer holds and under which license its images are redistributed."""
    dataset_id = HUB_DATASETS.get(recipe.benchmark.name, (recipe.benchmark.name,))[0]
    license_ = DATASET_LICENSES.get(dataset_id)
    terms = (
        f"redistributed under the data set's {license_} license"
        if license_
        else "check that the data set's license allows redistributing them before you publish"
    )
    return (
        f"{recipe.recipe.replay} class-balanced {dataset_name} training images (`replay.safetensors`, "
        f"{terms}); each task's likelihood-ratio head in `task_free.safetensors` answers without a task id"
    )


def _results_section(results: Results, release: dict[str, Any] | None) -> list[str]:
    """The accuracy matrix, the summary metrics, the joint upper bound and the released files' accuracy."""
    lines = ["", "## Results", "", "Test accuracy (%) on task j (columns) after training task i (rows):", ""]
    cols = len(results.tasks)
    lines += ["| after \\ on | " + " | ".join(f"T{j}" for j in range(cols)) + " |"]
    lines += ["|---" * (cols + 1) + "|"]
    for i, row in enumerate(results.accuracy):
        lines += [f"| T{i} | " + " | ".join("" if v is None else _pct(v) for v in row[:cols]) + " |"]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [
        f"| average accuracy (last row) | {_pct(results.average_accuracy)} |",
        f"| backward transfer (BWT) | {_pct(results.bwt)} |",
        f"| forward transfer (FWT) | not defined: {FWT_REASON.split(': ', 1)[1]} |",
    ]
    if results.joint is not None:
        lines += [
            f"| joint-training upper bound (average) | {_pct(results.joint_average)} |",
            f"| gap to joint (points) | {_pct(results.gap_to_joint)} |",
        ]
    lines += [""]
    if results.joint is not None:
        lines += [
            "Joint upper bound: the same backbone without HAT, one head per task, all tasks' data mixed, "
            "same optimizer and epochs. Per task: "
            + ", ".join(f"T{j} {_pct(a)}" for j, a in enumerate(results.joint)),
            "",
        ]
    if release:
        lines += [
            f"**These files** store the shared Linear and Conv weights in {release['precision']} (widened "
            "to float32 on load; norms, heads and masks in float32). Measured on them after saving: "
            + ", ".join(f"T{j} {a:.2f}" for j, a in enumerate(release["accuracy"]))
            + f" (average {release['average_accuracy']:.2f}%).",
            "",
        ]
    lines += ["Per task: " + ", ".join(f"T{j} = {task_title(t)}" for j, t in enumerate(results.tasks))]
    return lines + ["", "![accuracy matrix](accuracy.png)", ""]


def _capacity_section(results: Results) -> list[str]:
    """How many masked units the tasks use after the last one, in total and per group."""
    lines = ["## Capacity", ""]
    if not results.capacity:
        return lines
    last = results.capacity[-1]
    total = sum(c["size"] for c in last.values())
    used = total - sum(c["free"] for c in last.values())
    lines += [
        f"After the last task {used} of {total} masked units ({_pct(used / total, 1)}%) are used; "
        f"the rest is free for new tasks. Units used per task: "
        + ", ".join(
            f"T{t}: {sum(c['used'].get(str(t), 0) for c in last.values())}"
            for t in range(results.num_trained)
        )
        + ".",
        "",
        "| group | size | used | free |",
        "|---|---|---|---|",
    ]
    lines += [f"| {g} | {c['size']} | {c['size'] - c['free']} | {c['free']} |" for g, c in last.items()]
    return lines + ["", "![capacity](capacity.png)", ""]


def _how_to_load(recipe: Recipe) -> list[str]:
    """The card's closing section: loading one task or the full model, and where the files come from."""
    return [
        "## How to load",
        "",
        "```python",
        "import hatzoo",
        f'model = hatzoo.load("{recipe.name}", task=0)   # one task, ready for inference: model(x)',
        f'full = hatzoo.load("{recipe.name}")            # the full HAT model: add and train new tasks',
        "```",
        "",
        "`hatzoo.load` finds the card's pinned revision in the Hugging Face cache or on the Hub, else the "
        "release bundled in a hatzoo checkout (`zoo/`), checked against the pinned sha256.",
        "",
        f"Trained with `hatzoo train --card cards/{recipe.name}.yaml`; "
        f"Hub repository `{recipe.hub.repo_id}`.",
        "",
    ]


def _optimizer_text(recipe: Recipe) -> str:
    r = recipe.recipe
    text = f"{r.optimizer} lr {r.lr}"
    if r.mask_lr is not None:
        text += f" (gate embeddings: lr {r.mask_lr})"
    if r.lr_schedule != "constant":
        text += f", {r.lr_schedule} decay within each task"
    if r.optimizer == "sgd":
        text += f", momentum {r.momentum}"
    return text + f", weight decay {r.weight_decay}"


def _inline(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items()) or "defaults"


def write_report(results: Results, recipe: Recipe, out_dir: str | os.PathLike[str]) -> Path:
    """Write results.json, both plots and README.md into ``out_dir``; returns the README path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results.save(out / "results.json")
    plot_accuracy(results, out / "accuracy.png")
    plot_capacity(results, out / "capacity.png")
    path = out / "README.md"
    path.write_text(render_card(results, recipe), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the card's results block
_RECIPE_KEYS = ("arch", "model_args", "hat", "benchmark", "recipe")


def card_results(results: Results) -> dict[str, Any]:
    """The ``results`` block of a zoo card: the measured summary of one run, in percent (2 decimals)."""

    def pct(v: float | None) -> float | None:
        return None if v is None else round(100 * float(v), 2)

    return {
        "complete": results.complete,
        "tasks": [task_title(t) for t in results.tasks],
        "train_per_task": [t["train"] for t in results.tasks],
        "test_per_task": [t["test"] for t in results.tasks],
        "accuracy": [[pct(v) for v in row if v is not None] for row in results.accuracy],
        "average_accuracy": pct(results.average_accuracy),
        "bwt": pct(results.bwt),
        "joint": None if results.joint is None else [pct(v) for v in results.joint],
        "joint_average_accuracy": pct(results.joint_average),
        "gap_to_joint": pct(results.gap_to_joint),
        "train_seconds": round(sum(results.seconds), 1),
        "joint_seconds": None if results.joint_seconds is None else round(results.joint_seconds, 1),
        "capacity": card_capacity(results.capacity[-1]) if results.capacity else None,
    }


def card_capacity(capacity: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``model.capacity()`` as a card stores it: each group's size and free units, without per-task counts."""
    return {group: {"size": c["size"], "free": c["free"]} for group, c in capacity.items()}


def _same_recipe(card: Recipe, run: dict[str, Any]) -> list[str]:
    """Keys (section.key) in which a card's recipe and a run's recipe differ (the joint flag aside)."""
    mine = card.to_dict()
    diff = []
    for key in _RECIPE_KEYS:
        a, b = mine.get(key), run.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            skip = ("joint",) if key == "recipe" else ()
            diff += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]
        elif a != b:
            diff.append(key)
    return diff


def write_card_results(
    card: str | os.PathLike[str], results: Results | str | os.PathLike[str]
) -> dict[str, Any]:
    """Write the summary of ``results`` (or a results.json) into a zoo card's ``results`` block.

    The run must have used the card's recipe (architecture, HAT options, benchmark and optimisation);
    otherwise this raises, so a card never shows the numbers of another recipe. Returns the block.
    """
    if not isinstance(results, Results):
        results = Results.load(results)

    def check(updated: Recipe) -> None:
        if diff := _same_recipe(updated, results.recipe):
            raise RecipeError(
                f"{card}: these results were trained with another recipe (differs in {', '.join(diff)}); "
                "retrain with this card, or write them into the card of the recipe that produced them"
            )

    block = card_results(results)
    update_card(card, results=block, check=check)
    return block
