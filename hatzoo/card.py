"""Zoo cards: one YAML file per model (``cards/<name>.yaml``), read into one typed :class:`Card`.

A card decides a zoo model: the architecture (a ``hatzoo.create_model`` name and ``model_args``), the
``hat`` options (HATConfig), the ``benchmark`` (a ``hatzoo.data`` name, its seed, limits and options),
the ``recipe`` (TrainSpec), the ``hub`` pin (repo id, commit, sha256 of model.safetensors), the sha256 of
every ``files`` of the release (so a changed or missing file is named, and a partial download completed), a
``description``, the measured ``results`` and, for quick demo recipes, ``demo: true`` (resolvable by
name but not listed). :func:`parse_card` is the one parser and :func:`update_card` the one writer.
See ``cards/hat-vit-small.yaml`` for a complete card.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hatzoo.core.config import HATConfig
from hatzoo.errors import CardError, HATError
from hatzoo.schema import Schema, rule

LR_SCHEDULES = ("constant", "cosine")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SCALE_RAMPS = ("epoch", "task")


POSITIVE = {"lo": 0, "open_lo": True}  # a float that must be > 0
OPTIONAL = ("replay", "ood")  # recipe options a card spells out only when on (older runs stay resumable)


@dataclass
class BenchmarkSpec:
    """Which task sequence to train on: a ``hatzoo.data`` benchmark name, its seed and size limits."""

    name: str = "split-fashion-mnist"
    seed: int = rule(0, lo=0)
    max_train_per_task: int | None = rule(None, lo=1)
    max_tasks: int | None = rule(None, lo=1)
    # a seeded share of each task's training split held out as its validation split: never trained on,
    # it is where task-free rules and their settings are chosen (bench/bench_task_inference.py)
    validation: float = rule(0.0, lo=0, hi=0.5)
    options: dict[str, Any] = field(default_factory=dict)  # further get_benchmark keyword options


@dataclass
class TrainSpec:
    """How to optimise each task: optimizer, learning rate, epochs, global batch, scale schedule."""

    # the defaults are the zoo recipes': SGD at lr 0.05 diverges on a ViT (chance accuracy), and with
    # Adam the gate embeddings need their own larger learning rate to move at all
    optimizer: str = rule("adam", choices="hatzoo.optimizers:OPTIMIZERS", lower=True)
    lr: float = rule(0.001, **POSITIVE)
    momentum: float = rule(0.9, lo=0, hi=1, open_hi=True)
    weight_decay: float = rule(0.0, lo=0)
    epochs: int = rule(3, lo=1)
    batch_size: int = rule(64, lo=1)
    schedule: str = rule("linear", choices="hatzoo.core.schedules:SCHEDULES")
    clip_grad: float | None = rule(10000.0, **POSITIVE)
    seed: int = rule(0, lo=0)
    joint: bool = True  # also train the joint (all tasks at once) upper bound
    mask_lr: float | None = rule(0.05, **POSITIVE)  # learning rate of the gate embeddings (None: lr's)
    # within each task: constant, or cosine decay to 0 over the task
    lr_schedule: str = rule("constant", choices=LR_SCHEDULES)
    # the 1/smax -> smax ramp restarts every epoch, or spans the whole task
    scale_ramp: str = rule("task", choices=SCALE_RAMPS)
    # training images kept in a class-balanced replay buffer (0: none); with one, the run also fits each
    # task's likelihood-ratio head, so the model answers without a task id (hatzoo.likelihood_ratio)
    replay: int = rule(0, lo=0)
    # weight of the out-of-distribution loss: from the second task on, each batch brings as many buffer
    # images of earlier tasks, which the task learns to call "not mine" (0: off; needs a replay buffer)
    ood: float = rule(0.0, lo=0)


@dataclass
class HubPin:
    """Where the trained model is published: repo id, and the pinned commit and weights digest."""

    repo_id: str = "hatzoo/unnamed"
    revision: str | None = "main"
    sha256: str | None = None


@dataclass
class CardResults:
    """A finished run's summary on the card, in percent; ``accuracy[i][j]``: task j after task i."""

    complete: bool = False
    tasks: list[str] = field(default_factory=list)
    train_per_task: list[int] = field(default_factory=list)
    test_per_task: list[int] = field(default_factory=list)
    accuracy: list[list[float]] = field(default_factory=list)
    average_accuracy: float | None = None
    bwt: float | None = None
    joint: list[float] | None = None
    joint_average_accuracy: float | None = None
    gap_to_joint: float | None = None
    train_seconds: float | None = None
    joint_seconds: float | None = None
    # the shipped files, measured after saving: {precision, accuracy: [per task], average_accuracy}
    release: dict[str, Any] | None = None
    # inference without a task id (bench/bench_task_inference.py): per rule, beside the ceilings
    task_agnostic: dict[str, Any] | None = None
    # room left for new tasks after the release's tasks: {mask group: {size, free}}
    capacity: dict[str, Any] | None = None

    @property
    def final(self) -> list[float]:
        """Each task's accuracy after the last task (the matrix's last row)."""
        return list(self.accuracy[-1]) if self.accuracy else []

    @property
    def shipped(self) -> list[float]:
        """Each task's accuracy as the published files score it (the release's, else the final row)."""
        return list(self.release["accuracy"]) if self.release else self.final


