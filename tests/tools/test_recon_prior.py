"""experiment=recon_prior end to end: fastMRI-style HDF5 training files -> prior -> src.reconstruct on a test
file with no override; the geometry contract reorients a transposed input and refuses a resampled one."""

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from src.domains import build_datamodule
from src.domains.mri.fft import fft2c
from src.domains.mri.geometry import Geometry, GeometryError, Reorientation, match
from src.errors import DataError
from src.reconstruct import Reconstructor, main
from src.tools.reconstruction.masks import undersampling_mask
from tests.helpers.dist import run_module
from tests.helpers.mri import phantom, write_dicom_series

H, W, PIXEL = 32, 24, (4.0, 5.0)  # a non-square grid with non-square pixels: a transpose is visible


def ismrmrd_header(h, w, pixel) -> str:
    def space(tag):
        return (f"<{tag}><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize><fieldOfView_mm>"
                f"<x>{h * pixel[0]}</x><y>{w * pixel[1]}</y><z>3</z></fieldOfView_mm></{tag}>")

    return (f"<ismrmrdHeader xmlns=\"http://www.ismrm.org/ISMRMRD\"><encoding>{space('encodedSpace')}"
            f"{space('reconSpace')}</encoding></ismrmrdHeader>")


def slices(seed: int, count: int = 6) -> np.ndarray:
    """(S, H, W) head-phantom slices with a smooth phase, as complex images."""
    vol = phantom((H, W, count), seed=seed).transpose(2, 0, 1).astype(np.float32)
    yy, xx = np.mgrid[:H, :W] / max(H, W)
    return vol * np.exp(1j * (0.6 * yy - 0.4 * xx + 0.2)).astype(np.complex64)


def write_h5(path: Path, image: np.ndarray, pixel=PIXEL, mask: np.ndarray | None = None) -> Path:
    kspace = fft2c(torch.from_numpy(image.astype(np.complex64))).numpy()
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace * (mask if mask is not None else 1)
        if mask is not None:
            f["mask"] = mask.astype(np.float32)
        f["reconstruction_esc"] = np.abs(image).astype(np.float32)
        f["ismrmrd_header"] = ismrmrd_header(image.shape[-2], image.shape[-1], pixel)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon_prior")
    train = root / "singlecoil_train"
    train.mkdir()
    for i in range(3):
        write_h5(train / f"file{i}.h5", slices(seed=i))
    out = root / "run"
    run_module("src.train", "domain=mri", "experiment=recon_prior", f"datamodule.path={train}", "logger=none",
               f"paths.output_dir={out}", "trainer.max_steps=3", "trainer.val_check_interval=3",
               "trainer.enable_progress_bar=false", "datamodule.batch_size=4", "sampling.every_n_steps=3",
               "sampling.steps=2", "checkpoint.every_n_steps=3", OMP_NUM_THREADS="1")
    return root, out / "checkpoints" / "last.ckpt"


def test_datamodule_reads_fastmri_files_at_their_grid(tmp_path):
    for i in range(2):
        write_h5(tmp_path / f"f{i}.h5", slices(seed=i))
    write_h5(tmp_path / "resampled.h5", slices(seed=5), pixel=(2.0, 2.5))  # another pixel size: skipped
    dm = build_datamodule({"name": "mri", "grid": "acquisition", "path": str(tmp_path), "val_fraction": 0.5,
                           "max_bad_fraction": 0.5, "batch_size": 2, "num_workers": 0})
    assert dm.data_shape == [1, H, W]
    dm.setup("fit")
    assert dm.geometry.matrix == (H, W) and dm.geometry.pixel_mm == pytest.approx(PIXEL)
    assert dm.geometry.axes == ("P", "R")  # fastMRI's display convention (src/mri/io.py)
    x = dm.train_set[0]["x"]
    assert x.shape == (1, H, W) and x.min() >= -1 and x.max() <= 1
    # the slice is |ifft2c(kspace)| scaled, not resampled: its foreground matches the phantom's
    names = {v.path.name for v in dm._volumes}
    assert names == {"f0.h5", "f1.h5"}


