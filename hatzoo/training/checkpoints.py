"""Per-task training checkpoints: the model (``save_pretrained``), optimizer state and progress, no pickle.

Layout under ``out_dir/checkpoints/task-<i>/``: the model as ``save_pretrained`` writes it, the
optimizer's tensors in ``optimizer.safetensors`` (keyed by parameter name, so the state maps back
onto a rebuilt model), and ``training_state.json`` (written last: a folder without it is incomplete
and ignored). A checkpoint is written to ``task-<i>.tmp`` and renamed, so an interruption never
leaves a half-written ``task-<i>``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hatzoo.core.model import HATModel
from hatzoo.errors import CheckpointError

STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"


def checkpoint_dir(out_dir: str | os.PathLike[str], task: int) -> Path:
    """Where task ``task``'s checkpoint lives."""
    return Path(out_dir) / "checkpoints" / f"task-{task}"


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]] | None:
    """The complete checkpoint of the highest task in ``out_dir`` and its training state, or None."""
    done = [
        (int(d.name[5:]), d)
        for d in (Path(out_dir) / "checkpoints").glob("task-*")
        if d.name[5:].isdigit() and (d / STATE_FILE).is_file()
    ]
    if not done:
        return None
    folder = max(done)[1]
    return folder, json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))


def save_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, folder: Path) -> None:
    """Optimizer tensors as safetensors keyed ``<param name>::<state key>``; scalars and groups as JSON."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param, state in optimizer.state.items():
        name = names.get(id(param))
        if name is None:
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}::{key}"] = value
    groups = [
        {k: v for k, v in g.items() if k != "params" and isinstance(v, (int, float, bool, str, type(None)))}
        | {"params": [names[id(p)] for p in g["params"] if id(p) in names]}
        for g in optimizer.param_groups
    ]
    save_file(tensors, folder / OPTIMIZER_FILE)
    meta = {"type": type(optimizer).__name__, "scalars": scalars, "param_groups": groups}
    (folder / OPTIMIZER_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, folder: Path) -> bool:
    """Restore what :func:`save_optimizer` wrote onto ``optimizer``; False when there is nothing to load."""
    if not (folder / OPTIMIZER_FILE).is_file() or not (folder / OPTIMIZER_META).is_file():
        return False
    meta = json.loads((folder / OPTIMIZER_META).read_text(encoding="utf-8"))
    if meta.get("type") != type(optimizer).__name__:
        return False
    params = dict(model.named_parameters())
    tensors = load_file(folder / OPTIMIZER_FILE)
    for full, value in [*tensors.items(), *meta["scalars"].items()]:
        name, _, key = full.rpartition("::")
        if name not in params:
            raise CheckpointError(f"{folder}: optimizer state for unknown parameter {name!r}")
        param = params[name]
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            value = value.to(param.device, param.dtype)
        optimizer.state[param][key] = value
    return True


def write_checkpoint(
    out_dir: Path, task: int, model: HATModel, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Write task ``task``'s checkpoint atomically (temporary folder, then rename)."""
    final = checkpoint_dir(out_dir, task)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_optimizer(optimizer, model, tmp)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
