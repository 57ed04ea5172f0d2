"""Task-incremental benchmarks: the ``BENCHMARKS`` registry of named builders and the offline ones.

Offline benchmarks (data from ``scripts/fetch_data.sh``; splits and counts in ``hatzoo.data.sources``):
- ``split-mnist``: 5 tasks of 2 classes, (0,1), (2,3), ... by default; 8,000 train / 2,000 test in all.
- ``split-fashion-mnist``: 5 tasks of 2 classes; 12,000 train / 2,000 test per task.
- ``permuted-mnist``: ``num_tasks`` (10) tasks of all 10 digits, each with its own seeded pixel shuffle.
- ``mixed``: one task per data set (MNIST, Fashion-MNIST, sklearn digits upscaled to 28x28), in the
  spirit of 5-datasets; one normalization computed over the union of the full training sets
  (mean 0.2686, std 0.3511 for the default three; Fashion-MNIST's 60,000 images dominate it).

Seeds: ``seed`` drives every random choice through separate streams, so changing one option never
changes another's draw: class order ``[seed, 0]``, training/test subsets ``[seed, 1|3, task]``,
permutations ``[seed, 2, task]``. Train/test splits themselves are fixed and never depend on the seed.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hatzoo._registry import Registry
from hatzoo.data import sources
from hatzoo.data.sources import RawData
from hatzoo.data.tasks import TaskData, TaskSequence, balanced_subset, pooled_stats, to_tensor
from hatzoo.errors import DataArgumentError, DataError

Builder = Callable[..., TaskSequence]
BENCHMARKS: Registry[Builder] = Registry("benchmark")
COMMON = ("seed", "root", "max_train_per_task")


def list_benchmarks() -> list[str]:
    """Names accepted by :func:`get_benchmark`, in registration order."""
    return list(BENCHMARKS)


def get_benchmark(
    name: str,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    max_train_per_task: int | None = None,
    **kwargs: Any,
) -> TaskSequence:
    """Build the named benchmark as a :class:`TaskSequence` of in-memory, normalized tasks.

    ``root`` (or ``HATZOO_DATA``) pins the one data folder to use; ``max_train_per_task`` keeps a
    seeded, class-balanced subset of each task's training set. Other options depend on the benchmark
    (a wrong one raises an error listing the accepted ones). The sequence's ``options`` record what was
    asked for: the seed, the benchmark's own options as resolved (e.g. the class order), then the limits.
    """
    if not isinstance(name, str):
        raise DataArgumentError(f"benchmark name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    fn = BENCHMARKS.get(key)
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = [p for p in params if p not in COMMON]
        raise DataArgumentError(
            f"benchmark {key!r} does not take {', '.join(unknown)}; its options are: "
            f"{', '.join([*COMMON, *accepted])}"
        )
    seed = check_int("seed", seed, minimum=0)
    limits = dict(
        max_train_per_task=max_train_per_task, max_test_per_task=kwargs.pop("max_test_per_task", None)
    )
    limits = {k: check_int(k, v, optional=True) for k, v in limits.items()}
    seq = fn(seed=seed, root=root, **limits, **kwargs)
    seq.options = {"seed": seed, **seq.options, **limits}
    return seq


def check_int(what: str, value: Any, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as a plain int if it is an int (not a bool) of at least ``minimum`` (or None where
    ``optional``), so options stay JSON-ready; else a DataArgumentError naming ``what``."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "a positive int" if minimum == 1 else "a non-negative int"
        raise DataArgumentError(f"{what} must be {'None or ' if optional else ''}{kind}, got {value!r}")
    return int(value)


def rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent random stream for one purpose (see the module doc)."""
    return np.random.default_rng([seed, *stream])


