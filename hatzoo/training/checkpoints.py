"""Training checkpoints: per task, and within a task every N steps; the model, optimizer, progress, no pickle.

Layout under ``out_dir/checkpoints/``: ``task-<i>/`` after task i ended, and ``step-<i>-<s>/`` after
step s of the open task i (the latest one only; removed once the task ends). Each holds the model as
``save_pretrained`` writes it (an open task with its gate embeddings), the optimizer's tensors in
``optimizer.safetensors`` (keyed by parameter name, so the state maps back onto a rebuilt model),
and ``training_state.json`` (written last: a folder without it is incomplete and ignored). A step
checkpoint also holds the random number generators' states (``rng.safetensors``) and, in its state,
where the task stands: epoch, batch and the seed of the epoch's data order. A checkpoint is built
beside its folder and swapped into place (``hatzoo.files.replacing_folder``), so an interruption
never leaves a half-written one and never loses the previous one.
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
from hatzoo.files import STAGING_SUFFIX, replacing_folder

STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
RNG_FILE = "rng.safetensors"


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
    """Write task ``task``'s checkpoint atomically (built beside it, then swapped into place)."""
    final = checkpoint_dir(out_dir, task)
    with replacing_folder(final) as folder:
        _write_contents(folder, model, optimizer, state)
    return final


def write_step_checkpoint(
    out_dir: Path,
    task: int,
    step: int,
    model: HATModel,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint after ``step`` steps of the open task ``task``, then remove the older ones.

    The folder gets a new name, so the previous checkpoint stays complete until this one is.
    """
    final = Path(out_dir) / "checkpoints" / f"step-{task}-{step}"
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    with replacing_folder(final) as folder:
        save_file(rng, folder / RNG_FILE)
        _write_contents(folder, model, optimizer, state)
    remove_step_checkpoints(out_dir, keep=final)
    return final


def latest_step_checkpoint(out_dir: str | os.PathLike[str], task: int) -> tuple[Path, dict[str, Any]] | None:
    """The complete step checkpoint of task ``task`` with the most steps, and its training state, or None."""
    done = [
        (int(d.name.rpartition("-")[2]), d)
        for d in (Path(out_dir) / "checkpoints").glob(f"step-{task}-*")
        if d.name.rpartition("-")[2].isdigit() and (d / STATE_FILE).is_file()
    ]
    if not done:
        return None
    folder = max(done)[1]
    return folder, json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))


def remove_step_checkpoints(out_dir: str | os.PathLike[str], keep: Path | None = None) -> None:
    """Delete every step checkpoint but ``keep``, and what an interrupted write of any checkpoint left."""
    root = Path(out_dir) / "checkpoints"
    for folder in [*root.glob("step-*"), *root.glob(f".*{STAGING_SUFFIX}")]:
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


def restore_rng(folder: Path) -> None:
    """Set the random number generators to the states a step checkpoint saved."""
    rng = load_file(folder / RNG_FILE)
    torch.set_rng_state(rng.pop("torch"))
    if rng:
        torch.cuda.set_rng_state_all([rng[f"cuda.{i}"] for i in range(len(rng))])


def _write_contents(
    folder: Path, model: HATModel, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """A checkpoint's files written into ``folder``: the model, the optimizer, the training state last."""
    model.save_pretrained(folder)
    save_optimizer(optimizer, model, folder)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
