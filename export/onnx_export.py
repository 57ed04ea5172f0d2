"""Export each task of a HAT model to a pruned ONNX graph with a dynamic batch, verified on ONNX Runtime.

``export_task`` bakes one task (``model.specialize(t)``: masked units removed, norms folded, fully masked
ViT branches replaced by constants), exports it with the dynamo exporter, runs ``onnx.checker`` and then
checks on ONNX Runtime (CPU) that the graph gives the HAT model's eval output on random inputs at several
batch sizes. ``export_bundle`` does that for every task and writes the bundle manifest that
``hatzoo serve`` reads.

Opset 18 by default: it is the opset torch's dynamo exporter (onnxscript torchlib) emits natively, so
no version conversion runs, and every runtime hatzoo serves on reads it (ONNX Runtime >= 1.14, TensorRT /
Triton); 20 and 23 export too, with no speed difference on ONNX Runtime (ENVIRONMENT.md).

float16 graphs (for GPU serving) are checked against the float32 HAT model: max |ort_fp16 - hat_fp32|
must stay within ``fp16_rtol * max(1, max |hat_fp32|)`` (default 1e-2). Half precision carries an 11-bit
significand (unit roundoff 4.9e-4); errors accumulate over the layers and scale with the logit size,
so a tolerance relative to the logits' magnitude, a few tens of roundoffs, is what fp16 can promise.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hatzoo.core.flops import task_macs
from hatzoo.core.model import HATModel
from hatzoo.errors import ExportError, InputError
from hatzoo.files import replacing_folder
from hatzoo.likelihood_ratio import RatioHeads, ScoredTaskModel

from .baking import sample_shape

DEFAULT_OPSET = 18
DTYPES = {"float32": torch.float32, "float16": torch.float16}
INPUT_NAME = "x"
OUTPUT_NAME = "logits"
SCORE_NAME = "task_score"
CHECK_BATCHES = (1, 7, 32)
MAX_BATCH = 1 << 16


@dataclass
class ExportReport:
    """What one task export wrote and measured (the fields of its bundle manifest entry, and more)."""

    task: int
    path: Path
    opset: int
    dtype: str
    input_name: str
    output_name: str
    input_shape: list[int | None]
    image_size_defaulted: bool
    labels: list[str]
    kept_units: dict[str, list[int]]
    macs_pruned: int
    macs_dense: int
    flops_fraction: float
    max_abs_diff: float | None
    tolerance: float | None
    checked_batches: list[int] = field(default_factory=list)
    num_parameters: int = 0
    seconds: float = 0.0
    score_name: str | None = None

    def manifest_entry(self, root: str | os.PathLike[str]) -> dict[str, Any]:
        """This task's ``write_manifest`` entry, with the file relative to the bundle folder ``root``."""
        return {
            "file": Path(os.path.relpath(self.path, root)).as_posix(),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "labels": list(self.labels),
            "kept_units": dict(self.kept_units),
            "flops_fraction": self.flops_fraction,
            "max_abs_diff": self.max_abs_diff,
            **({"score_name": self.score_name} if self.score_name else {}),
        }


# ---------------------------------------------------------------------------------------------- export
def export_module(
    net: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    output_names: Sequence[str] = (OUTPUT_NAME,),
) -> Path:
    """Export ``net`` to one ONNX file (weights inside) with input ``x``, outputs ``output_names``
    (``logits``, and ``task_score`` for a scored task), dynamic batch.

    Exported from a batch-2 example so the batch size is not specialized to 1.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = example.expand(2, *example.shape[1:]).contiguous() if example.shape[0] != 2 else example
    sink = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(sink):
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                verbose=False,
            )
    except Exception as error:  # torch raises many types; the user needs one error with the cause
        raise ExportError(
            f"torch.onnx.export failed for {type(net).__name__} at opset {opset}: "
            f"{type(error).__name__}: {error}"
        ) from error
    return path


def check_graph(path: str | os.PathLike[str]) -> int:
    """Run ``onnx.checker`` (full check, shape inference) and verify the batch axis is symbolic.

    Returns the number of parameter values stored in the graph's initializers.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"onnx.checker rejected {path}: {error}") from error
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    dim0 = inputs[0].type.tensor_type.shape.dim[0]
    if dim0.HasField("dim_value"):
        raise ExportError(f"{path}: batch axis of input {inputs[0].name!r} is fixed at {dim0.dim_value}")
    return sum(math.prod(i.dims) for i in graph.initializer)


