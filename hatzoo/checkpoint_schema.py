"""The schema of a checkpoint's config.json, checked in full before anything is built from it.

Every fault is a ``CheckpointError`` that names the key path (``hatzoo.tasks[2].num_classes``) and
what was expected. Sizes that allocate memory (classes per task, group sizes, layer widths) are only
checked for type and range here; ``hatzoo.checkpoint`` compares them with the tensor shapes in the
safetensors header before it allocates anything.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hatzoo.core.arch import check_arch, check_timm_args
from hatzoo.core.config import CHOICES, HATConfig
from hatzoo.errors import CheckpointError
from hatzoo.schema import Schema
from hatzoo.schema import kind as _kind

FORMAT = "hatzoo"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: the tasks' tensors inside model.safetensors; 2: in tasks.safetensors
STATUSES = ("open", "ended", "forgotten")
PRECISIONS = ("fp32", "bf16")
MAX_TASKS = 10_000
MAX_UNITS = 1 << 24
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED_KEYS = {"format", "format_version", "arch", "hat", "groups", "tasks"}
_OPTIONAL_KEYS = {"default_task", "data_config", "metadata", "release_precision", "weights_id"}
_PRETRAINED_CFG_KEYS = {"num_classes", "input_size", "mean", "std", "interpolation", "crop_pct"}
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


class _Schema(Schema):
    """Checks of one config.json; every fault is a CheckpointError."""

    error = CheckpointError


def validate_config(config: Any, where: str) -> dict[str, Any]:
    """Check a whole config.json; returns its hatzoo section."""
    s = _Schema(where)
    if not isinstance(config, dict) or not isinstance(config.get("hatzoo"), dict):
        raise CheckpointError(f"{where} is not a hatzoo config (no 'hatzoo' section with format 'hatzoo')")
    section = s.mapping(
        config["hatzoo"], "hatzoo", {"format", "format_version"}, _REQUIRED_KEYS | _OPTIONAL_KEYS
    )
    _check_section(s, section)
    _check_timm_fields(s, config, section["arch"])
    return section


def _check_format(s: _Schema, section: dict[str, Any]) -> None:
    """Format and version first: a newer format gets an upgrade message rather than schema errors."""
    if section.get("format") != FORMAT:
        raise s.fail("hatzoo.format", f"must be {FORMAT!r}, got {section.get('format')!r}")
    version = section.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{s.where} has hatzoo format version {version!r}; this hatzoo reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Upgrade hatzoo (pip install -U hatzoo) or re-save "
            "the model with this version."
        )


def _check_section(s: _Schema, section: dict[str, Any]) -> None:
    _check_format(s, section)
    s.mapping(section, "hatzoo", _REQUIRED_KEYS, _OPTIONAL_KEYS)
    check_arch(section["arch"], "hatzoo.arch")
    _check_hat(s, section["hat"])
    names = set()
    for i, group in enumerate(s.items(section["groups"], "hatzoo.groups", MAX_UNITS)):
        path = f"hatzoo.groups[{i}]"
        s.mapping(group, path, {"name", "size"})
        name = s.string(group["name"], f"{path}.name")
        if name in names:
            raise s.fail(f"{path}.name", f"{name!r} appears twice")
        names.add(name)
        s.integer(group["size"], f"{path}.size", 1, MAX_UNITS)
    tasks = s.items(section["tasks"], "hatzoo.tasks", MAX_TASKS)
    for i, task in enumerate(tasks):
        path = f"hatzoo.tasks[{i}]"
        s.mapping(task, path, {"num_classes", "labels", "status"})
        count = s.integer(task["num_classes"], f"{path}.num_classes", 1, MAX_UNITS)
        for j, label in enumerate(s.items(task["labels"], f"{path}.labels", MAX_UNITS, count)):
            s.string(label, f"{path}.labels[{j}]")
        s.string(task["status"], f"{path}.status", STATUSES)
    if sum(t["status"] == "open" for t in tasks) > 1:
        raise s.fail("hatzoo.tasks", "has more than one open task; a model trains one task at a time")
    latest = max((i for i, t in enumerate(tasks) if t["status"] != "forgotten"), default=None)
    default = section.get("default_task", latest)
    if default != latest or isinstance(default, bool):
        raise s.fail(
            "hatzoo.default_task", f"must be the latest task not forgotten ({latest}), got {default!r}"
        )
    _check_data_config(s, section.get("data_config") or {}, "hatzoo.data_config")
    if not isinstance(section.get("metadata", {}), dict):
        raise s.fail("hatzoo.metadata", f"must be a mapping, got {_kind(section['metadata'])}")
    s.string(section.get("release_precision", "fp32"), "hatzoo.release_precision", PRECISIONS)
    if "weights_id" in section and not _HEX64.match(s.string(section["weights_id"], "hatzoo.weights_id")):
        raise s.fail("hatzoo.weights_id", "must be 64 lowercase hex digits")


def _check_hat(s: _Schema, hat: Any) -> None:
    """The HAT options, read off ``HATConfig``'s fields: one of its ``CHOICES``, else a number > 0."""
    names = [f.name for f in dataclasses.fields(HATConfig)]
    s.mapping(hat, "hatzoo.hat", set(), set(names))
    for key in names:
        if key not in hat:
            continue
        if key in CHOICES:
            s.string(hat[key], f"hatzoo.hat.{key}", CHOICES[key])
        else:  # but reg_c may be 0: no regularizer
            s.number(hat[key], f"hatzoo.hat.{key}", 0.0, open_lo=key != "reg_c")