@dataclass
class Card:
    """Everything about one zoo model: how to build and train it, where it is published, how it did."""

    name: str
    arch: str
    model_args: dict[str, Any] = field(default_factory=dict)
    hat: HATConfig = field(default_factory=HATConfig)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    recipe: TrainSpec = field(default_factory=TrainSpec)
    hub: HubPin = field(default_factory=HubPin)
    # the release's files at the pinned revision: {relative path: sha256}
    files: dict[str, str] | None = None
    description: str = ""
    demo: bool = False  # a quick demo recipe, not a zoo model
    results: CardResults | None = None
    source: str = "<card>"

    def to_dict(self) -> dict[str, Any]:
        """The recipe part of the card, every value spelled out (what ``from_dict`` reads back)."""
        bench = dataclasses.asdict(self.benchmark)
        bench.update(bench.pop("options"))
        if bench["max_tasks"] is None:
            bench.pop("max_tasks")
        if not bench["validation"]:
            bench.pop("validation")
        data: dict[str, Any] = {
            "name": self.name,
            "arch": self.arch,
            "model_args": dict(self.model_args),
            "hat": self.hat.to_dict(),
            "benchmark": bench,
            "recipe": {k: v for k, v in dataclasses.asdict(self.recipe).items() if k not in OPTIONAL or v},
            "hub": dataclasses.asdict(self.hub),
            "description": self.description,
        }
        if self.demo:
            data["demo"] = True
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "<card>", *, check_names: bool = True) -> Card:
        """Build and validate a card from its mapping; errors name the key and ``source``.

        ``check_names=False`` leaves out the look-ups of names in the registries (architecture,
        benchmark, optimizer, schedule), which import torch and timm: for listing cards at once.
        """
        return _CardSchema(source, check_names).card(data)


def read_card(path: str | os.PathLike[str]) -> Card:
    """Read and validate one card file; a missing file or bad YAML is a CardError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CardError(f"card file {path} does not exist; zoo cards live in cards/<name>.yaml")
    return parse_card(path.read_text(encoding="utf-8"), str(path))


def parse_card(text: str, source: str, *, check_names: bool = True) -> Card:
    """The one card parser: YAML text to a validated Card; ``source`` names the file in errors.

    ``check_names``: see :meth:`Card.from_dict`.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CardError(f"{source}: invalid YAML ({err})") from err
    return Card.from_dict(data, source, check_names=check_names)


_OPTIONAL_RESULTS = ("release", "task_agnostic", "capacity")