def ort_session(path: str | os.PathLike[str]):
    """A CPU ONNX Runtime session whose options fit this process (works after the serving pool set a
    global thread pool, where plain ``InferenceSession(path)`` would fail)."""
    import onnxruntime as ort

    from .runtime import session_options

    try:
        return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ExportError(f"ONNX Runtime cannot load {path}: {error}") from error


@torch.no_grad()
def verify(
    model: HATModel,
    task: int,
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    *,
    dtype: str = "float32",
    batches: Sequence[int] = CHECK_BATCHES,
    atol: float = 1e-4,
    fp16_rtol: float = 1e-2,
    seed: int = 0,
) -> tuple[float, float]:
    """Max abs diff of the ONNX graph vs the HAT model (eval, float32) on random normal inputs.

    Runs every batch size in ``batches``; returns (max_abs_diff, tolerance) and raises ExportError with
    the numbers when a batch is off by more than the tolerance (or its output shape is wrong).
    """
    session = ort_session(path)
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    worst, allowed = 0.0, math.inf
    for b in batches:
        x = torch.randn(b, *shape, generator=gen)
        ref = _hat_forward(model, task, x).numpy()
        feed = x.numpy().astype(np.float16 if dtype == "float16" else np.float32)
        try:
            out = session.run(None, {name: feed})[0]
        except Exception as error:  # onnxruntime's own error types
            raise ExportError(f"ONNX Runtime failed on {path} at batch {b}: {error}") from error
        if out.shape != ref.shape:
            raise ExportError(f"{path}: batch {b} gave output shape {out.shape}, expected {ref.shape}")
        diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
        tol = atol if dtype == "float32" else fp16_rtol * max(1.0, float(np.abs(ref).max()))  # see the top
        if not diff <= tol:  # also catches NaN
            raise ExportError(
                f"task {task}: ONNX graph {path} differs from the HAT model by {diff:.3g} at batch {b} "
                f"(tolerance {tol:.3g}, dtype {dtype}); the pruning or export is not exact"
            )
        worst, allowed = max(worst, diff), min(allowed, tol)
    return worst, allowed


def _hat_forward(model: HATModel, task: int, x: torch.Tensor) -> torch.Tensor:
    """The HAT model's eval-mode logits in float32 (the ground truth every export is checked against)."""
    param = next(model.parameters())
    with _eval_mode(model):
        return model(x.to(param.device, param.dtype), task=task).float().cpu()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def export_task(
    model: HATModel,
    task: int,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dtype: str = "float32",
    batch_size: int = 2,
    check: bool = True,
    atol: float = 1e-4,
    image_size: int | tuple[int, int] | None = None,
    input_shape: tuple[int, ...] | None = None,
    check_batches: Sequence[int] = CHECK_BATCHES,
    fp16_rtol: float = 1e-2,
    ratio_heads: RatioHeads | None = None,
) -> ExportReport:
    """Write task ``task``'s pruned ONNX graph to ``path`` (dynamic batch) and verify it; returns a report.

    ``image_size`` sets H, W for models that take any size (ResNet); the default is the backbone's timm
    input size (224). ``input_shape`` (C, H, W) overrides the per-sample shape (a Flatten-first MLP).
    With ``check`` the graph must match the HAT model within ``atol`` (float32) or ``fp16_rtol`` times
    the logits' magnitude (float16) at every batch size in ``check_batches``; else ExportError.
    With ``ratio_heads`` (``hatzoo.likelihood_ratio``, fitted on the pruned task models) the graph has a
    second output, ``task_score`` [B], checked the same way against the torch head.
    """
    _check_export_args(model, dtype, batch_size)
    start = time.perf_counter()
    shape, defaulted = sample_shape(model, image_size, input_shape)
    with _eval_mode(model):
        net = model.specialize(task).cpu().float()  # exported from the CPU whatever the model's device
        pruning = _pruning_facts(model, task, net, shape)
        scored = None if ratio_heads is None else _scored(net, ratio_heads, task, shape)
        out, params = _write_graph(
            net if scored is None else scored,
            path,
            shape,
            seed=task,
            opset=opset,
            dtype=dtype,
            batch_size=batch_size,
        )
        batches = sorted({int(b) for b in check_batches} | {batch_size}) if check else []
        diff, tol = _check_outputs(model, task, out, shape, scored, batches, dtype, atol, fp16_rtol)
    return ExportReport(
        task=task,
        path=out,
        opset=opset,
        dtype=dtype,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=[None, *shape],
        image_size_defaulted=defaulted,
        max_abs_diff=diff,
        tolerance=tol,
        checked_batches=batches,
        num_parameters=params,
        seconds=time.perf_counter() - start,
        score_name=None if scored is None else SCORE_NAME,
        **pruning,
    )