def test_multicoil_and_image_only_files_and_nifti(tmp_path):
    """Multi-coil k-space gives the root-sum-of-squares; a file with only reconstruction_rss gives that image
    on its reconSpace grid; a NIfTI volume keeps its native grid (cropped/padded to the matrix)."""
    img = slices(seed=2, count=4)
    coils = np.stack([img * 0.8, img * 0.6j], axis=1)  # two coils, sum of |S|^2 = 1
    with h5py.File(tmp_path / "multi.h5", "w") as f:
        f["kspace"] = fft2c(torch.from_numpy(coils.astype(np.complex64))).numpy()
        f["ismrmrd_header"] = ismrmrd_header(H, W, PIXEL)
    with h5py.File(tmp_path / "rss_only.h5", "w") as f:
        f["reconstruction_rss"] = np.abs(img).astype(np.float32)
        f["ismrmrd_header"] = ismrmrd_header(H, W, PIXEL)
    dm = build_datamodule({"name": "mri", "grid": "acquisition", "path": str(tmp_path), "val_fraction": 0.0,
                           "batch_size": 2, "num_workers": 0, "min_slice_foreground": 0.0})
    dm.setup("fit")
    assert {v.kind for v in dm._volumes} == {"kspace", "image"}
    multi = next(v for v in dm._volumes if v.kind == "kspace")
    rss_only = next(v for v in dm._volumes if v.kind == "image")
    # (file, slice, mirrored, warp); one file is held out for validation
    key = (dm._volumes.index(multi), 0, False, None)
    ds = next(d for d in (dm.train_set, dm.val_set) if key in d.index)
    expected = (2 * np.abs(img[0]) / multi.scale - 1).clip(-1, 1)
    np.testing.assert_allclose(ds[ds.index.index(key)]["x"][0].numpy(), expected, atol=1e-4)
    assert rss_only.scale == pytest.approx(multi.scale, rel=0.15)  # same image: nearly the same reference

    nifti = tmp_path / "nifti"
    vol = np.abs(phantom((30, 26, 4), seed=1)).astype(np.float32)
    nifti.mkdir()
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1])), nifti / "scan.nii.gz")
    dm = build_datamodule({"name": "mri", "grid": "acquisition", "path": str(nifti), "shape": [32, 24], "batch_size": 2,
                           "num_workers": 0})
    assert dm.data_shape == [1, 32, 24]
    dm.setup("fit")
    assert dm.geometry.pixel_mm == pytest.approx((1.5, 1.5)) and dm.geometry.axes == ("R", "A")
    x = dm.train_set[0]["x"][0]
    assert torch.all(x[0] == -1) and torch.all(x[-1] == -1)  # rows zero-padded 30 -> 32 (signal 0 -> -1)

    # a DICOM series: its own grid from the series geometry (RAS array axes x, y in plane)
    write_dicom_series(tmp_path / "dicom" / "series", np.abs(phantom((32, 24, 6), seed=1)), spacing=(2.0, 2.5, 3.0))
    dm = build_datamodule({"name": "mri", "grid": "acquisition", "path": str(tmp_path / "dicom"), "batch_size": 2,
                           "num_workers": 0})
    assert dm.data_shape == [1, 32, 24]
    assert dm.geometry.pixel_mm == pytest.approx((2.0, 2.5)) and dm.geometry.axes == ("R", "A")


