"""MRI datamodule: readers (NIfTI, DICOM, datalist), transforms, volume and slice modes, bad input."""

import json

import numpy as np
import pytest
import torch

from datamodules.base import ReproducibleItems
from src.domains import build_datamodule
from src.domains.mri.data import MRIDataModule
from src.domains.mri.phantoms import head_phantom
from src.errors import DataError
from tests.helpers.mri import phantom, write_dicom_series, write_nifti


def dm(path=None, **kw) -> MRIDataModule:
    opts = dict(
        mode="volume",
        shape=(16, 16, 16),
        spacing=(3.0, 3.0, 3.0),
        builtin_size=6,
        num_workers=0,
        cache_workers=1,
        val_fraction=0.2,
    )
    opts.update(kw)
    return MRIDataModule(path=None if path is None else str(path), **opts)


def all_items(ds) -> torch.Tensor:
    return torch.stack([ds[i]["x"] for i in range(len(ds))])


# ---- phantoms -------------------------------------------------------------------------------------


def test_phantom_is_deterministic_varied_and_head_like():
    a, b, c = head_phantom((24, 24, 24), 1), head_phantom((24, 24, 24), 1), head_phantom((24, 24, 24), 2)
    assert a.shape == (24, 24, 24) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.02
    corner, centre = a[:3, :3, :3].mean(), a[9:15, 9:15, 9:15].mean()
    assert corner < 0.1 < centre  # dark background (noise only), tissue inside
    z = head_phantom((32, 32), 3, complex_valued=True)
    assert z.dtype == np.complex64 and z.shape == (32, 32)
    assert np.abs(np.angle(z[12:20, 12:20])).std() > 0.01  # it has a phase
    with pytest.raises(ValueError):
        head_phantom((8,), 0)


# ---- built-in data, both modes --------------------------------------------------------------------


