"""The one atomic folder writer (files.replacing_folder) and the training checkpoints written with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hatzoo
from hatzoo.files import replacing_folder
from hatzoo.training import checkpoints as ckpt
from tests.model_support import DIE_AT_FILE_STEP

ROOT = Path(hatzoo.__file__).parents[1]  # the hatzoo that the child processes import


def folder_contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_the_old_folder_stays_whole_until_the_new_one_replaces_it(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with replacing_folder(target) as new:
        (new / "new.txt").write_text("new")
        assert folder_contents(target) == {"old.txt": "old"}  # a reader still sees the old folder
        assert new.parent == target.parent and new != target
    assert folder_contents(target) == {"new.txt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither the old folder nor a staging one is left


def test_a_failed_write_leaves_the_old_folder_and_nothing_beside_it(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"), replacing_folder(target) as new:
        (new / "half.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert folder_contents(target) == {"old.txt": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_new_folder_is_created_with_its_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with replacing_folder(target) as new:
        (new / "x.txt").write_text("x")
    assert folder_contents(target) == {"x.txt": "x"}


def test_a_file_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(hatzoo.InputError, match="a file has that name"), replacing_folder(tmp_path / "out"):
        pass
    assert (tmp_path / "out").read_text() == "a file"


# A training checkpoint rewritten over an older one and killed (SIGKILL) at the kill_at-th file system
# step: a resumed run must then find the old checkpoint or the new one, never none.
REWRITE_AND_DIE = (
    textwrap.dedent(
        """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from torch import nn
    import hatzoo
    from hatzoo.training import checkpoints as ckpt

    out, kill_at = sys.argv[1], int(sys.argv[2])
    model = hatzoo.hatify(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)))
    model.end_task(model.add_task(num_classes=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt.write_checkpoint(out, 0, model, optimizer, {"completed": 1, "run": "old"})
    """
    )
    + DIE_AT_FILE_STEP
    + textwrap.dedent(
        """
    ckpt.write_checkpoint(out, 0, model, optimizer, {"completed": 1, "run": "new"})
    """
    )
)


@pytest.mark.integration
@pytest.mark.slow
def test_a_training_checkpoint_killed_while_rewritten_leaves_the_old_or_the_new_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    outcomes = []
    for kill_at in range(1, 40):
        out = tmp_path / f"run{kill_at}"
        proc = subprocess.run(
            [sys.executable, "-c", REWRITE_AND_DIE, str(out), str(kill_at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        found = ckpt.latest_checkpoint(out)
        outcomes.append(None if found is None else found[1]["run"])
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr
        ckpt.remove_step_checkpoints(out)  # what the next write does: an interrupted write's folder goes
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task-0"]
    assert proc.returncode == 0, "the rewrite never completed"
    assert None not in outcomes
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert len(outcomes) >= 6  # killed before, between and after the checkpoint's files and the swap
