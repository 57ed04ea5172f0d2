"""Pruned vs dense masked ONNX graphs on ONNX Runtime CPU, and pruned ONNX vs the PyTorch HAT model.

For each architecture, one HAT model gets two tasks whose masks keep a random 50% and 25% of the units of
every mask group. Each task is exported twice: pruned (``export_task``, masked units removed) and dense
masked (``specialize(t, prune=False)``: the unpruned network with its 0/1 gate multiplications, what
serving the HAT model unpruned costs). Both run on ONNX Runtime CPU at batch 1 and 32, interleaved, median of
several repeats. Printed per setting: the kept-FLOPs fraction, time(pruned) / time(dense), that ratio
divided by the FLOPs fraction (target <= 1.25: pruning saves time in proportion to the work it removes),
and at batch 1 the speed-up of the pruned ONNX graph over the PyTorch HAT model in eval mode (target >= 3).

    .venv/bin/python bench/bench_export.py            # ViT-S 32/4 and ResNet-18 64x64 (~3 min on 2 cores)
    .venv/bin/python bench/bench_export.py --big      # also ViT-S 224/16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import hatzoo
from hatzoo.core.specialize import specialize
from hatzoo.export.onnx_export import export_module, export_task, ort_session

KEEPS = (0.5, 0.25)


@dataclass
class Setting:
    """One architecture to benchmark: zoo name, timm kwargs and the per-sample input shape."""

    label: str
    name: str
    kwargs: dict
    shape: tuple[int, int, int]


SETTINGS = [
    Setting("ViT-S 32/4", "hat-vit-small", {"img_size": 32, "patch_size": 4}, (3, 32, 32)),
    Setting("ResNet-18 64", "hat-resnet18", {}, (3, 64, 64)),
]
BIG = Setting("ViT-S 224/16", "hat-vit-small", {}, (3, 224, 224))


def build(setting: Setting, seed: int = 0) -> hatzoo.HATModel:
    """A HAT model with one ended task per keep fraction: exactly that share of every group's units kept."""
    torch.manual_seed(seed)
    model = hatzoo.create_model(setting.name, **setting.kwargs)
    gen = torch.Generator().manual_seed(seed)
    for keep in KEEPS:
        t = model.add_task(num_classes=10)
        with torch.no_grad():
            for g in model.groups.values():
                e = model.embedding(g.name, t)
                chosen = torch.randperm(g.size, generator=gen)[: max(1, round(keep * g.size))]
                e.fill_(-1.0)
                e[chosen] = 1.0
        model.end_task(t)
    return model.eval()


def side_by_side(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median times of several callables, measured in interleaved rounds so drift hits all alike."""
    for fn in runs.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_setting(setting: Setting, work: Path, repeats: int) -> list[dict]:
    """Rows of the table for one architecture (one per keep fraction)."""
    model = build(setting)
    rows = []
    for t, keep in enumerate(KEEPS):
        pruned = export_task(model, t, work / f"{setting.name}-{t}-pruned.onnx", image_size=setting.shape[1:])
        example = torch.randn(2, *setting.shape)
        dense_path = export_module(
            specialize(model, t, prune=False), example, work / f"{setting.name}-{t}-dense.onnx"
        )
        sessions = {"pruned": ort_session(pruned.path), "dense": ort_session(dense_path)}
        row = {
            "setting": setting.label,
            "keep": keep,
            "flops": pruned.flops_fraction,
            "diff": pruned.max_abs_diff,
        }
        rng = np.random.default_rng(t)
        for batch in (1, 32):
            x = rng.standard_normal((batch, *setting.shape)).astype(np.float32)
            runs = {k: (lambda s=s, x=x: s.run(None, {"x": x})) for k, s in sessions.items()}
            if batch == 1:
                # the same input must give the same logits on both graphs before comparing their speed
                diff = np.abs(runs["pruned"]()[0] - runs["dense"]()[0]).max()
                assert diff <= 1e-4, f"pruned and dense graphs differ by {diff}"
                xt = torch.from_numpy(x)
                runs["torch"] = lambda xt=xt, t=t: model(xt, task=t)
            with torch.no_grad():
                got = side_by_side(runs, repeats if batch == 1 else max(3, repeats // 4))
            if batch == 1:
                row["speedup_vs_torch"] = got["torch"] / got["pruned"]
            row[f"ratio_b{batch}"] = got["pruned"] / got["dense"]
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    """The compact result table: ratios only, no absolute times."""
    head = (
        f"{'setting':<14}{'keep':>6}{'flops':>8}{'b1 p/d':>9}{'/flops':>8}{'b32 p/d':>9}{'/flops':>8}"
        f"{'ORT vs torch b1':>17}{'max|diff|':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['setting']:<14}{r['keep']:>6.2f}{r['flops']:>8.3f}"
            f"{r['ratio_b1']:>9.3f}{r['ratio_b1'] / r['flops']:>8.2f}"
            f"{r['ratio_b32']:>9.3f}{r['ratio_b32'] / r['flops']:>8.2f}"
            f"{r['speedup_vs_torch']:>16.1f}x{r['diff']:>11.1e}"
        )
    worst = max(max(r["ratio_b1"], r["ratio_b32"]) / r["flops"] for r in rows)
    slowest = min(r["speedup_vs_torch"] for r in rows)
    print(
        f"\nworst time ratio / flops fraction: {worst:.2f} (target <= 1.25); "
        f"smallest ORT-pruned speed-up over torch HAT at batch 1: {slowest:.1f}x (target >= 3)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also benchmark ViT-S at 224 px, patch 16")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats at batch 1 (batch 32: / 4)")
    args = parser.parse_args()
    settings = SETTINGS + ([BIG] if args.big else [])
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            rows += bench_setting(setting, Path(tmp), args.repeats)
    threads = torch.get_num_threads()
    print(f"ONNX Runtime CPU, torch threads {threads}; p/d = time(pruned) / time(dense masked)")
    print_table(rows)
    print(f"(benchmark ran {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
