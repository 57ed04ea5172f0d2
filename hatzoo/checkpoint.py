"""The hatzoo checkpoint format (version 1): ``model.safetensors`` + ``config.json`` + ``README.md``.

``model.safetensors`` keys:

- ``<name>``: every backbone tensor shared by all tasks, under its plain timm / torch name, plus
  the per-task tensors (norms, tokens) of the *default task* (the latest one) under their plain
  names too, so a timm user can load the file as an ordinary backbone state dict;
- ``tasks.<t>.head.weight`` / ``.bias``: task t's classifier;
- ``tasks.<t>.<name>``: task t's norms, position embedding, class token (plain names after the
  prefix);
- ``tasks.<t>.masks.<group>``: task t's binary mask of a group, bit-packed (uint8, 1 bit per unit,
  little-endian bit order, ceil(size / 8) bytes);
- ``tasks.<t>.embeddings.<group>``: only for a task that was saved while still open.

The real-valued gate embeddings of ended tasks are not stored: inference and continued training
need only the binary masks (they define the locks), so they would be dead weight.

``config.json`` holds timm's fields (``architecture``, ``num_classes``, ``model_args``,
``pretrained_cfg``) and a ``hatzoo`` section: format and version, the architecture description,
the HAT options, the mask groups with their sizes, and the tasks with classes, labels and status.
Loading reads JSON and safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hatzoo.core.arch import build_backbone
from hatzoo.core.config import HATConfig
from hatzoo.core.groups import group_key
from hatzoo.core.model import HATModel, TaskInfo
from hatzoo.core.task_modules import TaskModule
from hatzoo.errors import CheckpointError, HATError

FORMAT = "hatzoo"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"


# --------------------------------------------------------------------------- masks
def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool mask -> uint8 tensor with 1 bit per unit."""
    bits = np.packbits(mask.detach().cpu().numpy().astype(bool), bitorder="little")
    return torch.from_numpy(bits.copy())


def unpack_mask(packed: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """uint8 tensor -> bool mask of ``size`` units; refuses a size or padding that does not fit."""
    if packed.dtype != torch.uint8 or packed.ndim != 1 or packed.numel() != math.ceil(size / 8):
        raise CheckpointError(
            f"{what}: mask has {packed.numel()} bytes of {packed.dtype}, but its group has {size} units "
            f"({math.ceil(size / 8)} uint8 bytes expected); the file does not belong to this config"
        )
    bits = np.unpackbits(packed.numpy(), bitorder="little")
    if bits[size:].any():
        raise CheckpointError(f"{what}: mask has bits set beyond its {size} units; the file is corrupted")
    return torch.from_numpy(bits[:size].astype(bool))


# --------------------------------------------------------------------------- saving
def checkpoint_tensors(model: HATModel) -> dict[str, torch.Tensor]:
    """Every tensor the checkpoint stores, by key."""
    model._guard.enforce()
    tensors: dict[str, torch.Tensor] = {}
    per_task_prefixes = list(_task_modules(model))
    for name, value in model.backbone.state_dict().items():
        if not any(name.startswith(prefix + ".") for prefix in per_task_prefixes):
            tensors[name] = value
    default = model._latest_task()
    for t, info in enumerate(model.tasks):
        if info.status == "forgotten":
            continue
        for name, value in _task_tensors(model, t).items():
            tensors[f"tasks.{t}.{name}"] = value
            if t == default and not name.startswith(("head.", "masks.", "embeddings.")):
                tensors[name] = value.clone()  # the plain-named copy for timm users
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _task_tensors(model: HATModel, t: int) -> dict[str, torch.Tensor]:
    out = {f"head.{k}": v for k, v in model.heads[t].state_dict().items()}
    for path, module in _task_modules(model).items():
        for k, v in module.tasks[t].state_dict().items():
            out[f"{path}.{k}"] = v
    for host, attr in model.spec.per_task_params:
        name = f"{host}.{attr}" if host else attr
        out[name] = model.task_params[group_key(name)].tasks[t]
    for g in model.groups:
        if model.tasks[t].status == "open":
            out[f"embeddings.{g}"] = model.embedding(g, t)
        else:
            out[f"masks.{g}"] = pack_mask(model.masks(g)[t])
    return out


def checkpoint_config(model: HATModel, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json: timm's fields where the backbone is a timm model, and the hatzoo section."""
    arch = model.spec.arch
    config: dict[str, Any] = {}
    if arch.get("source") == "timm":
        config.update(
            architecture=arch["name"],
            num_classes=0,
            num_features=model.spec.num_features,
            model_args=arch.get("kwargs", {}),
            pretrained_cfg={"num_classes": 0},
        )
    config["hatzoo"] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "hat": model.config.to_dict(),
        "groups": [{"name": g.name, "size": g.size} for g in model.groups.values()],
        "tasks": [
            {"num_classes": i.num_classes, "labels": i.labels, "status": i.status} for i in model.tasks
        ],
        "default_task": model._latest_task(),
        "data_config": model.data_config,
        "metadata": extra or {},
    }
    return config


def save_pretrained(
    model: HATModel, directory: str | Path, *, card: str | None = None, metadata: dict[str, Any] | None = None
) -> Path:
    """Write the checkpoint folder; ``card`` is the README.md text (a minimal card when None)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = checkpoint_config(model, metadata)
    save_file(
        checkpoint_tensors(model),
        str(directory / WEIGHTS_NAME),
        metadata={"format": "pt", "hatzoo_format": FORMAT, "hatzoo_format_version": str(FORMAT_VERSION)},
    )
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (directory / CARD_NAME).write_text(card if card is not None else default_card(model, directory.name))
    return directory


def default_card(model: HATModel, name: str) -> str:
    """A minimal model card with Hub metadata; training runs write a full one with results."""
    lines = [
        "---",
        "library_name: hatzoo",
        "tags: [hat, continual-learning, image-classification]",
        "---",
        f"# {name}",
        "",
        f"A HAT model with {model.num_tasks} task(s). Load it with `hatzoo.load(...)`.",
        "",
        "| task | classes | labels |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {i.num_classes} | {', '.join(i.labels)} |" for t, i in enumerate(model.tasks)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- loading
def read_config(directory: Path) -> dict[str, Any]:
    """The hatzoo section of config.json, checked for format and version."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a hatzoo checkpoint?")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the download may be corrupted") from error
    section = config.get("hatzoo") if isinstance(config, dict) else None
    if not isinstance(section, dict) or section.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a hatzoo config (no 'hatzoo' section with format 'hatzoo')")
    version = section.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has hatzoo format version {version!r}; this hatzoo reads version {FORMAT_VERSION}. "
            "Upgrade hatzoo (pip install -U hatzoo) or re-save the model with this version."
        )
    for key in ("arch", "hat", "groups", "tasks"):
        if key not in section:
            raise CheckpointError(f"{path}: the hatzoo section lacks {key!r}")
    return section