def _check_data_config(s: _Schema, data: Any, path: str) -> None:
    if not isinstance(data, dict):
        raise s.fail(path, f"must be a mapping, got {_kind(data)}")
    channels = None
    for key in ("input_shape", "input_size"):
        if key in data:
            shape = s.items(data[key], f"{path}.{key}", 4)
            for i, x in enumerate(shape):
                s.integer(x, f"{path}.{key}[{i}]", 1, 1 << 16)
            channels = shape[0] if len(shape) == 3 else None
    if "mean" in data:
        s.numbers(data["mean"], f"{path}.mean", channels)
    if "std" in data:
        s.numbers(data["std"], f"{path}.std", channels, positive=True)
    for key, value in data.items():
        if key in ("input_shape", "input_size", "mean", "std"):
            continue
        inner = value.values() if isinstance(value, dict) else value
        if isinstance(value, (list, dict)) and any(isinstance(x, (list, dict)) for x in inner):
            raise s.fail(f"{path}.{key}", "must be a JSON scalar or a flat list")


def _check_timm_fields(s: _Schema, config: dict[str, Any], arch: dict[str, Any]) -> None:
    timm_keys = {"architecture", "num_classes", "num_features", "model_args", "pretrained_cfg"}
    if arch["source"] != "timm":
        present = sorted(timm_keys & set(config))
        if present:
            raise s.fail(
                present[0], "belongs to timm architectures; this config describes a Sequential model"
            )
        return
    for key in sorted(timm_keys):
        if key not in config:
            raise s.fail(key, "is missing")
    if config["architecture"] != arch["name"]:
        raise s.fail(
            "architecture", f"is {config['architecture']!r} but hatzoo.arch.name is {arch['name']!r}"
        )
    check_timm_args(config["architecture"], config["model_args"], "architecture", "model_args")
    if config["model_args"] != arch.get("kwargs", {}):
        raise s.fail("model_args", "differs from hatzoo.arch.kwargs; config.json was edited inconsistently")
    s.integer(config["num_classes"], "num_classes", 0, 0)
    s.integer(config["num_features"], "num_features", 1, MAX_UNITS)
    cfg = s.mapping(config["pretrained_cfg"], "pretrained_cfg", {"num_classes"}, _PRETRAINED_CFG_KEYS)
    s.integer(cfg["num_classes"], "pretrained_cfg.num_classes", 0, 0)
    if "input_size" in cfg:
        for i, x in enumerate(s.items(cfg["input_size"], "pretrained_cfg.input_size", 3, 3)):
            s.integer(x, f"pretrained_cfg.input_size[{i}]", 1, 1 << 16)
    for key in ("mean", "std"):
        if key in cfg:
            s.numbers(cfg[key], f"pretrained_cfg.{key}", None, positive=key == "std")
    if "interpolation" in cfg:
        s.string(cfg["interpolation"], "pretrained_cfg.interpolation", _INTERPOLATIONS)
    if "crop_pct" in cfg:
        s.number(cfg["crop_pct"], "pretrained_cfg.crop_pct", 0.0, 1.0, open_lo=True)
