"""benchmarks.transfer_study and benchmarks.icon_data: the splits, the LoRA run specs, the icon preprocessing."""

import numpy as np
import pytest
from PIL import Image

from benchmarks import icon_data
from benchmarks.transfer_study import B_TRAIN_PER_CLASS, lora_arms, sets


def test_digit_pair_splits_b_into_disjoint_train_scorer_and_reference_sets():
    data = sets("digits")
    a, tr, clf, ref = (set(data[k].tolist()) for k in ("a", "b_train", "b_clf", "b_ref"))
    assert not (a & tr) and not (tr & clf) and not (clf & ref) and not (a & ref)
    assert len(tr) == 5 * B_TRAIN_PER_CLASS
    assert np.bincount(data["y"][data["b_train"]]).tolist() == [B_TRAIN_PER_CLASS] * 5
    assert (data["y"][data["a"]] == -1).all() and data["x"].shape[1:] == (1, 16, 16)


def test_lora_specs_name_targets_and_ranks():
    assert lora_arms("attention:4,attention+conv:1") == {"LoRA attention r=4": (["attention"], 4),
                                                         "LoRA attention+conv r=1": (["attention", "conv"], 1)}
    with pytest.raises(SystemExit, match="TARGETS:RANK"):
        lora_arms("attention")


def test_icons_are_cropped_centred_and_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (10, 5, 20, 15))  # a red 10x10 square off-centre on transparency
    arr = icon_data._on_white(rgba, 8)
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8
    assert (arr[3:5, 3:5] == [255, 0, 0]).all()  # the square fills the frame after cropping to its box
    assert icon_data._on_white(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), 8) is None  # fully transparent: nothing
    icon_data.write_folder(np.stack([arr, arr]), np.array([0, 1]), ["Food & Drink", "Flags"], tmp_path)
    assert sorted(p.parent.name for p in tmp_path.rglob("*.png")) == ["flags", "food_drink"]
