"""``train_sequence``: train a HAT model task after task from a recipe, with checkpoints and resume.

One optimizer is created once and reused across tasks (each new task's parameters join it with
``add_param_group``, so SGD momentum carries over; HAT's locks keep earlier tasks exact anyway). After
every task the model is evaluated on the test split of every task seen so far and a checkpoint is
written to ``out_dir/checkpoints/task-<i>/`` (model via ``save_pretrained``, optimizer tensors as
safetensors, progress as JSON). Rerunning with ``resume=True`` loads the latest complete checkpoint,
optimizer state included, and continues with the next task: finished tasks are neither retrained
nor changed. Every random draw is seeded from the recipe per task and epoch, so a resumed run does
the same as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hatzoo.core.model import HATModel
from hatzoo.core.schedules import get_schedule
from hatzoo.data import TaskData, TaskSequence
from hatzoo.errors import HATError
from hatzoo.training import checkpoints as ckpt
from hatzoo.training import ddp
from hatzoo.training.common import (
    ModelFactory,
    build_model,
    derive_seed,
    load_benchmark,
    lr_factor,
    make_optimizer,
    set_lr_factor,
    shared_parameters,
    task_param_groups,
)
from hatzoo.training.metrics import Results, count_correct, jsonable_capacity
from hatzoo.training.recipe import Recipe

TaskCallback = Callable[[int, HATModel, Results], None]
LOG_FILE = "log.jsonl"
_IGNORED_FOR_RESUME = ("description", "hub", "name", "demo")


class _Log:
    """Appends JSON lines to ``out_dir/log.jsonl`` (main rank only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def __call__(self, event: str, **fields: Any) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")


def train_sequence(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
    joint: bool | None = None,
    stop_after: int | None = None,
    on_task_end: TaskCallback | None = None,
    model_factory: ModelFactory | None = None,
    log_every: int = 20,
) -> Results:
    """Train every task of the recipe's benchmark in order; returns (and writes) the :class:`Results`.

    ``stop_after=i`` ends the run after task i (for staged runs); ``on_task_end(task, model, results)``
    is called after each task's checkpoint; ``joint`` (default: the recipe's ``joint``) also trains the
    joint upper bound once all tasks are done; ``model_factory`` replaces the recipe's architecture
    (a tiny ``hatify``-ed model in tests). Works unchanged under ``torchrun`` (see ``hatzoo.training.ddp``).
    """
    ctx = ddp.init_distributed()
    device = torch.device(device)
    out = Path(out_dir)
    seq = load_benchmark(recipe)
    if ctx.is_main:
        if not resume:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            for name in (LOG_FILE, "results.json", "joint.json"):
                (out / name).unlink(missing_ok=True)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    log = _Log(out / LOG_FILE, ctx.is_main)

    found = ckpt.latest_checkpoint(out) if resume else None
    builder = lambda: build_model(recipe, model_factory)  # noqa: E731
    if found is None:
        model, state = builder(), _empty_state(recipe, seq)
        log("start", recipe=recipe.to_dict(), benchmark=seq.describe(), world_size=ctx.world_size)
    else:
        folder, state = found
        _check_same_recipe(recipe, state, out)
        model = ckpt.load_model(folder, builder)
        log("resume", checkpoint=str(folder), completed=state["completed"], world_size=ctx.world_size)
    model.data_config = data_config(seq)
    model.to(device)

    optimizer = make_optimizer(recipe, shared_parameters(model))
    for t in range(model.num_tasks):
        for group in task_param_groups(recipe, model, t):
            optimizer.add_param_group(group)
    if found is not None and not ckpt.load_optimizer(optimizer, model, found[0]):
        log("optimizer_restarted", reason="no optimizer state of this type in the checkpoint")

    for t in range(state["completed"], len(seq)):
        task = seq[t]
        start = time.perf_counter()
        torch.manual_seed(derive_seed(recipe.recipe.seed, 1, t))
        tid = model.add_task(task.num_classes, labels=task.labels)
        if tid != t:
            raise HATError(f"the model got task id {tid} for task {t}; the checkpoint and data disagree")
        for group in task_param_groups(recipe, model, t):
            optimizer.add_param_group(group)
        _train_task(recipe, model, optimizer, task, t, len(seq), ctx, device, progress, log, log_every)
        model.end_task(t)
        seconds = time.perf_counter() - start
        row = [evaluate(model, seq[j], j, ctx, device) for j in range(t + 1)]
        state["accuracy"].append(row + [None] * (len(seq) - t - 1))
        state["capacity"].append(jsonable_capacity(model.capacity()))
        state["seconds"].append(seconds)
        state["completed"] = t + 1
        if ctx.is_main:
            ckpt.write_checkpoint(out, t, model, optimizer, state)
        ctx.barrier()
        log("task_end", task=t, accuracy=row, seconds=round(seconds, 3), capacity=state["capacity"][-1])
        results = _results(recipe, seq, state)
        if on_task_end is not None:
            on_task_end(t, model, results)
        if stop_after is not None and t >= stop_after and t + 1 < len(seq):
            break

    results = _results(recipe, seq, state)
    if results.complete and (recipe.recipe.joint if joint is None else joint):
        _add_joint(results, recipe, seq, out, model_factory, progress, device, ctx, log)
    if ctx.is_main:
        _write_outputs(results, recipe, out, model)
    ctx.barrier()
    return results


def _train_task(
    recipe: Recipe,
    model: HATModel,
    optimizer: torch.optim.Optimizer,
    task: TaskData,
    t: int,
    num_tasks: int,
    ctx: ddp.DistContext,
    device: torch.device,
    progress: bool,
    log: _Log,
    log_every: int,
) -> None:
    """Train the open task ``t`` for the recipe's epochs, the scale annealed per epoch (or per task)."""
    r = recipe.recipe
    schedule = get_schedule(r.schedule, recipe.hat.smax)
    net = ddp.wrap(model, ctx, device)
    x_all, y_all = task.train.tensors
    step, total = 0, 0
    for epoch in range(r.epochs):
        gen = torch.Generator().manual_seed(derive_seed(r.seed, 2, t, epoch))
        batches = ddp.global_batches(len(y_all), r.batch_size, gen, ctx.world_size)
        if epoch == 0:
            total = len(batches) * r.epochs
        model.train()
        sums = [0.0, 0.0, 0.0, 0.0]  # ce sum, reg sum (x examples), correct, examples
        bar = tqdm(
            batches,
            desc=f"{recipe.name} task {t + 1}/{num_tasks} epoch {epoch + 1}/{r.epochs}",
            disable=not (progress and ctx.is_main),
            dynamic_ncols=True,
        )
        epoch_start = time.perf_counter()
        for b, idx in enumerate(bar):
            scale = schedule(step, total) if r.scale_ramp == "task" else schedule(b, len(batches))
            set_lr_factor(optimizer, lr_factor(recipe, step, total))
            step += 1
            local = ddp.shard(idx, ctx)
            xb, yb = x_all[local].to(device), y_all[local].to(device)
            logits = net(xb, task=t, scale=scale)
            ce_sum = F.cross_entropy(logits, yb, reduction="sum")
            reg = model.regularization(task=t)
            loss = ce_sum * (ctx.world_size / len(idx)) + reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), r.clip_grad)
            optimizer.step()
            n = len(local)
            ce_mean, reg_value = ce_sum.item() / max(n, 1), reg.item()
            sums[0] += ce_sum.item()
            sums[1] += reg_value * n
            sums[2] += int((logits.argmax(1) == yb).sum())
            sums[3] += n
            bar.set_postfix(ce=f"{ce_mean:.4f}", reg=f"{reg_value:.4f}", s=f"{scale:.1f}", refresh=False)
            if log_every and (b % log_every == 0 or b == len(batches) - 1):
                log("step", task=t, epoch=epoch, batch=b, scale=scale, ce=ce_mean, reg=reg_value)
        ce, reg_total, correct, count = ctx.all_sum(sums)
        used = {g: int((model.embedding(g, t).detach() > 0).sum()) for g in model.groups}
        log(
            "epoch",
            task=t,
            epoch=epoch,
            ce=ce / count,
            reg=reg_total / count,
            train_acc=correct / count,
            seconds=round(time.perf_counter() - epoch_start, 3),
            mask_used=sum(used.values()),
            mask_size=sum(g.size for g in model.groups.values()),
            mask_used_per_group=used,
        )
    del net


