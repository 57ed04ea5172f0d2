"""Register hatzoo's architectures with timm once both are imported, in either order.

Why a meta-path finder: ``timm.create_model("hat_vit_small_patch16_224")`` after ``import hatzoo``
must find the HAT entries, but ``import hatzoo`` must not import torch or timm (a serving box has only
onnxruntime and numpy). So when timm is not imported yet, a finder waits for exactly one import, timm's,
registers after it and removes itself; it answers nothing for any other module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Wraps timm's loader so that hatzoo.architectures is imported once timm's module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            importlib.import_module("hatzoo.architectures")  # registers the zoo architectures with timm

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if timm is imported, else once it is."""
    if "timm" in sys.modules:
        importlib.import_module("hatzoo.architectures")
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
