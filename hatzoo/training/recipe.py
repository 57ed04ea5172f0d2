"""Training recipes: a dataclass read from a zoo card (``cards/<name>.yaml``) and checked key by key.

A card holds everything that decides a zoo model: the architecture (a ``hatzoo.create_model`` name and
its arguments), the HAT options, the benchmark and the optimisation recipe::

    name: hat-vit-small
    arch: hat-vit-small
    model_args: {img_size: 28, patch_size: 4, in_chans: 1}
    hat: {smax: 400, reg_c: 0.75, reg_mode: global, mask_init: normal}
    benchmark: {name: split-fashion-mnist, seed: 0, max_train_per_task: null}
    recipe: {optimizer: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0, epochs: 3, batch_size: 64,
             schedule: linear, clip_grad: 10000, seed: 0}
    hub: {repo_id: hatzoo/hat-vit-small, revision: main, sha256: null}
    description: one line
    results: {...}   # written by hatzoo.training.report.write_card_results from results.json
    demo: true       # optional: a quick demo recipe rather than a zoo model

``recipe`` may also hold ``mask_lr`` (a separate learning rate for the gate embeddings, which with
Adam otherwise move only ~lr per step and stay at their random init), ``lr_schedule`` (``constant``
or ``cosine`` decay within each task) and ``scale_ramp`` (``epoch``: the paper's 1/smax -> smax ramp
in every epoch; ``task``: one ramp over all of a task's batches).

``benchmark`` may also hold ``max_tasks`` (train only the first N tasks) and any option that
``hatzoo.data.get_benchmark`` accepts for that benchmark (``max_test_per_task``, ``class_order``, ...).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hatzoo.core.config import HATConfig
from hatzoo.core.schedules import SCHEDULES
from hatzoo.errors import HATError, InputError

OPTIMIZERS = ("sgd", "adam", "adamw")
_TOP_KEYS = (
    "name",
    "arch",
    "model_args",
    "hat",
    "benchmark",
    "recipe",
    "hub",
    "description",
    "results",
    "demo",
)
LR_SCHEDULES = ("constant", "cosine")
SCALE_RAMPS = ("epoch", "task")


class RecipeError(InputError):
    """A card or recipe value that is missing, unknown or out of range; the message names key and file."""


@dataclass
class BenchmarkSpec:
    """Which task sequence to train on: a ``hatzoo.data`` benchmark name, its seed and size limits."""

    name: str = "split-fashion-mnist"
    seed: int = 0
    max_train_per_task: int | None = None
    max_tasks: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # further get_benchmark keyword options


@dataclass
class TrainSpec:
    """How to optimise each task: optimizer, learning rate, epochs, global batch, scale schedule."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 3
    batch_size: int = 64
    schedule: str = "linear"
    clip_grad: float | None = 10000.0
    seed: int = 0
    joint: bool = True  # also train the joint (all tasks at once) upper bound
    mask_lr: float | None = None  # learning rate of the gate embeddings (None: the same as lr)
    lr_schedule: str = "constant"  # within each task: constant, or cosine decay to 0 over the task
    scale_ramp: str = "epoch"  # the 1/smax -> smax ramp restarts every epoch, or spans the whole task


@dataclass
class HubSpec:
    """Where the trained model is published."""

    repo_id: str = "hatzoo/unnamed"
    revision: str | None = "main"
    sha256: str | None = None


