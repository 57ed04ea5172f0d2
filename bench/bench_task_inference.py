"""Task-agnostic inference on zoo models: task-prediction and class-incremental accuracy per rule.

For each model (a zoo name or a checkpoint folder, with ``--card`` for its benchmark), on its benchmark's
test split: per task-inference rule the share of inputs whose task is inferred right and the class-
incremental accuracy (right global class with no task id; ``mahalanobis`` with each task's feature
Gaussians fitted on its training split), beside the task-incremental accuracy (task
given: the ceiling) and, with ``--joint``, a joint classifier over all classes of the same architecture
trained with the card's optimizer, learning rate, batch size and epochs (the usual class-incremental upper
bound). ``--fit-temperatures`` adds each rule with per-task temperatures fitted on a split held out from
the training data. Cost: the multiply-adds of all pruned task graphs against one task's, and the wall time
of answering a batch without a task id against one task call, measured side by side (median of repeats).

``--buffers 200 2000`` adds the ``likelihood_ratio`` rule (``hatzoo.likelihood_ratio``) with a replay
buffer of each size: a seeded tenth of each task's training split is held out as the validation split,
the buffer is filled from the rest as tasks end, each ``--ratio-grid`` config is fitted on the rest and
scored on the validation split (class-incremental accuracy), and only the chosen one is run on the test
split. ``--er 2000`` adds experience replay with a buffer of that size: the plain timm backbone and one
head that grows with the classes, trained task after task on each task's data plus as many buffer rows
per batch, with the card's optimizer, learning rate, batch size and epochs.

    .venv/bin/python bench/bench_task_inference.py hat-vit-small hat-vit-tiny hat-resnet18 --joint \\
        --out runs/task-inference.json
    .venv/bin/python bench/bench_task_inference.py runs/demo --card cards/hat-vit-demo.yaml --joint
    .venv/bin/python bench/bench_task_inference.py hat-resnet18 --buffers 200 2000 --er 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hatzoo
from hatzoo.card import read_card, update_card
from hatzoo.data import TaskSequence
from hatzoo.likelihood_ratio import RatioConfig, fit_likelihood_ratio
from hatzoo.loader import load_ratio_heads
from hatzoo.replay import ReplayBuffer
from hatzoo.task_inference import (
    FeatureGaussians,
    TaskAgnosticModel,
    agnostic_macs,
    evaluate,
    fit_feature_gaussians,
    fit_temperatures,
)
from hatzoo.task_rules import RULES
from hatzoo.training import ddp
from hatzoo.training.common import (
    Runtime,
    accuracy,
    derive_seed,
    held_out,
    load_benchmark,
    make_optimizer,
    train_epoch,
)
from hatzoo.training.joint import plain_backbone
from hatzoo.training.recipe import Recipe, load_recipe


def test_rows(seq: TaskSequence, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, task id, class within the task) of every task's test split (the first ``limit`` rows of each)."""
    splits = [[v[:limit] for v in task.test.tensors] for task in seq]
    ids = [torch.full((len(y),), t, dtype=torch.long) for t, (_, y) in enumerate(splits)]
    x, y = (torch.cat(v) for v in zip(*splits, strict=True))
    return x, torch.cat(ids), y


def validation_split(seq: TaskSequence, fraction: float, seed: int) -> tuple[dict[int, Any], dict[int, Any]]:
    """(the rest, the validation split) of each task's training split as (x, y) per task: the rows a
    card's ``benchmark.validation`` trains on, and the rows it holds out."""
    rest, val = held_out(seq, fraction, seed)
    return {t: task.train.tensors for t, task in enumerate(rest)}, val


