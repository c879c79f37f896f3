"""The clinician section's example inputs: a fastMRI-style single-coil .h5 and a NIfTI, both readable by
src.reconstruct, with k-space that is the phantom's, undersampled by the stated mask."""

import h5py
import numpy as np
import torch

from scripts.make_example_inputs import main, make_example_inputs
from src.domains.mri.fastmri import read_kspace_h5, read_reference, read_slices
from src.domains.mri.fft import ifft2c
from src.tools.quality import all_metrics
from src.tools.reconstruction.measurement import as_measurement, zero_filled


def test_example_h5_and_nifti_hold_one_phantom(tmp_path):
    paths = make_example_inputs(tmp_path, size=32, slices=4, acceleration=4, center_fraction=0.125, seed=1)
    scan = read_kspace_h5(paths["h5"])
    assert scan.kspace.shape == (4, 32, 32) and np.iscomplexobj(scan.kspace)
    mask = scan.mask.astype(bool)
    assert mask.shape == (32,) and 4 <= mask.sum() < 32 // 2  # about a quarter of the columns, centre included
    assert mask[14:18].all()
    assert np.all(scan.kspace[..., ~mask] == 0) and np.abs(scan.kspace[..., mask]).max() > 0
    assert np.allclose(np.diag(scan.affine)[:3], [0, 0, 3.0]) and scan.affine[0, 1] == 3.0  # 3 mm voxels
    reference = read_reference(paths["h5"])
    volume, _, _ = read_slices(paths["nifti"])
    assert np.allclose(volume, reference, atol=1e-6)  # the NIfTI is the same fully sampled magnitude
    # the measured columns are exactly those of the reference's (complex) image: zero-filling beats nothing
    meas = as_measurement(torch.from_numpy(scan.kspace), torch.from_numpy(scan.mask))
    zf = zero_filled(meas)
    scores = all_metrics(reference, zf)
    assert 15 < scores["psnr"] < 60 and scores["ssim"] > 0.3
    with h5py.File(paths["h5"]) as f:
        assert f["reconstruction_esc"].shape == (4, 32, 32)
        full_image = np.abs(ifft2c(torch.from_numpy(f["kspace"][()])).numpy())
    assert np.abs(full_image - reference).max() > 1e-3  # undersampled: not the reference itself


def test_cli_writes_both_files(tmp_path, capsys):
    main(["--out", str(tmp_path / "ex"), "--size", "16", "--slices", "4"])
    assert (tmp_path / "ex" / "phantom_kspace.h5").is_file() and (tmp_path / "ex" / "phantom.nii.gz").is_file()
    assert "phantom_kspace.h5" in capsys.readouterr().out


def test_too_few_slices_is_one_line(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="--slices must be a whole number of at least 4"):
        main(["--out", str(tmp_path), "--slices", "2"])
