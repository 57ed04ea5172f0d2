"""Task-incremental benchmarks as in-memory tensors: ``get_benchmark(name)`` -> :class:`TaskSequence`.

Offline data (installed by ``bash scripts/fetch_data.sh``): ``split-mnist``, ``split-fashion-mnist``,
``permuted-mnist``, ``mixed``. With internet or your own files: ``tv-mnist``, ``tv-fashion-mnist``,
``tv-cifar10``, ``tv-cifar100``, ``imagefolder``. Splits, counts and seeds are documented in
``hatzoo.data.sources`` and ``hatzoo.data.benchmarks``; data folders in ``hatzoo.data.paths``.

    seq = get_benchmark("split-mnist", seed=0)
    X, Y = seq[0].train.tensors   # float32 (N, 1, 28, 28) normalized, int64 labels 0..1
"""

from hatzoo.data import torchvision_sources as _tv  # noqa: F401  (registers tv-* and imagefolder)
from hatzoo.data.benchmarks import BENCHMARKS, get_benchmark, list_benchmarks
from hatzoo.data.sources import RawData, load_digits, load_fashion_mnist, load_mnist
from hatzoo.data.tasks import TaskData, TaskSequence
from hatzoo.errors import DataArgumentError

__all__ = [
    "BENCHMARKS",
    "DataArgumentError",
    "RawData",
    "TaskData",
    "TaskSequence",
    "get_benchmark",
    "list_benchmarks",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
]