@torch.no_grad()
def evaluate(
    model: HATModel,
    task: TaskData,
    t: int,
    ctx: ddp.DistContext | None = None,
    device: str | torch.device = "cpu",
) -> float:
    """Test accuracy of ended task ``t`` with its binary masks (sharded over ranks under DDP)."""
    ctx = ctx or ddp.DistContext()
    model.eval()
    x, y = task.test.tensors
    rows = ddp.shard(torch.arange(len(y)), ctx)
    correct = count_correct(lambda xb: model(xb, task=t), x[rows], y[rows], 512, torch.device(device))
    correct, total = ctx.all_sum([correct, len(rows)])
    return correct / total


def data_config(seq: TaskSequence) -> dict[str, Any]:
    """How inputs were prepared, stored with the checkpoint (export puts it in bundle manifests)."""
    return {
        "mean": list(seq.mean),
        "std": list(seq.std),
        "input_shape": list(seq.input_shape),
        "benchmark": seq.name,
    }


def _empty_state(recipe: Recipe, seq: TaskSequence) -> dict[str, Any]:
    return {"completed": 0, "accuracy": [], "capacity": [], "seconds": [], "recipe": recipe.to_dict()}


def _check_same_recipe(recipe: Recipe, state: dict[str, Any], out: Path) -> None:
    """Refuse to resume a run of another recipe (everything but name, description, hub and joint)."""
    if not state.get("recipe"):
        return
    old, new = _without_joint(state["recipe"]), _without_joint(recipe.to_dict())
    diff: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diff.append(key)
    if diff:
        raise HATError(
            f"{out} holds a run of a different recipe (differs in {', '.join(diff)}); rerun with "
            "--no-resume (resume=False) to start over, or choose another output folder"
        )


