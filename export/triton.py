"""Turn a hatzoo bundle into a Triton Inference Server model repository (one Triton model per task).

Layout written::

    out_dir/<model>_task<t>/config.pbtxt
    out_dir/<model>_task<t>/labels.txt        # one label per line (Triton's classification extension)
    out_dir/<model>_task<t>/1/model.onnx

Torch-free and protobuf-free: the config is a dict (the JSON form ``hatzoo serve`` answers on
``GET /v2/models/<name>/config``) written as protobuf text format by hand; the tests parse both with
Triton's own ``ModelConfig`` message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hatzoo.errors import ExportError

from .bundle import TaskSpec, read_bundle

KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
LABELS_FILE = "labels.txt"


def triton_model_name(model: str, task: str) -> str:
    """Triton model name for a task: ``<model>_task<t>`` with characters Triton dislikes replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model}_task{task}")


ENUM_FIELDS = ("data_type", "kind")  # written bare in text format, not as strings


def model_config(
    name: str,
    spec: TaskSpec,
    *,
    max_batch_size: int,
    instance_count: int,
    kind: str,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
) -> dict[str, Any]:
    """Triton's ``ModelConfig`` of one task's graph as a dict (its JSON form; dims exclude the batch)."""
    dtype = _TRITON_TYPES[spec.dtype]
    batching: dict[str, Any] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if preferred_batch_sizes:
        batching = {"preferred_batch_size": list(preferred_batch_sizes), **batching}
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "input": [{"name": spec.input_name, "data_type": dtype, "dims": list(spec.input_shape[1:])}],
        "output": [
            {
                "name": spec.output_name,
                "data_type": dtype,
                "dims": [spec.num_classes],
                "label_filename": LABELS_FILE,
            }
        ],
        "dynamic_batching": batching,
        "instance_group": [{"count": instance_count, "kind": kind}],
    }


def config_pbtxt(config: dict[str, Any]) -> str:
    """A model config dict (see :func:`model_config`) in protobuf text format, as config.pbtxt holds it."""
    return "\n".join(_text_fields(config, "")) + "\n"


def _text_fields(message: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{indent}{key} {{", *_text_fields(value, indent + "  "), f"{indent}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{key} [")
            for i, item in enumerate(value):
                close = "}," if i < len(value) - 1 else "}"
                lines += [f"{indent}  {{", *_text_fields(item, indent + "    "), f"{indent}  {close}"]
            lines.append(f"{indent}]")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: [ {', '.join(map(str, value))} ]")
        elif isinstance(value, str) and key not in ENUM_FIELDS:
            lines.append(f"{indent}{key}: {json.dumps(value)}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def default_preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """The powers of two from 4 below ``max_batch_size``, then ``max_batch_size`` itself."""
    return [b for b in (4, 8, 16, 32, 64, 128, 256) if b < max_batch_size] + [max_batch_size]


def export_triton_repository(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_batch_size: int = 32,
    instance_count: int = 1,
    kind: str = "KIND_AUTO",
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int = 100,
    tasks: Sequence[int | str] | None = None,
) -> list[Path]:
    """Write a Triton model repository for a bundle's tasks (all, or ``tasks``); returns the model dirs.

    ``preferred_batch_sizes`` defaults to the powers of two from 4 up to ``max_batch_size`` (and
    ``max_batch_size`` itself). Graph files are copied (Triton wants them inside the repository).
    """
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if instance_count < 1:
        raise ExportError(f"instance_count must be >= 1, got {instance_count}")
    if kind not in KINDS:
        raise ExportError(f"kind must be one of {KINDS}, got {kind!r}")
    if preferred_batch_sizes is None:
        pref = default_preferred_batch_sizes(max_batch_size)
    else:
        pref = sorted({int(b) for b in preferred_batch_sizes})
        if any(b < 1 or b > max_batch_size for b in pref):
            raise ExportError(f"preferred_batch_sizes must lie in [1, {max_batch_size}], got {pref}")
    bundle = read_bundle(bundle_dir)
    wanted = [str(t) for t in tasks] if tasks is not None else list(bundle.tasks)
    missing = [t for t in wanted if t not in bundle.tasks]
    if missing:
        raise ExportError(f"bundle {bundle.model!r} has no task(s) {missing}; known: {list(bundle.tasks)}")
    out = Path(out_dir)
    written = []
    for tid in wanted:
        spec = bundle.tasks[tid]
        name = triton_model_name(bundle.model, tid)
        mdir = out / name
        (mdir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec.path, mdir / "1" / "model.onnx")
        (mdir / LABELS_FILE).write_text("".join(f"{lab}\n" for lab in spec.labels), encoding="utf-8")
        config = model_config(
            name,
            spec,
            max_batch_size=max_batch_size,
            instance_count=instance_count,
            kind=kind,
            preferred_batch_sizes=pref,
            max_queue_delay_us=max_queue_delay_us,
        )
        (mdir / "config.pbtxt").write_text(config_pbtxt(config), encoding="utf-8")
        written.append(mdir)
    return written
