"""How fast the ``hatzoo`` command answers: ``hatzoo list`` against a bare interpreter and ``import torch``.

Each command runs as a fresh process (as a user types it), interleaved, median of N. Reported: the
seconds of each, and ``hatzoo list`` as a ratio of the bare interpreter start and of ``import torch``
(what ``list`` paid before it read the cards without importing torch).

    python bench/bench_cli.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def commands() -> dict[str, list[str]]:
    hatzoo = shutil.which("hatzoo") or ""
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "hatzoo list": [hatzoo, "list"] if hatzoo else [sys.executable, "-m", "hatzoo.cli", "list"],
        "hatzoo --help": [hatzoo, "--help"] if hatzoo else [sys.executable, "-m", "hatzoo.cli", "--help"],
    }


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    runs = commands()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, argv in runs.items():
            times[name].append(seconds(argv))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, value in median.items():
        print(f"{name:<28} {value:7.3f} s (median of {args.repeats})")
    listing, bare, torch = (median[k] for k in ("hatzoo list", "python -c pass", "python -c 'import torch'"))
    print(f"hatzoo list / bare interpreter: {listing / bare:.2f}x")
    print(f"hatzoo list / import torch:     {listing / torch:.2f}x")


if __name__ == "__main__":
    main()
