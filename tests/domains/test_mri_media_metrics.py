"""MRI media (NIfTI + pictures), metrics, intensity convention, and activation checkpointing in the U-Net."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from src.backbones.unet import build_unet
from src.domains.mri.phantoms import head_phantom
from src.domains.mri.transforms import from_unit_range, reference_intensity, to_unit_range
from src.media import build_media
from src.metrics import build_metrics


def scaled_phantoms(seeds, shape) -> torch.Tensor:
    out = []
    for s in seeds:
        v = torch.from_numpy(head_phantom(shape, s))[None]
        out.append(to_unit_range(v, reference_intensity(v, False, 99.5), False))
    return torch.stack(out)


# ---- media ----------------------------------------------------------------------------------------


def test_volume_nifti_has_configured_shape_and_spacing(tmp_path):
    media = build_media({"kind": "mri", "mode": "volume", "spacing": [2.0, 3.0, 4.0]})
    x = torch.rand(2, 1, 8, 16, 24) * 2 - 1
    paths = media.save(x, tmp_path, prefix="step0000010")
    assert [p.name for p in paths] == ["step0000010_00000.nii.gz", "step0000010_00001.nii.gz"]
    img = nib.load(paths[1])
    assert img.shape == (8, 16, 24)
    assert img.header.get_zooms() == (2.0, 3.0, 4.0)
    np.testing.assert_allclose(img.affine[:3, :3], np.diag([2.0, 3.0, 4.0]))
    np.testing.assert_allclose(img.get_fdata(), ((x[1, 0] + 1) / 2).numpy(), atol=1e-6)
    centre = img.affine @ np.array([3.5, 7.5, 11.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # centred on the origin


def test_slice_nifti_is_2d_and_complex_keeps_phase(tmp_path):
    media = build_media({"kind": "mri", "mode": "slice", "spacing": [1.0, 2.0, 5.0], "slice_axis": 1})
    x = torch.rand(1, 2, 16, 8) * 2 - 1
    img = nib.load(media.save(x, tmp_path)[0])
    assert img.shape == (16, 8)
    assert img.header.get_zooms()[:2] == (1.0, 5.0)  # the in-plane axes of slice_axis=1
    data = np.asanyarray(img.dataobj)
    assert np.iscomplexobj(data)
    np.testing.assert_allclose(data.real, x[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(data.imag, x[0, 1].numpy(), atol=1e-6)


def test_pictures_are_triplanar_rows_or_slice_grids():
    vol = build_media({"kind": "mri", "mode": "volume", "spacing": [1, 1, 1]})
    pic = vol.pictures(torch.rand(3, 1, 8, 12, 16) * 2 - 1)
    assert pic.dtype == np.uint8 and pic.shape[2] == 3
    assert pic.shape[1] >= 12 + 8 + 8  # sagittal (A-P x S-I), coronal and axial side by side
    assert pic.shape[0] >= 3 * 16  # one row per volume
    sl = build_media({"kind": "mri", "mode": "slice", "spacing": [1, 1, 1]})
    assert sl.pictures(torch.zeros(4, 1, 16, 16)).shape[:2] == (2 * 18 + 2, 2 * 18 + 2)


# ---- intensity convention -------------------------------------------------------------------------


def test_unit_range_round_trip_and_anchoring():
    z = torch.from_numpy(head_phantom((32, 32), 0, complex_valued=True))
    ri = torch.stack([z.real, z.imag])
    s = reference_intensity(ri, True, 99.5)
    x = to_unit_range(ri, s, True)
    assert torch.sqrt((x**2).sum(0)).max() <= 1 + 1e-6
    below = torch.sqrt((ri**2).sum(0)) < s
    torch.testing.assert_close(from_unit_range(x, s)[:, below], ri[:, below])
    mag = torch.sqrt((ri**2).sum(0, keepdim=True))
    xm = to_unit_range(mag, s, False)
    assert to_unit_range(torch.zeros(1, 4, 4), s, False).eq(-1).all()  # zero signal is -1
    torch.testing.assert_close(from_unit_range(xm, s)[:, below], mag[:, below])


# ---- metrics --------------------------------------------------------------------------------------


def test_metrics_see_collapse_and_wrong_statistics():
    metric = build_metrics({"kind": "mri", "num_samples": 8})
    real = scaled_phantoms(range(8), (32, 32))
    other = scaled_phantoms(range(100, 108), (32, 32))
    fair = metric(other, real)
    collapsed = metric(real[:1].repeat(8, 1, 1, 1), real)
    noise = metric(torch.rand(8, 1, 32, 32) * 2 - 1, real)
    assert set(fair) == {"msssim_diversity", "msssim_diversity_real", "frechet_stats"}
    assert collapsed["msssim_diversity"] == pytest.approx(1.0, abs=1e-4)
    assert fair["msssim_diversity"] < 0.95 and fair["msssim_diversity_real"] < 0.95
    assert noise["frechet_stats"] > 20 * max(fair["frechet_stats"], 0.5)
    assert math.isnan(metric(real[:1], real)["msssim_diversity"])  # one item: no pair


def test_metrics_work_on_volumes():
    metric = build_metrics({"kind": "mri"})
    real = scaled_phantoms(range(4), (16, 16, 16))
    out = metric(scaled_phantoms(range(10, 14), (16, 16, 16)), real)
    assert all(math.isfinite(v) for v in out.values())
    assert metric(real, real)["frechet_stats"] == pytest.approx(0.0, abs=1e-9)


# ---- activation checkpointing --------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_activation_checkpointing_changes_nothing_but_memory(dims):
    torch.manual_seed(0)
    plain = build_unet(dims, 1, preset="tiny")
    ckpt = build_unet(dims, 1, preset="tiny", activation_checkpointing=True)
    assert list(plain.state_dict()) == list(ckpt.state_dict())  # checkpoints load either way
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 1, *([16] * dims)), torch.rand(2)
    ya, yb = plain(x, t), ckpt(x, t)
    torch.testing.assert_close(ya, yb)
    ya.square().mean().backward()
    yb.square().mean().backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert type(ckpt.net.middle_block).__name__ == "CheckpointWrapper"
