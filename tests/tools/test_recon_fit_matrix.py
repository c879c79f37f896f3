"""experiment=recon_prior on files whose matrix is not a multiple of 8: padded up to the next multiple (or cropped
down with datamodule.fit_matrix=crop) by itself, said in one log line, and recorded in the checkpoints' geometry."""

import logging

import nibabel as nib
import numpy as np
import pytest

from src.domains import build_datamodule
from src.domains.mri.geometry import Geometry
from src.errors import ConfigError
from tests.helpers.mri import phantom


def _nifti_folder(tmp_path, shape=(30, 27, 4)):
    folder = tmp_path / "nifti"
    folder.mkdir()
    for i in range(2):
        vol = np.abs(phantom(shape, seed=i)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1])), folder / f"scan{i}.nii.gz")
    return folder


def _dm(folder, **kw):
    return build_datamodule({"name": "mri", "grid": "acquisition", "path": str(folder), "batch_size": 2,
                             "num_workers": 0, "val_fraction": 0.5, **kw})


def test_a_matrix_that_is_not_a_multiple_of_8_is_padded_and_recorded(tmp_path, caplog):
    folder = _nifti_folder(tmp_path)
    with caplog.at_level(logging.INFO):
        dm = _dm(folder)
        assert dm.data_shape == [1, 32, 32]
    assert "The files' matrix is 30x27, not a multiple of 8: zero-padded to 32x32" in caplog.text
    assert dm.geometry.fitted_from == (30, 27)
    recorded = dm.geometry.to_dict()
    assert recorded["matrix"] == [32, 32] and recorded["fitted_from"] == [30, 27]
    assert Geometry.from_dict(recorded) == dm.geometry and Geometry.from_dict(recorded).fitted_from == (30, 27)
    dm.setup("fit")
    assert dm.train_set[0]["x"].shape == (1, 32, 32)


def test_crop_when_asked(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        dm = _dm(_nifti_folder(tmp_path), fit_matrix="crop")
        assert dm.data_shape == [1, 24, 24]
    assert "centre-cropped to 24x24 (datamodule.fit_matrix=crop)" in caplog.text
    with pytest.raises(ConfigError, match="datamodule.fit_matrix"):
        _dm(tmp_path / "nifti", fit_matrix="stretch")
