"""Benchmarks for users with internet or their own files: torchvision data sets and image folders.

- ``tv-mnist``, ``tv-fashion-mnist``, ``tv-cifar10`` (5 tasks x 2 classes) and ``tv-cifar100``
  (10 tasks x 10 classes): torchvision's own classes, ``download=True`` by default, files kept under
  ``root`` (argument or ``HATZOO_DATA``; one of them is required). With ``download=False`` only files
  already in torchvision's layout (e.g. ``root/FashionMNIST/raw/train-images-idx3-ubyte``) are read.
  Normalization uses the data sets' standard train statistics; a training image that also occurs in
  the test set (same pixels) is dropped, so train and test never share an image.
- ``imagefolder``: ``root/<task>/train/<class>/*.png`` and ``root/<task>/test/<class>/*.png``, one
  subfolder per task in sorted order, each an ImageFolder; normalization computed over all tasks'
  training images.

torchvision is imported only when one of these is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from hatzoo.data import paths, sources
from hatzoo.data.benchmarks import BENCHMARKS, make_task, split_benchmark
from hatzoo.data.sources import RawData, drop_overlap
from hatzoo.data.tasks import TaskSequence, pooled_stats, to_tensor
from hatzoo.errors import DataArgumentError, DataError

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
# torchvision class name, standard (mean, std) of the training images in [0, 1], default classes per
# task, and where torchvision keeps the set's files under root
TORCHVISION_SETS: dict[str, tuple[str, tuple[tuple[float, ...], tuple[float, ...]], int, str]] = {
    "tv-mnist": ("MNIST", sources.MNIST_STATS, 2, "MNIST/raw/"),
    "tv-fashion-mnist": ("FashionMNIST", sources.FASHION_STATS, 2, "FashionMNIST/raw/"),
    "tv-cifar10": ("CIFAR10", CIFAR10_STATS, 2, "cifar-10-batches-py/"),
    "tv-cifar100": ("CIFAR100", CIFAR100_STATS, 10, "cifar-100-python/"),
}


def _pinned_root(bench: str, root: str | os.PathLike | None) -> Path:
    """The folder a torchvision-backed benchmark keeps its files in; it must be named."""
    pinned = paths.explicit_root(root)
    if pinned is None:
        raise DataArgumentError(
            f"{bench} needs a folder for torchvision's files: pass root=DIR (or set {paths.ENV_VAR}); "
            "with download=True (the default) torchvision downloads the data there"
        )
    return pinned


def _split_arrays(ds: object) -> tuple[np.ndarray, np.ndarray]:
    """A torchvision data set's images as uint8 (N, C, H, W) and labels as int64."""
    data = ds.data  # type: ignore[attr-defined]
    x = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # MNIST family (N,H,W); CIFAR (N,H,W,C)
    y = np.asarray(ds.targets, dtype=np.int64)  # type: ignore[attr-defined]
    return np.ascontiguousarray(x), y


@lru_cache(maxsize=4)
def load_torchvision(bench: str, root: str, download: bool) -> RawData:
    """Load one torchvision data set into memory (cached per folder), wrapping its errors in DataError."""
    import torchvision.datasets as tvd

    cls_name, (mean, std), _, layout = TORCHVISION_SETS[bench]
    cls = getattr(tvd, cls_name)
    try:
        train_ds = cls(root, train=True, download=download)
        test_ds = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as e:  # "Dataset not found", failed downloads, unreadable files
        how = (
            f"torchvision could not download {cls_name} into {root} (it needs internet): {e}"
            if download
            else f"torchvision found no {cls_name} files under {root} (download=False): {e}"
        )
        raise DataError(
            f"{bench}: {how}\nTo fix: pass download=True on a machine with internet, or put torchvision's "
            f"files in {root}/{layout} yourself; offline, use "
            "the split-mnist / split-fashion-mnist benchmarks after `bash scripts/fetch_data.sh`."
        ) from e
    x_test, y_test = _split_arrays(test_ds)
    x_all, y_all = _split_arrays(train_ds)
    x_train, y_train = drop_overlap(x_all, y_all, x_test)
    labels = tuple(c.split(" - ")[0] for c in train_ds.classes)  # MNIST names classes "0 - zero"
    dropped = len(y_all) - len(y_train)
    source = f"torchvision.datasets.{cls_name} in {root}" + (
        f" ({dropped} train images also in test dropped)" if dropped else ""
    )
    return RawData(bench, x_train, y_train, x_test, y_test, labels, 255.0, mean, std, source)


