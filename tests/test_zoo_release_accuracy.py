"""The shipped zoo releases reproduce their cards: a new user's fresh process, no Hub, no cache, no network.

Each check runs ``hatzoo.load(name, task=t)`` in a fresh process with an empty HF_HOME and no HF_*
settings (so the bundled release in ``zoo/`` is what loads) and counts correct answers on the full
test split of task t of the card's benchmark; it must match the accuracy the card gives for the shipped
files within one image.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hatzoo.card import Card, read_card
from tests.model_support import fresh_env

pytestmark = pytest.mark.integration  # fresh processes on the shipped releases and the real data
ROOT = Path(__file__).resolve().parents[1]

EVALUATE = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    import hatzoo
    from hatzoo.training.common import load_benchmark
    from hatzoo.zoo import get_card
    name, tasks = sys.argv[1], json.loads(sys.argv[2])
    seq = load_benchmark(get_card(name))  # the card's benchmark, as its training run read it
    for t in tasks:
        net = hatzoo.load(name, task=t)
        x, y = seq[t].test.tensors
        with torch.no_grad():
            correct = sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(500), y.split(500)))
        print("RESULT", json.dumps({"task": t, "correct": correct, "total": len(y)}), flush=True)
    """
)


def card(name: str) -> Card:
    return read_card(ROOT / "cards" / f"{name}.yaml")


def shipped() -> list[str]:
    """Zoo models whose card pins a release that is bundled in this checkout's zoo/."""
    return sorted(
        p.stem
        for p in (ROOT / "cards").glob("*.yaml")
        if (ROOT / "zoo" / p.stem / "model.safetensors").is_file() and card(p.stem).hub.sha256
    )


def measure(name: str, tasks: list[int], tmp_path: Path) -> dict[int, tuple[int, int]]:
    """``{task: (correct, total)}`` measured in a new user's fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", EVALUATE, name, json.dumps(tasks)],
        env=fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert not any((tmp_path / "hf-home").rglob("model.safetensors")), "the release came from a download"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    rows = [json.loads(line.removeprefix("RESULT ")) for line in lines]
    return {r["task"]: (r["correct"], r["total"]) for r in rows}


def check_against_card(name: str, measured: dict[int, tuple[int, int]]) -> None:
    results = card(name).results
    for t, (correct, total) in measured.items():
        assert total == results.test_per_task[t], f"{name} task {t}: the test split changed size"
        # within one image, plus the card's rounding to two decimals
        gap = abs(100.0 * correct / total - results.shipped[t])
        assert gap <= 100.0 / total + 0.005, f"{name} task {t}: {correct}/{total}, card {results.shipped[t]}%"


def test_hat_vit_small_task_3_matches_its_card_in_a_fresh_clone(tmp_path):
    if "hat-vit-small" not in shipped():
        pytest.skip("zoo/hat-vit-small is not bundled in this checkout (or its card pins no sha256)")
    check_against_card("hat-vit-small", measure("hat-vit-small", [3], tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", shipped() or [pytest.param("", marks=pytest.mark.skip("no zoo/ release"))])
def test_every_task_of_every_shipped_release_matches_its_card(name, tmp_path):
    tasks = list(range(len(card(name).results.shipped)))
    measured = measure(name, tasks, tmp_path)
    assert sorted(measured) == tasks
    check_against_card(name, measured)