@dataclass
class Recipe:
    """Everything needed to train one zoo model from scratch, reproducibly."""

    name: str
    arch: str
    model_args: dict[str, Any] = field(default_factory=dict)
    hat: HATConfig = field(default_factory=HATConfig)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    recipe: TrainSpec = field(default_factory=TrainSpec)
    hub: HubSpec = field(default_factory=HubSpec)
    description: str = ""
    demo: bool = False  # a quick demo recipe, not a zoo model
    source: str = "<recipe>"

    def to_dict(self) -> dict[str, Any]:
        """The card form of this recipe (what ``from_dict`` reads back)."""
        bench = dataclasses.asdict(self.benchmark)
        options = bench.pop("options")
        if bench["max_tasks"] is None:
            bench.pop("max_tasks")
        bench.update(options)
        data: dict[str, Any] = {
            "name": self.name,
            "arch": self.arch,
            "model_args": dict(self.model_args),
            "hat": self.hat.to_dict(),
            "benchmark": bench,
            "recipe": dataclasses.asdict(self.recipe),
            "hub": dataclasses.asdict(self.hub),
            "description": self.description,
        }
        if self.demo:
            data["demo"] = True
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "<recipe>") -> Recipe:
        """Build and validate a recipe from a card mapping; errors name the key and ``source``."""
        return _parse(data, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a card file; a missing file or bad YAML is a RecipeError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"card file {path} does not exist; zoo cards live in cards/<name>.yaml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise RecipeError(f"{path}: invalid YAML ({err})") from err
        return _parse(data, str(path))

    def replace(self, **sections: dict[str, Any]) -> Recipe:
        """A copy with some values changed, e.g. ``replace(recipe={"epochs": 1})``; validated again."""
        data = self.to_dict()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return _parse(data, self.source)


def load_recipe(card: str | os.PathLike[str]) -> Recipe:
    """A recipe from a card path, or from a zoo name (``hat-vit-small`` -> ``cards/hat-vit-small.yaml``)."""
    path = Path(card)
    if not path.is_file() and not str(card).endswith((".yaml", ".yml")) and "/" not in str(card):
        from hatzoo.registry import default_cards_dir

        candidate = default_cards_dir() / f"{card}.yaml"
        if candidate.is_file():
            return Recipe.from_dict(yaml.safe_load(candidate.read_text(encoding="utf-8")), str(candidate))
    return Recipe.from_yaml(path)


# ----------------------------------------------------------------------------- validation
def _err(source: str, key: str, what: str) -> RecipeError:
    return RecipeError(f"{source}: {key}: {what}")


def _mapping(data: Any, source: str, key: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _err(source, key, f"must be a mapping, got {type(data).__name__}")
    return dict(data)


def _check_keys(data: dict[str, Any], known: tuple[str, ...] | list[str], source: str, key: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"{key}." if key else ""
        raise _err(
            source,
            f"{where}{unknown[0]}",
            f"unknown key; known keys{' of ' + key if key else ''}: {list(known)}",
        )


def _typed(value: Any, kind: type | tuple[type, ...], source: str, key: str, *, optional: bool = False):
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _err(source, key, f"must be {_kind_name(kind)}, got {value!r}")
    if float in (kind if isinstance(kind, tuple) else (kind,)) and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise _err(source, key, f"must be {_kind_name(kind)}{' or null' if optional else ''}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "an int", float: "a number", str: "a string", bool: "true/false"}[k] for k in kinds
    )


def _positive(
    value: Any, source: str, key: str, kind: type = int, *, optional: bool = False, zero: bool = False
):
    value = _typed(value, kind, source, key, optional=optional)
    if value is not None and (value < 0 or (value == 0 and not zero)):
        raise _err(source, key, f"must be {'>= 0' if zero else '> 0'}, got {value!r}")
    return value


def _parse(data: Any, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the card must be a mapping with keys {list(_TOP_KEYS)}")
    _check_keys(data, _TOP_KEYS, source, "")
    for key in ("name", "arch"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise _err(source, key, "must be a non-empty string")
    arch = data["arch"].strip()
    from hatzoo.zoo import ARCHITECTURES

    if arch not in ARCHITECTURES and not (arch.startswith("hat_") and arch[4:] in ARCHITECTURES.values()):
        raise _err(source, "arch", f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    model_args = _mapping(data.get("model_args"), source, "model_args")

    hat_data = _mapping(data.get("hat"), source, "hat")
    _check_keys(hat_data, [f.name for f in dataclasses.fields(HATConfig)], source, "hat")
    try:
        hat = HATConfig.from_dict(hat_data)
    except (HATError, TypeError) as err:
        raise _err(source, "hat", str(err)) from err

    b = _mapping(data.get("benchmark"), source, "benchmark")
    if not isinstance(b.get("name", "split-fashion-mnist"), str):
        raise _err(source, "benchmark.name", "must be a benchmark name string")
    bench = BenchmarkSpec(
        name=b.pop("name", "split-fashion-mnist"),
        seed=_positive(b.pop("seed", 0), source, "benchmark.seed", zero=True),
        max_train_per_task=_positive(
            b.pop("max_train_per_task", None), source, "benchmark.max_train_per_task", optional=True
        ),
        max_tasks=_positive(b.pop("max_tasks", None), source, "benchmark.max_tasks", optional=True),
    )
    from hatzoo.data import list_benchmarks

    if bench.name.strip().lower().replace("_", "-") not in list_benchmarks():
        raise _err(
            source,
            "benchmark.name",
            f"unknown benchmark {bench.name!r}; known: {', '.join(list_benchmarks())}",
        )
    bench.options = b  # remaining options are checked by get_benchmark when the data is built

    r = _mapping(data.get("recipe"), source, "recipe")
    _check_keys(r, [f.name for f in dataclasses.fields(TrainSpec)], source, "recipe")
    defaults = TrainSpec()
    optimizer = _typed(r.get("optimizer", defaults.optimizer), str, source, "recipe.optimizer").lower()
    if optimizer not in OPTIMIZERS:
        raise _err(source, "recipe.optimizer", f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    schedule = _typed(r.get("schedule", defaults.schedule), str, source, "recipe.schedule")
    if schedule not in SCHEDULES:
        raise _err(
            source, "recipe.schedule", f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}"
        )
    momentum = _positive(r.get("momentum", defaults.momentum), source, "recipe.momentum", float, zero=True)
    if momentum >= 1:
        raise _err(source, "recipe.momentum", f"must be in [0, 1), got {momentum}")
    train = TrainSpec(
        optimizer=optimizer,
        lr=_positive(r.get("lr", defaults.lr), source, "recipe.lr", float),
        momentum=momentum,
        weight_decay=_positive(
            r.get("weight_decay", defaults.weight_decay), source, "recipe.weight_decay", float, zero=True
        ),
        epochs=_positive(r.get("epochs", defaults.epochs), source, "recipe.epochs"),
        batch_size=_positive(r.get("batch_size", defaults.batch_size), source, "recipe.batch_size"),
        schedule=schedule,
        clip_grad=_positive(
            r.get("clip_grad", defaults.clip_grad), source, "recipe.clip_grad", float, optional=True
        ),
        seed=_positive(r.get("seed", defaults.seed), source, "recipe.seed", zero=True),
        joint=_typed(r.get("joint", defaults.joint), bool, source, "recipe.joint"),
        mask_lr=_positive(r.get("mask_lr", defaults.mask_lr), source, "recipe.mask_lr", float, optional=True),
        lr_schedule=_choice(r, "lr_schedule", LR_SCHEDULES, defaults.lr_schedule, source),
        scale_ramp=_choice(r, "scale_ramp", SCALE_RAMPS, defaults.scale_ramp, source),
    )

    h = _mapping(data.get("hub"), source, "hub")
    _check_keys(h, ("repo_id", "revision", "sha256"), source, "hub")
    repo_id = _typed(h.get("repo_id", f"hatzoo/{data['name']}"), str, source, "hub.repo_id")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise _err(source, "hub.repo_id", f"must look like 'org/name', got {repo_id!r}")
    hub = HubSpec(
        repo_id=repo_id,
        revision=_typed(h.get("revision", "main"), str, source, "hub.revision", optional=True),
        sha256=_typed(h.get("sha256"), str, source, "hub.sha256", optional=True),
    )
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise _err(source, "description", "must be a string")
    demo = _typed(data.get("demo", False), bool, source, "demo")
    return Recipe(
        name=data["name"].strip(),
        arch=arch,
        model_args=model_args,
        hat=hat,
        benchmark=bench,
        recipe=train,
        hub=hub,
        description=description.strip(),
        demo=demo,
        source=source,
    )


def _choice(r: dict[str, Any], key: str, allowed: tuple[str, ...], default: str, source: str) -> str:
    value = _typed(r.get(key, default), str, source, f"recipe.{key}")
    if value not in allowed:
        raise _err(source, f"recipe.{key}", f"unknown value {value!r}; choose one of {list(allowed)}")
    return value
