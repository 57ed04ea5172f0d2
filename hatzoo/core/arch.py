"""Describe a backbone as JSON and build it again: what a checkpoint needs to restore a model.

timm models are described by their architecture name and the keyword arguments that change
tensor shapes; plain ``nn.Sequential`` models by their layers and constructor arguments.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hatzoo.errors import CheckpointError, UnsupportedModelError

_LAYER_ARGS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features", "bias"),
    nn.Conv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "bias",
    ),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine"),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"),
    nn.ReLU: (),
    nn.GELU: ("approximate",),
    nn.SiLU: (),
    nn.Tanh: (),
    nn.Sigmoid: (),
    nn.LeakyReLU: ("negative_slope",),
    nn.ELU: ("alpha",),
    nn.Dropout: ("p",),
    nn.MaxPool2d: ("kernel_size", "stride", "padding"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding"),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.AdaptiveMaxPool2d: ("output_size",),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Identity: (),
}
_BY_NAME = {cls.__name__: cls for cls in _LAYER_ARGS}


def describe_arch(model: nn.Module) -> dict[str, Any]:
    """A JSON description from which ``build_backbone`` makes the same architecture."""
    if isinstance(model, nn.Sequential):
        return {"source": "sequential", "layers": _describe_sequential(model)}
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg and cfg.get("architecture"):
        return {"source": "timm", "name": cfg["architecture"], "kwargs": _timm_shape_kwargs(model)}
    raise UnsupportedModelError(f"cannot describe {type(model).__name__} for a checkpoint")


def build_backbone(arch: dict[str, Any]) -> nn.Module:
    """Build the architecture a description names, with fresh weights and no classifier."""
    source = arch.get("source")
    if source == "timm":
        import timm

        try:
            return timm.create_model(arch["name"], pretrained=False, num_classes=0, **arch.get("kwargs", {}))
        except Exception as error:  # timm raises RuntimeError / TypeError for unknown names or args
            raise CheckpointError(
                f"timm cannot build {arch.get('name')!r} with {arch.get('kwargs')}: {error}"
            ) from error
    if source == "sequential":
        return _build_sequential(arch["layers"])
    raise CheckpointError(
        f"unknown architecture source {source!r} in config; expected 'timm' or 'sequential'"
    )


def _timm_shape_kwargs(model: nn.Module) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    patch = getattr(model, "patch_embed", None)
    if patch is not None:
        kwargs["img_size"] = list(patch.img_size)
        kwargs["patch_size"] = list(patch.patch_size)
        kwargs["in_chans"] = patch.proj.in_channels
        return kwargs
    stem = getattr(model, "conv1", None)
    if isinstance(stem, nn.Conv2d):
        kwargs["in_chans"] = stem.in_channels
    return kwargs


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
        args = {a: _jsonable(getattr(child, a)) for a in _LAYER_ARGS[type(child)]}
        if "bias" in args:
            args["bias"] = child.bias is not None
        layers.append({"name": name, "type": type(child).__name__, "args": args})
    return layers


def _build_sequential(layers: list[dict[str, Any]]) -> nn.Sequential:
    model = nn.Sequential()
    for layer in layers:
        if layer.get("type") == "Sequential":
            model.add_module(layer["name"], _build_sequential(layer["layers"]))
            continue
        cls = _BY_NAME.get(layer.get("type"))
        if cls is None:
            raise CheckpointError(f"unknown layer type {layer.get('type')!r} in config")
        model.add_module(layer["name"], cls(**layer.get("args", {})))
    return model


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
