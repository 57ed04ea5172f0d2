"""Training-step overhead of HAT against the same plain timm model, measured side by side.

For each architecture, one optimizer step (forward, backward, SGD with momentum) on the same batch
is timed for the plain timm model and for its HAT version while it trains its second task (the
locks of the first task active: gradient filtering and restoring locked entries after each step).
Steps alternate between the two models so machine noise hits both alike; the median of each is
reported with the ratio HAT / plain (target: at most 1.15).

    python bench/bench_core.py [--batches 32 64] [--repeats 15]

The locks cost a fixed time per step (about one pass over the parameters to filter gradients and
one to restore locked entries), so the ratio falls as the batch grows; several batches are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from torch.nn import functional as F

import hatzoo

ARCHS = {
    "ViT-S (img 32, patch 4)": ("hat-vit-small", "vit_small_patch16_224", {"img_size": 32, "patch_size": 4}),
    "ResNet-18 (32x32)": ("hat-resnet18", "resnet18", {}),
}


def plain_step(model, optimizer, x, y):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def hat_step(model, optimizer, x, y, task):
    loss = F.cross_entropy(model(x, task=task, scale=200.0), y) + model.regularization(task=task)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def hat_model_on_second_task(zoo_name: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor):
    model = hatzoo.create_model(zoo_name, in_chans=3, **kwargs)
    first = model.add_task(num_classes=2)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    hat_step(model, optimizer, x, y, first)
    model.end_task(first)
    task = model.add_task(num_classes=2)
    optimizer.add_param_group({"params": model.task_parameters(task)})
    return model, optimizer, task


def measure(name: str, batch: int, repeats: int) -> tuple[float, float]:
    zoo_name, timm_name, kwargs = ARCHS[name]
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 2, (batch,))
    plain = timm.create_model(timm_name, num_classes=2, **kwargs).train()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    hat, hat_opt, task = hat_model_on_second_task(zoo_name, kwargs, x, y)
    hat.train()
    for _ in range(2):  # warm-up
        plain_step(plain, plain_opt, x, y)
        hat_step(hat, hat_opt, x, y, task)
    plain_times, hat_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        plain_step(plain, plain_opt, x, y)
        plain_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        hat_step(hat, hat_opt, x, y, task)
        hat_times.append(time.perf_counter() - start)
    return statistics.median(plain_times), statistics.median(hat_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"training step, SGD momentum, {threads} threads, median of {args.repeats}")
    print(f"{'model':<26} {'batch':>5} {'plain ms':>9} {'HAT ms':>9} {'HAT/plain':>10}")
    for name in ARCHS:
        for batch in args.batches:
            plain, hat = measure(name, batch, args.repeats)
            print(
                f"{name:<26} {batch:>5} {plain * 1e3:9.1f} {hat * 1e3:9.1f} {hat / plain:10.3f}", flush=True
            )


if __name__ == "__main__":
    main()