def _check_export_args(model: HATModel, dtype: str, batch_size: int) -> None:
    """InputError for a model, dtype or example batch size that ``export_task`` cannot use."""
    if not isinstance(model, HATModel):
        raise InputError(f"export_task needs a HATModel, got {type(model).__name__}")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise InputError(f"batch_size must be an int >= 2 (batch 1 would be baked in), got {batch_size!r}")


def _pruning_facts(model: HATModel, task: int, net: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """What the pruned model ``net`` of ``task`` keeps: its labels, its units, and its MACs against the
    dense model's."""
    macs_pruned, macs_dense = task_macs(model, task, net, shape)
    return {
        "labels": list(net.labels),
        "kept_units": {k: list(v) for k, v in net.kept_units.items()},
        "macs_pruned": macs_pruned,
        "macs_dense": macs_dense,
        "flops_fraction": macs_pruned / macs_dense if macs_dense else 1.0,
    }


def _write_graph(
    net: nn.Module,
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    *,
    seed: int,
    opset: int,
    dtype: str,
    batch_size: int,
) -> tuple[Path, int]:
    """Export ``net`` (made half precision in place for float16) from a random example drawn with
    ``seed``, and run ``check_graph``; returns the graph's path and its parameter count."""
    names = (OUTPUT_NAME, SCORE_NAME) if isinstance(net, ScoredTaskModel) else (OUTPUT_NAME,)
    if dtype == "float16":
        net = net.half()
    example = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed))
    out = export_module(net, example.to(DTYPES[dtype]), path, opset=opset, output_names=names)
    return out, check_graph(out)


def _check_outputs(
    model: HATModel,
    task: int,
    path: Path,
    shape: tuple[int, ...],
    scored: ScoredTaskModel | None,
    batches: Sequence[int],
    dtype: str,
    atol: float,
    fp16_rtol: float,
) -> tuple[float | None, float | None]:
    """(max abs diff, tolerance) of the graph's logits against the HAT model at every batch size in
    ``batches`` (``verify``), its ``task_score`` checked against the torch head too; (None, None) when
    ``batches`` is empty (no check asked for)."""
    if not batches:
        return None, None
    diff, tol = verify(model, task, path, shape, dtype=dtype, batches=batches, atol=atol, fp16_rtol=fp16_rtol)
    if scored is not None:
        verify_score(
            scored.float(), path, shape, dtype=dtype, batches=batches, atol=atol, fp16_rtol=fp16_rtol
        )
    return diff, tol


def _scored(net: nn.Module, ratio_heads: RatioHeads, task: int, shape: tuple[int, ...]) -> ScoredTaskModel:
    """Task ``task``'s pruned model with its likelihood-ratio head, checked to fit it."""
    scored = ScoredTaskModel(net, ratio_heads.head(task), ratio_heads.config.layers).eval()
    try:
        with torch.no_grad():
            scored(torch.zeros(2, *shape))
    except RuntimeError as error:
        raise ExportError(
            f"task {task}'s likelihood-ratio head does not fit its pruned model ({error}); fit the heads on "
            "TaskAgnosticModel.from_hat_model(model), the pruned task models that answer"
        ) from error
    return scored