def _results(recipe: Recipe, seq: TaskSequence, state: dict[str, Any]) -> Results:
    done = state["completed"]
    desc = seq.describe()
    tasks = desc.pop("tasks")
    return Results(
        name=recipe.name,
        benchmark=desc,
        tasks=tasks,
        accuracy=[row[:done] for row in state["accuracy"]],
        capacity=state["capacity"],
        seconds=state["seconds"],
        recipe=recipe.to_dict(),
        complete=done == len(seq),
    )


def _add_joint(
    results: Results,
    recipe: Recipe,
    seq: TaskSequence,
    out: Path,
    factory: ModelFactory | None,
    progress: bool,
    device: torch.device,
    ctx: ddp.DistContext,
    log: _Log,
) -> None:
    """Train (or read back from ``joint.json``) the joint upper bound and attach it to the results."""
    from hatzoo.training.joint import train_joint

    path = out / "joint.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("recipe") == _without_joint(recipe.to_dict()):
            results.joint, results.joint_seconds = data["accuracy"], data["seconds"]
            return
    joint = train_joint(recipe, seq=seq, model_factory=factory, progress=progress, device=device)
    results.joint, results.joint_seconds = joint.accuracy, joint.seconds
    log("joint", accuracy=joint.accuracy, seconds=round(joint.seconds, 3))
    if ctx.is_main:
        data = {
            "accuracy": joint.accuracy,
            "seconds": joint.seconds,
            "recipe": _without_joint(recipe.to_dict()),
        }
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _without_joint(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict as JSON stores it, without what may change between resumed runs."""
    data = json.loads(json.dumps(data))
    for key in _IGNORED_FOR_RESUME:
        data.pop(key, None)
    data.get("recipe", {}).pop("joint", None)
    return data


def _write_outputs(results: Results, recipe: Recipe, out: Path, model: HATModel) -> None:
    """results.json, the plots, and (once complete) a push-ready ``model/`` folder with its README."""
    from hatzoo.training import report

    results.save(out / "results.json")
    report.plot_accuracy(results, out / "accuracy.png")
    report.plot_capacity(results, out / "capacity.png")
    card = report.render_card(results, recipe)
    (out / "README.md").write_text(card, encoding="utf-8")
    if results.complete:
        final = out / "model"
        shutil.rmtree(final, ignore_errors=True)
        ckpt.save_model(model, final)
        for name in ("accuracy.png", "capacity.png", "results.json"):
            shutil.copy2(out / name, final / name)
        (final / "README.md").write_text(card, encoding="utf-8")
