"""Describe a backbone as JSON and build it again: what a checkpoint needs to restore a model.

timm models are described by their architecture name and the keyword arguments that change
tensor shapes; plain ``nn.Sequential`` models by their layers and constructor arguments.

A description comes from a file someone else wrote, so ``check_arch`` accepts only what the
architecture policies support: a timm ViT or ResNet built from an allow-list of shape arguments
(nothing that names a file, a class or a callable, nothing that loads weights), and Sequential
layers of known types whose arguments have the right JSON types and sane ranges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hatzoo.errors import CheckpointError, UnsupportedModelError

Check = Callable[[Any], bool]


def _int(lo: int, hi: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _num(lo: float, hi: float) -> Check:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _ints(lo: int, hi: int, lengths: tuple[int, ...]) -> Check:
    """An int, or a list of ``lengths`` ints, each in [lo, hi]."""
    one = _int(lo, hi)
    return lambda v: one(v) or (isinstance(v, list) and len(v) in lengths and all(one(x) for x in v))


def _choice(*values: Any) -> Check:
    return lambda v: any(v == x and type(v) is type(x) for x in values)


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


_BOOL: Check = _choice(True, False)
_RATE = _num(0.0, 1.0)
_SIZE = 1 << 24  # widest layer a description may ask for

# The arguments of timm's constructors that the policies support; everything else is refused.
_TIMM_ARGS: dict[str, dict[str, Check]] = {
    "vision_transformer": {
        "img_size": _ints(1, 8192, (2,)),
        "patch_size": _ints(1, 8192, (2,)),
        "in_chans": _int(1, 1024),
        "embed_dim": _int(1, 16384),
        "depth": _int(1, 256),
        "num_heads": _int(1, 1024),
        "mlp_ratio": _num(1e-3, 64.0),
        "qkv_bias": _BOOL,
        "qk_norm": _BOOL,
        "proj_bias": _BOOL,
        "class_token": _BOOL,
        "no_embed_class": _BOOL,
        "reg_tokens": _int(0, 1024),
        "pre_norm": _BOOL,
        "final_norm": _BOOL,
        "fc_norm": _optional(_BOOL),
        "global_pool": _choice("", "avg", "avgmax", "max", "token"),
        "drop_rate": _RATE,
        "pos_drop_rate": _RATE,
        "proj_drop_rate": _RATE,
        "attn_drop_rate": _RATE,
        "drop_path_rate": _RATE,
    },
    "resnet": {
        "in_chans": _int(1, 1024),
        "layers": lambda v: isinstance(v, list) and len(v) == 4 and all(_int(1, 256)(x) for x in v),
        "global_pool": _choice("", "avg", "avgmax", "max", "fast"),
        "output_stride": _choice(8, 16, 32),
        "stem_width": _int(1, 4096),
        "stem_type": _choice("", "deep", "deep_tiered"),
        "replace_stem_pool": _BOOL,
        "avg_down": _BOOL,
        "drop_rate": _RATE,
        "drop_path_rate": _RATE,
    },
}

_POS = _int(1, _SIZE)
_KERNEL = _ints(1, 1024, (1, 2))
_PAD = _ints(0, 1024, (1, 2))
_BATCHNORM = {
    "num_features": _POS,
    "eps": _num(0.0, 1.0),
    "momentum": _optional(_RATE),
    "affine": _BOOL,
    "track_running_stats": _BOOL,
}
_POOL = {"kernel_size": _KERNEL, "stride": _optional(_KERNEL), "padding": _PAD}
_LAYER_ARGS: dict[type[nn.Module], dict[str, Check]] = {
    nn.Linear: {"in_features": _POS, "out_features": _POS, "bias": _BOOL},
    nn.Conv2d: {
        "in_channels": _POS,
        "out_channels": _POS,
        "kernel_size": _KERNEL,
        "stride": _KERNEL,
        "padding": lambda v: _PAD(v) or _choice("same", "valid")(v),
        "dilation": _KERNEL,
        "groups": _POS,
        "bias": _BOOL,
    },
    nn.BatchNorm1d: _BATCHNORM,
    nn.BatchNorm2d: _BATCHNORM,
    nn.LayerNorm: {
        "normalized_shape": _ints(1, _SIZE, (1, 2, 3)),
        "eps": _num(0.0, 1.0),
        "elementwise_affine": _BOOL,
    },
    nn.GroupNorm: {"num_groups": _POS, "num_channels": _POS, "eps": _num(0.0, 1.0), "affine": _BOOL},
    nn.ReLU: {},
    nn.GELU: {"approximate": _choice("none", "tanh")},
    nn.SiLU: {},
    nn.Tanh: {},
    nn.Sigmoid: {},
    nn.LeakyReLU: {"negative_slope": _num(-1e6, 1e6)},
    nn.ELU: {"alpha": _num(-1e6, 1e6)},
    nn.Dropout: {"p": _RATE},
    nn.MaxPool2d: _POOL,
    nn.AvgPool2d: _POOL,
    nn.AdaptiveAvgPool2d: {"output_size": _ints(1, 8192, (1, 2))},
    nn.AdaptiveMaxPool2d: {"output_size": _ints(1, 8192, (1, 2))},
    nn.Flatten: {"start_dim": _int(-8, 8), "end_dim": _int(-8, 8)},
    nn.Identity: {},
}
_BY_NAME = {cls.__name__: cls for cls in _LAYER_ARGS}
_MAX_LAYERS = 4096


def describe_arch(model: nn.Module) -> dict[str, Any]:
    """A JSON description from which ``build_backbone`` makes the same architecture."""
    if isinstance(model, nn.Sequential):
        return {"source": "sequential", "layers": _describe_sequential(model)}
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg and cfg.get("architecture"):
        return {"source": "timm", "name": cfg["architecture"], "kwargs": _timm_shape_kwargs(model)}
    raise UnsupportedModelError(f"cannot describe {type(model).__name__} for a checkpoint")


def check_arch(arch: Any, where: str) -> None:
    """Refuse a description that is not a supported architecture made of allowed arguments.

    ``where`` is the key path of the description in the config, used in the error messages.
    """
    if not isinstance(arch, dict):
        raise CheckpointError(f"{where} must be a mapping, got {type(arch).__name__}")
    source = arch.get("source")
    if source == "timm":
        _only_keys(arch, {"source", "name", "kwargs"}, where)
        check_timm_args(arch.get("name"), arch.get("kwargs", {}), f"{where}.name", f"{where}.kwargs")
    elif source == "sequential":
        _only_keys(arch, {"source", "layers"}, where)
        _check_layers(arch.get("layers"), f"{where}.layers", [0])
    else:
        raise CheckpointError(f"{where}.source is {source!r}; expected 'timm' or 'sequential'")


def check_timm_args(name: Any, kwargs: Any, name_path: str, args_path: str) -> None:
    """A timm architecture of a supported family, with keyword arguments from its allow-list only."""
    family = _timm_family(name, name_path)
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{args_path} must be a mapping, got {type(kwargs).__name__}")
    allowed = _TIMM_ARGS[family]
    for key, value in kwargs.items():
        if key not in allowed:
            raise CheckpointError(
                f"{args_path}.{key}: {key!r} is not an architecture argument hatzoo accepts for "
                f"{name} (allowed: {', '.join(sorted(allowed))}); the config is refused"
            )
        if not allowed[key](value):
            raise CheckpointError(f"{args_path}.{key}: value {value!r} is not allowed for {key!r}")


def build_backbone(arch: dict[str, Any], *, device: str | torch.device | None = None) -> nn.Module:
    """Build the architecture a checked description names, with fresh weights and no classifier.

    ``device="meta"`` builds it without allocating any memory (to compare shapes first).
    """
    check_arch(arch, "arch")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if arch["source"] == "timm":
            import timm

            try:
                return timm.create_model(
                    arch["name"], pretrained=False, num_classes=0, **arch.get("kwargs", {})
                )
            except Exception as error:  # timm raises RuntimeError / TypeError / AssertionError for bad shapes
                raise CheckpointError(
                    f"timm cannot build {arch['name']!r} with {arch.get('kwargs')}: {error}"
                ) from error
        try:
            return _build_sequential(arch["layers"])
        except (TypeError, ValueError, RuntimeError) as error:  # e.g. groups that do not divide channels
            raise CheckpointError(f"cannot build the layers of arch.layers: {error}") from error


def _timm_family(name: Any, where: str) -> str:
    import timm

    if not isinstance(name, str) or not timm.is_model(name) or ":" in name:
        raise CheckpointError(f"{where}: {name!r} is not a timm architecture name")
    for family in _TIMM_ARGS:
        if timm.models.is_model_in_modules(name, [family]):
            return family
    raise CheckpointError(
        f"{where}: {name!r} is not an architecture hatzoo's policies support "
        f"(timm families: {', '.join(_TIMM_ARGS)})"
    )


def _only_keys(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    if extra := sorted(set(mapping) - allowed):
        raise CheckpointError(f"{where}.{extra[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _check_layers(layers: Any, where: str, count: list[int]) -> None:
    if not isinstance(layers, list):
        raise CheckpointError(f"{where} must be a list of layers, got {type(layers).__name__}")
    names = set()
    for i, layer in enumerate(layers):
        at = f"{where}[{i}]"
        count[0] += 1
        if count[0] > _MAX_LAYERS:
            raise CheckpointError(f"{at}: more than {_MAX_LAYERS} layers")
        if not isinstance(layer, dict):
            raise CheckpointError(f"{at} must be a mapping, got {type(layer).__name__}")
        name = layer.get("name")
        if not isinstance(name, str) or not name or "." in name or name in names:
            raise CheckpointError(f"{at}.name: {name!r} is not a unique layer name without dots")
        names.add(name)
        kind = layer.get("type")
        if kind == "Sequential":
            _only_keys(layer, {"name", "type", "layers"}, at)
            _check_layers(layer.get("layers"), f"{at}.layers", count)
            continue
        if kind not in _BY_NAME:
            raise CheckpointError(
                f"{at}.type: {kind!r} is not an allowed layer type (allowed: {', '.join(sorted(_BY_NAME))})"
            )
        _only_keys(layer, {"name", "type", "args"}, at)
        args = layer.get("args", {})
        if not isinstance(args, dict):
            raise CheckpointError(f"{at}.args must be a mapping, got {type(args).__name__}")
        allowed = _LAYER_ARGS[_BY_NAME[kind]]
        for key, value in args.items():
            if key not in allowed:
                raise CheckpointError(f"{at}.args.{key}: {kind} takes no argument {key!r} here")
            if not allowed[key](value):
                raise CheckpointError(f"{at}.args.{key}: value {value!r} is not allowed for {kind}")


def _timm_shape_kwargs(model: nn.Module) -> dict[str, Any]:
    patch = getattr(model, "patch_embed", None)
    if patch is not None:
        return {
            "img_size": list(patch.img_size),
            "patch_size": list(patch.patch_size),
            "in_chans": patch.proj.in_channels,
        }
    stem = getattr(model, "conv1", None)
    return {"in_chans": stem.in_channels} if isinstance(stem, nn.Conv2d) else {}


def _describe_sequential(model: nn.Sequential) -> list[dict[str, Any]]:
    layers = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            layers.append({"name": name, "type": "Sequential", "layers": _describe_sequential(child)})
            continue
        if type(child) not in _LAYER_ARGS:
            raise UnsupportedModelError(
                f"cannot describe layer {name} ({type(child).__name__}) for a checkpoint"
            )
        args = {a: jsonable(getattr(child, a)) for a in _LAYER_ARGS[type(child)]}
        if "bias" in args:
            args["bias"] = child.bias is not None
        layers.append({"name": name, "type": type(child).__name__, "args": args})
    return layers


def _build_sequential(layers: list[dict[str, Any]]) -> nn.Sequential:
    model = nn.Sequential()
    for layer in layers:
        if layer["type"] == "Sequential":
            model.add_module(layer["name"], _build_sequential(layer["layers"]))
        else:
            model.add_module(layer["name"], _BY_NAME[layer["type"]](**layer.get("args", {})))
    return model


def jsonable(value: Any) -> Any:
    """A constructor argument as JSON stores it: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value