def _tv_loader(bench: str) -> Callable[..., RawData]:
    """The loader of one torchvision data set for :func:`split_benchmark` (which adds the split options)."""

    def load(root: str | os.PathLike | None, *, download: bool = True) -> RawData:
        return load_torchvision(bench, str(_pinned_root(bench, root).resolve()), bool(download))

    load.__doc__ = f"torchvision {TORCHVISION_SETS[bench][0]} split into tasks of classes."
    return load


for _name, (_cls, _stats, _cpt, _) in TORCHVISION_SETS.items():
    BENCHMARKS.register(
        _name, f"torchvision {_cls} (root=DIR, downloads by default), tasks of {_cpt} classes"
    )(split_benchmark(_name, _tv_loader(_name), _cpt))


def _read_images(
    samples: list[tuple[str, int]], mode: str, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """ImageFolder (file, class) samples as uint8 (N, C, H, W) in ``mode`` ("L" or "RGB") resized to
    ``size`` (H, W), so they always stack, and int64 labels."""
    from PIL import Image

    out = []
    for f, _ in samples:
        with Image.open(f) as im:
            im = im.convert(mode)
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out), np.array([c for _, c in samples], dtype=np.int64)


def _list_task_folders(base: Path) -> list[tuple[str, list[str], list, list]]:
    """Per task folder of ``base`` (sorted): its name, classes, and train and test (path, class id) lists."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, ImageFolder, make_dataset

    task_dirs = (
        sorted(d for d in base.iterdir() if (d / "train").is_dir() and (d / "test").is_dir())
        if base.is_dir()
        else []
    )
    if not task_dirs:
        raise DataError(
            f"imagefolder: no task folders in {base}; expected {base}/<task>/train/<class>/<image> and "
            f"{base}/<task>/test/<class>/<image> (one subfolder per task, each an ImageFolder)"
        )
    listed = []
    for d in task_dirs:
        try:
            train = ImageFolder(d / "train")  # its class folders (sorted) decide the class ids
            test = make_dataset(d / "test", train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        except FileNotFoundError as e:
            raise DataError(f"imagefolder: task {d.name}: {e}") from e
        extra = sorted({p.name for p in (d / "test").iterdir() if p.is_dir()} - set(train.classes))
        if extra or not test:
            problem = f"unknown test classes {extra}" if extra else "it holds none"
            raise DataError(
                f"imagefolder: task {d.name}: test/ must hold images of the train/ classes; {problem}"
            )
        listed.append((d.name, train.classes, train.samples, test))
    return listed


@BENCHMARKS.register(
    "imagefolder", "your images: root/<task>/{train,test}/<class>/*.png, one subfolder per task"
)
def imagefolder(
    *,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> TaskSequence:
    """One task per subfolder of ``root`` (sorted); class ids are the class folders' sorted positions."""
    from PIL import Image

    base = _pinned_root("imagefolder", root)
    if channels not in (None, 1, 3):
        raise DataArgumentError(f"channels must be None (auto), 1 or 3, got {channels!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size or ())
    listed = _list_task_folders(base)
    with Image.open(listed[0][2][0][0]) as im:  # the first training image decides what was not given
        channels = channels or (1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3)
        size = size or (im.size[1], im.size[0])
    mode = "L" if channels == 1 else "RGB"
    splits = []
    for _, _, train, test in listed:
        x_test, y_test = _read_images(test, mode, size)
        splits.append((drop_overlap(*_read_images(train, mode, size), x_test), (x_test, y_test)))
    mean, std = pooled_stats(torch.from_numpy(x).double() / 255.0 for (x, _), _ in splits)  # all train sets
    convert = partial(to_tensor, scale=255.0, mean=mean, std=std)
    limits = (max_train_per_task, max_test_per_task)
    tasks = []
    for t, ((name, classes, _, _), task_splits) in enumerate(zip(listed, splits, strict=True)):
        tasks.append(
            make_task(f"imagefolder/{name}", classes, task_splits, convert, seed=seed, t=t, limits=limits)
        )
    options = {"image_size": list(size), "channels": channels}
    return TaskSequence(
        "imagefolder", (channels, *size), mean, std, tasks, options, f"image folders in {base}"
    )
