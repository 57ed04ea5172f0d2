"""The hatzoo checkpoint format (version 2): ``model.safetensors`` + ``tasks.safetensors`` + ``config.json``
+ ``README.md``.

``model.safetensors`` is exactly the timm backbone's state dict, so
``timm.create_model("hf-hub:<repo>", pretrained=True)`` loads it strictly, without a warning: every
backbone tensor shared by all tasks under its plain timm / torch name, plus the per-task tensors
(norms, tokens) of the *default task* (the latest one) under their plain names too.

``tasks.safetensors`` holds every per-task tensor, in float32 (masks in uint8):

- ``tasks.<t>.head.weight`` / ``.bias``: task t's classifier;
- ``tasks.<t>.<name>``: task t's norms, position embedding, class token (plain names after the
  prefix);
- ``tasks.<t>.masks.<group>``: task t's binary mask of a group, bit-packed (uint8, 1 bit per unit,
  little-endian bit order, ceil(size / 8) bytes);
- ``tasks.<t>.embeddings.<group>``: only for a task that was saved while still open.

The real-valued gate embeddings of ended tasks are not stored: inference and continued training
need only the binary masks (they define the locks), so they would be dead weight.

Both headers' metadata hold ``format: pt``, ``hatzoo_format`` and ``hatzoo_format_version``;
``model.safetensors``' also holds ``hatzoo_release_precision``, ``hatzoo_weights_id`` (the sha256 of
the names, dtypes, shapes and bytes of the tensors of both files) and ``hatzoo_tasks_sha256`` (the
sha256 of ``tasks.safetensors``, which is written first). Loading refuses a tasks file with another
sha256, so a pin of ``model.safetensors``' sha256 (a zoo card's) covers both files. Header keys are
sorted and nothing in them depends on time or process, so the same model always saves to the same
bytes.

Format version 1 (a single file: the ``tasks.<t>.*`` tensors inside ``model.safetensors``, no
``hatzoo_tasks_sha256``) still loads.

Release precision: ``"fp32"`` (the default) stores every tensor in float32. ``"bf16"`` stores the
weights of the shared backbone's Linear and Conv layers in bfloat16 and keeps everything else in
float32 (biases, norms, BatchNorm statistics, position embeddings and tokens, and all of
``tasks.safetensors``) and the masks as uint8. Loading widens them to the model's dtype.

``config.json`` holds timm's fields (``architecture``, ``num_classes: 0``, ``num_features``,
``model_args``, and ``pretrained_cfg`` with the data config timm's ``resolve_data_config`` reads:
``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct``) and a ``hatzoo``
section: format and version, the architecture description, the HAT options, the mask groups with
their sizes, the tasks with classes, labels and status, the default task, the data config,
``release_precision`` and ``weights_id`` (equal to the weights' header: a config and weights from
different saves are refused). Checkpoints without the last two are fp32 and load unchanged.

Loading reads JSON and safetensors only: nothing is ever unpickled. The config is checked against
a schema (``hatzoo.checkpoint_schema``), the architecture against an allow-list
(``hatzoo.core.arch.check_arch``), and every size against the tensor shapes in the safetensors
headers before anything is allocated. Saving over a folder replaces it in one step.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from hatzoo.checkpoint_files import tensors_id, write_folder, write_safetensors
from hatzoo.checkpoint_schema import FORMAT, FORMAT_VERSION, PRECISIONS, validate_config
from hatzoo.core.arch import build_backbone, check_arch
from hatzoo.core.config import HATConfig
from hatzoo.core.groups import group_key
from hatzoo.core.model import HATModel, TaskInfo
from hatzoo.data_config import timm_pretrained_cfg
from hatzoo.errors import CheckpointError, HATError, InputError
from hatzoo.files import sha256_file
from hatzoo.policies.hatify import hatify

__all__ = ["FORMAT", "FORMAT_VERSION", "load_pretrained", "save_pretrained"]

WEIGHTS_NAME = "model.safetensors"
TASKS_NAME = "tasks.safetensors"
_TASKS_SHA256 = "hatzoo_tasks_sha256"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
_RELEASE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
    model.enforce_locks()
    per_task = tuple(prefix + "." for prefix in model.task_modules())  # stored per task below
    tensors = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith(per_task)}
    default = model.default_task
    for t in range(model.num_tasks):
        for name, value in _task_tensors(model, t).items():
            tensors[f"tasks.{t}.{name}"] = value
            if t == default and not name.startswith(("head.", "masks.", "embeddings.")):
                tensors[name] = value.clone()  # the plain-named copy for timm users
    # stored in float32 whatever the model's dtype (loading converts to the dtype asked for)
    return {k: _canonical(v) for k, v in tensors.items()}


def _canonical(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).contiguous()


def _task_tensors(model: HATModel, t: int) -> dict[str, torch.Tensor]:
    """Task ``t``'s stored tensors by name after ``tasks.<t>.``; none for a forgotten task."""
    if model.tasks[t].status == "forgotten":
        return {}
    out = {f"head.{k}": v for k, v in model.heads[t].state_dict().items()}
    for path, module in model.task_modules().items():
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


