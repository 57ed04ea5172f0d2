"""Capacity over a long task sequence: does a HAT model learn its 20th task as well as its 2nd?

Permuted Fashion-MNIST: every task is Fashion-MNIST's 10 classes with its own seeded pixel permutation
(task 0 included), 3,000 training images per task, and 1,000 held-out images per task drawn either
from the rest of the training set (``--split val``, for every choice) or from the test set
(``--split test``, for the final table only). The model is the zoo's hat-vit-tiny shape at 28 px, the
loop README's (Adam 1e-3, the per-epoch linear gate-scale ramp to smax, ``model.regularization``).
Per task the table prints the accuracy right after learning it, task 0's accuracy now, free units
per group kind (minimum over blocks), the parameter count, and with ``--ceiling`` a fresh model
trained on that task alone with the same loop and options (the plasticity ceiling).

    python bench/bench_capacity.py                                  # 20 tasks, defaults, val split
    python bench/bench_capacity.py --hat mask_init=normal             # the paper's start
    python bench/bench_capacity.py --tasks 50 --split test --ceiling 5 --json out.json
    python bench/bench_capacity.py --continue hat-vit-tiny --hat mask_init=budget   # a release, 20 more
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from torch.nn import functional as F

import hatzoo
from hatzoo.core.config import HATConfig
from hatzoo.data import sources
from hatzoo.data.benchmarks import rng
from hatzoo.data.tasks import to_tensor

TRAIN, HELD_OUT = 3000, 1000
VIT_TINY = dict(img_size=28, patch_size=7, in_chans=1, depth=4, global_pool="avg", class_token=False)


def permuted_tasks(num_tasks: int, split: str, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """(x_train, y_train, x_eval, y_eval) per task; validation rows are training rows no task trains on."""
    raw = sources.load_fashion_mnist()
    tasks = []
    for t in range(num_tasks):
        perm = torch.from_numpy(rng(seed, 2, t).permutation(784))
        rows = rng(seed, 1, t).permutation(len(raw.y_train))
        train, val = rows[:TRAIN], rows[TRAIN : TRAIN + HELD_OUT]
        if split == "val":
            x_eval, y_eval = raw.x_train[np.sort(val)], raw.y_train[np.sort(val)]
        else:
            test = np.sort(rng(seed, 3, t).permutation(len(raw.y_test))[:HELD_OUT])
            x_eval, y_eval = raw.x_test[test], raw.y_test[test]
        x_train, y_train = raw.x_train[np.sort(train)], raw.y_train[np.sort(train)]

        def convert(x: np.ndarray, perm: torch.Tensor = perm) -> torch.Tensor:
            return to_tensor(x, raw.scale, raw.mean, raw.std).flatten(1)[:, perm].reshape(-1, 1, 28, 28)

        tasks.append((convert(x_train), torch.from_numpy(y_train), convert(x_eval), torch.from_numpy(y_eval)))
    return tasks


def train_task(model, optimizer, t: int, data, args, gen: torch.Generator) -> None:
    """README's loop for one task: soft gates on the linear ramp, cross-entropy plus the regularizer."""
    x, y = data[0], data[1]
    schedule = hatzoo.schedules.get_schedule("linear", smax=model.config.smax)
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(y), generator=gen)
        batches = order.split(args.batch_size)
        for b, idx in enumerate(batches):
            logits = model(x[idx], task=t, scale=schedule(b, len(batches)))
            loss = F.cross_entropy(logits, y[idx]) + model.regularization(task=t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def accuracy(model, t: int, data) -> float:
    model.eval()
    hits = sum(int((model(xb, task=t).argmax(1) == yb).sum()) for xb, yb in zip(*data[2:], strict=True))
    return 100.0 * hits / sum(len(yb) for yb in data[3])


@torch.no_grad()
def task0_logits(model, data) -> torch.Tensor:
    model.eval()
    return torch.cat([model(xb, task=0) for xb in data[2]])


def split_batches(data, size: int = 500):
    return (*data[:2], data[2].split(size), data[3].split(size))


def new_model(hat: dict) -> hatzoo.HATModel:
    return hatzoo.create_model("hat-vit-tiny", **VIT_TINY, **hat)


def free_by_kind(model) -> dict[str, int]:
    """Free units per group kind (attn.heads, mlp.hidden): the minimum over blocks."""
    kinds: dict[str, int] = {}
    for name, info in model.capacity().items():
        kind = name.split(".", 2)[-1]
        kinds[kind] = min(kinds.get(kind, info["free"]), info["free"])
    return kinds


def start_model(args) -> hatzoo.HATModel:
    """A fresh model, or a zoo release (``--continue``) whose HAT options ``--hat`` may change."""
    if not args.continue_from:
        return new_model(args.hat)
    model = hatzoo.load(args.continue_from)
    model.config = dataclasses.replace(model.config, **args.hat)
    return model


def run_sequence(tasks, args) -> list[dict]:
    """Learn ``tasks`` one after another; task 0's logits (the release's first task when continuing)
    are checked bitwise after every task, on the first new task's inputs."""
    torch.manual_seed(args.seed)
    model = start_model(args)
    base = model.num_tasks
    gen = torch.Generator().manual_seed(args.seed)
    optimizer, rows = None, []
    first = split_batches(tasks[0])
    reference: torch.Tensor | None = None  # task 0's logits before the first new task
    for n, data in enumerate(tasks):
        if reference is None:
            reference = task0_logits(model, first) if base else None
        start = time.perf_counter()
        t = model.add_task(num_classes=10)
        if optimizer is None:
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        else:
            optimizer.add_param_group({"params": model.task_parameters(t)})
        train_task(model, optimizer, t, data, args, gen)
        model.end_task(t)
        row = {"task": t, "learned": accuracy(model, t, split_batches(data))}
        row["task0_now"] = accuracy(model, base, first)  # the first new task
        logits0 = task0_logits(model, first)
        reference = logits0 if reference is None else reference
        row["task0_bitwise"] = torch.equal(logits0, reference)
        row["free"] = free_by_kind(model)
        row["params"] = sum(p.numel() for p in model.parameters())
        row["seconds"] = round(time.perf_counter() - start, 1)
        if args.ceiling and n % args.ceiling == 0:
            row["alone"] = train_alone(data, args, n)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def train_alone(data, args, t: int) -> float:
    """A fresh model trained on this task only, same loop and options: the plasticity ceiling.

    Its own seed, inside a forked RNG, so asking for it leaves the sequence's run unchanged.
    """
    with torch.random.fork_rng():
        torch.manual_seed(args.seed + 1000 + t)
        model = new_model(args.hat)
        model.add_task(num_classes=10)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        train_task(model, optimizer, 0, data, args, torch.Generator().manual_seed(args.seed + t))
        model.end_task(0)
        return accuracy(model, 0, split_batches(data))


def format_row(row: dict) -> str:
    free = " ".join(f"{k}={v}" for k, v in row["free"].items())
    alone = f" alone {row['alone']:5.1f}" if "alone" in row else ""
    return (
        f"task {row['task']:2d}  learned {row['learned']:5.1f}  task0 now {row['task0_now']:5.1f}"
        f"{'' if row['task0_bitwise'] else ' (CHANGED)'}  "
        f"free(min/block) {free}  params {row['params']:,}{alone}  ({row['seconds']} s)"
    )


def summary(rows: list[dict]) -> dict:
    learned = [r["learned"] for r in rows]
    out = {"first_5 (tasks 1-5)": float(np.mean(learned[1:6]))}
    if len(rows) >= 20:
        out["last_5 (tasks 15-19)"] = float(np.mean(learned[15:20]))
    if len(rows) > 20:
        out[f"last_5 (tasks {len(rows) - 5}-{len(rows) - 1})"] = float(np.mean(learned[-5:]))
    out["task0_logits_bitwise_unchanged"] = all(r["task0_bitwise"] for r in rows)
    return out


def parse_hat(items: list[str]) -> dict:
    """``key=value`` HAT options, typed like HATConfig's defaults."""
    defaults = HATConfig().to_dict()
    hat = {}
    for item in items:
        key, value = item.split("=", 1)
        kind = type(defaults[key])
        hat[key] = value if kind is str else kind(value)
    return hat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ceiling", type=int, default=0, metavar="N", help="also train every N-th task alone (slow)"
    )
    parser.add_argument("--hat", nargs="*", default=[], help="HAT options, e.g. mask_init=normal")
    parser.add_argument(
        "--continue", dest="continue_from", metavar="NAME", help="continue a zoo release (hatzoo.load(NAME))"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows and summary here")
    args = parser.parse_args()
    args.hat = parse_hat(args.hat)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tasks = permuted_tasks(args.tasks, args.split, args.seed)
    print(
        f"{args.tasks} permuted Fashion-MNIST tasks, split={args.split}, HAT options {args.hat or 'defaults'}"
    )
    rows = run_sequence(tasks, args)
    result = summary(rows)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"options": vars(args), "rows": rows, "summary": result}, f, indent=1)


if __name__ == "__main__":
    main()
