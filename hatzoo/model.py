"""``hatzoo.HATModel``: the core's HAT model with the methods of the layers above it, and its builders.

The core (``hatzoo.core.model``) holds the life cycle, forward, regularizer and locks and imports
nothing above it. Saving (checkpoint), loading and pushing (hub) and prediction without a task id
(task inference) are mixins of the layers that own them, composed here, so every public builder
(``hatify``, ``create_model``, ``load``, ``from_pretrained``, timm's ``hat_*`` entries) returns this class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import register_model
from torch import nn

from hatzoo import architectures
from hatzoo.checkpoint import CheckpointMixin
from hatzoo.core import model as core
from hatzoo.core.config import HATConfig
from hatzoo.errors import InputError
from hatzoo.hub.mixin import HubMixin
from hatzoo.policies import hatify as hatify_module
from hatzoo.task_inference import PredictMixin


class HATModel(PredictMixin, HubMixin, CheckpointMixin, core.HATModel):
    """A backbone turned into a HAT network: ``model(x, task=t, scale=s)``, ``save_pretrained``,
    ``from_pretrained``, ``push_to_hub`` and ``predict`` (see ``hatzoo.core.model.HATModel``)."""


def hatify(
    model: nn.Module, config: HATConfig | None = None, *, arch: dict[str, Any] | None = None, **options: Any
) -> HATModel:
    """Wrap ``model`` as a HAT model; its classifier is replaced by one head per task.

    ``options`` are HATConfig fields (smax, reg_c, reg_mode, mask_init, ...). ``arch`` describes
    how to rebuild the backbone for checkpoints; it is inferred when not given.
    """
    return hatify_module.hatify(model, config, arch=arch, model_class=HATModel, **options)


def create_model(name: str, config: HATConfig | None = None, **kwargs: Any) -> HATModel:
    """A fresh (untrained) zoo architecture; kwargs go to timm (img_size, in_chans, ...) or HATConfig."""
    return architectures.create_model(name, config, model_class=HATModel, **kwargs)


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


def register_with_timm() -> None:
    """Register every zoo architecture in timm's registry under its timm spelling (``hat_resnet18``)."""
    for timm_name, zoo_name in architectures.timm_names().items():
        register_model(_timm_entry(zoo_name, timm_name))


register_with_timm()
