"""Anomaly detection: the probability-flow likelihood against exact Gaussian log-densities, the partial-noising
map with an analytic denoiser, the CLI end to end on volumes written here, and one sentence per bad input."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from src.anomaly import main
from src.diffusion.objectives import DDPMObjective
from src.domains.mri.phantoms import head_phantom
from src.tools.anomaly import anomaly_map, bits_per_dim, log_likelihood, partial_sigmas
from tests.helpers.restore import make_checkpoint

SIGMA_MIN, SIGMA_MAX = 0.01, 80.0


def gaussian_log_density(x, mean, cov):
    d = x - mean
    sol = torch.linalg.solve(cov, d.T).T
    return -0.5 * (d * sol).sum(1) - 0.5 * torch.logdet(cov) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def gaussian_denoiser(mean, cov):
    """The exact denoiser E[x0 | x0 + sigma eps = x] of N(mean, cov)."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)

    def d(x, sigma):
        gain = torch.stack([cov @ torch.linalg.inv(cov + float(s) ** 2 * eye) for s in sigma])
        return mean + torch.einsum("bij,bj->bi", gain, x - mean)

    return d


def test_likelihood_matches_exact_gaussian_log_density_diagonal():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.3, -0.2, 0.0, 0.5, 0.1, -0.4], dtype=torch.float64)
    std = torch.tensor([0.5, 0.2, 1.0, 0.05, 0.3, 0.7], dtype=torch.float64)
    cov = torch.diag(std**2)
    x = (mean + std * torch.randn(5, 6, generator=g, dtype=torch.float64)).float()
    got = log_likelihood(gaussian_denoiser(mean.float(), cov.float()), x, SIGMA_MIN, SIGMA_MAX, steps=64, generator=g)
    exact = gaussian_log_density(x.double(), mean, cov + SIGMA_MIN**2 * torch.eye(6, dtype=torch.float64))
    assert torch.allclose(got.double(), exact, atol=0.05), (got, exact)
    assert torch.allclose(bits_per_dim(got, 6), -got / (6 * math.log(2)))


def test_likelihood_with_hutchinson_probes_matches_a_correlated_gaussian():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([0.6, 0.2, 0.05, 0.3], dtype=torch.float64) ** 2) @ q.T
    mean = torch.zeros(4, dtype=torch.float64)
    x = (torch.randn(3, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T).float()
    got = log_likelihood(gaussian_denoiser(mean.float(), cov.float()), x, SIGMA_MIN, SIGMA_MAX, steps=48, probes=64,
                         generator=g)
    exact = gaussian_log_density(x.double(), mean, cov + SIGMA_MIN**2 * torch.eye(4, dtype=torch.float64))
    assert torch.allclose(got.double(), exact, atol=0.25), (got, exact)
    # one probe is still unbiased but noisy: the Jacobian is not diagonal, so probes matter here
    single = log_likelihood(gaussian_denoiser(mean.float(), cov.float()), x, SIGMA_MIN, SIGMA_MAX, steps=48,
                            probes=1, generator=g)
    assert not torch.allclose(single, got, atol=1e-3)


def test_partial_sigmas_picks_the_tail_of_the_schedule():
    sigmas = DDPMObjective().sampling_sigmas(20)
    tail = partial_sigmas(sigmas, 0.25)
    assert len(tail) - 1 == 5 and float(tail[-1]) == 0.0
    assert len(partial_sigmas(sigmas, 1.0)) == len(sigmas)
    with pytest.raises(ValueError, match="--noise-level"):
        partial_sigmas(sigmas, 0.0)


def test_anomaly_map_is_large_where_the_data_leave_the_normal_set():
    """Normal data are N(0, 0.05^2) per voxel; a bright blob is an anomaly the exact denoiser removes."""
    x = torch.zeros(1, 1, 16, 16)
    blob = torch.zeros(16, 16, dtype=torch.bool)
    blob[5:9, 6:11] = True
    x[0, 0][blob] = 0.8
    x += 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    s2 = 0.05**2

    def den(v, sigma):
        return v * (s2 / (s2 + sigma.reshape(-1, 1, 1, 1) ** 2))

    amap = anomaly_map(den, x, partial_sigmas(DDPMObjective().sampling_sigmas(20), 0.5), draws=3,
                       generator=torch.Generator().manual_seed(3))
    assert amap.shape == (1, 16, 16)
    assert float(amap[0][blob].min()) > float(amap[0][~blob].max())


# ---- the command line, end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"slice": make_checkpoint(d / "slice.ckpt", "mri", [1, 16, 16]),
            "volume": make_checkpoint(d / "volume.ckpt", "mri", [1, 16, 16, 16]),
            "image": make_checkpoint(d / "image.ckpt", "image", [1, 16, 16]),
            "audio": make_checkpoint(d / "audio.ckpt", "audio", [1, 256]),
            "other": make_checkpoint(d / "other.ckpt", "mri", [1, 16, 16], intensity_scaling="min_max")}


