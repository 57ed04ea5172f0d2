"""README's quick start runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.integration
def test_quick_start_runs_as_written(tmp_path):
    section = re.search(r"## Quick start\n(.*?)\n## ", README.read_text(), re.S).group(1)
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the Quick start has a training block and a zoo block"
    out = []
    for code in blocks:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out.append(done.stdout)
    assert "'size': 768" in out[0]
    assert (tmp_path / "my-hat-model" / "model.safetensors").is_file()
    answers = out[1].splitlines()
    assert [a.split()[0] for a in answers[:3]] == ["Ankle", "Ankle", "Bag"], out[1]
    assert answers[3] == "5 ['Bag', 'Ankle boot']"