def test_geometry_match_reorients_or_refuses():
    model = Geometry((32, 24), (4.0, 5.0), ("P", "R"))
    assert match(model, model).identity
    flipped_t = match(model, Geometry((24, 32), (5.0, 4.0), ("L", "P")))
    assert flipped_t == Reorientation(transpose=True, flip_rows=False, flip_cols=True)
    x = torch.arange(24 * 32.0).reshape(24, 32)
    assert torch.equal(flipped_t.to_input(flipped_t.to_model(x)), x)
    with pytest.raises(GeometryError, match=r"32x24 slices of 4 x 5 mm.*64x48 slices of 2 x 2.5 mm"):
        match(model, Geometry((64, 48), (2.0, 2.5), ("P", "R")))
    with pytest.raises(GeometryError):  # an oblique axis (S) cannot be reached by a transpose or flip
        match(model, Geometry((32, 24), (4.0, 5.0), ("S", "R")))
    # reconstruction accepts another matrix on the same pixel size and axes (a wider or narrower field of
    # view), never another pixel size
    wider = Geometry((32, 28), (4.0, 5.0), ("P", "R"))
    with pytest.raises(GeometryError):
        match(model, wider)
    assert match(model, wider, same_matrix=False).identity
    assert match(model, Geometry((28, 40), (5.0, 4.0), ("R", "A")), same_matrix=False) == Reorientation(
        transpose=True, flip_rows=True, flip_cols=False)
    with pytest.raises(GeometryError, match="another pixel size is not"):
        match(model, Geometry((64, 48), (2.0, 2.5), ("P", "R")), same_matrix=False)


@pytest.mark.slow
def test_prior_from_hdf5_reconstructs_hdf5_and_checks_geometry(trained, tmp_path, capsys):
    root, ckpt = trained
    geometry = torch.load(ckpt, weights_only=True)["geometry"]
    assert geometry["matrix"] == [H, W] and geometry["axes"] == ["P", "R"]
    assert geometry["pixel_mm"] == pytest.approx(list(PIXEL))
    assert geometry["intensity"]["reference"] == "calibration"

    truth = slices(seed=7, count=4)
    mask = undersampling_mask("equispaced", W, 4, 0.125, 0).numpy()
    test = write_h5(tmp_path / "singlecoil_val.h5", truth, mask=mask)
    out = tmp_path / "recon.nii.gz"
    summary = main(["--checkpoint", str(ckpt), "--input", str(test), "--output", str(out), "--steps", "3",
                    "--reference", str(test), "--quiet"])
    printed = capsys.readouterr().out
    assert summary["geometry"]["reorientation"] == "as is"
    # the preset's sampler defaults travel in the checkpoint and reach the CLI (docs/studies/reconstruction.md
    # tuned them)
    assert (summary["num_samples"], summary["eta"], summary["refine_tv"]) == (4, 1.0, 0.15)
    assert summary["resample"] == 4 and summary["resample_sigmas"] == [0.05, 5.0]
    # per volume: data-consistency residual and distance from zero-filled, in the JSON and on the console
    check = summary["checks"]
    assert check["data_residual"] < 1e-3 and check["moved_from_zero_filled"] > 0
    assert "data-consistency residual" in printed and "from zero-filled" in printed
    saved = json.loads((tmp_path / "recon.metrics.json").read_text())
    assert saved["checks"] == pytest.approx(check)
    assert nib.load(out).shape == (H, W, 4)

    # the same scan stored transposed (rows and columns swapped, axes relabelled): reoriented, same result
    t = tmp_path / "transposed.nii.gz"
    mag = np.abs(truth).transpose(2, 1, 0)  # (W, H, S): rows run along R, columns along P
    affine = np.array([[PIXEL[1], 0, 0, 0], [0, -PIXEL[0], 0, 0], [0, 0, 3, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(mag.astype(np.float32), affine), t)
    summary = main(["--checkpoint", str(ckpt), "--input", str(t), "--simulate", "--output",
                    str(tmp_path / "t.nii.gz"), "--steps", "2", "--quiet"])
    assert summary["geometry"]["reorientation"] == "transposed"
    assert "reoriented" in capsys.readouterr().err

    # resampled to 2 mm pixels: refused with a sentence naming both grids
    r = tmp_path / "resampled.nii.gz"
    nib.save(nib.Nifti1Image(phantom((64, 48, 4), seed=4), np.diag([2.0, 2.5, 3, 1])), r)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--input", str(r), "--simulate", "--output", str(tmp_path / "r.nii.gz")])
    err = capsys.readouterr().err
    assert "32x24 slices of 4 x 5 mm" in err and "64x48 slices of 2 x 2.5 mm" in err and "Traceback" not in err


@pytest.mark.slow
def test_kspace_of_another_matrix_on_the_same_pixels_is_reconstructed(trained, tmp_path, capsys):
    """fastMRI files of one protocol vary in width (368 or 372 columns): the prior runs on the input's matrix."""
    _, ckpt = trained
    wide = 28  # four more columns of the same 5 mm pixels than the training matrix (24)
    vol = phantom((H, wide, 4), seed=11).transpose(2, 0, 1).astype(np.float32)
    truth = vol.astype(np.complex64)
    mask = undersampling_mask("equispaced", wide, 4, 0.125, 0).numpy()
    test = write_h5(tmp_path / "wide.h5", truth, mask=mask)
    out = tmp_path / "wide.nii.gz"
    summary = main(["--checkpoint", str(ckpt), "--input", str(test), "--output", str(out), "--steps", "2",
                    "--quiet"])
    err = capsys.readouterr().err
    assert "differs from the training matrix" in err and f"{H}x{wide}" in err
    assert summary["geometry"]["matrix"].startswith(f"the input's matrix {H}x{wide}")
    assert summary["checks"]["data_residual"] < 1e-3
    assert nib.load(out).shape == (H, wide, 4)


@pytest.mark.slow
def test_auto_falls_back_when_the_prior_is_out_of_domain(trained, tmp_path, capsys):
    _, ckpt = trained
    r = tmp_path / "other_grid.nii.gz"
    vol = np.abs(phantom((64, 48, 4), seed=3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.5, 3, 1])), r)
    summary = main(["--checkpoint", str(ckpt), "--input", str(r), "--simulate", "--method", "auto",
                    "--output", str(tmp_path / "a.nii.gz"), "--quiet"])
    assert summary["method"] in ("cs", "zero-filled")
    err = capsys.readouterr().err
    assert "warning" in err and "64x48" in err