def write_volume(path, shape=(16, 16, 6), seed=0):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-20.0, 5.0, 7.0]
    nib.save(nib.Nifti1Image(head_phantom(shape, seed=seed), affine), path)
    return path, affine


def cli(ckpt, inp, out, *extra):
    return main(["--checkpoint", str(ckpt), "--input", str(inp), "--output", str(out), "--steps", "4", "--draws", "2",
                 *map(str, extra)])


def test_cli_slice_model_writes_map_in_the_scans_grid_and_scores(ckpts, tmp_path):
    scan, affine = write_volume(tmp_path / "scan.nii.gz")
    summary = cli(ckpts["slice"], scan, tmp_path / "map.nii.gz", "--noise-level", "0.5", "--likelihood",
                  "--ode-steps", "2")
    img = nib.load(tmp_path / "map.nii.gz")
    assert img.shape == (16, 16, 6) and np.allclose(img.affine, affine)
    amap = np.asarray(img.dataobj)
    assert np.isfinite(amap).all() and (amap >= 0).all() and amap.max() > 0
    scores = json.loads((tmp_path / "map.scores.json").read_text())
    assert scores == summary
    assert {"score", "score_p99", "bits_per_dim"} <= set(scores) and math.isfinite(scores["bits_per_dim"])
    assert scores["steps_run"] == 2 and scores["score"] > 0


def test_cli_volume_model_tiles_a_larger_volume(ckpts, tmp_path):
    scan, _ = write_volume(tmp_path / "big.nii.gz", shape=(20, 16, 18))
    cli(ckpts["volume"], scan, tmp_path / "map.nii.gz")
    assert nib.load(tmp_path / "map.nii.gz").shape == (20, 16, 18)


def test_cli_image_model_writes_a_png_map(ckpts, tmp_path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((20, 24)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    cli(ckpts["image"], tmp_path / "p.png", tmp_path / "map.png")
    assert Image.open(tmp_path / "map.png").size == (24, 20)


def refused(capsys, *args):
    with pytest.raises(SystemExit) as e:
        cli(*args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    return err


def test_bad_inputs_get_one_sentence(ckpts, tmp_path, capsys):
    scan, _ = write_volume(tmp_path / "scan.nii.gz")
    assert "not an audio file" in refused(capsys, ckpts["audio"], scan, tmp_path / "m.npy")
    assert "written as .nii.gz or .npy" in refused(capsys, ckpts["slice"], scan, tmp_path / "m.png")
    assert "--noise-level" in refused(capsys, ckpts["slice"], scan, tmp_path / "m.nii.gz", "--noise-level", "1.5")
    assert "min_max" in refused(capsys, ckpts["other"], scan, tmp_path / "m.nii.gz")
    nib.save(nib.Nifti1Image(head_phantom((16, 16), seed=0), np.eye(4)), tmp_path / "flat.nii.gz")
    assert "3D volume model" in refused(capsys, ckpts["volume"], tmp_path / "flat.nii.gz", tmp_path / "m.nii.gz")
    assert "same file" in refused(capsys, ckpts["slice"], scan, scan)
    assert "does not exist" in refused(capsys, ckpts["slice"], tmp_path / "none.nii.gz", tmp_path / "m.nii.gz")
