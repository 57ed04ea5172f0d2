"""Bundles: a folder of per-task pruned ONNX graphs plus ``manifest.json`` describing them.

A bundle is what ``hatzoo export`` writes and ``hatzoo serve`` reads. Serving reads only the manifest and
the graphs, so this module imports neither torch nor onnx (``write_manifest`` imports ``onnx`` lazily, and
only to fill fields the caller left out).

Manifest format (``manifest.json``, UTF-8 JSON), ``format_version`` 1::

    {
      "format": "hatzoo-bundle",            # constant: identifies the file
      "format_version": 1,                  # bumped on incompatible changes; readers refuse newer ones
      "model": "hat-vit-small",             # model name; the server routes /v1/models/<model>/...
      "source": {"repo_id": "org/hat-vit-small" | null, "revision": "<sha or tag>" | null},
      "opset": 18,                          # ONNX default-domain opset of the graphs
      "created_by": "hatzoo <version>",     # informational
      "tasks": {                            # keys are task ids as strings ("0", "1", ...)
        "0": {
          "file": "task0.onnx",             # path relative to the bundle folder
          "input_name": "x",                # graph input / output names
          "output_name": "logits",
          "input_shape": [null, 3, 32, 32], # [batch, C, H, W]; null = dynamic batch
          "dtype": "float32",               # "float32" or "float16": input and output element type
          "normalization": {"mean": [...], "std": [...]},  # per channel; the graph takes
                                            # (pixel - mean) / std, i.e. already-normalized input
          "labels": ["cat", "dog"],         # one per output logit (num_classes = len(labels))
          "kept_units": {"blocks.0.attn.heads": [5, 6]},   # per mask group: [kept, total]
          "flops_fraction": 0.62,           # FLOPs of the pruned graph / FLOPs of the dense one
          "max_abs_diff": 1.2e-06,          # |pruned ONNX - masked torch| measured at export, or null
          "score_name": "task_score",       # optional: a second output [batch], the task's
                                            # likelihood-ratio score (hatzoo.likelihood_ratio); when
                                            # every task has one, answers without a task id use it
          "sha256": "<hex>"                 # checksum of the file, verified by read_bundle
        }
      }
    }

Usage (export side)::

    write_manifest(bundle_dir, model="hat-vit-small", source={"repo_id": "org/x", "revision": "abc"},
                   tasks={0: {"file": "task0.onnx", "input_shape": [None, 3, 32, 32], "labels": [...],
                              "normalization": {"mean": [...], "std": [...]}, "kept_units": {...},
                              "flops_fraction": 0.6, "max_abs_diff": 1e-6}})
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatzoo import __version__
from hatzoo.errors import BundleError
from hatzoo.files import sha256_file
from hatzoo.schema import Schema, kind

FORMAT = "hatzoo-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("float32", "float16")
TASK_KEYS = ("file", "input_name", "output_name", "input_shape", "dtype", "normalization", "labels", "sha256")
MAX_LABELS = 1 << 20
MAX_UNITS = 1 << 24  # as in checkpoints
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SHA_MISMATCH = (
    "task {}: sha256 of {} does not match the manifest (file changed or corrupted); re-export the bundle"
)


@dataclass(frozen=True)
class TaskSpec:
    """One task's graph in a bundle: where it is, what it takes and what its outputs mean."""

    task_id: str
    file: str
    path: Path
    input_name: str
    output_name: str
    input_shape: tuple[int | None, ...]
    dtype: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    root: Path
    kept_units: dict[str, tuple[int, int]] = field(default_factory=dict)
    flops_fraction: float | None = None
    max_abs_diff: float | None = None
    sha256: str = ""
    score_name: str | None = None

    @property
    def output_names(self) -> list[str]:
        """The graph outputs a run fetches: the logits, then the task's score if it has one."""
        return [self.output_name, *([self.score_name] if self.score_name else [])]

    @property
    def num_classes(self) -> int:
        """Number of output logits (one per label)."""
        return len(self.labels)

    @property
    def file_size(self) -> int:
        """Size of the graph file in bytes (the base of the session memory estimate)."""
        return self.path.stat().st_size


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: the model name, where it came from, and its tasks by string id."""

    root: Path
    model: str
    source: dict[str, str | None]
    opset: int | None
    tasks: dict[str, TaskSpec]
    format_version: int = FORMAT_VERSION

    @property
    def scored(self) -> bool:
        """Whether every task's graph gives its likelihood-ratio score (the rule it answers with)."""
        return all(spec.score_name for spec in self.tasks.values())