def release_keys(model: HATModel) -> set[str]:
    """The tensors a bf16 release stores in bfloat16: weights of the shared Linear and Conv layers."""
    per_task = tuple(prefix + "." for prefix in model.task_modules())
    return {
        f"{name}.weight"
        for name, module in model.backbone.named_modules()
        if isinstance(module, _RELEASE_LAYERS) and not name.startswith(per_task)
    }


def checkpoint_config(
    model: HATModel,
    extra: dict[str, Any] | None = None,
    *,
    precision: str = "fp32",
    weights_id: str,
) -> dict[str, Any]:
    """config.json: timm's fields where the backbone is a timm model, and the hatzoo section."""
    arch = model.spec.arch
    check_arch(arch, "the model's architecture description")
    config: dict[str, Any] = {}
    if arch.get("source") == "timm":
        config.update(
            architecture=arch["name"],
            num_classes=0,
            num_features=model.spec.num_features,
            model_args=arch.get("kwargs", {}),
            pretrained_cfg=timm_pretrained_cfg(model.data_config, model.spec.input_shape),
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
        "default_task": model.default_task,
        "data_config": model.data_config,
        "metadata": extra or {},
        "release_precision": precision,
        "weights_id": weights_id,
    }
    return config


def save_pretrained(
    model: HATModel,
    directory: str | Path,
    *,
    card: str | None = None,
    metadata: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> Path:
    """Write the checkpoint folder; ``card`` is the README.md text (a minimal card when None).

    ``precision="bf16"`` stores the shared Linear and Conv weights in bfloat16 (see the module
    docstring). An existing folder is replaced in one step; other files in it are kept.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    directory = Path(directory)
    tensors = checkpoint_tensors(model)
    if precision == "bf16":
        for key in release_keys(model):
            tensors[key] = tensors[key].to(torch.bfloat16)
    weights_id = tensors_id(tensors)
    identity = {"format": "pt", "hatzoo_format": FORMAT, "hatzoo_format_version": str(FORMAT_VERSION)}
    tasks_file = io.BytesIO()
    write_safetensors({k: v for k, v in tensors.items() if k.startswith("tasks.")}, tasks_file, identity)
    tasks_bytes = tasks_file.getvalue()
    backbone = {k: v for k, v in tensors.items() if not k.startswith("tasks.")}
    header = identity | {
        "hatzoo_release_precision": precision,
        "hatzoo_weights_id": weights_id,
        _TASKS_SHA256: hashlib.sha256(tasks_bytes).hexdigest(),
    }
    config = checkpoint_config(model, metadata, precision=precision, weights_id=weights_id)
    files = {
        TASKS_NAME: tasks_bytes,
        WEIGHTS_NAME: lambda handle: write_safetensors(backbone, handle, header),  # streamed (the largest)
        CONFIG_NAME: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        CARD_NAME: (card if card is not None else default_card(model, directory.name)).encode(),
    }
    return write_folder(directory, files)


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
    """The hatzoo section of config.json, after the whole file passed the schema."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a hatzoo checkpoint?")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the download may be corrupted") from error
    return validate_config(config, str(path))


def required_files(directory: Path) -> list[str]:
    """The files ``load_pretrained`` reads: config.json, model.safetensors and the tasks file it names."""
    files = [CONFIG_NAME, WEIGHTS_NAME]
    weights = directory / WEIGHTS_NAME
    if not weights.is_file() or _TASKS_SHA256 in _read_header(weights)[0]:
        files.append(TASKS_NAME)
    return files


