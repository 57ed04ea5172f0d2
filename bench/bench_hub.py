"""Checkpoint storage per task, and load time from a warm Hub cache against plain timm, in one run.

A HAT ViT-S (img 32, patch 4, 1 channel) with 5 tasks (masks keeping about half the units) is
published into a local Hub (olah). Reported:
- storage: model.safetensors minus the plain timm weights, per task, against what a task adds
  (bit-packed masks + head + per-task norms and tokens);
- load: ``hatzoo.load(repo, task=t)`` from the warm cache (HF_HUB_OFFLINE=1) against
  ``timm.create_model`` plus loading the same backbone weights from a local safetensors file,
  interleaved, median of N (target: at most 1.5x).

    python bench/bench_hub.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import timeit
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

import hatzoo
from hatzoo.checkpoint import checkpoint_tensors
from hatzoo.hub.local_hub import LocalHub

ARCH = {"img_size": 32, "patch_size": 4, "in_chans": 1}
REPO = "bench/hat-vit-small"


def load_plain(weights: Path) -> torch.nn.Module:
    """The baseline: ``timm.create_model`` and the same backbone weights from a local safetensors file."""
    model = timm.create_model("vit_small_patch16_224", num_classes=0, **ARCH)
    model.load_state_dict(load_file(weights))
    return model.eval()


def five_task_model() -> hatzoo.HATModel:
    torch.manual_seed(0)
    model = hatzoo.create_model("hat-vit-small", **ARCH)
    for t in range(5):
        model.add_task(num_classes=2, labels=["a", "b"])
        with torch.no_grad():
            for g in model.groups:
                model.embedding(g, t).copy_(torch.randn_like(model.embedding(g, t)))
        model.end_task(t)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = five_task_model()
    with tempfile.TemporaryDirectory() as tmp, LocalHub(Path(tmp) / "mirror") as hub:
        tmp = Path(tmp)
        model.push_to_hub(REPO, git_mirror=hub.mirror_root)
        folder = model.save_pretrained(tmp / "local")
        plain = timm.create_model("vit_small_patch16_224", num_classes=0, **ARCH)
        backbone = {k: v for k, v in model.backbone.state_dict().items() if ".tasks." not in k}
        shared = {k: v for k, v in checkpoint_tensors(model).items() if not k.startswith("tasks.")}
        plain.load_state_dict(backbone | shared, strict=False)
        save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(tmp / "plain.safetensors"))
        checkpoint = sum((folder / f).stat().st_size for f in ("model.safetensors", "tasks.safetensors"))
        weights = (tmp / "plain.safetensors").stat().st_size
        masks = sum(math.ceil(g.size / 8) for g in model.groups.values())
        head = sum(p.numel() * 4 for p in model.heads[0].parameters())
        own = sum(p.numel() * 4 for p in model.task_parameters(0)) - head
        own -= sum(model.embedding(g, 0).numel() * 4 for g in model.groups)
        print("storage (5 tasks, ViT-S img 32 patch 4)")
        print(f"  checkpoint {checkpoint:,} B, plain timm weights {weights:,} B")
        extra = (checkpoint - weights) / 5
        print(
            f"  extra per task {extra:,.0f} B (beyond what a task adds: the safetensors header's key names)"
        )
        print(
            f"  a task adds: packed masks {masks:,} B + head {head:,} B + norms/tokens {own:,} B"
            f" = {masks + head + own:,} B"
        )
        os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp / "cache"))
        hatzoo.load(REPO)  # fills the cache
        os.environ["HF_HUB_OFFLINE"] = "1"  # read at call time by hatzoo: from now on the warm cache alone
        calls = (lambda: hatzoo.load(REPO, task=3), lambda: load_plain(tmp / "plain.safetensors"))
        for call in calls:  # warm-up
            call()
        times = [[timeit.timeit(call, number=1) for call in calls] for _ in range(args.repeats)]
        hat_s, timm_s = (statistics.median(t) for t in zip(*times, strict=True))
        print(f"load, warm cache, median of {args.repeats} (interleaved, one process)")
        print(f"  hatzoo.load(repo, task=3)           {hat_s * 1e3:8.1f} ms")
        print(f"  timm.create_model + load safetensors {timm_s * 1e3:8.1f} ms")
        print(f"  ratio hatzoo / timm                  {hat_s / timm_s:8.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
