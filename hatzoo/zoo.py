"""The zoo architectures: ``hatzoo.create_model("hat-vit-small", ...)`` and timm registry entries.

Each zoo architecture is a timm architecture turned into a HAT model. They are also registered in
timm's registry (``timm.create_model("hat_vit_small_patch16_224")``) once hatzoo is imported.
"""

from __future__ import annotations

from typing import Any

from hatzoo.core.config import HATConfig
from hatzoo.core.hatify import hatify
from hatzoo.core.model import HATModel
from hatzoo.errors import InputError

ARCHITECTURES: dict[str, str] = {
    "hat-vit-tiny": "vit_tiny_patch16_224",
    "hat-vit-small": "vit_small_patch16_224",
    "hat-vit-base": "vit_base_patch16_224",
    "hat-resnet18": "resnet18",
    "hat-resnet34": "resnet34",
    "hat-resnet50": "resnet50",
}
_HAT_OPTIONS = {"smax", "reg_c", "reg_mode", "mask_init", "clamp", "cosh_clamp", "norm_init"}


def create_model(name: str, config: HATConfig | None = None, **kwargs: Any) -> HATModel:
    """A fresh (untrained) zoo architecture; kwargs go to timm (img_size, in_chans, ...) or HATConfig."""
    timm_name = ARCHITECTURES.get(name) or _from_timm_name(name)
    if timm_name is None:
        raise InputError(
            f"unknown zoo architecture {name!r}; known: {sorted(ARCHITECTURES)}. "
            "For trained weights from the Hub use hatzoo.load(name)."
        )
    import timm

    hat_options = {k: kwargs.pop(k) for k in list(kwargs) if k in _HAT_OPTIONS}
    if config is not None and hat_options:
        raise InputError("pass either a HATConfig or HAT keyword options, not both")
    kwargs.pop("num_classes", None)
    try:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise InputError(f"{name}: timm rejected the arguments {kwargs}: {error}") from error
    arch = {"source": "timm", "name": timm_name, "kwargs": _jsonable(kwargs)}
    return hatify(backbone, config or HATConfig.from_dict(hat_options), arch=arch)


def _from_timm_name(name: str) -> str | None:
    """Accept the timm registry spelling too: 'hat_vit_small_patch16_224' -> 'vit_small_patch16_224'."""
    if name.startswith("hat_") and name[4:] in ARCHITECTURES.values():
        return name[4:]
    return None


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def _register_with_timm() -> None:
    from timm.models import register_model

    for zoo_name, timm_name in ARCHITECTURES.items():

        def factory(pretrained: bool = False, _zoo=zoo_name, **kwargs: Any) -> HATModel:
            if pretrained:
                raise InputError(f"pretrained HAT weights come from the Hub: use hatzoo.load({_zoo!r})")
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(key, None)
            return create_model(_zoo, **kwargs)

        factory.__name__ = f"hat_{timm_name}"
        factory.__qualname__ = factory.__name__
        factory.__module__ = __name__
        register_model(factory)


_register_with_timm()