@pytest.mark.slow
def test_python_api_uses_the_contract(trained):
    _, ckpt = trained
    rec = Reconstructor.from_checkpoint(ckpt, device="cpu", steps=2)
    assert rec.geometry == Geometry.from_dict(torch.load(ckpt, weights_only=True)["geometry"])
    truth = slices(seed=9, count=4)
    mask = undersampling_mask("equispaced", W, 4, 0.125, 0).numpy()
    image = rec.reconstruct(fft2c(torch.from_numpy(truth)).numpy() * mask, mask)
    assert image.shape == (4, H, W) and np.isfinite(image).all()


def test_random_flip_adds_left_right_mirrored_copies(tmp_path):
    """datamodule.random_flip: every training slice also appears mirrored along the axis that runs L-R (the
    columns of fastMRI's display convention), as a fixed list, so the resumed data position needs no RNG."""
    from src.domains.mri.recon_prior import ReconSlices, Volume, left_right_dim

    assert left_right_dim(("P", "R")) == -1 and left_right_dim(("L", "A")) == -2
    assert left_right_dim(("A", "S")) is None and left_right_dim(("?", "?")) is None
    data = np.random.default_rng(0).random((3, H, W)).astype(np.float32)
    vol = Volume(tmp_path / "v.nii.gz", "nifti", None, Geometry((H, W), PIXEL, ("P", "R")), 3, data=data)
    plain = ReconSlices([vol], [(0, 0), (0, 2)], (H, W))
    both = ReconSlices([vol], [(0, 0), (0, 2)], (H, W), mirror_dim=-1)
    assert len(plain) == 2 and len(both) == 4
    for i in range(2):
        assert torch.equal(both[i]["x"], plain[i]["x"])
        assert torch.equal(both[i + 2]["x"], plain[i]["x"].flip(-1))
        assert not torch.equal(both[i + 2]["x"], plain[i]["x"])

    train = tmp_path / "train"
    train.mkdir()
    for i in range(3):
        write_h5(train / f"file{i}.h5", slices(seed=i))
    sizes = {}
    for flip in (False, True):
        dm = build_datamodule({"name": "mri", "grid": "acquisition", "path": str(train), "batch_size": 2,
                               "num_workers": 0, "random_flip": flip, "val_fraction": 0.34})
        dm.setup()
        sizes[flip] = len(dm.train_set)
        assert len(dm.val_set) > 0
    assert sizes[True] == 2 * sizes[False] > 0


