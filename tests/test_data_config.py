"""DataConfig: the typed data config, in timm's pretrained_cfg shape."""

from __future__ import annotations

import pytest
import timm.data

import hatzoo
from hatzoo.data_config import DataConfig

FASHION = DataConfig(mean=(0.286,), std=(0.353,), input_size=(1, 28, 28), benchmark="split-fashion-mnist")


def test_timm_resolves_the_transform_from_it():
    resolved = timm.data.resolve_data_config(pretrained_cfg=FASHION.to_dict())
    assert tuple(resolved["input_size"]) == (1, 28, 28)
    assert tuple(resolved["mean"]) == (0.286,) and tuple(resolved["std"]) == (0.353,)
    assert (resolved["interpolation"], resolved["crop_pct"]) == ("bilinear", 1.0)


def test_round_trip_and_the_older_form():
    assert DataConfig.from_dict(FASHION.to_dict()) == FASHION
    older = {"mean": [0.286], "std": [0.353], "input_shape": [1, 28, 28], "benchmark": "split-fashion-mnist"}
    assert DataConfig.from_dict(older) == FASHION
    assert FASHION.normalization == {"mean": [0.286], "std": [0.353]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mean": [0.5], "std": [0.5]}, "needs input_size, mean and std"),
        ({"mean": [0.5], "std": [0.5], "input_size": [3, 32, 32]}, "C means and stds"),
        ({"mean": [0.5], "std": [0.0], "input_size": [1, 28, 28]}, "std values must be positive"),
    ],
)
def test_bad_configs_say_what_is_wrong(data, message):
    with pytest.raises(hatzoo.InputError, match=message):
        DataConfig.from_dict(data)


def test_loaded_models_carry_their_data_config_for_timm(tmp_path):
    model = hatzoo.create_model("hat-vit-tiny", img_size=28, patch_size=7, in_chans=1, depth=1)
    model.add_task(num_classes=2)
    model.end_task(0)
    model.data_config = FASHION.to_dict()
    model.save_pretrained(tmp_path / "m")
    for loaded in (hatzoo.load(tmp_path / "m"), hatzoo.load(tmp_path / "m", task=0)):
        assert DataConfig.from_dict(loaded.data_config) == FASHION
        config = timm.data.resolve_data_config({}, model=loaded)
        assert [list(config[k]) for k in ("input_size", "mean", "std")] == [[1, 28, 28], [0.286], [0.353]]