def load_pretrained(
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    locks: bool = True,
    model_class: type[HATModel] = HATModel,
) -> HATModel:
    """Rebuild a HAT model from a checkpoint folder; every tensor is checked before use.

    The model is built in float32 (bf16-stored weights are widened) and then moved to ``device``
    and ``dtype``. ``locks=False`` skips setting up the gradient locks: for a model that is only run
    or specialized, never trained (they are built on the next add_task / end_task otherwise).
    ``model_class`` is the class built (``hatzoo.HATModel`` for the public loaders).
    """
    directory = Path(directory)
    section = read_config(directory)
    shapes, files = _read_headers(directory, section)
    _check_head_shapes(section, shapes, directory)
    _check_backbone_shapes(build_backbone(section["arch"], device="meta"), shapes, directory)
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with _safetensors_errors(path):
            tensors |= load_file(path)
    try:
        model = hatify(
            build_backbone(section["arch"]),
            HATConfig.from_dict(section["hat"]),
            arch=section["arch"],
            model_class=model_class,
        )
    except CheckpointError:
        raise
    except HATError as error:
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: cannot build the model it describes: {error}"
        ) from error
    _check_groups(model, section["groups"], directory)
    _check_input_size(model, section.get("data_config") or {}, directory)
    for info in section["tasks"]:
        task = TaskInfo(info["num_classes"], list(info["labels"]), info["status"])
        if task.status == "forgotten":  # no tensors in the file to check its class count against: a stub head
            model.restore_task(TaskInfo(1, [""], "forgotten"))
            model.tasks[-1] = task
        else:
            model.restore_task(task)
    bf16 = release_keys(model) if section.get("release_precision", "fp32") == "bf16" else set()
    _load_tensors(model, tensors, directory, bf16)
    model.data_config = dict(section.get("data_config") or {})
    if torch.device(device) != torch.device("cpu") or dtype is not None:
        model.to(device=device, dtype=dtype)
    if locks:
        model.refresh_locks()
    return model.eval()


def _read_headers(directory: Path, section: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], list[Path]]:
    """Shapes of the stored tensors, from the headers alone, and the files that hold them.

    Checks that the weights belong to the config and the tasks file to the weights. A model.safetensors
    that names no tasks file is the single-file layout of format version 1.
    """
    path = directory / WEIGHTS_NAME
    metadata, shapes = _read_header(path)
    for name in ("weights_id", "release_precision"):  # the header holds them as hatzoo_<name>
        if name in section and metadata.get(f"hatzoo_{name}") != section[name]:
            raise CheckpointError(
                f"{path} does not belong to its {CONFIG_NAME}: the config's {name} is {section[name]!r}, "
                f"the weights' is {metadata.get(f'hatzoo_{name}')!r}. The folder mixes two saves: save or "
                "download it again"
            )
    if _TASKS_SHA256 not in metadata:
        return shapes, [path]
    tasks_path = directory / TASKS_NAME
    if not tasks_path.is_file():
        raise CheckpointError(
            f"{directory} has no {TASKS_NAME}, which its {WEIGHTS_NAME} was saved with; the folder is "
            "incomplete: save or download it again"
        )
    digest = sha256_file(tasks_path)
    if digest != metadata[_TASKS_SHA256]:
        raise CheckpointError(
            f"{directory}: the sha256 of {TASKS_NAME} is {digest}, but its {WEIGHTS_NAME} was saved with "
            f"one of sha256 {metadata[_TASKS_SHA256]}. The folder mixes two saves or the file is corrupted: "
            "save or download it again"
        )
    task_shapes = _read_header(tasks_path)[1]
    misplaced = sorted(k for k in shapes if k.startswith("tasks.")) + sorted(
        k for k in task_shapes if not k.startswith("tasks.")
    )
    if misplaced:
        raise CheckpointError(
            f"{directory}: tensors {_first(misplaced)} are in the wrong file: {TASKS_NAME} holds the "
            f"tasks.<t>.* tensors and {WEIGHTS_NAME} all the others"
        )
    return shapes | task_shapes, [path, tasks_path]


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """A safetensors file's metadata and tensor shapes, without reading its data."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}")
    with _safetensors_errors(path), safe_open(str(path), framework="numpy") as f:
        return f.metadata() or {}, {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


@contextlib.contextmanager
def _safetensors_errors(path: Path) -> Iterator[None]:
    """Turn safetensors' error on a broken ``path`` into one that says what to do."""
    try:
        yield
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} cannot be read as safetensors ({error}); the file is truncated or corrupted: "
            "delete it from the cache (huggingface-cli delete-cache) and download again"
        ) from error


def _check_head_shapes(section: dict[str, Any], shapes: dict[str, tuple[int, ...]], directory: Path) -> None:
    """Each stored task's class count, from its head's shape, before any head is allocated."""
    for t, info in enumerate(section["tasks"]):
        if info["status"] == "forgotten":
            continue
        shape = shapes.get(f"tasks.{t}.head.weight")
        if shape is None or len(shape) != 2:
            raise CheckpointError(
                f"{directory}'s weights have no 2-d tensor tasks.{t}.head.weight for task {t} of its config"
            )
        if shape[0] != info["num_classes"]:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: hatzoo.tasks[{t}].num_classes is {info['num_classes']}, "
                f"but the weights' head of task {t} has {shape[0]} classes"
            )