def test_affine_copies_are_fixed_small_rotations_in_millimetres(tmp_path):
    """datamodule.affine_copies: K extra copies of every item, each rotated / zoomed by an amount drawn once
    (seeded), so two builds give the same set; the rotation is taken in mm, so on non-square pixels a
    90-degree turn maps the field of view as the anatomy turns, not as the pixel grid does."""
    from src.domains.mri.recon_prior import ReconSlices, Volume

    data = np.random.default_rng(0).random((3, H, W)).astype(np.float32)
    vol = Volume(tmp_path / "v.nii.gz", "nifti", None, Geometry((H, W), PIXEL, ("P", "R")), 3, data=data)
    index = [(0, 0), (0, 2)]
    plain = ReconSlices([vol], index, (H, W))
    aug = ReconSlices([vol], index, (H, W), mirror_dim=-1, affine_copies=2, degrees=10, scale=0.1,
                      pixel_mm=PIXEL, seed=3)
    again = ReconSlices([vol], index, (H, W), mirror_dim=-1, affine_copies=2, degrees=10, scale=0.1,
                        pixel_mm=PIXEL, seed=3)
    assert len(aug) == 3 * 4  # (2 slices + 2 mirrored) x (1 + 2 copies)
    for i in range(2):
        assert torch.equal(aug[i]["x"], plain[i]["x"])
    warps = [w for *_, w in aug.index[4:]]
    assert all(abs(d) <= 10 and abs(s) <= 0.1 for d, s in warps) and len(set(warps)) > 1
    for i in range(4, 12):
        assert torch.equal(aug[i]["x"], again[i]["x"])  # fixed, not redrawn
        assert not torch.equal(aug[i]["x"], aug[i % 4]["x"])
        assert aug[i]["x"].shape == plain[0]["x"].shape and float(aug[i]["x"].abs().max()) <= 1
    m = torch.from_numpy(data[0])
    assert float((aug.warp(m, 0.0, 0.0) - m).abs().max()) < 1e-5  # no rotation, no zoom: the slice itself
    square = ReconSlices([], [], (16, 16), pixel_mm=(2.0, 2.0))
    s = torch.rand(16, 16)
    assert float((square.warp(s, 90.0, 0.0) - torch.rot90(s, 1, (0, 1))).abs().max()) < 1e-5
    # 4 x 5 mm pixels: a point 10 mm along the rows from the centre lands 10 mm along the columns
    h, w = 20, 16
    dot = torch.zeros(h, w)
    dot[h // 2 - 3 : h // 2 - 2, w // 2] = 1.0  # row offset -2.5 px = -10 mm (row pixel 4 mm)
    turned = ReconSlices([], [], (h, w), pixel_mm=(4.0, 5.0)).warp(dot, 90.0, 0.0)
    r, c = np.unravel_index(int(turned.argmax()), (h, w))
    assert r in (h // 2 - 1, h // 2) and abs((c - (w - 1) / 2) * 5.0) == pytest.approx(10.0, abs=2.6)
    with pytest.raises(DataError, match="affine_copies"):
        build_datamodule({"name": "mri", "grid": "acquisition", "path": str(tmp_path), "affine_copies": -1})
