"""The checkpoint format: exact round trips, bit-packed masks, and clear errors for bad files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import hatzoo
from hatzoo.checkpoint import pack_mask, unpack_mask
from hatzoo.checkpoint_files import tensors_id
from tests.model_support import tiny_mlp, train_tasks, vit


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    x = torch.randn(6, 1, 16, 16)
    model = train_tasks(vit(), 3, x)
    folder = model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "hat-vit-test")
    return model, folder, x


@pytest.fixture
def copied(saved, tmp_path) -> Path:
    """A copy of the saved checkpoint, for a test to damage."""
    return shutil.copytree(saved[1], tmp_path / "copy")


def test_round_trip_is_bitwise_and_task_models_match(saved):
    model, folder, x = saved
    loaded = hatzoo.HATModel.from_pretrained(folder)
    assert [t.labels for t in loaded.tasks] == [["left", "right"]] * 3
    with torch.no_grad():
        for t in range(3):
            assert torch.equal(loaded(x, task=t), model(x, task=t))
            net = hatzoo.load(folder, task=t)
            assert not net.training
            assert (net(x) - model(x, task=t)).abs().max().item() <= 1e-5
    assert loaded.capacity() == model.capacity()


def test_file_stores_packed_masks_and_no_embeddings(saved):
    model, folder, _ = saved
    tensors = load_file(folder / "tasks.safetensors")
    assert all(key.startswith("tasks.") for key in tensors)
    for group in model.groups.values():
        packed = tensors[f"tasks.1.masks.{group.name}"]
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(group.size / 8)
        assert torch.equal(unpack_mask(packed, group.size, "x"), model.masks(group.name)[1])
    assert not any(".embeddings." in key for key in tensors)
    config = json.loads((folder / "config.json").read_text())
    assert config["hatzoo"]["format_version"] == 2
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert [t["status"] for t in config["hatzoo"]["tasks"]] == ["ended"] * 3


def test_per_task_storage_is_masks_heads_and_norms(saved):
    model, folder, _ = saved
    tensors = load_file(folder / "tasks.safetensors")
    for t in range(3):
        stored = sum(v.numel() * v.element_size() for k, v in tensors.items() if k.startswith(f"tasks.{t}."))
        masks = sum(math.ceil(g.size / 8) for g in model.groups.values())
        head = sum(p.numel() * 4 for p in model.heads[t].parameters())
        norms = sum(p.numel() * 4 for p in model._per_task_tensors(t)) - head
        norms -= sum(model.embedding(g, t).numel() * 4 for g in model.groups)  # embeddings are not stored
        assert stored == masks + head + norms


def test_plain_timm_loads_the_backbone_weights(saved):
    model, folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    backbone = timm.create_model(config["architecture"], num_classes=0, **config["model_args"])
    backbone.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    shared = backbone.state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.equal(shared, model.backbone.blocks[0].attn.qkv.weight)


def test_plain_sequential_round_trip(tmp_path):
    x = torch.randn(6, 1, 16, 16)
    model = train_tasks(tiny_mlp(), 2, x)
    loaded = hatzoo.HATModel.from_pretrained(model.save_pretrained(tmp_path / "mlp"))
    with torch.no_grad():
        for t in range(2):
            assert torch.equal(loaded(x, task=t), model(x, task=t))


def test_mask_packing_round_trip_and_checks():
    mask = torch.rand(37) > 0.5
    packed = pack_mask(mask)
    assert packed.numel() == 5
    assert torch.equal(unpack_mask(packed, 37, "m"), mask)
    with pytest.raises(hatzoo.CheckpointError, match="37 units"):
        unpack_mask(packed[:4], 37, "m")
    bad = packed.clone()
    bad[-1] |= 0x80  # a bit beyond unit 36
    with pytest.raises(hatzoo.CheckpointError, match="beyond"):
        unpack_mask(bad, 37, "m")


def rewrite_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and keep config and header bound to each other, as a consistent forgery."""
    config = json.loads((folder / "config.json").read_text())
    config["hatzoo"]["weights_id"] = tensors_id(tensors)
    (folder / "config.json").write_text(json.dumps(config))
    metadata = {"hatzoo_weights_id": config["hatzoo"]["weights_id"], "hatzoo_release_precision": "fp32"}
    save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)  # the single-file layout
    (folder / "tasks.safetensors").unlink()


def test_truncated_weights_are_a_clear_error(copied):
    data = (copied / "model.safetensors").read_bytes()
    (copied / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(hatzoo.CheckpointError, match="truncated or corrupted"):
        hatzoo.HATModel.from_pretrained(copied)


def test_config_from_another_architecture(copied, tmp_path):
    other = tiny_mlp()
    other.end_task(other.add_task(num_classes=2))
    other.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "config.json", copied / "config.json")
    with pytest.raises(hatzoo.CheckpointError, match="does not belong to its config.json"):
        hatzoo.HATModel.from_pretrained(copied)


@pytest.mark.parametrize(
    ("part", "message"), [(".masks.", "units"), ("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.weight")]
)
def test_forged_weights_of_the_wrong_size(copied, part, message):
    """A mask or a backbone tensor of another size, in a folder whose config and header still agree."""
    tensors = load_file(copied / "model.safetensors") | load_file(copied / "tasks.safetensors")
    key = next(k for k in tensors if part in k)
    tensors[key] = torch.zeros(tensors[key].numel() + 3, dtype=tensors[key].dtype)
    rewrite_weights(copied, tensors)
    with pytest.raises(hatzoo.CheckpointError, match=message):
        hatzoo.HATModel.from_pretrained(copied)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "has no config.json; is it a hatzoo checkpoint"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a hatzoo config"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # too deep for the parser
    ],
    ids=["missing", "not-json", "not-an-object", "too-deep"],
)
def test_not_a_checkpoint(tmp_path, config, message):
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    with pytest.raises(hatzoo.CheckpointError, match=message):
        hatzoo.HATModel.from_pretrained(tmp_path)


def test_task_the_checkpoint_does_not_have(saved):
    with pytest.raises(hatzoo.TaskError, match="task 7 does not exist"):
        hatzoo.load(saved[1], task=7)
