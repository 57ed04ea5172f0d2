"""hatzoo: HAT (Hard Attention to the Task) continual-learning model zoo.

Attributes are imported lazily so that torch-free parts (the ONNX serving runtime under
``hatzoo.export``) can be imported on a box that has only onnxruntime and numpy. timm learns the zoo
architectures (``timm.create_model("hat_resnet18")``) when ``hatzoo.model`` registers them: on first
use of a model builder here, at once if timm is already imported.
"""

import sys
from importlib import import_module
from typing import TYPE_CHECKING

from hatzoo.errors import (
    CheckpointError,
    DataError,
    ExportError,
    HATError,
    HubError,
    InputError,
    TaskError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {
    "HATModel": "hatzoo.model",
    "HATConfig": "hatzoo.core.config",
    "CapacityWarning": "hatzoo.core.capacity",
    "TaskModel": "hatzoo.core.specialize",
    "hatify": "hatzoo.model",
    "create_model": "hatzoo.loader",
    "load": "hatzoo.loader",
    "list_models": "hatzoo.zoo",
    "schedules": "hatzoo.core.schedules",
}

__all__ = [
    "CheckpointError",
    "DataError",
    "ExportError",
    "HATError",
    "HubError",
    "InputError",
    "TaskError",
    "UnsupportedModelError",
    "HATModel",
    "HATConfig",
    "CapacityWarning",
    "TaskModel",
    "hatify",
    "create_model",
    "load",
    "list_models",
    "schedules",
]

if TYPE_CHECKING:
    from hatzoo.core import schedules
    from hatzoo.core.capacity import CapacityWarning
    from hatzoo.core.config import HATConfig
    from hatzoo.core.specialize import TaskModel
    from hatzoo.loader import create_model, load
    from hatzoo.model import HATModel, hatify
    from hatzoo.zoo import list_models


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hatzoo' has no attribute {name!r}")
    module = import_module(_LAZY[name])
    value = module if name == "schedules" else getattr(module, name)
    globals()[name] = value
    return value


if "timm" in sys.modules:
    import_module("hatzoo.model")