def stacked(split: dict[int, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, task id, class within the task) of every task's rows of ``split``."""
    x = torch.cat([split[t][0] for t in sorted(split)])
    task = torch.cat([torch.full((len(split[t][1]),), t) for t in sorted(split)])
    return x, task, torch.cat([split[t][1] for t in sorted(split)])


def filled_buffer(capacity: int, rest: dict[int, Any], seed: int) -> ReplayBuffer:
    """A buffer of ``capacity`` images filled from each task's rows as the task ends."""
    buffer = ReplayBuffer(capacity, seed=seed)
    for t in sorted(rest):
        buffer.add(t, *rest[t])
    return buffer


RATIO_GRID = {
    "all-256": RatioConfig(layers="all", hidden=256),
    "final-256": RatioConfig(layers="final", hidden=256),
}


def likelihood_ratio_rows(
    agnostic: TaskAgnosticModel,
    split: tuple[dict[int, Any], dict[int, Any]],
    x: torch.Tensor,
    task: torch.Tensor,
    target: torch.Tensor,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """Per buffer size: each grid config's validation accuracy, the chosen one, and its test accuracy;
    ``split`` is (the training rows heads and buffer are made of, the validation split)."""
    rest, val = split
    xv, tv, yv = stacked(val)
    out: dict[str, Any] = {}
    for capacity in args.buffers:
        buffer = filled_buffer(capacity, rest, seed)
        fitted, scores = {}, {}
        for name in args.ratio_grid:
            heads, took = timed(
                lambda name=name, buffer=buffer: fit_likelihood_ratio(
                    agnostic, buffer, rest, RATIO_GRID[name]
                )
            )
            acc = evaluate(agnostic, xv, tv, yv, rules=["likelihood_ratio"], heads=heads)["likelihood_ratio"]
            fitted[name], scores[name] = (
                heads,
                {"validation_class_incremental": acc.class_incremental, "fit_seconds": took},
            )
            print(
                f"  buffer {capacity} {name}: validation class-incremental {100 * acc.class_incremental:.2f}"
            )
        chosen = max(args.ratio_grid, key=lambda n: scores[n]["validation_class_incremental"])
        test = evaluate(agnostic, x, task, target, rules=["likelihood_ratio"], heads=fitted[chosen])
        out[str(capacity)] = {
            "grid": scores,
            "chosen": chosen,
            "config": dataclasses.asdict(RATIO_GRID[chosen]),
            "test": dataclasses.asdict(test["likelihood_ratio"]),
            "heads": fitted[chosen],
        }
    return out


def train_experience_replay(
    model: hatzoo.HATModel, recipe: Recipe, seq: TaskSequence, capacity: int
) -> float:
    """10-way test accuracy of experience replay (see the module docstring) with a buffer of ``capacity``."""
    classes = [c for task in seq for c in task.classes]
    rt = Runtime.create(progress=False)
    torch.manual_seed(derive_seed(recipe.recipe.seed, 9))
    net = nn.Sequential(plain_backbone(model), nn.Linear(model.spec.num_features, max(classes) + 1))
    optimizer = make_optimizer(recipe, net.parameters())
    buffer = ReplayBuffer(capacity, seed=recipe.recipe.seed)
    seen: list[int] = []
    r = recipe.recipe
    for t, task in enumerate(seq):
        seen += list(task.classes)
        x, y_local = task.train.tensors
        y = torch.tensor(task.classes)[y_local]
        if len(buffer):
            global_of = {k: seq[k].classes for k in buffer.tasks}
            bx, by = (
                buffer.x,
                torch.tensor([global_of[int(k)][int(c)] for k, c in zip(buffer.task, buffer.y, strict=True)]),
            )
        hidden = torch.ones(max(classes) + 1, dtype=torch.bool)
        hidden[seen] = False
        gen = torch.Generator().manual_seed(derive_seed(r.seed, 10, t))
        net.train()
        for _ in range(r.epochs):
            for rows in torch.randperm(len(y), generator=gen).split(r.batch_size):
                xb, yb = x[rows], y[rows]
                if len(buffer):
                    pick = torch.randint(len(by), (len(rows),), generator=gen)
                    xb, yb = torch.cat([xb, bx[pick]]), torch.cat([yb, by[pick]])
                logits = net(xb).masked_fill(hidden, float("-inf"))
                loss = nn.functional.cross_entropy(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        buffer.add(t, x, y_local)
    net.eval()
    xt = torch.cat([task.test.tensors[0] for task in seq])
    yt = torch.cat([torch.tensor(task.classes)[task.test.tensors[1]] for task in seq])
    return accuracy(net, xt, yt, rt, "experience replay test")


def train_joint_classifier(model: hatzoo.HATModel, recipe: Recipe, seq: TaskSequence, epochs: int) -> float:
    """Test accuracy of the model's architecture with one head over all classes, trained on every task's
    training data at once with the card's optimizer, learning rate and batch size."""
    classes = [c for task in seq for c in task.classes]
    rt = Runtime.create(progress=False)
    torch.manual_seed(derive_seed(recipe.recipe.seed, 7))
    net = nn.Sequential(plain_backbone(model), nn.Linear(model.spec.num_features, max(classes) + 1))
    x = torch.cat([task.train.tensors[0] for task in seq])
    y = torch.cat([torch.tensor(task.classes)[task.train.tensors[1]] for task in seq])
    optimizer = make_optimizer(recipe, net.parameters())

    def loss_fn(b: int, batch: list[torch.Tensor], weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        loss = nn.functional.cross_entropy(net(batch[0]), batch[1], reduction="sum")
        return loss * weight, loss.double()[None]

    r = dataclasses.replace(recipe.recipe, epochs=epochs)
    run = dataclasses.replace(recipe, recipe=r)
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(derive_seed(r.seed, 8, epoch))
        batches = ddp.global_batches(len(y), r.batch_size, gen, 1)
        net.train()
        total = len(batches) * epochs
        train_epoch(net, optimizer, run, [x, y], batches, epoch * len(batches), total, loss_fn, rt, "joint")
    net.eval()
    xt = torch.cat([task.test.tensors[0] for task in seq])
    yt = torch.cat([torch.tensor(task.classes)[task.test.tensors[1]] for task in seq])
    return accuracy(net, xt, yt, rt, "joint test")


def timed(fn) -> tuple[Any, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


@torch.no_grad()
def cost(
    agnostic: TaskAgnosticModel,
    gaussians: dict[int, FeatureGaussians],
    x: torch.Tensor,
    shape: tuple[int, ...],
    repeats: int,
    heads: Any = None,
) -> dict[str, Any]:
    """Multiply-adds per sample and wall time per batch: every task (energy, mahalanobis, and
    likelihood_ratio when ``heads`` are given) against one task, measured alternately."""
    macs = agnostic_macs(agnostic, shape)
    one = agnostic.task_models[0]
    calls = {
        "": lambda: agnostic.predict(x, rule="energy"),
        "_mahalanobis": lambda: agnostic.predict(x, rule="mahalanobis", gaussians=gaussians),
        "one": lambda: one(x),
    }
    if heads is not None:
        calls["_likelihood_ratio"] = lambda: agnostic.predict(x, rule="likelihood_ratio", heads=heads)
    times = [[timed(call)[1] for call in calls.values()] for _ in range(repeats)]
    medians = dict(
        zip(calls, (statistics.median(column) for column in zip(*times, strict=True)), strict=True)
    )
    out = {
        "macs_all_tasks": sum(macs.values()),
        "macs_one_task": macs[one.task],
        "macs_ratio": sum(macs.values()) / macs[one.task],
        "batch": len(x),
        "seconds_one_task": medians.pop("one"),
    }
    for suffix, seconds in medians.items():
        out[f"seconds_all_tasks{suffix}"] = seconds
        out[f"time_ratio{suffix}"] = seconds / out["seconds_one_task"]
    return out


def validation_only(name: str, card: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """The likelihood-ratio grid's validation figures per buffer size, the test split left unread:
    for choosing between training recipes (each trained with the card's ``benchmark.validation``)."""
    recipe = load_recipe(card or name)
    if not recipe.benchmark.validation:
        raise SystemExit(
            f"{name}: --validation-only compares models trained with a held-out validation split"
        )
    split = validation_split(
        load_benchmark(recipe, holdout=False), recipe.benchmark.validation, recipe.benchmark.seed
    )
    agnostic = TaskAgnosticModel.from_hat_model(hatzoo.load(name).eval())
    xv, tv, yv = stacked(split[1])
    out: dict[str, Any] = {"model": name, "validation_class_incremental": {}}
    for capacity in args.buffers:
        buffer = filled_buffer(capacity, split[0], recipe.benchmark.seed)
        for config in args.ratio_grid:
            heads = fit_likelihood_ratio(agnostic, buffer, split[0], RATIO_GRID[config])
            acc = evaluate(agnostic, xv, tv, yv, rules=["likelihood_ratio"], heads=heads)["likelihood_ratio"]
            out["validation_class_incremental"][f"{capacity} {config}"] = acc.class_incremental
            print(f"{name}: buffer {capacity} {config}: validation CIL {acc.class_incremental:.2%}")
    return out


def run_model(name: str, card: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one model (see the module docstring)."""
    recipe = load_recipe(card or name)
    seq = load_benchmark(recipe)  # the training rows the model learnt from
    # a card's own validation split is never trained on; without one, carve --val-fraction
    fraction = recipe.benchmark.validation or args.val_fraction
    split = validation_split(load_benchmark(recipe, holdout=False), fraction, recipe.benchmark.seed)
    model = hatzoo.load(name).eval()
    agnostic = TaskAgnosticModel.from_hat_model(model)
    x, task, target = test_rows(seq, args.max_test_per_task)
    result: dict[str, Any] = {"model": name, "benchmark": seq.name, "test_rows": len(x), "rules": {}}
    result["validation"] = {"fraction": fraction, "held_out_in_training": bool(recipe.benchmark.validation)}
    training = {t: task.train.tensors for t, task in enumerate(seq)}
    gaussians, result["gaussians_fit_seconds"] = timed(lambda: fit_feature_gaussians(agnostic, training))
    for rule, acc in evaluate(agnostic, x, task, target, gaussians=gaussians).items():
        result["rules"][rule] = dataclasses.asdict(acc)
    release_heads = load_ratio_heads(name)
    if release_heads is not None:  # what the release itself answers by
        acc = evaluate(agnostic, x, task, target, rules=["likelihood_ratio"], heads=release_heads)
        result["rules"]["likelihood_ratio (release)"] = dataclasses.asdict(acc["likelihood_ratio"])
    if args.fit_temperatures:
        temps = fit_temperatures(agnostic, split[1])
        result["temperatures"] = temps
        for rule, acc in evaluate(agnostic, x, task, target, list(RULES), temps).items():
            result["rules"][f"{rule}+T"] = dataclasses.asdict(acc)
    first = next(iter(result["rules"].values()))
    result["task_incremental"] = first["task_incremental"]
    heads = release_heads
    if args.buffers:
        ratio = likelihood_ratio_rows(agnostic, split, x, task, target, args, recipe.benchmark.seed)
        for capacity, r in ratio.items():
            result["rules"][f"likelihood_ratio ({capacity})"] = r["test"]
            fitted = r.pop("heads")  # without release heads, the cost is timed with the largest buffer's
            heads = heads if release_heads is not None else fitted
            if args.save_heads:
                args.save_heads.mkdir(parents=True, exist_ok=True)
                fitted.save(args.save_heads / f"{Path(name).name}-{capacity}.safetensors")
        result["likelihood_ratio"] = ratio
    for earlier in args.er_from:  # experience replay depends on the card and data, not on the release
        for row in json.loads(earlier.read_text(encoding="utf-8")):
            if row["model"] == name:
                result.setdefault("experience_replay", {}).update(row.get("experience_replay", {}))
    if args.er:
        for capacity in args.er:
            acc, took = timed(lambda capacity=capacity: train_experience_replay(model, recipe, seq, capacity))
            result.setdefault("experience_replay", {})[str(capacity)] = {"accuracy": acc, "seconds": took}
            print(f"  experience replay ({capacity}): {100 * acc:.2f}")
    results = read_card(recipe.source).results if recipe.source else None
    measured = (results.task_agnostic or {}) if results is not None else {}
    if not args.joint and "joint_class_incremental" in measured:  # measured by --joint before
        result["joint"] = {"accuracy": measured["joint_class_incremental"] / 100, "source": "card"}
    if args.joint:
        epochs = args.joint_epochs or recipe.recipe.epochs
        accuracy, took = timed(lambda: train_joint_classifier(model, recipe, seq, epochs))
        result["joint"] = {"accuracy": accuracy, "epochs": epochs, "seconds": took}
    result["cost"] = cost(agnostic, gaussians, x[: args.batch], tuple(seq.input_shape), args.repeats, heads)
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    """One table row per (model, rule), percentages and cost ratios."""
    lines = [
        "| model | rule | task prediction | class-incremental (10-way) | task-incremental (ceiling) "
        "| joint 10-way | CIL - joint | MACs all / one task | time all / one task |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        joint = r.get("joint", {}).get("accuracy")
        c = r["cost"]
        for rule, a in r["rules"].items():
            suffix = {"mahalanobis": "_mahalanobis"}.get(rule.split(" ")[0], "")
            if rule.startswith("likelihood_ratio"):
                suffix = "_likelihood_ratio"
            gap = "-" if joint is None else f"{100 * (a['class_incremental'] - joint):+.2f}"
            cells = [
                r["model"],
                rule,
                f"{100 * a['task']:.2f}",
                f"{100 * a['class_incremental']:.2f}",
                f"{100 * a['task_incremental']:.2f}",
                "-" if joint is None else f"{100 * joint:.2f}",
                gap,
                f"{c['macs_ratio']:.2f} ({c['macs_all_tasks'] / 1e6:.2f}M / {c['macs_one_task'] / 1e6:.2f}M)",
                f"{c[f'time_ratio{suffix}']:.2f} ({1e3 * c[f'seconds_all_tasks{suffix}']:.1f} / "
                f"{1e3 * c['seconds_one_task']:.1f} ms, batch {c['batch']})",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for capacity, er in r.get("experience_replay", {}).items():
            gap = "-" if joint is None else f"{100 * (er['accuracy'] - joint):+.2f}"
            lines.append(
                f"| {r['model']} | experience replay ({capacity}) | - | {100 * er['accuracy']:.2f} | - | "
                f"{'-' if joint is None else f'{100 * joint:.2f}'} | {gap} | 1.00 | - |"
            )
    return "\n".join(lines)


def card_block(result: dict[str, Any]) -> dict[str, Any]:
    """A model's figures as the card's ``results.task_agnostic`` mapping (percent, 2 decimals)."""
    pct = lambda v: round(100 * v, 2)  # noqa: E731
    block: dict[str, Any] = {
        "rules": {
            rule: {"task": pct(a["task"]), "class_incremental": pct(a["class_incremental"])}
            for rule, a in result["rules"].items()
        },
        "task_incremental": pct(result["task_incremental"]),
        "macs_ratio": round(result["cost"]["macs_ratio"], 2),
    }
    if "joint" in result:
        block["joint_class_incremental"] = pct(result["joint"]["accuracy"])
    if "experience_replay" in result:
        block["baselines"] = {
            f"experience_replay ({capacity})": {"class_incremental": pct(er["accuracy"])}
            for capacity, er in result["experience_replay"].items()
        }
    return block


def write_card(card: str | Path, result: dict[str, Any]) -> None:
    """Put a model's figures into its card's results (as ``results.task_agnostic``) with the card writer."""
    current = read_card(card).results
    if current is None:
        raise hatzoo.InputError(
            f"{card} has no results yet; train the model (hatzoo train) before adding these"
        )
    results = dataclasses.asdict(current)
    results["task_agnostic"] = card_block(result)
    update_card(card, results=results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="zoo names or checkpoint folders")
    parser.add_argument("--card", help="the card (benchmark and recipe) of a model given as a folder")
    parser.add_argument("--joint", action="store_true", help="also train the joint 10-way classifier")
    parser.add_argument("--joint-epochs", type=int, help="epochs of the joint classifier; None: the card's")
    parser.add_argument(
        "--fit-temperatures", action="store_true", help="also evaluate with fitted temperatures"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="training share held out for temperatures"
    )
    parser.add_argument("--max-test-per-task", type=int, help="test rows per task; None: all")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the timed calls")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (median)")
    parser.add_argument("--buffers", type=int, nargs="*", default=[], help="replay buffer sizes (images)")
    parser.add_argument(
        "--ratio-grid",
        nargs="+",
        default=list(RATIO_GRID),
        choices=list(RATIO_GRID),
        help="likelihood-ratio configs compared on the validation split",
    )
    parser.add_argument(
        "--er", type=int, nargs="*", default=[], help="buffer sizes to train experience replay with"
    )
    parser.add_argument(
        "--er-from",
        type=Path,
        nargs="*",
        default=[],
        help="earlier --out files whose experience-replay figures of the same model to report",
    )
    parser.add_argument("--save-heads", type=Path, help="write each chosen set of heads into this folder")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--write-cards", action="store_true", help="write each zoo model's figures into its card"
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="only the likelihood-ratio grid on the card's validation split (the test split unread)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.validation_only:
        results = [validation_only(m, args.card, args) for m in args.models]
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        return
    results = [run_model(m, args.card, args) for m in args.models]
    print(markdown(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.write_cards:
        for r in results:
            write_card(load_recipe(args.card or r["model"]).source, r)


if __name__ == "__main__":
    main()
