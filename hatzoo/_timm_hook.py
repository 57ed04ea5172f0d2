"""Register hatzoo's architectures with timm as soon as both are imported, in either order.

``import hatzoo`` stays free of torch (the serving runtime needs only onnxruntime), so the
registration cannot run at import time unconditionally. If timm is already imported it runs now;
otherwise a meta-path finder runs it right after timm finishes importing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys


def _register() -> None:
    importlib.import_module("hatzoo.zoo")


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Wraps timm's loader so that hatzoo.zoo is imported once timm's module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            _register()

        loader.exec_module = exec_module
        return spec


def install() -> None:
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