def _check_backbone_shapes(backbone: nn.Module, shapes: dict[str, tuple[int, ...]], directory: Path) -> None:
    """Compare the architecture, built on the meta device, with the stored shapes before allocating it."""
    stored = sum(math.prod(s) for s in shapes.values())
    absent = 0
    for key, tensor in backbone.state_dict().items():
        if key not in shapes:
            absent += tensor.numel()
        elif shapes[key] != tuple(tensor.shape):
            raise CheckpointError(
                f"{directory / WEIGHTS_NAME}: tensor {key} is {shapes[key]}, the architecture in "
                f"{CONFIG_NAME} needs {tuple(tensor.shape)}; config and weights come from different models"
            )
    if absent > stored:
        raise CheckpointError(
            f"{directory}'s weights hold {stored} values but the architecture in {CONFIG_NAME} needs more "
            "than that beyond them; config and weights come from different models"
        )


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


def _check_input_size(model: HATModel, data_config: dict[str, Any], directory: Path) -> None:
    """The data config's input size (what ``predict`` resizes images to) must be one the model takes."""
    size = data_config.get("input_size", data_config.get("input_shape"))
    expected = model.spec.input_shape
    if size is None or expected is None:
        return
    if len(size) != len(expected) or any(
        e is not None and e != s for s, e in zip(size, expected, strict=False)
    ):
        shape = tuple("any" if e is None else e for e in expected)
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: hatzoo.data_config gives the input size {list(size)}, but the "
            f"architecture takes inputs of shape {shape}; config and weights come from different models"
        )


def _load_tensors(model: HATModel, tensors: dict[str, torch.Tensor], directory: Path, bf16: set[str]) -> None:
    expected = checkpoint_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"the weights in {directory} do not match its {CONFIG_NAME}: "
            f"missing {_first(missing)}, unexpected {_first(unexpected)}"
        )
    for key, value in tensors.items():
        want = expected[key]
        if ".masks." in key:
            continue  # masks are checked by unpack_mask, with a clearer message
        want_dtype = torch.bfloat16 if key in bf16 else want.dtype
        if value.shape != want.shape or value.dtype != want_dtype:
            raise CheckpointError(
                f"{directory}: tensor {key} is {tuple(value.shape)} {value.dtype}, the architecture needs "
                f"{tuple(want.shape)} {want_dtype}; config and weights come from different models"
            )
    with torch.no_grad():
        own = model.backbone.state_dict()
        model.backbone.load_state_dict({k: tensors.get(k, v) for k, v in own.items()}, strict=True)
        for t in range(model.num_tasks):
            prefix = f"tasks.{t}."
            for name, target in _task_tensors(model, t).items():
                value = tensors[prefix + name]
                if name.startswith("masks."):
                    group = name[len("masks.") :]
                    model.set_mask(group, t, unpack_mask(value, model.groups[group].size, prefix + name))
                else:
                    target.copy_(value)
            _fill_unstored(model, t)


def _fill_unstored(model: HATModel, t: int) -> None:
    """Give what the file does not store a value that follows from what it does, so a load is a function
    of the files: an ended task's gate embeddings become +1 / -1 where its binary mask is on / off (they
    binarize back to the mask, as ``mask_init`` dense / sparse would start), and a forgotten task's
    head, norms and tokens are zero, its embeddings -1 (closed)."""
    status = model.tasks[t].status
    if status == "open":
        return
    for g in model.groups:
        on = model.masks(g)[t] if status == "ended" else torch.zeros_like(model.masks(g)[t])
        model.embedding(g, t).copy_(on.to(model.embedding(g, t).dtype) * 2 - 1)
    if status == "forgotten":
        tensors = [*model.heads[t].state_dict().values()]
        tensors += [v for m in model.task_modules().values() for v in m.tasks[t].state_dict().values()]
        tensors += [p.tasks[t] for p in model.task_params.values()]
        for tensor in tensors:
            tensor.zero_()


def _first(keys: list[str], count: int = 5) -> str:
    return str(keys[:count]) + ("..." if len(keys) > count else "")


class CheckpointMixin:
    """``model.save_pretrained(folder)`` for ``hatzoo.HATModel``: the checkpoint layer's own method."""

    def save_pretrained(self: HATModel, directory: str | Path, **options: Any) -> Path:
        """Write model.safetensors, config.json and README.md (options: :func:`save_pretrained`)."""
        return save_pretrained(self, directory, **options)
