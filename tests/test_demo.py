"""README's main command: the whole life cycle runs, and its figures are real."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hatzoo.hub.local_hub import free_port

ROOT = Path(__file__).resolve().parent.parent


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

    readme_serving_example_runs_as_written(tmp_path / "bundle")


def readme_serving_example_runs_as_written(bundle: Path) -> None:
    """README's curl session against the demo bundle, with only the bundle path and the port changed."""
    readme = (ROOT / "README.md").read_text()
    script = re.search(r"After `hatzoo demo`.*?```bash\n(.*?)```", readme, re.S).group(1)
    port = free_port()
    script = script.replace("demo-output/bundle", str(bundle)).replace("8000", str(port))
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with_task, without_task = (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    assert [k["label"] for k in with_task["top_k"][0]] in (["7", "6"], ["6", "7"])
    assert len(with_task["logits"][0]) == 2
    assert without_task["rule"] == "energy" and len(without_task["scores"][0]) == 5