def test_builtin_volumes_are_scaled_and_reproducible():
    d = dm()
    d.setup()
    assert d.data_shape == [1, 16, 16, 16]
    items = ReproducibleItems(d.train_set, seed=0)
    x = items[3]["x"]
    assert x.shape == (1, 16, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # padded/background is "no signal"
    torch.testing.assert_close(items[3]["x"], x)  # same key: same crop and flip
    assert any(not torch.equal(items[3 + k * len(items)]["x"], x) for k in range(1, 6))  # other epochs differ


def test_slice_mode_skips_empty_slices_and_keeps_volumes_apart():
    d = dm(mode="slice", shape=(16, 16), builtin_size=5, builtin_depth=16, val_fraction=0.2)
    d.setup()
    assert d.data_shape == [1, 16, 16]
    x = d.train_set[0]["x"]
    assert x.shape == (1, 16, 16)
    vols = {v for v, _ in d.train_set.index}
    assert len(d.train_set) < 16 * len(vols)  # near-empty top and bottom slices are skipped
    assert vols.isdisjoint({v for v, _ in d.val_set.index})
    fg = ((all_items(d.train_set) + 1) / 2 > d.fg_threshold).float().mean(dim=(1, 2, 3))
    assert fg.min() >= d.min_slice_fg * 0.5


def test_complex_builtin_has_two_channels_in_unit_disk():
    d = dm(mode="slice", shape=(16, 16), channels=2, builtin_size=3, builtin_depth=8)
    d.setup()
    x = all_items(d.train_set)
    assert x.shape[1] == 2
    mag = torch.sqrt((x**2).sum(1))
    assert mag.max() <= 1 + 1e-5 and (x[:, 0] < 0).any() and (x[:, 1] < 0).any()


def test_bad_options_are_one_sentence():
    with pytest.raises(DataError, match="3 positive whole sizes for mode=volume"):
        dm(shape=(20, 20))
    with pytest.raises(DataError, match="mode"):
        dm(mode="planar")
    with pytest.raises(DataError, match="channels"):
        dm(channels=3)


# ---- readers -------------------------------------------------------------------------------------


def test_nifti_folder_scaling_and_spacing(tmp_path):
    for i in range(3):
        write_nifti(
            tmp_path / f"sub{i}" / "t1.nii.gz", phantom((24, 24, 24), seed=i), spacing=(2.0, 2.0, 2.0)
        )
    d = dm(tmp_path, spacing=(4.0, 4.0, 4.0), crop_margin=0.0, val_fraction=0.34)
    d.setup()
    assert d.num_volumes == {"train": 2, "val": 1}
    x = d.val_set[0]["x"]
    # 24 voxels at 2 mm are 48 mm: about 12 voxels at 4 mm, centred in 16 with "no signal" around
    head = ((x[0] + 1) / 2 > 0.1).nonzero()
    extent = head.max(0).values - head.min(0).values + 1
    assert (extent <= 13).all() and (extent >= 8).all()
    assert x[0, 0].max() == -1 and x.max() == 1


def test_orientation_is_ras_whatever_the_file_axes(tmp_path):
    vol = phantom((16, 16, 16), seed=3)
    vol[10:14, 2:5, 6:9] = vol.max() * 1.5  # an asymmetric bright marker
    write_nifti(tmp_path / "ras" / "a.nii", vol, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    # the same head stored left-right and anterior-posterior reversed, with an affine that says so
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    lps[:2, 3] = 30.0
    write_nifti(tmp_path / "lps" / "a.nii", vol[::-1, ::-1].copy(), affine=lps)
    out = []
    for sub in ("ras", "lps"):
        d = dm(tmp_path / sub, spacing=(2.0, 2.0, 2.0), random_flip=False, crop_margin=0.0, val_fraction=0.0)
        d.setup()
        out.append(d.train_set[0]["x"])
    torch.testing.assert_close(out[0], out[1])


def test_dicom_series_matches_nifti_of_same_volume(tmp_path):
    vol = phantom((16, 16, 12), seed=4)
    write_dicom_series(tmp_path / "dicom" / "series1", vol, spacing=(2.0, 2.0, 3.0))
    write_nifti(tmp_path / "nifti" / "v.nii.gz", vol, spacing=(2.0, 2.0, 3.0))
    out = []
    for sub in ("dicom", "nifti"):
        d = dm(
            tmp_path / sub,
            shape=(16, 16, 16),
            spacing=(2.0, 2.0, 3.0),
            random_flip=False,
            crop_margin=0.0,
            val_fraction=0.0,
        )
        d.setup()
        out.append(d.train_set[0]["x"])
    assert out[0].shape == (1, 16, 16, 16)
    # DICOM stores 16-bit integers: equal up to quantisation
    assert (out[0] - out[1]).abs().max() < 0.02


def test_datalist_json_with_validation_list(tmp_path):
    for i in range(3):
        write_nifti(tmp_path / "imagesTr" / f"case{i}.nii.gz", phantom((16, 16, 16), seed=i))
    write_nifti(tmp_path / "imagesVa" / "val0.nii.gz", phantom((16, 16, 16), seed=9))
    datalist = {
        "training": [{"image": f"./imagesTr/case{i}.nii.gz", "label": "unused"} for i in range(3)],
        "validation": [{"image": "./imagesVa/val0.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))
    d = build_datamodule(
        {
            "name": "mri",
            "path": str(tmp_path / "dataset.json"),
            "mode": "slice",
            "shape": [16, 16],
            "spacing": [2.0, 2.0, 2.0],
            "num_workers": 0,
            "cache_workers": 1,
            "builtin_depth": None,
        }
    )
    d.setup()
    assert d.num_volumes == {"train": 3, "val": 1}
    assert d.train_set[0]["x"].shape == (1, 16, 16)
    with pytest.raises(DataError, match="no 'testing' list"):
        dm(tmp_path / "dataset.json", datalist_key="testing").setup()


def test_complex_nifti_gives_real_and_imaginary_channels(tmp_path):
    write_nifti(tmp_path / "c.nii.gz", phantom((16, 16, 16), seed=5, complex_valued=True))
    d2 = dm(tmp_path, channels=2, val_fraction=0.0)
    d2.setup()
    assert d2.train_set[0]["x"].shape == (2, 16, 16, 16)
    d1 = dm(tmp_path, channels=1, val_fraction=0.0)  # magnitude by default
    d1.setup()
    assert d1.train_set[0]["x"].shape == (1, 16, 16, 16)


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_volumes_are_skipped_counted_and_named(tmp_path, caplog):
    good = [write_nifti(tmp_path / f"good{i}.nii.gz", phantom((16, 16, 16), seed=i)) for i in range(6)]
    nan = phantom((16, 16, 16), seed=7)
    nan[3, 4, 5] = np.nan
    write_nifti(tmp_path / "has_nan.nii.gz", nan)
    write_nifti(tmp_path / "all_zero.nii.gz", np.zeros((16, 16, 16), np.float32))
    write_nifti(tmp_path / "constant.nii.gz", np.full((16, 16, 16), 7.0, np.float32))
    write_nifti(tmp_path / "flat2d.nii.gz", phantom((16, 16), seed=1))
    write_nifti(tmp_path / "four_d.nii.gz", np.stack([phantom((16, 16, 16), seed=s) for s in (1, 2)], -1))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    write_dicom_series(tmp_path / "dicom_ok", phantom((16, 16, 8), seed=3))
    bad_dicom = tmp_path / "dicom_bad"
    bad_dicom.mkdir()
    for k in range(3):
        (bad_dicom / f"IM{k}.dcm").write_bytes(b"\x00" * 200)
    mixed = phantom((16, 16, 4), seed=4)
    write_dicom_series(tmp_path / "dicom_mixed", mixed, pixel_spacings=[[2, 2], [2, 2], [1.5, 1.5], [2, 2]])

    d = dm(tmp_path, max_bad_fraction=0.6, val_fraction=0.0)
    with caplog.at_level("WARNING"):
        d.setup()
    assert sum(d.num_volumes.values()) == len(good) + 1  # the good NIfTI files and the good DICOM series
    text = caplog.text
    for name, why in [
        ("has_nan", "NaN"),
        ("all_zero", "empty"),
        ("constant", "constant"),
        ("flat2d", "2D"),
        ("four_d", "select_channel"),
        ("broken", "could not be read"),
        ("dicom_bad", "not readable"),
        ("dicom_mixed", "mixes pixel spacings"),
    ]:
        assert any(name in r.getMessage() and why in r.getMessage() for r in caplog.records), (name, text)
    assert "Skipped 8 of 15 volumes" in text

    with pytest.raises(DataError, match="could not be read.*max_bad_fraction"):
        dm(tmp_path, max_bad_fraction=0.1).setup()


def test_four_d_with_select_channel_and_mixed_native_spacing(tmp_path, caplog):
    write_nifti(tmp_path / "a.nii.gz", np.stack([phantom((16, 16, 16), seed=s) for s in (1, 2)], -1))
    d = dm(tmp_path, select_channel=1, val_fraction=0.0)
    d.setup()
    assert d.num_volumes["train"] == 1
    for i in range(4):
        write_nifti(tmp_path / "b" / f"v{i}.nii.gz", phantom((16, 16, 16), seed=i), spacing=(2.0, 2.0, 2.0))
    write_nifti(tmp_path / "b" / "odd.nii.gz", phantom((16, 16, 16), seed=5), spacing=(1.0, 1.0, 2.0))
    d = dm(tmp_path / "b", spacing=None, max_bad_fraction=0.5, val_fraction=0.0)
    with caplog.at_level("WARNING"):
        d.setup()
    assert sum(d.num_volumes.values()) == 4
    assert "odd.nii.gz" in caplog.text and "set datamodule.spacing" in caplog.text


def test_missing_or_empty_path_is_one_sentence(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        dm(tmp_path / "nope").setup()
    with pytest.raises(DataError, match="No NIfTI files"):
        dm(tmp_path).setup()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="could not be read as JSON"):
        dm(tmp_path / "bad.json").setup()


def test_headers_never_reach_items(tmp_path):
    write_dicom_series(tmp_path / "s", phantom((16, 16, 8), seed=1))
    d = dm(tmp_path, val_fraction=0.0)
    d.setup()
    item = d.train_set[0]
    assert set(item) == {"x"} and type(item["x"]) is torch.Tensor  # no MetaTensor, no header dictionary


def test_disk_cache_is_reused_and_keyed_on_settings(tmp_path):
    for i in range(3):
        write_nifti(tmp_path / "data" / f"v{i}.nii.gz", phantom((16, 16, 16), seed=i))
    cache = tmp_path / "cache"
    first = dm(tmp_path / "data", cache_dir=str(cache), val_fraction=0.0, random_flip=False)
    first.setup()
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 3
    again = dm(tmp_path / "data", cache_dir=str(cache), val_fraction=0.0, random_flip=False)
    again.setup()
    assert sorted(cache.glob("*.pt")) == files  # decoded once, read back
    torch.testing.assert_close(again.val_set[0]["x"], first.val_set[0]["x"])
    dm(tmp_path / "data", cache_dir=str(cache), spacing=(2.0, 2.0, 2.0), val_fraction=0.0).setup()
    assert len(list(cache.glob("*.pt"))) == 6  # other settings: decoded again, not mixed up
