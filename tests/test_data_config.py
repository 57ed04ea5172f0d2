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