def load_pretrained(
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    locks: bool = True,
) -> HATModel:
    """Rebuild a HAT model from a checkpoint folder; every tensor is checked before use.

    ``locks=False`` skips setting up the gradient locks: for a model that is only run or
    specialized, never trained (they are built on the next add_task / end_task otherwise).
    """
    directory = Path(directory)
    section = read_config(directory)
    tensors = _read_weights(directory / WEIGHTS_NAME)
    from hatzoo.core.hatify import hatify

    try:
        model = hatify(
            build_backbone(section["arch"]), HATConfig.from_dict(section["hat"]), arch=section["arch"]
        )
    except CheckpointError:
        raise
    except HATError as error:
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: cannot build the model it describes: {error}"
        ) from error
    _check_groups(model, section["groups"], directory)
    for info in section["tasks"]:
        if info.get("status") not in ("open", "ended", "forgotten"):
            raise CheckpointError(f"{directory / CONFIG_NAME}: task status {info.get('status')!r} is unknown")
        model._append_task(
            TaskInfo(int(info["num_classes"]), [str(x) for x in info["labels"]], info["status"])
        )
    _load_tensors(model, tensors, directory / WEIGHTS_NAME)
    model.data_config = dict(section.get("data_config") or {})
    if torch.device(device) != torch.device("cpu") or dtype is not None:
        model.to(device=device, dtype=dtype)
    if locks:
        model._refresh_locks()
    return model.eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} cannot be read as safetensors ({error}); the file is truncated or corrupted: "
            "delete it from the cache (huggingface-cli delete-cache) and download again"
        ) from error


def _check_groups(model: HATModel, groups: list[dict[str, Any]], directory: Path) -> None:
    stored = [(g.get("name"), g.get("size")) for g in groups]
    built = [(g.name, g.size) for g in model.groups.values()]
    if stored != built:
        diff = next(
            ((s, b) for s, b in zip(stored, built, strict=False) if s != b), (stored[-1:], built[-1:])
        )
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: its mask groups do not match the architecture it names "
            f"(first difference: stored {diff[0]}, built {diff[1]}); "
            "config and weights come from different models"
        )


def _load_tensors(model: HATModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = checkpoint_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its config.json: "
            f"missing {_first(missing)}, unexpected {_first(unexpected)}"
        )
    for key, value in tensors.items():
        want = expected[key]
        if ".masks." in key:
            continue  # masks are checked by unpack_mask, with a clearer message
        if value.shape != want.shape or value.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: tensor {key} is {tuple(value.shape)} {value.dtype}, the architecture needs "
                f"{tuple(want.shape)} {want.dtype}; config and weights come from different models"
            )
    with torch.no_grad():
        shared = {k: v for k, v in tensors.items() if not k.startswith("tasks.")}
        own = model.backbone.state_dict()
        model.backbone.load_state_dict({**own, **{k: v for k, v in shared.items() if k in own}}, strict=True)
        for t, info in enumerate(model.tasks):
            if info.status == "forgotten":
                continue
            prefix = f"tasks.{t}."
            for name, target in _task_tensors(model, t).items():
                value = tensors[prefix + name]
                if name.startswith("masks."):
                    group = name[len("masks.") :]
                    model.masks(group)[t] = unpack_mask(value, model.groups[group].size, prefix + name)
                else:
                    target.copy_(value)


def _first(keys: list[str], count: int = 5) -> str:
    return str(keys[:count]) + ("..." if len(keys) > count else "")


def _task_modules(model: HATModel) -> dict[str, TaskModule]:
    return {n: m for n, m in model.backbone.named_modules() if isinstance(m, TaskModule)}