def confined_path(root: Path, file: str) -> Path:
    """``root/file`` resolved; refuses paths leaving the bundle folder (``..``, absolute, symlinks out)."""
    rel = Path(file)
    if rel.is_absolute() or ".." in rel.parts:
        raise BundleError(
            f"graph file {file!r} must be a path inside the bundle folder (no absolute path, no '..')"
        )
    base = root.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise BundleError(f"graph file {file!r} is a symlink to {path}, outside the bundle folder {base}")
    return path


def read_graph(spec: TaskSpec) -> bytes:
    """The task's graph bytes, re-confined and checked against the manifest sha256 (what a session loads)."""
    path = confined_path(spec.root, spec.file)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"task {spec.task_id}: cannot read graph file {spec.file}: {e}") from e
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise BundleError(SHA_MISMATCH.format(spec.task_id, spec.file))
    return data


def _graph_facts(path: Path) -> dict[str, Any]:
    """Input/output names, element type and opset read from an ONNX file (export side only: needs onnx)."""
    import onnx  # lazy: serving never calls this

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    elem = inputs[0].type.tensor_type.elem_type if inputs else onnx.TensorProto.FLOAT
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "input_name": inputs[0].name if inputs else None,
        "output_name": m.graph.output[0].name if m.graph.output else None,
        "dtype": "float16" if elem == onnx.TensorProto.FLOAT16 else "float32",
        "opset": opset,
    }


