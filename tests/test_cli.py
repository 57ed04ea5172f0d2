"""The ``hatzoo`` command: info, load, export, push, list, and clear errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from hatzoo.cli import main
from hatzoo.export.bundle import read_bundle
from tests.model_support import train_tasks, vit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    x = torch.randn(6, 1, 16, 16)
    model = train_tasks(vit(), 3, x, seed=11)
    model.data_config = {"mean": [0.5], "std": [0.25], "input_shape": [1, 16, 16]}
    folder = model.save_pretrained(tmp_path_factory.mktemp("cli") / "hat-cli")
    return model, folder, x


def test_info_prints_tasks_and_capacity(checkpoint, capsys):
    model, folder, _ = checkpoint
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "3 tasks" in out
    assert "task 2 [ended]: left, right" in out
    used = sum(g["size"] - g["free"] for g in model.capacity().values())
    assert f"capacity: {used}/" in out


def test_load_predicts_with_the_task_model(checkpoint, tmp_path, capsys):
    model, folder, x = checkpoint
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["load", str(folder), "--task", "1", "--predict", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    with torch.no_grad():
        expected = [model.tasks[1].labels[i] for i in model(x, task=1).argmax(1).tolist()]
    assert f"predictions: {expected}" in out


def test_export_writes_a_bundle_with_the_models_normalization(checkpoint, tmp_path):
    model, folder, x = checkpoint
    assert main(["export", str(folder), "--task", "0", "--task", "2", "-o", str(tmp_path / "bundle")]) == 0
    bundle = read_bundle(tmp_path / "bundle")
    assert sorted(bundle.tasks) == ["0", "2"]
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["tasks"]["2"]["normalization"] == {"mean": [0.5], "std": [0.25]}
    assert manifest["tasks"]["2"]["max_abs_diff"] <= 1e-4


@pytest.mark.integration
def test_push_publishes_with_git(checkpoint, local_hub, hub_env, repo_id, capsys):
    _, folder, x = checkpoint
    assert main(["push", str(folder), repo_id, "--git-mirror", str(local_hub.mirror_root)]) == 0
    assert f"as {repo_id}@" in capsys.readouterr().out
    assert main(["info", repo_id]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown command"),
        (["info", "hat-no-such-model"], "known zoo models"),
        (["load", "/no/such/folder"], "error:"),
        (["load", "{folder}", "--task", "9"], "task 9 does not exist"),
        (["train", "--card", "cards/no-such-card.yaml"], "no-such-card"),
        (["train", "--arch", "hat-vit-tiny", "--benchmark", "split-cifar"], "split-mnist"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(checkpoint, argv, message, capsys):
    argv = [a.replace("{folder}", str(checkpoint[1])) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.integration
def test_serve_command_imports_no_torch():
    code = (
        "import sys; from hatzoo.cli import COMMANDS; import hatzoo.export.server; "
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False False"


def test_version_matches_the_installed_package(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"hatzoo {version('hatzoo')}\n"
    assert main(["--help"]) == 0 and "--version" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["push", "load", "export", "info", "list", "demo"])
def test_help_has_examples_and_every_value_option_shows_its_default(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.split("examples:\n")[1].strip().startswith(f"hatzoo {command}")
    options = re.split(r"\n  (?=-)", out.split("options:\n")[1].split("\n\nexamples")[0])
    for option in options[1:]:  # after -h
        name, _, help_text = option.strip().partition("  ")
        assert help_text.strip(), f"{command} {name} has no help"
        takes_value = re.search(r"--[a-z-]+ [A-Z_]+", name)
        required = "-o OUT" in name or name.startswith("--task")
        assert not takes_value or required or "default:" in " ".join(help_text.split()), name


def test_info_shows_per_task_accuracy_from_the_card_in_percent(checkpoint, tmp_path, monkeypatch, capsys):
    _, folder, _ = checkpoint
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "hat-cli.yaml").write_text(
        "name: hat-cli\narch: hat-vit-tiny\nresults:\n  complete: true\n"
        "  accuracy:\n  - [99.5]\n  - [99.5, 91.25]\n  - [99.5, 91.25, 97.0]\n"
        "  average_accuracy: 95.92\n  bwt: 0.0\n"
        "  task_agnostic:\n    rules:\n"
        "      likelihood_ratio (release): {task: 84.5, class_incremental: 84.25}\n"
        "    task_incremental: 95.92\n    joint_class_incremental: 86.0\n"
        "    baselines:\n      experience_replay (2000): {class_incremental: 83.5}\n"
    )
    monkeypatch.setenv("HATZOO_CARDS", str(cards))
    monkeypatch.chdir(folder.parent)  # the local folder hat-cli is what loads; the card gives the numbers
    assert main(["info", "hat-cli"]) == 0
    out = capsys.readouterr().out
    assert "task 1 [ended]: left, right, test accuracy 91.25% (card)" in out
    assert "average accuracy 95.92%, backward transfer 0.00%" in out
    assert "without a task id (task-incremental ceiling 95.92%, joint 10-way classifier 86.00%)" in out
    assert re.search(
        r"likelihood_ratio \(release\) +task predicted 84.50%, class-incremental accuracy 84.25%", out
    )
    assert re.search(r"experience_replay \(2000\) +\(baseline\) class-incremental accuracy 83.50%", out)
    assert re.search(r"capacity: \d+/\d+ units used \(\d+\.\d%\)", out)
