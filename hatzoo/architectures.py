"""The zoo architectures: ``hatzoo.create_model("hat-vit-small", ...)``, also in timm's registry.

Each one is a timm backbone turned into a HAT model, registered with ``@register_architecture`` under
its zoo name; ``hatzoo.model`` registers it in timm's registry by its function name
(``timm.create_model("hat_resnet18")``). Trained weights come from ``hatzoo.load`` or
``hatzoo.create_model(name, pretrained=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hatzoo._registry import Registry
from hatzoo.core.arch import jsonable
from hatzoo.core.config import HATConfig
from hatzoo.core.model import HATModel
from hatzoo.errors import InputError
from hatzoo.policies.hatify import hatify

Architecture = Callable[..., HATModel]
ARCHITECTURES: Registry[Architecture] = Registry("zoo architecture")
_TIMM_NAMES: dict[str, str] = {}  # timm spelling -> zoo name


def register_architecture(name: str) -> Callable[[Architecture], Architecture]:
    """Decorator: a zoo architecture under ``name``, and under its function name in timm's spelling.

    ``fn(config=None, model_class=HATModel, **kwargs)`` builds it.
    """

    def add(fn: Architecture) -> Architecture:
        ARCHITECTURES.register(name, (fn.__doc__ or "").strip())(fn)
        _TIMM_NAMES[fn.__name__] = name
        return fn

    return add


def list_architectures() -> list[str]:
    """The zoo architecture names ``create_model`` takes (timm's ``hat_*`` spellings work too)."""
    return list(ARCHITECTURES)


def timm_names() -> dict[str, str]:
    """Each zoo architecture's timm spelling (its function name) -> its zoo name."""
    return dict(_TIMM_NAMES)


def is_architecture(name: str) -> bool:
    """True for a zoo architecture name in either spelling."""
    return _TIMM_NAMES.get(name, name) in ARCHITECTURES


def create_model(
    name: str, config: HATConfig | None = None, *, model_class: type[HATModel] = HATModel, **kwargs: Any
) -> HATModel:
    """A fresh (untrained) zoo architecture; kwargs go to timm (img_size, in_chans, ...) or HATConfig."""
    if not is_architecture(name):
        raise InputError(
            f"unknown zoo architecture {name!r}; known: {', '.join(ARCHITECTURES)}. "
            "For trained weights from the Hub use hatzoo.load(name)."
        )
    return ARCHITECTURES.get(_TIMM_NAMES.get(name, name))(config=config, model_class=model_class, **kwargs)


def _hatified(
    timm_name: str, config: HATConfig | None = None, model_class: type[HATModel] = HATModel, **kwargs: Any
) -> HATModel:
    """The timm backbone ``timm_name`` (no classifier) as a HAT model; HAT options may come as kwargs."""
    import timm

    hat_options = {k: kwargs.pop(k) for k in list(kwargs) if k in HATConfig.__dataclass_fields__}
    kwargs.pop("num_classes", None)
    try:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise InputError(f"{timm_name}: timm rejected the arguments {kwargs}: {error}") from error
    arch = {"source": "timm", "name": timm_name, "kwargs": {k: jsonable(v) for k, v in kwargs.items()}}
    # hatify refuses a config and options both
    return hatify(backbone, config, arch=arch, model_class=model_class, **hat_options)


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