def _task_entry(
    root: Path, tid: str, spec: Mapping[str, Any], graph_facts: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """Validate one caller-given task entry, fill defaults from the graph, and add its checksum."""
    if "file" not in spec:
        raise BundleError(f"task {tid}: 'file' (graph path relative to the bundle folder) is required")
    if not isinstance(spec["file"], str):
        raise BundleError(f"task {tid}: 'file' must be a path string, got {spec['file']!r}")
    path = confined_path(root, spec["file"])
    if not path.is_file():
        raise BundleError(
            f"task {tid}: graph file {path} does not exist; write the graphs before the manifest"
        )
    labels = spec.get("labels")
    if not isinstance(labels, (list, tuple)):
        raise BundleError(f"task {tid}: 'labels' must be a list of names (one per output), got {labels!r}")
    need = [k for k in ("input_name", "output_name", "dtype") if spec.get(k) is None]
    facts = graph_facts(path) if need else {}
    entry = {
        "file": Path(spec["file"]).as_posix(),
        "input_name": spec.get("input_name") or facts.get("input_name"),
        "output_name": spec.get("output_name") or facts.get("output_name"),
        "input_shape": list(spec.get("input_shape") or []),
        "dtype": spec.get("dtype") or facts.get("dtype"),
        "normalization": dict(spec.get("normalization") or {}),
        "labels": [str(x) for x in labels],
        "kept_units": {str(k): [int(v[0]), int(v[1])] for k, v in dict(spec.get("kept_units") or {}).items()},
        "flops_fraction": None if spec.get("flops_fraction") is None else float(spec["flops_fraction"]),
        "max_abs_diff": None if spec.get("max_abs_diff") is None else float(spec["max_abs_diff"]),
        "sha256": sha256_file(path),
    }
    if spec.get("score_name"):
        entry["score_name"] = str(spec["score_name"])
    if not entry["normalization"] and len(entry["input_shape"]) == 4 and entry["input_shape"][1]:
        c = int(entry["input_shape"][1])
        entry["normalization"] = {"mean": [0.0] * c, "std": [1.0] * c}
    schema = ManifestSchema(f"{MANIFEST_NAME} of {root}")
    check_task(schema, f"tasks.{tid}", entry)
    schema.raise_collected()
    return entry


def write_manifest(
    bundle_dir: str | os.PathLike[str],
    *,
    model: str,
    source: Mapping[str, str | None] | None,
    tasks: Mapping[int | str, Mapping[str, Any]],
    opset: int | None = None,
) -> Path:
    """Write ``manifest.json`` for graphs already in ``bundle_dir``; returns the manifest path.

    ``tasks`` maps a task id to a dict with at least ``file``, ``input_shape`` ([None, C, H, W]) and
    ``labels``; ``normalization``, ``kept_units``, ``flops_fraction``, ``max_abs_diff`` and
    ``score_name`` are recorded when given; ``input_name``, ``output_name``, ``dtype`` and ``opset`` are
    read from the graph when left out; ``sha256`` is always computed here. Raises BundleError on a missing
    file or an invalid field.
    """
    root = Path(bundle_dir)
    if not model or not isinstance(model, str) or "/" in model:
        raise BundleError(f"model name must be a non-empty string without '/', got {model!r}")
    if not tasks:
        raise BundleError("a bundle needs at least one task")
    src = dict(source or {})
    graph_facts = functools.cache(_graph_facts)  # tasks may share a graph file; each is read once
    entries = {str(t): _task_entry(root, str(t), spec, graph_facts) for t, spec in tasks.items()}
    if opset is None:
        opset = graph_facts(confined_path(root, next(iter(entries.values()))["file"]))["opset"]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "source": {"repo_id": src.get("repo_id"), "revision": src.get("revision")},
        "opset": None if opset is None else int(opset),
        "created_by": f"hatzoo {__version__}",
        "tasks": entries,
    }
    out = root / MANIFEST_NAME
    tmp = root / f".manifest.{os.getpid()}.{secrets.token_hex(4)}.json"
    # mode 0o666 filtered by the umask (0644 usually), like any file the user writes; mkstemp would give 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # write then rename: readers never see half a file
            json.dump(manifest, f, indent=2)
            f.write("\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class ManifestSchema(Schema):
    """Checks of one manifest.json (hatzoo's one schema idiom); every fault is a BundleError."""

    error = BundleError


def check_manifest(s: ManifestSchema, m: Any) -> None:
    """Check a whole decoded manifest, collecting every bad field in ``s`` (format first: a manifest of
    another kind or a newer version gets that message alone)."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{s.where}: 'format' must be {FORMAT!r}; this is not a hatzoo bundle manifest")
    ver = m.get("format_version")
    if type(ver) is not int or ver < 1:
        raise s.fail("format_version", f"must be a positive integer, got {kind(ver)}")
    if ver > FORMAT_VERSION:
        raise BundleError(
            f"{s.where}: format_version {ver} is newer than this hatzoo understands ({FORMAT_VERSION}); "
            "upgrade hatzoo"
        )
    s.collect(_check_model_name, s, m.get("model"), "model")
    if m.get("source") is not None:
        s.collect(_check_source, s, m["source"])
    if m.get("opset") is not None:
        s.collect(s.integer, m["opset"], "opset", 1, 1000)
    tasks = m.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        s.faults.append(f"tasks must be a non-empty mapping of task id to task, got {kind(tasks)}")
        return
    for tid, entry in tasks.items():
        check_task(s, f"tasks.{tid}", entry)


def _check_model_name(s: ManifestSchema, value: Any, path: str) -> None:
    if not s.string(value, path) or "/" in value:
        raise s.fail(path, f"must be a non-empty model name without '/', got {value!r}")


def _check_source(s: ManifestSchema, source: Any) -> None:
    s.mapping(source, "source", set(), {"repo_id", "revision"})
    for key in ("repo_id", "revision"):
        if source.get(key) is not None:
            s.string(source[key], f"source.{key}")


def check_task(s: ManifestSchema, path: str, e: Any) -> None:
    """Check one task entry, collecting each bad field in ``s``."""
    if not isinstance(e, dict):
        s.faults.append(f"{path} must be a mapping, got {kind(e)}")
        return
    missing = [k for k in TASK_KEYS if k not in e]
    s.faults += [f"{path}.{k} is missing" for k in missing]
    for key in ("file", "input_name", "output_name"):
        if key in e:
            s.collect(_check_text, s, e[key], f"{path}.{key}")
    if e.get("score_name") is not None:
        s.collect(_check_text, s, e["score_name"], f"{path}.score_name")
    if "sha256" in e:
        s.collect(_check_sha256, s, e["sha256"], f"{path}.sha256")
    shape = (
        s.collect(_check_shape, s, e["input_shape"], f"{path}.input_shape") if "input_shape" in e else None
    )
    if "dtype" in e:
        s.collect(s.string, e["dtype"], f"{path}.dtype", DTYPES)
    if "normalization" in e:
        s.collect(_check_normalization, s, e["normalization"], f"{path}.normalization", shape and shape[1])
    if "labels" in e:
        s.collect(_check_labels, s, e["labels"], f"{path}.labels")
    if e.get("kept_units") is not None:
        s.collect(_check_kept_units, s, e["kept_units"], f"{path}.kept_units")
    for key in ("flops_fraction", "max_abs_diff"):
        if e.get(key) is not None:
            s.collect(s.number, e[key], f"{path}.{key}", 0.0)


def _check_text(s: ManifestSchema, value: Any, path: str) -> None:
    if not s.string(value, path):
        raise s.fail(path, "must not be empty")


def _check_sha256(s: ManifestSchema, value: Any, path: str) -> None:
    if not _HEX64.match(s.string(value, path)):
        raise s.fail(path, "must be 64 lowercase hex digits (the graph file's sha256)")


def _check_shape(s: ManifestSchema, shape: Any, path: str) -> list:
    s.items(shape, path, 4, 4)
    if shape[0] is not None:
        raise s.fail(f"{path}[0]", f"must be null (the dynamic batch), got {kind(shape[0])}")
    for i, d in enumerate(shape[1:], 1):
        s.integer(d, f"{path}[{i}]", 1, 1 << 16)
    return shape


def _check_normalization(s: ManifestSchema, norm: Any, path: str, channels: int | None) -> None:
    s.mapping(norm, path, {"mean", "std"})
    s.numbers(norm["mean"], f"{path}.mean", channels)
    s.numbers(norm["std"], f"{path}.std", channels, positive=True)


def _check_labels(s: ManifestSchema, labels: Any, path: str) -> None:
    if not s.items(labels, path, MAX_LABELS):
        raise s.fail(path, "must name at least one class (one label per output logit)")
    for i, label in enumerate(labels):
        s.string(label, f"{path}[{i}]")


def _check_kept_units(s: ManifestSchema, kept: Any, path: str) -> None:
    s.mapping(kept, path, set(), set(kept) if isinstance(kept, dict) else set())
    for group, pair in kept.items():
        where = f"{path}.{group}"
        s.items(pair, where, 2, 2)
        total = s.integer(pair[1], f"{where}[1]", 0, MAX_UNITS)
        s.integer(pair[0], f"{where}[0]", 0, total)


def read_bundle(bundle_dir: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read and validate a bundle folder; with ``verify`` every graph's sha256 is checked.

    Raises BundleError (a HATError) saying what is wrong: no manifest, wrong format or a newer
    format_version, a missing graph file, a checksum mismatch, or a malformed field.
    """
    root = Path(bundle_dir)
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{root} is not a hatzoo bundle: {MANIFEST_NAME} not found (export one first)")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from e
    schema = ManifestSchema(str(mpath))
    check_manifest(schema, m)
    schema.raise_collected()
    model, tasks_raw, ver = m["model"], m["tasks"], m["format_version"]
    tasks: dict[str, TaskSpec] = {}
    for tid, e in tasks_raw.items():
        try:
            path = confined_path(root, e["file"])
        except BundleError as err:
            raise BundleError(f"{mpath}: task {tid}: {err}") from None
        if not path.is_file():
            raise BundleError(f"{mpath}: task {tid}: graph file {path} is missing")
        if verify and sha256_file(path) != e["sha256"]:
            raise BundleError(f"{mpath}: {SHA_MISMATCH.format(tid, e['file'])}")
        tasks[str(tid)] = TaskSpec(
            task_id=str(tid),
            file=e["file"],
            path=path,
            input_name=e["input_name"],
            output_name=e["output_name"],
            input_shape=tuple(e["input_shape"]),
            dtype=e["dtype"],
            mean=tuple(float(x) for x in e["normalization"]["mean"]),
            std=tuple(float(x) for x in e["normalization"]["std"]),
            labels=tuple(e["labels"]),
            root=root.resolve(),
            kept_units={k: (int(v[0]), int(v[1])) for k, v in e.get("kept_units", {}).items()},
            flops_fraction=e.get("flops_fraction"),
            max_abs_diff=e.get("max_abs_diff"),
            sha256=e["sha256"],
            score_name=e.get("score_name"),
        )
    src = m.get("source") or {}
    return Bundle(
        root=root.resolve(),
        model=model,
        source={"repo_id": src.get("repo_id"), "revision": src.get("revision")},
        opset=m.get("opset"),
        tasks=tasks,
        format_version=ver,
    )
