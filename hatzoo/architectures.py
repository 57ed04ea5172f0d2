"""The zoo architectures: ``hatzoo.create_model("hat-vit-small", ...)``, also in timm's registry.

Each one is a timm backbone turned into a HAT model, registered with ``@register_architecture`` under
its zoo name and, by its function name, in timm's registry (``timm.create_model("hat_resnet18")``).
Trained weights come from ``hatzoo.load`` or ``hatzoo.create_model(name, pretrained=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import register_model

from hatzoo._registry import Registry
from hatzoo.core.arch import jsonable
from hatzoo.core.config import HATConfig
from hatzoo.core.hatify import hatify
from hatzoo.core.model import HATModel
from hatzoo.errors import InputError

Architecture = Callable[..., HATModel]
ARCHITECTURES: Registry[Architecture] = Registry("zoo architecture")
_TIMM_NAMES: dict[str, str] = {}  # timm spelling -> zoo name


def register_architecture(name: str) -> Callable[[Architecture], Architecture]:
    """Decorator: a zoo architecture under ``name``, and under its function name in timm's registry."""

    def add(fn: Architecture) -> Architecture:
        ARCHITECTURES.register(name, (fn.__doc__ or "").strip())(fn)
        _TIMM_NAMES[fn.__name__] = name
        register_model(_timm_entry(name, fn.__name__))
        return fn

    return add


def list_architectures() -> list[str]:
    """The zoo architecture names ``create_model`` takes (timm's ``hat_*`` spellings work too)."""
    return list(ARCHITECTURES)


def is_architecture(name: str) -> bool:
    """True for a zoo architecture name in either spelling."""
    return _TIMM_NAMES.get(name, name) in ARCHITECTURES


def create_model(name: str, config: HATConfig | None = None, **kwargs: Any) -> HATModel:
    """A fresh (untrained) zoo architecture; kwargs go to timm (img_size, in_chans, ...) or HATConfig."""
    if not is_architecture(name):
        raise InputError(
            f"unknown zoo architecture {name!r}; known: {', '.join(ARCHITECTURES)}. "
            "For trained weights from the Hub use hatzoo.load(name)."
        )
    return ARCHITECTURES.get(_TIMM_NAMES.get(name, name))(config=config, **kwargs)


def _hatified(timm_name: str, config: HATConfig | None = None, **kwargs: Any) -> HATModel:
    """The timm backbone ``timm_name`` (no classifier) as a HAT model; HAT options may come as kwargs."""
    import timm

    hat_options = {k: kwargs.pop(k) for k in list(kwargs) if k in HATConfig.__dataclass_fields__}
    kwargs.pop("num_classes", None)
    try:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise InputError(f"{timm_name}: timm rejected the arguments {kwargs}: {error}") from error
    arch = {"source": "timm", "name": timm_name, "kwargs": {k: jsonable(v) for k, v in kwargs.items()}}
    return hatify(backbone, config, arch=arch, **hat_options)  # hatify refuses a config and options both


def _timm_entry(zoo_name: str, timm_name: str) -> Callable[..., HATModel]:
    """The timm registry's entry point: no pretrained weights through timm, timm's extra options dropped."""

    def entry(pretrained: bool = False, **kwargs: Any) -> HATModel:
        if pretrained:
            raise InputError(
                f"pretrained HAT weights come from the zoo: use hatzoo.create_model({zoo_name!r}, "
                f"pretrained=True) or hatzoo.load({zoo_name!r})"
            )
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return create_model(zoo_name, **kwargs)

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = __name__
    return entry


def _register_timm_backbone(zoo_name: str, timm_name: str, title: str) -> None:
    """The timm backbone ``timm_name`` as zoo architecture ``zoo_name`` (``hat_<timm_name>`` in timm)."""

    def build(**kwargs: Any) -> HATModel:
        return _hatified(timm_name, **kwargs)

    build.__name__ = build.__qualname__ = f"hat_{timm_name}"
    build.__doc__ = title
    register_architecture(zoo_name)(build)


# one row per zoo architecture: zoo name, timm backbone, help text
for _row in (
    ("hat-vit-tiny", "vit_tiny_patch16_224", "HAT ViT-Tiny/16."),
    ("hat-vit-small", "vit_small_patch16_224", "HAT ViT-Small/16."),
    ("hat-vit-base", "vit_base_patch16_224", "HAT ViT-Base/16."),
    ("hat-resnet18", "resnet18", "HAT ResNet-18."),
    ("hat-resnet34", "resnet34", "HAT ResNet-34."),
    ("hat-resnet50", "resnet50", "HAT ResNet-50."),
):
    _register_timm_backbone(*_row)