def update_card(
    path: str | os.PathLike[str],
    *,
    hub: HubPin | None = None,
    results: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
    to: str | os.PathLike[str] | None = None,
    check: Callable[[Card], None] | None = None,
) -> Card:
    """Write a Hub pin, a results block and/or the release's file digests into the card at ``path``.

    ``to`` writes a copy instead.

    The one writer of cards: every other line stays as written, the new blocks are short flow-style
    mappings in the card's key order, and writing the same values twice gives the same bytes. The
    result is parsed, and given to ``check`` (which may raise), before anything is written.
    """
    path = Path(path)
    if not path.is_file():
        raise CardError(f"card file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if results is not None:  # optional blocks a run did not measure are left out, not written as null
        results = {k: v for k, v in results.items() if v is not None or k not in _OPTIONAL_RESULTS}
    blocks = (("hub", hub and dataclasses.asdict(hub)), ("files", files and dict(sorted(files.items()))))
    for key, value in (*blocks, ("results", results)):
        if value is not None:
            text = _set_block(text, key, value)
    target = Path(to) if to is not None else path
    card = parse_card(text, str(target))
    if check is not None:
        check(card)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return card


def dump_yaml(data: dict[str, Any]) -> str:
    """A card's YAML style: block style at the top, flow style for mappings and lists of scalars."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=1 << 16, allow_unicode=True)


def _set_block(text: str, key: str, value: Any) -> str:
    """``text`` with its top-level ``key:`` block replaced by ``value`` (appended when missing)."""
    block = dump_yaml({key: value}).splitlines()
    out: list[str] = []
    skipping = placed = False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            skipping = line.split(":", 1)[0] == key
            if skipping and not placed:
                out += block
                placed = True
        if not skipping:
            out.append(line)
    while not placed and out and not out[-1].strip():
        out.pop()
    return "\n".join(out + ([] if placed else block)) + "\n"


class _CardSchema(Schema):
    """Checks a card mapping key by key (hatzoo.schema's idiom); every error names the file and the key.

    Cards keep the wording their users know: ``<file>: <key>: <what>``, "unknown key", "unknown value".
    """

    error = CardError
    SEPARATOR = ": "
    UNKNOWN_KEY = "unknown key; known keys: {known}"
    UNKNOWN_VALUE = "unknown value {value!r}; choose one of {choices}"
    TOP_KEYS = [f.name for f in dataclasses.fields(Card) if f.name != "source"]

    def __init__(self, source: str, check_names: bool = True) -> None:
        super().__init__(source)
        self.check_names = check_names

    def card(self, data: Any) -> Card:
        if not isinstance(data, dict):
            raise CardError(f"{self.where}: the card must be a mapping with keys {self.TOP_KEYS}")
        self.known(data, "", self.TOP_KEYS)
        for key in ("name", "arch"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise self.fail(key, "must be a non-empty string")
        name = data["name"].strip()
        return Card(
            name=name,
            arch=self.arch(data["arch"].strip()),
            model_args=self.optional_mapping(data.get("model_args"), "model_args"),
            hat=self.hat(self.optional_mapping(data.get("hat"), "hat")),
            benchmark=self.benchmark(self.optional_mapping(data.get("benchmark"), "benchmark")),
            recipe=self.recipe(self.optional_mapping(data.get("recipe"), "recipe")),
            hub=self.hub(self.optional_mapping(data.get("hub"), "hub"), name),
            files=self.files(data.get("files")),
            description=self.string(data.get("description") or "", "description").strip(),
            demo=self.boolean(data.get("demo", False), "demo"),
            results=self.results(data.get("results")),
            source=self.where,
        )

    def recipe(self, r: dict[str, Any]) -> TrainSpec:
        spec = self.spec(TrainSpec, r, "recipe")
        if spec.ood and not spec.replay:
            raise self.fail("recipe.ood", "needs a replay buffer to draw its images from; set recipe.replay")
        return spec

    def arch(self, arch: str) -> str:
        if not self.check_names:
            return arch
        from hatzoo.architectures import is_architecture, list_architectures

        if not is_architecture(arch):
            raise self.fail("arch", f"unknown architecture {arch!r}; known: {list_architectures()}")
        return arch

    def hat(self, data: dict[str, Any]) -> HATConfig:
        try:  # from_dict refuses unknown options itself, listing the known ones
            return HATConfig.from_dict(data)
        except (HATError, TypeError) as err:
            raise self.fail("hat", str(err)) from err

    def benchmark(self, b: dict[str, Any]) -> BenchmarkSpec:
        name = b.pop("name", BenchmarkSpec.name)
        if self.check_names:
            from hatzoo.data import list_benchmarks

            if not isinstance(name, str) or name.strip().lower().replace("_", "-") not in list_benchmarks():
                raise self.fail(
                    "benchmark.name", f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}"
                )
        spec = [f.name for f in dataclasses.fields(BenchmarkSpec)]
        options = {k: b.pop(k) for k in list(b) if k not in spec}  # checked by get_benchmark later
        return self.spec(BenchmarkSpec, b, "benchmark", name=name, options=options)

    def hub(self, h: dict[str, Any], name: str) -> HubPin:
        from hatzoo.repo_ids import is_repo_id

        pin = self.spec(HubPin, {"repo_id": f"hatzoo/{name}", **h}, "hub")
        if not is_repo_id(pin.repo_id):
            raise self.fail("hub.repo_id", f"must look like 'org/name', got {pin.repo_id!r}")
        return pin

    def files(self, data: Any) -> dict[str, str] | None:
        if data is None:
            return None
        files = self.optional_mapping(data, "files")
        for name, digest in files.items():
            if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
                raise self.fail("files", f"{name!r} is not a relative file path inside the release")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise self.fail(
                    f"files.{name}", f"must be a sha256 (64 lowercase hex digits), got {digest!r}"
                )
        return files

    def results(self, data: Any) -> CardResults | None:
        if data is None:
            return None
        data = self.optional_mapping(data, "results")
        self.known(data, "results", [f.name for f in dataclasses.fields(CardResults)])
        return CardResults(**data)  # what a run measured, written by update_card: read as it is

    def optional_mapping(self, data: Any, key: str) -> dict[str, Any]:
        """A copy of the mapping at ``key``; a missing one (null) is empty."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a mapping, got {type(data).__name__}")
        return dict(data)

    def spec(self, cls: type, data: dict[str, Any], key: str, **given: Any) -> Any:
        """A ``cls`` from ``data``: each field checked by its type hint and its ``rule``."""
        return cls(**self.fields(cls, data, key, registries=self.check_names, **given))
