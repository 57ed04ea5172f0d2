"""Training-step and inference overhead of HAT against the same plain timm model, side by side.

For each setting, one optimizer step (forward, backward, SGD with momentum) on the same batch is
timed for the plain timm model and for its HAT version while it trains its second task (the locks of
the first task active), and one eval-mode forward pass of each. Steps alternate between the two
models so machine noise hits both alike; medians and the ratio HAT / plain are printed (targets on a
GPU: training <= 1.10, inference <= 1.05). Per HAT step the table also counts the ATen operators
that would synchronize with the host on a GPU, all operators (about the kernel launches), and, with
``--compile``, dynamo's graph breaks.

    python bench/bench_core.py                                  # CPU: small inputs
    python bench/bench_core.py --device cuda --amp bf16 --preset gpu
    python bench/bench_core.py --compile --preset cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import timm
import torch
from torch.nn import functional as F

import hatzoo
from hatzoo.diagnostics import count_ops, syncs

# name: (zoo architecture, timm architecture, timm kwargs, image size, batch, eval batch)
PRESETS = {
    "cpu": {
        "ViT-S (img 32, patch 4)": (
            "hat-vit-small",
            "vit_small_patch16_224",
            {"img_size": 32, "patch_size": 4},
            32,
            64,
            64,
        ),
        "ResNet-18 (32x32)": ("hat-resnet18", "resnet18", {}, 32, 64, 64),
    },
    "gpu": {
        "ViT-S/16 224": ("hat-vit-small", "vit_small_patch16_224", {}, 224, 64, 256),
        "ResNet-50 224": ("hat-resnet50", "resnet50", {}, 224, 64, 256),
        "ResNet-18 224": ("hat-resnet18", "resnet18", {}, 224, 128, 256),
    },
}


def autocast(device: str, amp: str):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16")


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_step(model, optimizer, x, y, amp, device, task=None):
    """One optimizer step of the plain model (``task`` None) or of the HAT model training ``task``."""
    with autocast(device, amp):
        if task is None:
            loss = F.cross_entropy(model(x), y)
        else:
            loss = F.cross_entropy(model(x, task=task, scale=200.0), y) + model.regularization(task=task)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(plain, hat, args) -> list[float]:
    """Median seconds of a call of ``plain`` and of ``hat``, timed alternately after warm-up calls."""
    for _ in range(args.warmup):
        plain()
        hat()
    times = [(timed(plain, args.device), timed(hat, args.device)) for _ in range(args.repeats)]
    return [statistics.median(t) for t in zip(*times, strict=True)]


def hat_model_on_second_task(zoo_name, kwargs, x, y, amp, device):
    model = hatzoo.create_model(zoo_name, in_chans=3, **kwargs).to(device)
    first = model.add_task(num_classes=2)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_step(model, optimizer, x, y, amp, device, first)
    model.end_task(first)
    task = model.add_task(num_classes=2)
    optimizer.add_param_group({"params": model.task_parameters(task)})
    return model, optimizer, task


def measure(setting, args) -> dict:
    zoo_name, timm_name, kwargs, size, batch, eval_batch = setting
    device, amp = args.device, args.amp
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    plain = timm.create_model(timm_name, num_classes=2, **kwargs).to(device).train()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    hat, hat_opt, task = hat_model_on_second_task(zoo_name, kwargs, x, y, amp, device)  # in train mode
    hat_fn = hat
    if args.compile:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        hat_fn = torch.compile(hat)

    train = alternate(
        partial(train_step, plain, plain_opt, x, y, amp, device),
        partial(train_step, hat_fn, hat_opt, x, y, amp, device, task),
        args,
    )
    with count_ops() as ops:
        train_step(hat, hat_opt, x, y, amp, device, task)  # eager, counted
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values()) if args.compile else None
    xe = torch.randn(eval_batch, 3, size, size, device=device)
    plain.eval()
    hat.eval()
    with torch.no_grad(), autocast(device, amp):
        infer = alternate(partial(plain, xe), partial(hat, xe, task=task - 1), args)
    return {
        "batch": batch,
        "train": train,
        "eval_batch": eval_batch,
        "infer": infer,
        "syncs": syncs(ops),
        "ops": sum(ops.values()),
        "graph_breaks": breaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="time torch.compile(hat_model)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    where = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"{where}; {args.amp}; SGD momentum; median of {args.repeats}; HAT trains task 1, task 0 locked")
    header = f"{'model':<24} {'batch':>5} {'train HAT/plain':>15} {'eval batch':>10} {'eval HAT/plain':>14}"
    print(header + f" {'syncs/step':>10} {'ops/step':>8}" + (" graph breaks" if args.compile else ""))
    for name, setting in PRESETS[args.preset].items():
        r = measure(setting, args)
        train, infer = r["train"], r["infer"]
        line = (
            f"{name:<24} {r['batch']:>5} {train[1] / train[0]:15.3f} {r['eval_batch']:>10} "
            f"{infer[1] / infer[0]:14.3f} {r['syncs']:>10} {r['ops']:>8}"
        )
        print(line + (f" {r['graph_breaks']:>12}" if args.compile else ""), flush=True)


if __name__ == "__main__":
    main()
