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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hatzoo.core.schedules import get_schedule
from hatzoo.data import TaskData, TaskSequence
from hatzoo.errors import HATError
from hatzoo.files import replacing_folder
from hatzoo.model import HATModel
from hatzoo.replay import REPLAY_FILE, ReplayBuffer
from hatzoo.training import checkpoints as ckpt
from hatzoo.training import ddp, report
from hatzoo.training.common import (
    ModelFactory,
    Runtime,
    accuracy,
    add_task_params,
    build_model,
    derive_seed,
    load_benchmark,
    make_optimizer,
    shared_parameters,
    train_epoch,
)
from hatzoo.training.metrics import Results, jsonable_capacity
from hatzoo.training.recipe import Recipe

if TYPE_CHECKING:
    from hatzoo.likelihood_ratio import RatioHeads

TaskCallback = Callable[[int, HATModel, Results], None]
LOG_FILE = "log.jsonl"
CHECKPOINT_EVERY = 200  # optimizer steps between checkpoints within a task


class _Log:
    """Appends JSON lines to ``out_dir/log.jsonl`` (main rank only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def __call__(self, event: str, **fields: Any) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")


@dataclass
class _Run:
    """What every task of one run shares: recipe, data, output folder, runtime, log, model, optimizer.

    ``state`` is the progress a checkpoint stores (tasks completed, accuracy rows, capacity, seconds).
    """

    recipe: Recipe
    seq: TaskSequence
    out: Path
    rt: Runtime
    log: _Log
    model: HATModel
    optimizer: torch.optim.Optimizer
    state: dict[str, Any]
    buffer: ReplayBuffer | None = None  # the recipe's replay buffer, filled as tasks end


def train_sequence(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
    amp: str = "fp32",
    joint: bool | None = None,
    stop_after: int | None = None,
    on_task_end: TaskCallback | None = None,
    model_factory: ModelFactory | None = None,
    log_every: int = 20,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> Results:
    """Train every task of the recipe's benchmark in order; returns (and writes) the :class:`Results`.

    ``device`` is checked first (a missing GPU is a clear error); ``amp="bf16"`` trains and evaluates
    under bf16 autocast with float32 weights. ``stop_after=i`` ends the run after task i (for staged
    runs); ``on_task_end(task, model, results)`` is called after each task's checkpoint; ``joint``
    (default: the recipe's ``joint``) also trains the joint upper bound once all tasks are done;
    ``model_factory`` replaces the recipe's architecture (a tiny ``hatify``-ed model in tests). Every
    ``checkpoint_every`` optimizer steps within a task (0: never) a step checkpoint is written, and a
    resumed run goes on from the latest one, ending bitwise equal to an uninterrupted run. Works
    unchanged under ``torchrun`` (see ``hatzoo.training.ddp``).
    """
    if checkpoint_every < 0:
        raise HATError(
            f"checkpoint_every must be >= 0 (0: no checkpoints within a task), got {checkpoint_every}"
        )
    rt = Runtime.create(device, amp, progress)
    run, resumed_from = _set_up(
        recipe, Path(out_dir), rt, resume=resume, model_factory=model_factory, amp=amp
    )
    position = run.state.pop("position", None)  # where a step checkpoint left the open task
    if position is not None:
        ckpt.restore_rng(resumed_from)
    seq = run.seq
    for t in range(run.state["completed"], len(seq)):
        _train_one_task(run, t, position, log_every, checkpoint_every)
        position = None
        if on_task_end is not None:
            on_task_end(t, run.model, _results(recipe, seq, run.state))
        if stop_after is not None and t >= stop_after and t + 1 < len(seq):
            break

    results = _results(recipe, seq, run.state)
    if results.complete and (recipe.recipe.joint if joint is None else joint):
        _add_joint(results, recipe, seq, run.out, model_factory, rt, run.log)
    if rt.ctx.is_main:
        _write_outputs(results, recipe, run.out, run.model, _task_free_files(run) if results.complete else {})
    rt.ctx.barrier()
    return results


def _set_up(
    recipe: Recipe, out: Path, rt: Runtime, *, resume: bool, model_factory: ModelFactory | None, amp: str
) -> tuple[_Run, Path | None]:
    """The run's folder, data, model and optimizer: fresh, or resumed from the latest checkpoint.

    Returns the run and the folder of the checkpoint it resumed from (None for a fresh start).
    """
    ctx = rt.ctx
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
    if resume:  # a step checkpoint of the task after the last finished one goes further
        found = ckpt.latest_step_checkpoint(out, found[1]["completed"] if found else 0) or found
    if found is None:
        model = build_model(recipe, model_factory, seq.input_shape)
        state = {"completed": 0, "accuracy": [], "capacity": [], "seconds": [], "recipe": recipe.to_dict()}
        log("start", recipe=recipe.to_dict(), benchmark=seq.describe(), world_size=ctx.world_size, amp=amp)
    else:
        model, state = _resume(recipe, out, found, log, ctx.world_size)
    model.data_config = {  # how inputs were prepared: saved with each checkpoint, read by export
        "mean": list(seq.mean),
        "std": list(seq.std),
        "input_shape": list(seq.input_shape),
        "benchmark": seq.name,
    }
    model.to(rt.device)

    optimizer = make_optimizer(recipe, shared_parameters(model))
    for t in range(model.num_tasks):
        add_task_params(optimizer, recipe, model, t)
    if found is not None and not ckpt.load_optimizer(optimizer, model, found[0]):
        log("optimizer_restarted", reason="no optimizer state of this type in the checkpoint")
    folder = None if found is None else found[0]
    run = _Run(
        recipe, seq, out, rt, log, model, optimizer, state, recipe_buffer(recipe, seq, state["completed"])
    )
    return run, folder


def recipe_buffer(recipe: Recipe, seq: TaskSequence, completed: int) -> ReplayBuffer | None:
    """The recipe's replay buffer after ``completed`` tasks: a function of the seed and the data, so a
    resumed run rebuilds it instead of storing it in every checkpoint."""
    if not recipe.recipe.replay:
        return None
    buffer = ReplayBuffer(recipe.recipe.replay, seed=recipe.recipe.seed)
    for t in range(completed):
        buffer.add(t, *seq[t].train.tensors)
    return buffer


def _resume(
    recipe: Recipe, out: Path, found: tuple[Path, dict[str, Any]], log: _Log, world_size: int
) -> tuple[HATModel, dict[str, Any]]:
    """The model and progress of a checkpoint, once it is known to be a run of the same recipe."""
    folder, state = found
    _check_same_recipe(recipe, state["recipe"], out)
    model = HATModel.from_pretrained(folder)
    log(
        "resume",
        checkpoint=str(folder),
        completed=state["completed"],
        position=state.get("position"),
        world_size=world_size,
    )
    return model, state


def _train_one_task(
    run: _Run, t: int, position: dict[str, Any] | None, log_every: int, checkpoint_every: int
) -> None:
    """Open (or go on with) task ``t``, train it, end it, evaluate every task so far and checkpoint."""
    recipe, model, seq = run.recipe, run.model, run.seq
    start = time.perf_counter() - (position["seconds"] if position else 0.0)
    if position is None:
        torch.manual_seed(derive_seed(recipe.recipe.seed, 1, t))
        tid = model.add_task(seq[t].num_classes, labels=seq[t].labels)
        if tid != t:
            raise HATError(f"the model got task id {tid} for task {t}; the checkpoint and data disagree")
        add_task_params(run.optimizer, recipe, model, t)
    elif model.num_tasks != t + 1:
        raise HATError(f"the step checkpoint of task {t} holds {model.num_tasks} tasks; start over")

    def save_step(epoch: int, batch: int, step: int) -> None:
        if run.rt.ctx.is_main:
            where = {"task": t, "epoch": epoch, "batch": batch, "step": step}
            where |= {"order_seed": derive_seed(recipe.recipe.seed, 2, t, epoch)}
            where |= {"seconds": time.perf_counter() - start}
            ckpt.write_step_checkpoint(
                run.out, t, step, model, run.optimizer, {**run.state, "position": where}
            )
        run.rt.ctx.barrier()
        run.log("step_checkpoint", task=t, epoch=epoch, batch=batch, step=step)

    _train_task(
        recipe,
        model,
        run.optimizer,
        seq[t],
        t,
        len(seq),
        run.rt,
        run.log,
        log_every,
        position,
        checkpoint_every,
        save_step,
        _outside_images(run, t),
    )
    model.end_task(t)
    _finish_task(run, t, time.perf_counter() - start)


def _outside_images(run: _Run, t: int) -> torch.Tensor | None:
    """The buffer's images of the tasks before ``t``, which task ``t`` learns to reject (``recipe.ood``)."""
    if not run.recipe.recipe.ood or run.buffer is None or not run.buffer.tasks:
        return None
    return run.buffer.others(t)


def ood_loss(inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """Energy outlier exposure: the task's log-sum-exp of logits, read as the logit of "mine", is pushed
    above 0 on its own rows and below 0 on the buffer's images of other tasks (mean of both sides)."""
    mine, other = torch.logsumexp(inside.float(), 1), torch.logsumexp(outside.float(), 1)
    return F.softplus(-mine).mean() + F.softplus(other).mean()


def _finish_task(run: _Run, t: int, seconds: float) -> None:
    """Evaluate every task so far on its test split, record it, and write the task's checkpoint."""
    model, state, seq = run.model, run.state, run.seq
    row = [evaluate(model, seq[j], j, run.rt) for j in range(t + 1)]
    state["accuracy"].append(row + [None] * (len(seq) - t - 1))
    state["capacity"].append(jsonable_capacity(model.capacity()))
    state["seconds"].append(seconds)
    state["completed"] = t + 1
    if run.buffer is not None:
        run.buffer.add(t, *seq[t].train.tensors)
    if run.rt.ctx.is_main:
        ckpt.write_checkpoint(run.out, t, model, run.optimizer, state)
        ckpt.remove_step_checkpoints(run.out)
    run.rt.ctx.barrier()
    run.log("task_end", task=t, accuracy=row, seconds=round(seconds, 3), capacity=state["capacity"][-1])


def _train_task(
    recipe: Recipe,
    model: HATModel,
    optimizer: torch.optim.Optimizer,
    task: TaskData,
    t: int,
    num_tasks: int,
    rt: Runtime,
    log: _Log,
    log_every: int,
    position: dict[str, Any] | None = None,
    checkpoint_every: int = 0,
    save_step: Callable[[int, int, int], None] | None = None,
    outside: torch.Tensor | None = None,
) -> None:
    """Train the open task ``t`` for the recipe's epochs, the scale annealed per epoch (or per task).

    ``position`` (from a step checkpoint) says the epoch and batch to go on from; every
    ``checkpoint_every`` steps but the task's last, ``save_step(epoch, next batch, step)`` is called.
    With ``outside`` (other tasks' images) the loss adds ``recipe.ood`` times ``ood_loss`` (``_forward``).
    """
    r = recipe.recipe
    schedule = get_schedule(r.schedule, recipe.hat.smax)
    net = ddp.wrap(model, rt.ctx, rt.device)
    data = task.train.tensors
    first_epoch, first_batch = (position["epoch"], position["batch"]) if position else (0, 0)
    for epoch in range(first_epoch, r.epochs):
        gen = torch.Generator().manual_seed(derive_seed(r.seed, 2, t, epoch))
        batches = ddp.global_batches(len(data[1]), r.batch_size, gen, rt.ctx.world_size)
        n = len(batches)  # the same in every epoch: the task's step is epoch * n + b
        total = n * r.epochs
        first = first_batch if epoch == first_epoch else 0

        def loss_fn(b, batch, weight, epoch=epoch, total=total, n=n):  # noqa: ANN001
            xb, yb = batch
            scale = schedule(epoch * n + b, total) if r.scale_ramp == "task" else schedule(b, n)
            seed = derive_seed(r.seed, 3, t, epoch * n + b, rt.ctx.rank)
            logits, ood = _forward(net, xb, t, scale, outside, seed, rt)
            ce = F.cross_entropy(logits, yb, reduction="sum")
            reg = model.regularization(task=t)
            loss = ce * weight + reg + r.ood * ood * len(yb) * weight
            if log_every and (b % log_every == 0 or b == n - 1):
                ce_mean = ce.item() / max(len(yb), 1)
                extra = {} if outside is None else {"ood": ood.item()}
                log("step", task=t, epoch=epoch, batch=b, scale=scale, ce=ce_mean, reg=reg.item(), **extra)
            hits = (logits.argmax(1) == yb).sum()
            return loss, torch.stack([ce.double(), reg.double() * len(yb), hits.double()])

        def after_step(b: int, epoch: int = epoch, n: int = n, total: int = total) -> None:
            step = epoch * n + b + 1
            if save_step is not None and checkpoint_every and step % checkpoint_every == 0 and step < total:
                save_step(epoch + (b + 1) // n, (b + 1) % n, step)

        model.train()
        epoch_start = time.perf_counter()
        desc = f"{recipe.name} task {t + 1}/{num_tasks} epoch {epoch + 1}/{r.epochs}"
        sums = train_epoch(
            net, optimizer, recipe, data, batches, epoch * n, total, loss_fn, rt, desc, first, after_step
        )
        _log_epoch(log, model, t, epoch, first, sums, time.perf_counter() - epoch_start)


def _forward(
    net: torch.nn.Module,
    xb: torch.Tensor,
    t: int,
    scale: float,
    outside: torch.Tensor | None,
    seed: int,
    rt: Runtime,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Task ``t``'s logits on ``xb`` and the ``ood_loss`` against as many of ``outside``'s images (drawn
    with ``seed``), both from one forward pass; without ``outside`` the loss is 0."""
    if outside is None:
        return net(xb, task=t, scale=scale), torch.zeros((), device=xb.device)
    gen = torch.Generator().manual_seed(seed)
    (xo,) = rt.to_device(outside[torch.randint(len(outside), (len(xb),), generator=gen)])
    both = net(torch.cat([xb, xo]), task=t, scale=scale)
    return both[: len(xb)], ood_loss(both[: len(xb)], both[len(xb) :])


def _log_epoch(
    log: _Log,
    model: HATModel,
    t: int,
    epoch: int,
    first: int,
    sums: list[float],
    seconds: float,
) -> None:
    """One epoch's line in the log: mean loss terms, training accuracy, and how many units task t opens."""
    ce, reg, correct, count = sums
    used = {g: int((model.embedding(g, t).detach() > 0).sum()) for g in model.groups}
    log(
        "epoch",
        task=t,
        epoch=epoch,
        from_batch=first,
        ce=ce / count,
        reg=reg / count,
        train_acc=correct / count,
        seconds=round(seconds, 3),
        mask_used=sum(used.values()),
        mask_size=sum(g.size for g in model.groups.values()),
        mask_used_per_group=used,
    )


def evaluate(model: HATModel, task: TaskData, t: int, runtime: Runtime | None = None) -> float:
    """Test accuracy of ended task ``t`` with its binary masks (on the runtime's device and precision)."""
    rt = runtime or Runtime(progress=False)
    model.eval()
    x, y = task.test.tensors
    return accuracy(lambda xb: model(xb, task=t), x, y, rt, f"evaluate task {t}")


def _check_same_recipe(recipe: Recipe, stored: dict[str, Any], out: Path) -> None:
    """Refuse to resume a run of another recipe (name, description, hub and the joint flag may change)."""
    if diff := report._same_recipe(recipe, stored):
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
    rt: Runtime,
    log: _Log,
) -> None:
    """Train (or read back from ``joint.json``) the joint upper bound and attach it to the results."""
    from hatzoo.training.joint import train_joint

    path = out / "joint.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if not report._same_recipe(recipe, data["recipe"]):
            results.joint, results.joint_seconds = data["accuracy"], data["seconds"]
            return
    joint = train_joint(recipe, seq=seq, model_factory=factory, runtime=rt)
    results.joint, results.joint_seconds = joint.accuracy, joint.seconds
    log("joint", accuracy=joint.accuracy, seconds=round(joint.seconds, 3))
    if rt.ctx.is_main:
        data = {"accuracy": joint.accuracy, "seconds": joint.seconds, "recipe": recipe.to_dict()}
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _task_free_files(run: _Run) -> dict[str, Callable[[Path], Path]]:
    """With a replay buffer: writers of the buffer and of each task's likelihood-ratio head, fitted on
    every task's training data against the buffer's images of the other tasks."""
    if run.buffer is None or len(run.seq) < 2:
        return {}
    from hatzoo.likelihood_ratio import RATIO_FILE

    start = time.perf_counter()
    heads = task_free_heads(run.model, run.seq, run.buffer)
    run.log("task_free_heads", tasks=heads.tasks, seconds=round(time.perf_counter() - start, 3))
    return {RATIO_FILE: heads.save, REPLAY_FILE: run.buffer.save}


def task_free_heads(model: HATModel, seq: TaskSequence, buffer: ReplayBuffer) -> RatioHeads:
    """Each task's likelihood-ratio head, fitted on its training split against the buffer's images of
    the other tasks, in the feature space of ``model``'s pruned task models (what a release answers by)."""
    from hatzoo.likelihood_ratio import fit_likelihood_ratio
    from hatzoo.task_inference import TaskAgnosticModel

    training = {t: task.train.tensors for t, task in enumerate(seq)}
    return fit_likelihood_ratio(TaskAgnosticModel.from_hat_model(model.eval()), buffer, training)


def _write_outputs(
    results: Results,
    recipe: Recipe,
    out: Path,
    model: HATModel,
    extra: dict[str, Callable[[Path], Path]],
) -> None:
    """The report (results.json, plots, card) and, once complete, a push-ready ``model/`` folder with
    ``extra``'s files (name -> writer of that path)."""
    report.write_report(results, recipe, out)
    if results.complete:
        with replacing_folder(out / "model") as final:
            model.save_pretrained(final)
            for name, write in extra.items():
                write(final / name)
            for name in ("accuracy.png", "capacity.png", "results.json", "README.md"):
                shutil.copy2(out / name, final / name)
