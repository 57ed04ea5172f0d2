"""Hostile and careless checkpoints: configs that try to run code or allocate without bound, malformed
values, saves killed half-way, and the promises a release makes (same bytes, bf16 storage, timm data config).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import pickle
import re
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import hatzoo
from hatzoo.checkpoint import checkpoint_tensors, load_pretrained, release_keys
from hatzoo.cli import main
from hatzoo.hub.publish import publish_git
from tests.model_support import DIE_AT_FILE_STEP, vit


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
ROOT = Path(hatzoo.__file__).parents[1]  # the hatzoo that the child processes import


def tiny_vit(labels: list[str], tasks: int = 3, seed: int = 0) -> hatzoo.HATModel:
    torch.manual_seed(seed)
    model = vit()
    for _ in range(tasks):
        model.end_task(model.add_task(num_classes=len(labels), labels=labels))
    model.data_config = {"mean": [0.5], "std": [0.25], "input_shape": [1, 16, 16], "benchmark": "test"}
    return model.eval()


def tiny_mlp(labels: list[str], seed: int) -> hatzoo.HATModel:
    torch.manual_seed(seed)
    model = hatzoo.hatify(nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 8)))
    for _ in range(2):
        model.end_task(model.add_task(num_classes=len(labels), labels=labels))
    return model.eval()


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    return tiny_vit(["a", "b", "c"]).save_pretrained(tmp_path_factory.mktemp("hostile") / "vit")


@pytest.fixture(scope="module")
def mlp_folder(tmp_path_factory) -> Path:
    return tiny_mlp(["a", "b"], seed=0).save_pretrained(tmp_path_factory.mktemp("hostile") / "mlp")


def edited(folder: Path, tmp_path: Path, edits: dict[str, object]) -> Path:
    """A copy of ``folder`` whose config.json has ``edits`` applied (key path -> value or DELETE)."""
    target = shutil.copytree(folder, tmp_path / folder.name)
    config = json.loads((folder / "config.json").read_text())
    for path, value in edits.items():
        set_path(config, path, value)
    (target / "config.json").write_text(json.dumps(config))
    return target


def set_path(config: dict, path: str, value: object) -> None:
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    node = config
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = copy.deepcopy(value)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- code from a config
PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('pwned')"


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (PAYLOAD.format(marker=self.marker),))


@pytest.mark.parametrize("where", ["hatzoo.arch.kwargs", "model_args", "both"])
def test_checkpoint_path_to_a_pickle_in_the_repo_never_runs(vit_folder, tmp_path, where):
    marker = tmp_path / "pwned"
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "evil.pth").write_bytes(pickle.dumps(_Payload(str(marker))))
    keys = ["hatzoo.arch.kwargs", "model_args"] if where == "both" else [where]
    folder = edited(vit_folder, folder, {f"{k}.checkpoint_path": str(folder / "evil.pth") for k in keys})
    with pytest.raises(hatzoo.CheckpointError, match=re.escape(f"{keys[0]}.checkpoint_path")):
        hatzoo.HATModel.from_pretrained(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pretrained", True),
        ("pretrained_cfg_overlay", {"file": "evil.pth"}),
        ("pretrained_cfg", {"file": "evil.pth"}),
        ("features_only", True),
        ("cache_dir", "/tmp"),
        ("block_fn", "timm.models.vision_transformer.Block"),
        ("act_layer", "gelu"),
        ("norm_layer", "torch.nn.LayerNorm"),
        ("embed_layer", "os.system"),
        ("weight_init", "jax"),
        ("num_classes", 10),
    ],
)
def test_arguments_outside_the_allow_list_are_refused(vit_folder, tmp_path, key, value):
    folder = edited(vit_folder, tmp_path, {f"hatzoo.arch.kwargs.{key}": value, f"model_args.{key}": value})
    with pytest.raises(hatzoo.CheckpointError, match=re.escape(f"hatzoo.arch.kwargs.{key}")):
        hatzoo.HATModel.from_pretrained(folder)


def test_num_classes_beyond_the_weights_fails_before_allocating(vit_folder, tmp_path):
    labels = [str(i) for i in range(3_000_000)]
    folder = edited(
        vit_folder, tmp_path, {"hatzoo.tasks[1].num_classes": 3_000_000, "hatzoo.tasks[1].labels": labels}
    )
    before = peak_rss_mb()
    with pytest.raises(hatzoo.CheckpointError, match=re.escape("hatzoo.tasks[1].num_classes is 3000000")):
        hatzoo.HATModel.from_pretrained(folder)
    assert peak_rss_mb() - before < 500  # a 3,000,000-class head alone would take 2.3 GB


def test_an_architecture_larger_than_the_weights_fails_before_allocating(vit_folder, tmp_path):
    big = {"embed_dim": 16384, "depth": 64, "num_heads": 64}
    args = json.loads((vit_folder / "config.json").read_text())["model_args"] | big
    folder = edited(vit_folder, tmp_path, {"hatzoo.arch.kwargs": args, "model_args": args})
    before = peak_rss_mb()
    with pytest.raises(hatzoo.CheckpointError, match="the architecture in config.json needs"):
        hatzoo.HATModel.from_pretrained(folder)
    assert peak_rss_mb() - before < 500  # the model it describes has 206 billion bytes of weights


# ----------------------------------------------------------------------------- malformed configs
VIT_CASES = [
    ("hatzoo.format", "other", "hatzoo.format"),
    ("hatzoo.format_version", "1", "format version '1'"),
    ("hatzoo.format_version", 99, "format version 99; this hatzoo reads versions 1, 2. Upgrade hatzoo"),
    ("hatzoo.arch", DELETE, "hatzoo.arch"),
    ("hatzoo.hat", DELETE, "hatzoo.hat"),
    ("hatzoo.groups", DELETE, "hatzoo.groups"),
    ("hatzoo.tasks", DELETE, "hatzoo.tasks"),
    ("hatzoo.surprise", 1, "hatzoo.surprise"),
    ("hatzoo.tasks", "abc", "hatzoo.tasks must be a list"),
    ("hatzoo.tasks", {"0": {}}, "hatzoo.tasks must be a list"),
    ("hatzoo.tasks[0]", "task", "hatzoo.tasks[0] must be a mapping"),
    ("hatzoo.tasks[0].num_classes", "three", "hatzoo.tasks[0].num_classes must be an integer"),
    ("hatzoo.tasks[0].num_classes", -5, "hatzoo.tasks[0].num_classes must be in"),
    ("hatzoo.tasks[0].num_classes", 0, "hatzoo.tasks[0].num_classes must be in"),
    ("hatzoo.tasks[0].num_classes", 2.5, "hatzoo.tasks[0].num_classes must be an integer"),
    ("hatzoo.tasks[0].num_classes", True, "hatzoo.tasks[0].num_classes must be an integer"),
    ("hatzoo.tasks[0].num_classes", None, "hatzoo.tasks[0].num_classes must be an integer"),
    ("hatzoo.tasks[0].num_classes", 10**30, "hatzoo.tasks[0].num_classes must be in"),
    ("hatzoo.tasks[2].num_classes", 3_000_000, "hatzoo.tasks[2].labels must have 3000000"),  # 2 kB claim
    ("hatzoo.tasks[0].num_classes", DELETE, "hatzoo.tasks[0].num_classes is missing"),
    ("hatzoo.tasks[0].labels", DELETE, "hatzoo.tasks[0].labels is missing"),
    ("hatzoo.tasks[0].labels", "abc", "hatzoo.tasks[0].labels must be a list"),
    ("hatzoo.tasks[0].labels", [1, 2, 3], "hatzoo.tasks[0].labels[0] must be a string"),
    ("hatzoo.tasks[0].labels", ["a"], "hatzoo.tasks[0].labels must have 3 entries"),
    ("hatzoo.tasks[0].labels", None, "hatzoo.tasks[0].labels must be a list"),
    ("hatzoo.tasks[0].status", "done", "hatzoo.tasks[0].status must be one of"),
    ("hatzoo.tasks[0].status", 1, "hatzoo.tasks[0].status must be a string"),
    ("hatzoo.tasks[0].status", DELETE, "hatzoo.tasks[0].status is missing"),
    ("hatzoo.tasks[0].origin", "x", "hatzoo.tasks[0].origin is not a known key"),
    ("hatzoo.tasks[1].status", "open", "do not match its config.json: missing ['tasks.1.embeddings"),
    ("hatzoo.groups", "x", "hatzoo.groups must be a list"),
    ("hatzoo.groups[0]", 5, "hatzoo.groups[0] must be a mapping"),
    ("hatzoo.groups[0].size", "4", "hatzoo.groups[0].size must be an integer"),
    ("hatzoo.groups[0].size", -1, "hatzoo.groups[0].size must be in"),
    ("hatzoo.groups[0].size", 0, "hatzoo.groups[0].size must be in"),
    ("hatzoo.groups[0].size", 10**9, "hatzoo.groups[0].size must be in"),
    ("hatzoo.groups[0].size", 5, "mask groups do not match"),
    ("hatzoo.groups[0].name", 3, "hatzoo.groups[0].name must be a string"),
    ("hatzoo.groups[1].name", "blocks.0.attn.heads", "hatzoo.groups[1].name"),
    ("hatzoo.groups[0].name", DELETE, "hatzoo.groups[0].name is missing"),
    ("hatzoo.hat", "x", "hatzoo.hat must be a mapping"),
    ("hatzoo.hat.smax", "big", "hatzoo.hat.smax must be a finite number"),
    ("hatzoo.hat.smax", -1, "hatzoo.hat.smax must be > 0"),
    ("hatzoo.hat.smax", 0, "hatzoo.hat.smax must be > 0"),
    ("hatzoo.hat.smax", math.nan, "hatzoo.hat.smax must be a finite number"),
    ("hatzoo.hat.smax", math.inf, "hatzoo.hat.smax must be a finite number"),
    ("hatzoo.hat.reg_c", -0.1, "hatzoo.hat.reg_c must be >= 0"),
    ("hatzoo.hat.reg_c", [1], "hatzoo.hat.reg_c must be a finite number"),
    ("hatzoo.hat.reg_mode", "local", "hatzoo.hat.reg_mode must be one of"),
    ("hatzoo.hat.mask_init", 3, "hatzoo.hat.mask_init must be a string"),
    ("hatzoo.hat.clamp", 0, "hatzoo.hat.clamp must be > 0"),
    ("hatzoo.hat.cosh_clamp", "50", "hatzoo.hat.cosh_clamp must be a finite number"),
    ("hatzoo.hat.norm_init", None, "hatzoo.hat.norm_init must be a string"),
    ("hatzoo.hat.temperature", 1, "hatzoo.hat.temperature is not a known key"),
    ("hatzoo.default_task", 0, "hatzoo.default_task must be the latest task"),
    ("hatzoo.default_task", "2", "hatzoo.default_task must be the latest task"),
    ("hatzoo.default_task", True, "hatzoo.default_task must be the latest task"),
    ("hatzoo.data_config", "x", "hatzoo.data_config must be a mapping"),
    ("hatzoo.data_config.mean", "0.5", "hatzoo.data_config.mean must be a list"),
    ("hatzoo.data_config.std", [0], "hatzoo.data_config.std[0] must be > 0"),
    ("hatzoo.data_config.std", [math.nan], "hatzoo.data_config.std[0] must be a finite number"),
    ("hatzoo.data_config.input_shape", [1, -16, 16], "hatzoo.data_config.input_shape[1] must be in"),
    ("hatzoo.data_config.mean", [0.1, 0.2], "hatzoo.data_config.mean must have 1 entries"),
    ("hatzoo.data_config.extra", [[1]], "hatzoo.data_config.extra must be a JSON scalar"),
    ("hatzoo.metadata", [], "hatzoo.metadata must be a mapping"),
    ("hatzoo.release_precision", "fp8", "hatzoo.release_precision must be one of"),
    ("hatzoo.release_precision", "bf16", "release_precision is 'bf16', the weights' is 'fp32'"),
    ("hatzoo.weights_id", "abc", "hatzoo.weights_id must be 64 lowercase hex digits"),
    ("hatzoo.weights_id", "0" * 64, "does not belong to its config.json"),
    ("hatzoo.arch", "vit", "hatzoo.arch must be a mapping"),
    ("hatzoo.arch.source", "pickle", "hatzoo.arch.source is 'pickle'"),
    ("hatzoo.arch.name", "convnext_tiny", "hatzoo.arch.name: 'convnext_tiny' is not an architecture"),
    ("hatzoo.arch.name", "hf-hub:evil/model", "hatzoo.arch.name: 'hf-hub:evil/model' is not a timm"),
    ("hatzoo.arch.name", 5, "hatzoo.arch.name: 5 is not a timm"),
    ("hatzoo.arch.kwargs", "x", "hatzoo.arch.kwargs must be a mapping"),
    ("hatzoo.arch.kwargs.depth", "4", "hatzoo.arch.kwargs.depth: value '4'"),
    ("hatzoo.arch.kwargs.depth", 100_000, "hatzoo.arch.kwargs.depth: value 100000"),
    ("hatzoo.arch.kwargs.img_size", [16], "hatzoo.arch.kwargs.img_size: value [16]"),
    ("hatzoo.arch.kwargs.embed_dim", -1, "hatzoo.arch.kwargs.embed_dim: value -1"),
    ("hatzoo.arch.kwargs.global_pool", "map", "hatzoo.arch.kwargs.global_pool: value 'map'"),
    ("hatzoo.arch.kwargs.qkv_bias", "yes", "hatzoo.arch.kwargs.qkv_bias: value 'yes'"),
    ("hatzoo.arch.module", "os", "hatzoo.arch.module: unknown key"),
    ("model_args.checkpoint_path", "evil.pth", "model_args.checkpoint_path"),
    ("model_args.depth", 3, "model_args differs from hatzoo.arch.kwargs"),
    ("model_args", DELETE, "model_args is missing"),
    ("model_args", [], "model_args must be a mapping"),
    ("architecture", "resnet18", "architecture is 'resnet18' but hatzoo.arch.name"),
    ("num_classes", 5, "num_classes must be in [0, 0]"),
    ("num_features", "x", "num_features must be an integer"),
    ("pretrained_cfg.file", "evil.pth", "pretrained_cfg.file is not a known key"),
    ("pretrained_cfg.url", "http://example.com/x.pth", "pretrained_cfg.url is not a known key"),
    ("pretrained_cfg.mean", "x", "pretrained_cfg.mean must be a list"),
    ("pretrained_cfg.input_size", [1, 16], "pretrained_cfg.input_size must have 3 entries"),
    ("pretrained_cfg.crop_pct", 2, "pretrained_cfg.crop_pct must be > 0.0 and <= 1.0"),
    ("pretrained_cfg.interpolation", "magic", "pretrained_cfg.interpolation must be one of"),
]


MLP_CASES = [
    ("hatzoo.arch.layers", "x", "hatzoo.arch.layers must be a list"),
    ("hatzoo.arch.layers[1]", 5, "hatzoo.arch.layers[1] must be a mapping"),
    ("hatzoo.arch.layers[1].type", "Module", "hatzoo.arch.layers[1].type: 'Module' is not an allowed layer"),
    ("hatzoo.arch.layers[1].type", "torch.nn.Linear", "hatzoo.arch.layers[1].type"),
    ("hatzoo.arch.layers[1].type", "Bilinear", "hatzoo.arch.layers[1].type"),
    ("hatzoo.arch.layers[1].args", "x", "hatzoo.arch.layers[1].args must be a mapping"),
    ("hatzoo.arch.layers[1].args.in_features", "64", "hatzoo.arch.layers[1].args.in_features: value '64'"),
    ("hatzoo.arch.layers[1].args.in_features", 10**9, "hatzoo.arch.layers[1].args.in_features: value"),
    ("hatzoo.arch.layers[1].args.out_features", -3, "hatzoo.arch.layers[1].args.out_features: value -3"),
    ("hatzoo.arch.layers[1].args.bias", "yes", "hatzoo.arch.layers[1].args.bias: value 'yes'"),
    ("hatzoo.arch.layers[1].args.device", "cuda", "hatzoo.arch.layers[1].args.device"),
    ("hatzoo.arch.layers[1].args.dtype", "float64", "hatzoo.arch.layers[1].args.dtype"),
    ("hatzoo.arch.layers[1].name", "a.b", "hatzoo.arch.layers[1].name"),
    ("hatzoo.arch.layers[1].name", "0", "hatzoo.arch.layers[1].name"),
    ("hatzoo.arch.layers[1].init", "os.system", "hatzoo.arch.layers[1].init: unknown key"),
    ("hatzoo.arch.layers[1].args.out_features", 30, "tensor 1.weight is (24, 64)"),
    ("architecture", "vit_tiny_patch16_224", "architecture belongs to timm architectures"),
]


CONFIG_CASES = [("vit_folder", *c) for c in VIT_CASES] + [("mlp_folder", *c) for c in MLP_CASES]


@pytest.mark.parametrize(
    ("base", "path", "value", "message"),
    CONFIG_CASES,
    ids=[f"{c[0][:3]}:{c[1]}={c[2]!r}"[:64] for c in CONFIG_CASES],
)
def test_malformed_config_is_a_checkpoint_error_naming_the_key(request, tmp_path, base, path, value, message):
    """A timm (vit) or sequential (mlp) checkpoint whose config.json has one bad value at ``path``."""
    folder = edited(request.getfixturevalue(base), tmp_path, {path: value})
    with pytest.raises(hatzoo.CheckpointError, match=re.escape(message)):
        hatzoo.HATModel.from_pretrained(folder)


# ----------------------------------------------------------------------------- atomic saving
SAVE_AND_DIE = (
    textwrap.dedent(
        """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from hatzoo.checkpoint import load_pretrained, save_pretrained

    source, target, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = load_pretrained(source)
    """
    )
    + DIE_AT_FILE_STEP
    + textwrap.dedent(
        """
    save_pretrained(model, target)
    print("saved after", seen, "steps")
    """
    )
)


def same_model(a: hatzoo.HATModel, b: hatzoo.HATModel) -> bool:
    """Same tasks and the same stored tensors (ended tasks' embeddings are not stored)."""
    if [t.labels for t in a.tasks] != [t.labels for t in b.tasks]:
        return False
    sa, sb = checkpoint_tensors(a), checkpoint_tensors(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.integration
@pytest.mark.slow
def test_save_killed_at_every_step_leaves_the_old_or_the_new_model(tmp_path):
    old, new = tiny_mlp(["old-a", "old-b"], seed=1), tiny_mlp(["new-a", "new-b"], seed=2)
    new.save_pretrained(tmp_path / "new")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    outcomes = []
    for kill_at in range(1, 20):
        target = tmp_path / f"run{kill_at}" / "model"
        old.save_pretrained(target)
        proc = subprocess.run(
            [sys.executable, "-c", SAVE_AND_DIE, tmp_path / "new", target, str(kill_at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        loaded = load_pretrained(target)
        outcomes.append("old" if same_model(loaded, old) else "new" if same_model(loaded, new) else "mixed")
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr
    assert proc.returncode == 0, "the save never completed"
    assert "mixed" not in outcomes
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert len(outcomes) >= 6  # killed before, between and after the four files and the swap


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("model.safetensors", "mixes two saves"),  # weights and config of different saves
        ("tasks.safetensors", "sha256 of tasks.safetensors"),  # refused by the sha256 model.safetensors keeps
    ],
)
def test_a_file_of_another_save_does_not_load(tmp_path, name, message):
    one = tiny_mlp(["a", "b"], seed=1).save_pretrained(tmp_path / "one")
    two = tiny_mlp(["a", "b"], seed=2).save_pretrained(tmp_path / "two")
    (one / name).write_bytes((two / name).read_bytes())
    with pytest.raises(hatzoo.CheckpointError, match=message):
        hatzoo.HATModel.from_pretrained(one)


def test_a_missing_tasks_file_is_named(mlp_folder, tmp_path):
    folder = edited(mlp_folder, tmp_path, {})
    (folder / "tasks.safetensors").unlink()
    with pytest.raises(hatzoo.CheckpointError, match="has no tasks.safetensors"):
        hatzoo.HATModel.from_pretrained(folder)


def test_saving_over_a_folder_keeps_its_other_files(tmp_path):
    model = tiny_mlp(["a", "b"], seed=1)
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "results.json").write_text("{}")
    (folder / "plots").mkdir()
    (folder / "plots" / "accuracy.png").write_bytes(b"png")
    model.save_pretrained(folder)
    assert (folder / "results.json").read_text() == "{}"
    assert (folder / "plots" / "accuracy.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left beside it


# ----------------------------------------------------------------------------- reproducible bytes
def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


RESAVE = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from hatzoo.checkpoint import load_pretrained, save_pretrained
    save_pretrained(load_pretrained(sys.argv[1]), sys.argv[2], precision=sys.argv[3])
    """
)


@pytest.mark.integration
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_same_model_saves_to_the_same_bytes_in_any_process(tmp_path, precision):
    model = tiny_vit(["a", "b"], tasks=2)
    a, c = tmp_path / "a" / "model", tmp_path / "c" / "model"
    first = digests(model.save_pretrained(a, precision=precision))
    assert digests(model.save_pretrained(tmp_path / "b" / "model", precision=precision)) == first
    # another process: another hash seed, another dict order in safetensors' writer
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONHASHSEED="99")
    subprocess.run([sys.executable, "-c", RESAVE, a, c, precision], env=env, check=True, timeout=300)
    assert digests(c) == first
    assert set(first) == {"README.md", "config.json", "model.safetensors", "tasks.safetensors"}
    headers = {}
    for name in ("model.safetensors", "tasks.safetensors"):
        data = (a / name).read_bytes()
        headers[name] = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")].decode())
        assert list(headers[name]) == sorted(headers[name])
        assert list(headers[name]["__metadata__"]) == sorted(headers[name]["__metadata__"])
    assert headers["model.safetensors"]["__metadata__"]["hatzoo_tasks_sha256"] == first["tasks.safetensors"]


# ----------------------------------------------------------------------------- release precision and dtype
def test_bf16_release_stores_shared_conv_and_linear_weights_in_bf16(tmp_path):
    model = tiny_vit(["a", "b", "c"])
    fp32 = model.save_pretrained(tmp_path / "fp32")
    bf16 = model.save_pretrained(tmp_path / "bf16", precision="bf16")
    tensors = load_file(bf16 / "model.safetensors")
    low = {k for k, v in tensors.items() if v.dtype == torch.bfloat16}
    assert low == release_keys(model)
    per_task = load_file(bf16 / "tasks.safetensors")
    assert {v.dtype for v in per_task.values()} == {torch.float32, torch.uint8}
    assert (bf16 / "tasks.safetensors").read_bytes() == (fp32 / "tasks.safetensors").read_bytes()
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"} <= low
    assert all(not k.startswith("tasks.") and k.endswith(".weight") and "norm" not in k for k in low)
    assert tensors["blocks.0.attn.qkv.bias"].dtype == torch.float32
    assert json.loads((bf16 / "config.json").read_text())["hatzoo"]["release_precision"] == "bf16"
    ratio = (bf16 / "model.safetensors").stat().st_size / (fp32 / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.6
    loaded = hatzoo.HATModel.from_pretrained(bf16)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        for t in range(3):
            reference = model(x, task=t)
            assert (loaded(x, task=t) - reference).abs().max().item() < 0.02 * reference.abs().max().item()
            assert torch.equal(loaded.masks("blocks.0.mlp.hidden")[t], model.masks("blocks.0.mlp.hidden")[t])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_load_to_a_dtype_gives_every_floating_tensor_that_dtype(tmp_path, dtype, precision):
    model = tiny_vit(["a", "b"], tasks=2)
    loaded = load_pretrained(model.save_pretrained(tmp_path / "m", precision=precision), dtype=dtype)
    floating = [t for t in [*loaded.parameters(), *loaded.buffers()] if t.is_floating_point()]
    assert floating and all(t.dtype == dtype for t in floating)
    with torch.no_grad():
        assert loaded(torch.randn(2, 1, 16, 16, dtype=dtype), task=1).dtype == dtype


def single_file_layout(folder: Path, metadata: dict[str, str], drop: tuple[str, ...] = ()) -> None:
    """Rewrite a checkpoint as format version 1 stored it: the tasks' tensors inside model.safetensors."""
    tensors = load_file(folder / "model.safetensors") | load_file(folder / "tasks.safetensors")
    (folder / "tasks.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["hatzoo"]["format_version"] = 1
    for key in drop:
        del config["hatzoo"][key]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(folder / "model.safetensors"), metadata={**metadata, "hatzoo_format_version": "1"})


def test_checkpoints_of_the_previous_writer_still_load(tmp_path):
    """The zoo's runs were written by safetensors' own writer, without weights_id or release precision."""
    model = tiny_vit(["a", "b", "c"])
    folder = model.save_pretrained(tmp_path / "m")
    metadata = {"format": "pt", "hatzoo_format": "hatzoo"}
    single_file_layout(folder, metadata, drop=("weights_id", "release_precision"))
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"] = {"num_classes": 0}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    loaded = hatzoo.HATModel.from_pretrained(folder)
    assert same_model(loaded, model)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_single_file_layout_of_format_version_1_still_loads(tmp_path, precision):
    model = tiny_vit(["a", "b", "c"])
    folder = model.save_pretrained(tmp_path / "m", precision=precision)
    header = {"format": "pt", "hatzoo_format": "hatzoo", "hatzoo_release_precision": precision}
    header["hatzoo_weights_id"] = json.loads((folder / "config.json").read_text())["hatzoo"]["weights_id"]
    single_file_layout(folder, header)
    assert any(k.startswith("tasks.") for k in load_file(folder / "model.safetensors"))
    loaded = hatzoo.HATModel.from_pretrained(folder)
    assert same_model(loaded, load_pretrained(model.save_pretrained(tmp_path / "now", precision=precision)))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(hatzoo.load(folder, task=1)(x), hatzoo.load(tmp_path / "now", task=1)(x))


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(hatzoo.InputError, match="precision"):
        tiny_mlp(["a", "b"], seed=0).save_pretrained(tmp_path / "m", precision="int8")


# ----------------------------------------------------------------------------- timm data config
@pytest.mark.integration
def test_timm_loads_a_hub_repo_strictly_and_resolves_its_data_config(hub_env, repo_id, tmp_path, caplog):
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    model = hatzoo.create_model("hat-vit-tiny", img_size=28, patch_size=7, in_chans=1, depth=2)
    model.end_task(model.add_task(num_classes=2, labels=["a", "b"]))
    model.data_config = {"mean": [0.286], "std": [0.353], "input_shape": [1, 28, 28], "benchmark": "fmnist"}
    publish_git(model.save_pretrained(tmp_path / "m"), repo_id, mirror_root=hub_env.hub.mirror_root)

    with caplog.at_level(logging.DEBUG, logger="timm"):
        backbone = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)  # strict, timm's default
    assert not [r for r in caplog.records if "unexpected" in r.getMessage().lower()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    config = resolve_data_config({}, model=backbone)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()} == {
        "input_size": (1, 28, 28),
        "interpolation": "bilinear",
        "mean": (0.286,),
        "std": (0.353,),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    pixels = torch.randint(0, 256, (28, 28), dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())
    x = create_transform(**config)(image)
    assert x.shape == (1, 28, 28)
    assert torch.allclose(x[0], (pixels.float() / 255 - 0.286) / 0.353, atol=1e-5)
    assert torch.equal(backbone.blocks[0].attn.qkv.weight, model.backbone.blocks[0].attn.qkv.weight)


# ----------------------------------------------------------------------------- push with relative paths
@pytest.mark.integration
def test_push_with_relative_paths_from_another_folder(local_hub, hub_env, repo_id, tmp_path, monkeypatch):
    folder = tiny_mlp(["a", "b"], seed=3).save_pretrained(tmp_path / "work" / "ckpt")
    mirror = local_hub.mirror_root
    monkeypatch.chdir(tmp_path / "work")
    relative_mirror = os.path.relpath(mirror, tmp_path / "work")
    assert main(["push", "ckpt", repo_id, "--git-mirror", relative_mirror]) == 0
    loaded = hatzoo.HATModel.from_pretrained(repo_id)
    assert same_model(loaded, load_pretrained(folder))


def test_a_failed_push_leaves_no_repository_behind(tmp_path, monkeypatch):
    folder = tiny_mlp(["a", "b"], seed=3).save_pretrained(tmp_path / "ckpt")
    (folder / "notes\nsecond line.txt").write_text("git cannot hash a path with a newline")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hatzoo.HubError, match="hash-object"):
        publish_git("ckpt", "org/model", mirror_root="mirror")
    assert not (tmp_path / "mirror" / "models").exists()
