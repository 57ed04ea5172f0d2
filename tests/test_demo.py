"""README's main command: the whole life cycle runs, and its figures are real."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.integration
def test_demo_runs_end_to_end(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hatzoo.cli", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["bwt"] == 0.0
    matrix = figures["accuracy_matrix"]
    assert len(matrix) == 5 and all(row[: i + 1] and None not in row[: i + 1] for i, row in enumerate(matrix))
    assert figures["average_accuracy"] > 0.5
    assert 0.5 < figures["fresh_process_accuracy"] <= 1.0
    assert figures["max_abs_diff"] <= 1e-4
    assert 0 < figures["kept_flops_fraction"] <= 1
    correct, total = map(int, figures["server_answers_correct"].split("/"))
    assert total == 8 and correct >= 4
    for step in range(1, 8):
        assert f"[demo] step {step} done" in done.stdout
    card = (tmp_path / "cards" / "hat-vit-demo.yaml").read_text()  # the pin the fresh process loaded
    assert f"revision: {figures['published'].split('@')[1]}" in card