@torch.no_grad()
def verify_score(
    scored: ScoredTaskModel,
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    *,
    dtype: str,
    batches: Sequence[int],
    atol: float,
    fp16_rtol: float,
    seed: int = 1,
) -> None:
    """The graph's ``task_score`` output against the torch head (float32), as ``verify`` checks logits."""
    session = ort_session(path)
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    for b in batches:
        x = torch.randn(b, *shape, generator=gen)
        ref = scored(x)[1].double().numpy()
        got = session.run(
            [SCORE_NAME], {name: x.numpy().astype(np.float16 if dtype == "float16" else np.float32)}
        )[0]
        diff = float(np.abs(got.astype(np.float64) - ref).max()) if got.shape == ref.shape else math.inf
        scale = max(1.0, float(np.abs(ref).max()))
        tol = atol * scale if dtype == "float32" else fp16_rtol * scale
        if not diff <= tol:
            raise ExportError(
                f"{path}: task_score differs from the torch head by {diff:.3g} at batch {b} "
                f"(tolerance {tol:.3g}, shape {got.shape} vs {ref.shape})"
            )


def export_bundle(
    model: HATModel,
    out_dir: str | os.PathLike[str],
    *,
    model_name: str,
    source: Mapping[str, str | None] | None = None,
    tasks: Sequence[int] | None = None,
    normalization: Mapping[str, Sequence[float]] | None = None,
    opset: int = DEFAULT_OPSET,
    dtype: str = "float32",
    progress: bool = True,
    image_size: int | tuple[int, int] | None = None,
    input_shape: tuple[int, ...] | None = None,
    atol: float = 1e-4,
    ratio_heads: RatioHeads | None = None,
) -> Path:
    """Export every ended task (or ``tasks``) as ``task-<t>.onnx`` into ``out_dir`` plus ``manifest.json``.

    Each graph is verified as in ``export_task``; the manifest records labels, kept units, the kept-FLOPs
    fraction and the measured max abs diff per task, and ``normalization`` (per-channel mean / std the
    graphs expect to have been applied; identity when None). With ``ratio_heads`` each graph also gives
    its task's likelihood-ratio score, and the server answers without a task id by it. Returns the
    bundle folder.
    """
    from hatzoo import progress as progress_bars

    from .bundle import write_manifest

    if tasks is None:
        tasks = [t for t, info in enumerate(model.tasks) if info.status == "ended"]
    tasks = list(tasks)
    if not tasks:
        raise ExportError("the model has no ended task to export; call end_task(t) after training task t")
    with replacing_folder(_bundle_folder(out_dir)) as root:
        entries: dict[int, dict[str, Any]] = {}
        for t in progress_bars.bar(tasks, f"export {model_name}", enabled=progress, unit="task"):
            report = export_task(
                model,
                t,
                root / f"task-{t}.onnx",
                opset=opset,
                dtype=dtype,
                atol=atol,
                image_size=image_size,
                input_shape=input_shape,
                ratio_heads=ratio_heads,
            )
            if len(report.input_shape) != 4:
                raise ExportError(
                    f"bundles serve images [batch, C, H, W]; task {t} takes {report.input_shape}. "
                    "Pass input_shape=(C, H, W) for a model that flattens its input"
                )
            entry = report.manifest_entry(root)
            if normalization is not None:
                entry["normalization"] = {k: [float(v) for v in normalization[k]] for k in ("mean", "std")}
            entries[t] = entry
        write_manifest(root, model=model_name, source=source, tasks=entries, opset=opset)
    return Path(out_dir)


def _bundle_folder(out_dir: str | os.PathLike[str]) -> Path:
    """The folder a bundle export replaces as a whole (through a link, the folder it names). A folder
    that holds files but no bundle manifest is refused: replacing it would delete them."""
    from .bundle import MANIFEST_NAME

    folder = Path(out_dir).resolve()
    if folder.is_dir() and not (folder / MANIFEST_NAME).is_file() and any(folder.iterdir()):
        raise ExportError(
            f"{out_dir} holds files but is not a bundle (no {MANIFEST_NAME}); a bundle export replaces its "
            "whole folder, so choose a new or empty folder"
        )
    return folder