def resolve_class_order(class_order: str | Sequence[int] | None, num_classes: int, seed: int) -> list[int]:
    """``None``/"default" -> 0..n-1; "random" -> seeded shuffle; a sequence -> checked and used as is."""
    if class_order is None or (isinstance(class_order, str) and class_order in ("default", "sorted")):
        return list(range(num_classes))
    if isinstance(class_order, str):
        if class_order == "random":
            return [int(c) for c in rng(seed, 0).permutation(num_classes)]
        raise DataArgumentError(
            f"class_order must be 'default', 'random' or a list of class ids, got {class_order!r}"
        )
    order = [int(c) for c in class_order]
    if len(set(order)) != len(order) or not all(0 <= c < num_classes for c in order):
        raise DataArgumentError(
            f"class_order must list distinct class ids in 0..{num_classes - 1}, got {order}"
        )
    return order


def make_task(
    name: str,
    labels: Sequence[str],
    splits: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    convert: Callable[[np.ndarray], torch.Tensor],
    *,
    classes: Sequence[int] | None = None,
    seed: int,
    t: int,
    limits: tuple[int | None, int | None],
    **info: Any,
) -> TaskData:
    """Task ``t``: the images of ``classes`` (default: all ``labels``) in the (x, y) train and test
    ``splits``, each limited to a seeded class-balanced subset (streams ``[seed, 1|3, t]``), made tensors
    by ``convert``, with labels renumbered 0..k-1 in ``classes`` order."""
    classes = list(range(len(labels)) if classes is None else classes)
    lut = np.full(len(labels), -1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    datasets, available = [], []
    for (x, y), limit, stream in zip(splits, limits, (1, 3), strict=True):
        idx = np.flatnonzero(lut[y] >= 0)
        available.append(len(idx))
        if limit is not None:  # drawn over the original class ids, so the class order never changes it
            idx = idx[balanced_subset(y[idx], limit, rng(seed, stream, t))]
        datasets.append(TensorDataset(convert(x[idx]), torch.from_numpy(lut[y[idx]])))
    info = {"train_available": available[0], "test_available": available[1], **info}
    return TaskData(name, tuple(classes), [labels[c] for c in classes], *datasets, info)


def split_tasks(
    bench: str,
    load: Callable[..., RawData],
    *,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
    class_order: str | Sequence[int] | None = None,
    classes_per_task: int = 2,
    **load_options: Any,
) -> TaskSequence:
    """Cut the data set ``load(root, **load_options)`` into tasks of ``classes_per_task`` classes each,
    in the resolved class order."""
    raw = load(root, **load_options)
    classes_per_task = check_int("classes_per_task", classes_per_task)
    order = resolve_class_order(class_order, raw.num_classes, seed)
    if len(order) % classes_per_task:
        raise DataArgumentError(
            f"{len(order)} classes do not divide into tasks of {classes_per_task}; "
            "change classes_per_task or give a class_order whose length is a multiple of it"
        )
    convert = partial(to_tensor, scale=raw.scale, mean=raw.mean, std=raw.std)
    limits = (max_train_per_task, max_test_per_task)
    tasks = []
    for t in range(len(order) // classes_per_task):
        group = order[t * classes_per_task : (t + 1) * classes_per_task]
        name = f"{bench}/{'-'.join(str(c) for c in group)}"
        tasks.append(
            make_task(name, raw.labels, raw.splits, convert, classes=group, seed=seed, t=t, limits=limits)
        )
    options = {"class_order": order, "classes_per_task": classes_per_task}  # get_benchmark adds the rest
    return TaskSequence(bench, raw.x_train.shape[1:], raw.mean, raw.std, tasks, options, raw.source)


def split_benchmark(bench: str, load: Callable[..., RawData], classes_per_task: int = 2) -> Builder:
    """A builder that cuts the data set ``load(root, **options)`` returns into tasks of classes.

    The builder takes the options of :func:`split_tasks` plus ``load``'s keyword-only ones (torchvision's
    ``download``), and says so in its signature, which :func:`get_benchmark` checks options against.
    """
    build = partial(split_tasks, bench, load, classes_per_task=classes_per_task)
    own = inspect.signature(build)
    extra = [p for p in inspect.signature(load).parameters.values() if p.kind is p.KEYWORD_ONLY]
    split = list(own.parameters.values())[:-1]  # all but **load_options
    build.__signature__ = own.replace(parameters=[*split, *extra])  # type: ignore[attr-defined]
    build.__doc__ = f"{bench}: {load.__doc__}"
    return build


for _name, _load, _help in (
    ("split-mnist", sources.load_mnist, "MNIST (offline: 8,000 train / 2,000 test), 5 tasks x 2 classes"),
    (
        "split-fashion-mnist",
        sources.load_fashion_mnist,
        "Fashion-MNIST (full 60k/10k, offline), 5 tasks x 2 classes",
    ),
):
    BENCHMARKS.register(_name, _help)(split_benchmark(_name, _load))


def _permuted(x: np.ndarray, raw: RawData, perm: torch.Tensor) -> torch.Tensor:
    """MNIST images normalized, with their 784 pixels in the order ``perm``."""
    return to_tensor(x, raw.scale, raw.mean, raw.std).flatten(1)[:, perm].reshape(-1, 1, 28, 28)


@BENCHMARKS.register(
    "permuted-mnist", "MNIST (offline) with a seeded pixel permutation per task, 10 classes each"
)
def permuted_mnist(
    *,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
    num_tasks: int = 10,
    identity_first: bool = False,
) -> TaskSequence:
    """Permuted-MNIST: task t shuffles the 784 pixels with stream ``[seed, 2, t]`` (task 0 kept if asked)."""
    num_tasks = check_int("num_tasks", num_tasks)
    raw = sources.load_mnist(root)
    limits = (max_train_per_task, max_test_per_task)
    tasks = []
    for t in range(num_tasks):
        perm = np.arange(784) if identity_first and t == 0 else rng(seed, 2, t).permutation(784)
        convert = partial(_permuted, raw=raw, perm=torch.from_numpy(perm))
        info = {"identity": bool((perm == np.arange(784)).all())}
        name = f"permuted-mnist/p{t}"
        tasks.append(make_task(name, raw.labels, raw.splits, convert, seed=seed, t=t, limits=limits, **info))
    options = {"num_tasks": num_tasks, "identity_first": identity_first}
    return TaskSequence("permuted-mnist", (1, 28, 28), raw.mean, raw.std, tasks, options, raw.source)


MIXED_SOURCES: dict[str, Callable[[Any], RawData]] = {
    "mnist": sources.load_mnist,
    "fashion-mnist": sources.load_fashion_mnist,
    "digits": sources.load_digits,
}


@BENCHMARKS.register(
    "mixed", "one task per data set (MNIST, Fashion-MNIST, sklearn digits), all 1x28x28, offline"
)
def mixed(
    *,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
    datasets: Sequence[str] = ("mnist", "fashion-mnist", "digits"),
) -> TaskSequence:
    """Different data sets as tasks (like 5-datasets), at 1x28x28, normalized with pooled statistics."""
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    bad = [d for d in names if d not in MIXED_SOURCES]
    if not names or bad:
        raise DataArgumentError(f"datasets must be taken from {', '.join(MIXED_SOURCES)}; got {names}")
    raws = [MIXED_SOURCES[d](root) for d in names]
    # pooled over the full training sets, so the normalization does not depend on subsets
    mean, std = pooled_stats(to_tensor(raw.x_train, raw.scale, (0.0,), (1.0,), 28) for raw in raws)
    limits = (max_train_per_task, max_test_per_task)
    tasks = []
    for t, (d, raw) in enumerate(zip(names, raws, strict=True)):
        convert = partial(to_tensor, scale=raw.scale, mean=mean, std=std, size=28)
        name = f"mixed/{d}"
        tasks.append(
            make_task(name, raw.labels, raw.splits, convert, seed=seed, t=t, limits=limits, dataset=d)
        )
    source = "; ".join(r.source for r in raws)
    return TaskSequence("mixed", (1, 28, 28), mean, std, tasks, {"datasets": names}, source)
