"""Reconstruction engine, Python API and CLI: data consistency, outputs, metrics and every bad input."""

import hashlib
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from src.diffusion.objectives import DDPMObjective
from src.diffusion.samplers import sample_ddim
from src.domains.mri.fft import fft2c, ifft2c, rss
from src.errors import ConfigError
from src.inverse import Inpainting, projection_step, sample_posterior
from src.module import DiffusionModule
from src.reconstruct import Reconstructor, main
from src.tools.quality import all_metrics
from src.tools.reconstruction.masks import undersampling_mask
from src.tools.reconstruction.measurement import as_measurement

SIZE = 32
DIFFUSION = dict(family="ddpm", schedule="linear", num_timesteps=1000, prediction="eps", sampler="ddim",
                 steps=4)


def make_checkpoint(path: Path, data_shape, domain="mri", spatial_dims=2,
                    scaling="zero_anchored_percentile") -> Path:
    """A checkpoint dict laid out as src.train writes it (state_dict, hyper_parameters, run_config)."""
    torch.manual_seed(0)
    module = DiffusionModule(backbone=dict(name="unet", spatial_dims=spatial_dims, in_channels=data_shape[0],
                                           preset="tiny"), diffusion=DIFFUSION, data_shape=list(data_shape))
    mode = "slice" if spatial_dims == 2 else "volume"
    run_config = {"domain": {"name": domain},
                  "datamodule": {"mode": mode, "intensity_scaling": scaling, "intensity_percentile": 99.5,
                                 "spacing": [3.0, 3.0, 3.0], "slice_axis": 2}}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "run_config": run_config}, path)
    return path


def phantom(slices=2, size=SIZE):
    yy, xx = np.mgrid[:size, :size] - size / 2
    disk = ((yy**2 + xx**2) < (size * 0.35) ** 2).astype(np.float32)
    square = ((abs(yy - 3) < 4) & (abs(xx + 2) < 3)).astype(np.float32)
    return np.stack([disk * (0.6 + 0.1 * s) + 0.3 * square for s in range(slices)])


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "mri.ckpt", [1, SIZE, SIZE])


@pytest.fixture
def singlecoil_h5(tmp_path):
    img = phantom()
    kspace = fft2c(torch.from_numpy(img).to(torch.complex64) * np.exp(0.3j)).numpy()
    mask = undersampling_mask("equispaced", SIZE, 4, 0.125, 0).numpy().astype(np.float32)
    path = tmp_path / "scan.h5"
    header = ("<ismrmrdHeader><encoding><encodedSpace><matrixSize><x>32</x><y>32</y><z>1</z></matrixSize>"
              "<fieldOfView_mm><x>160</x><y>128</y><z>3</z></fieldOfView_mm></encodedSpace></encoding>"
              "</ismrmrdHeader>")
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace * mask
        f["mask"] = mask
        f["ismrmrd_header"] = header
        f["reconstruction_rss"] = img
    return path, img


def base_args(ckpt, inp, out):
    return ["--checkpoint", str(ckpt), "--input", str(inp), "--output", str(out)]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---- the engine, with no network: a Gaussian prior and an inpainting operator -----------------------------
def test_posterior_sampler_keeps_measurements_and_prior_elsewhere():
    mu, std = torch.tensor([0.5, -0.3, 0.0, 0.2]), torch.tensor([0.2, 0.5, 0.8, 0.35])

    def denoiser(x, sigma):  # exact posterior mean of N(mu, diag(std^2)) data
        s2 = sigma.reshape(-1, 1) ** 2
        return mu + std**2 / (std**2 + s2) * (x - mu)


    sigmas = DDPMObjective("linear", 1000).sampling_sigmas(200)
    n = 8000
    mask = torch.tensor([True, False, True, False]).expand(n, 4)
    y = torch.where(mask, torch.tensor([1.0, 0.0, -1.0, 0.0]), torch.zeros(()))
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    out = sample_posterior(denoiser, x, sigmas, projection_step(Inpainting(mask), y), eta=1.0,
                           generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, [0, 2]], y[:, [0, 2]])
    # independent coordinates: the unmeasured ones follow the unconditional sampler step for step ...
    free = sample_ddim(denoiser, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[:, [1, 3]], free[:, [1, 3]], atol=1e-4, rtol=1e-4)
    # ... and so keep the prior's distribution (tolerance as for the unconditional 200-step sampler)
    assert torch.allclose(out[:, [1, 3]].mean(0), mu[[1, 3]], atol=0.03)
    assert torch.allclose(out[:, [1, 3]].std(0), std[[1, 3]], atol=0.03)


def gaussian_posterior_case(n=6000):
    """Correlated Gaussian data N(0, C) (AR(1), rho 0.9, 4 coordinates), the exact denoiser, and every
    other coordinate measured: the exact posterior of the unmeasured ones is known in closed form."""
    idx = torch.arange(4, dtype=torch.float64)
    cov = 0.9 ** (idx[:, None] - idx[None, :]).abs()
    eye = torch.eye(4, dtype=torch.float64)

    def denoiser(x, sigma):  # E[x0 | x0 + sigma eps = x] for x0 ~ N(0, C) (one sigma per call)
        gain = cov @ torch.linalg.inv(cov + float(sigma[0]) ** 2 * eye)
        return (x.double() @ gain.T).to(x.dtype)

    m, u = [0, 2], [1, 3]
    y_m = torch.tensor([1.0, -1.0], dtype=torch.float64)
    gain = cov[u][:, m] @ torch.linalg.inv(cov[m][:, m])
    mean_u, cov_u = gain @ y_m, cov[u][:, u] - gain @ cov[m][:, u]
    mask = torch.tensor([True, False, True, False]).expand(n, 4)
    y = torch.zeros(n, 4)
    y[:, m] = y_m.float()
    return denoiser, mask, y, mean_u.float(), cov_u.diagonal().sqrt().float()


def test_time_travel_moves_projection_samples_towards_the_exact_posterior_mean():
    """Projection steps alone bias the unmeasured coordinates of correlated data (they learn of the data
    only through the state); resampling each step (``resample``) shrinks that bias of the samples' mean
    the more the more often it repeats, keeps the measured coordinates exact, and narrows the samples'
    spread below the posterior's (the cost the README states for the std map)."""
    denoiser, mask, y, mean_u, std_u = gaussian_posterior_case()
    sigmas = DDPMObjective("linear", 1000).sampling_sigmas(30)
    x = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    step = projection_step(Inpainting(mask), y)

    def run(resample):
        out = sample_posterior(denoiser, x, sigmas, step, eta=1.0, generator=torch.Generator().manual_seed(1),
                               resample=resample, resample_sigmas=(0.01, 100.0))
        assert torch.equal(out[:, [0, 2]], y[:, [0, 2]])
        free = out[:, [1, 3]]
        return float((free.mean(0) - mean_u).abs().max()), free.std(0)

    (bias0, std0), (bias4, _), (bias16, std16) = run(0), run(4), run(16)
    assert bias0 > 0.2  # the bias time travel is for (closed form: -0.9; plain projection: about -0.65)
    assert bias16 < bias4 < bias0 and bias16 < bias0 / 2
    assert torch.all(std16 < std0) and torch.all(std16 < std_u)
    # only the steps inside resample_sigmas repeat: a range below the whole grid changes nothing
    below = sample_posterior(denoiser, x, sigmas, step, eta=1.0, generator=torch.Generator().manual_seed(1),
                             resample=4, resample_sigmas=(1e-6, 1e-5))
    plain = sample_posterior(denoiser, x, sigmas, step, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(below, plain)
    with pytest.raises(ValueError, match="resample"):
        sample_posterior(denoiser, x, sigmas, step, resample=-1)


# ---- Python API ------------------------------------------------------------------------------------------
def test_reconstruction_honours_measured_kspace(ckpt):
    img = torch.from_numpy(phantom()).to(torch.complex64) * np.exp(0.5j)
    mask = undersampling_mask("random", SIZE, 4, 0.125, 1)
    kspace = fft2c(img) * mask
    rec = Reconstructor.from_checkpoint(ckpt, device="cpu", steps=3)
    result = rec.run(kspace.numpy(), mask.numpy())
    measured = mask.expand(2, SIZE, SIZE)
    k_out = fft2c(torch.from_numpy(result.complex_image))
    # stated tolerance: sampled k-space reproduced to 1e-4 of the largest measured value (float32 FFTs)
    assert float((k_out - kspace)[measured].abs().max()) <= 1e-4 * float(kspace.abs().max())
    assert float(k_out[~measured].abs().max()) > 1e-3  # the prior filled the unmeasured lines
    image = rec.reconstruct(kspace.numpy(), mask.numpy())
    assert image.shape == (2, SIZE, SIZE) and np.isfinite(image).all()
    assert rec.reconstruct(kspace[0].numpy(), mask.numpy()).shape == (SIZE, SIZE)


def test_tv_refinement_of_the_sample_mean_keeps_the_data(ckpt):
    """refine_tv > 0: the output is the TV-refined complex mean of the samples; the measured k-space stays
    exact, the per-sample spread is still reported, and the image is smoother than the plain mean."""
    from src.inverse.tv import grad2d

    img = torch.from_numpy(phantom()).to(torch.complex64)
    mask = undersampling_mask("equispaced", SIZE, 4, 0.125, 0)
    kspace = fft2c(img) * mask
    plain = Reconstructor.from_checkpoint(ckpt, device="cpu", steps=3).run(kspace, mask, num_samples=2, seed=0)
    rec = Reconstructor.from_checkpoint(ckpt, device="cpu", steps=3, refine_tv=0.3)
    assert rec.refine_tv == 0.3
    refined = rec.run(kspace, mask, num_samples=2, seed=0)
    k_out = fft2c(torch.from_numpy(refined.complex_image))
    measured = mask.expand_as(k_out)
    assert float((k_out - kspace)[measured].abs().max()) <= 1e-4 * float(kspace.abs().max())
    np.testing.assert_allclose(refined.image, np.abs(refined.complex_image))
    np.testing.assert_array_equal(refined.std, plain.std)  # same samples, same spread

    def tv(x):
        return float(grad2d(torch.as_tensor(x)).abs().pow(2).sum(dim=1).sqrt().sum())

    assert tv(refined.image) < tv(plain.image)
    with pytest.raises(ConfigError, match="refine-tv"):
        Reconstructor.from_checkpoint(ckpt, device="cpu", refine_tv=-1)


def test_time_travel_option_reaches_the_sampler_and_keeps_the_data(ckpt, tmp_path, monkeypatch):
    """``resample`` / ``resample_sigmas`` come from the checkpoint's ``reconstruction`` defaults unless given, reach
    the sampler (more network calls on the repeated steps), keep the measured k-space exact, and bad values are
    refused with a sentence naming the option."""
    img = torch.from_numpy(phantom()).to(torch.complex64)
    mask = undersampling_mask("equispaced", SIZE, 4, 0.125, 0)
    kspace = fft2c(img) * mask
    raw = torch.load(ckpt, weights_only=True)
    raw["run_config"] = {**raw["run_config"], "reconstruction": {"resample": 2, "resample_sigmas": [0.001, 1000.0]}}
    tuned = tmp_path / "tuned.ckpt"
    torch.save(raw, tuned)
    rec = Reconstructor.from_checkpoint(tuned, device="cpu", steps=3)
    assert (rec.resample, rec.resample_sigmas) == (2, (0.001, 1000.0))
    assert Reconstructor.from_checkpoint(tuned, device="cpu", resample=0).resample == 0
    assert Reconstructor.from_checkpoint(ckpt, device="cpu").resample == 0  # older checkpoints: off
    calls = []
    net = rec.module.ema.module
    hook = net.register_forward_hook(lambda *a: calls.append(1))
    result = rec.run(kspace, mask, num_samples=1, seed=0)
    hook.remove()
    assert len(calls) == 2 * 3 + 1  # 3 steps: the last (to sigma 0) is never repeated, the other two run 3 times
    k_out = fft2c(torch.from_numpy(result.complex_image))
    measured = mask.expand_as(k_out)
    assert float((k_out - kspace)[measured].abs().max()) <= 1e-4 * float(kspace.abs().max())
    with pytest.raises(ConfigError, match=r"--resample must be between 0 \(off\) and 20"):
        Reconstructor.from_checkpoint(ckpt, device="cpu", resample=-1)
    with pytest.raises(ConfigError, match="--resample-sigmas must be two noise levels 0 < LO < HI"):
        Reconstructor.from_checkpoint(ckpt, device="cpu", resample_sigmas=(2.0, 1.0))


def test_two_channel_model_and_posterior_samples(tmp_path):
    path = make_checkpoint(tmp_path / "complex.ckpt", [2, SIZE, SIZE])
    rec = Reconstructor.from_checkpoint(path, device="cpu", steps=3, batch_size=3)
    img = torch.from_numpy(phantom(1)).to(torch.complex64) * np.exp(1j)
    mask = undersampling_mask("equispaced", SIZE, 4, 0.125, 0)
    kspace = fft2c(img) * mask
    result = rec.run(kspace, mask, num_samples=3, seed=1)
    k_out = fft2c(torch.from_numpy(result.complex_image))
    assert float((k_out - kspace)[mask.expand_as(k_out)].abs().max()) <= 1e-4 * float(kspace.abs().max())
    assert result.std.shape == (1, SIZE, SIZE) and float(result.std.max()) > 0
    again = rec.run(kspace, mask, num_samples=3, seed=1)
    np.testing.assert_array_equal(result.image, again.image)  # same seed, same result


def test_multicoil_reconstruction_is_least_squares_consistent(ckpt):
    img = torch.from_numpy(phantom(1)).to(torch.complex64)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    centres = [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    sens = torch.stack([torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)) * np.exp(1j * k)
                        for k, (cy, cx) in enumerate(centres)]).to(torch.complex64)
    mask = undersampling_mask("equispaced", SIZE, 2, 0.25, 0)
    kspace = fft2c(sens[None] * img[:, None]) * mask
    rec = Reconstructor.from_checkpoint(ckpt, device="cpu", steps=3, cg_iters=10)
    result = rec.run(kspace, mask)
    meas = as_measurement(kspace, mask)
    op, y = meas.batch([0], "cpu")
    x = torch.from_numpy(result.complex_image)
    zero = torch.zeros_like(x)
    # normal-equation residual |A^H (A x - y)| relative to that of the zero image
    rel = float(op.adjoint(op.forward(x) - y).abs().norm() / op.adjoint(op.forward(zero) - y).abs().norm())
    assert rel < 0.05
    expected = rss(ifft2c(kspace), coil_dim=1).numpy()
    np.testing.assert_allclose(result.zero_filled, expected, rtol=1e-5, atol=1e-6)


# ---- CLI -------------------------------------------------------------------------------------------------
def test_cli_on_hdf5_writes_volume_metrics_and_keeps_input(ckpt, singlecoil_h5, tmp_path, capsys):
    path, img = singlecoil_h5
    before = sha(path)
    out = tmp_path / "out" / "recon.nii.gz"
    summary = main(["--checkpoint", str(ckpt), "--input", str(path), "--output", str(out), "--steps", "3",
                    "--reference", str(path), "--save-zero-filled", "--compare-cs", "--cs-iters", "20"])
    captured = capsys.readouterr()
    assert sha(path) == before  # the input is never modified
    assert "reconstructing" in captured.err and "s per slice" in captured.out  # progress bar and timing
    vol = nib.load(out)
    assert vol.shape == (SIZE, SIZE, 2)
    voxel = sorted(np.abs(vol.affine[:3, :3]).max(0))
    np.testing.assert_allclose(voxel, [3.0, 4.0, 5.0])  # from the header: 128/32, 160/32, 3 mm
    metrics = json.loads((tmp_path / "out" / "recon.metrics.json").read_text())["metrics"]
    zf = nib.load(tmp_path / "out" / "recon.zero_filled.nii.gz").get_fdata().transpose(2, 0, 1)
    assert metrics["zero_filled"] == pytest.approx(all_metrics(img, zf), rel=1e-4)
    for key in ("reconstruction", "zero_filled", "compressed_sensing"):
        assert set(metrics[key]) == {"psnr", "ssim", "nmse"}
        assert np.isfinite(list(metrics[key].values())).all()
    assert summary["acceleration"] == pytest.approx(SIZE / 8)
    assert (tmp_path / "out" / "recon.cs.nii.gz").exists()


def test_cli_on_fully_sampled_multicoil_hdf5_with_simulate(ckpt, tmp_path, capsys):
    img = torch.from_numpy(phantom(2)).to(torch.complex64)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    sens = torch.stack([torch.exp(-((yy - c) ** 2 + xx**2)) * np.exp(1j * c) for c in (-1.0, 0.0, 1.0)])
    kspace = fft2c(sens[None].to(torch.complex64) * img[:, None])
    path = tmp_path / "multicoil.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace.numpy()
    summary = main([*base_args(ckpt, path, tmp_path / "mc.nii.gz"), "--simulate", "--acceleration", "2",
                    "--center-fraction", "0.25", "--steps", "2", "--quiet"])
    assert summary["coils"] == 3 and summary["acceleration"] == pytest.approx(2.0, rel=0.1)
    truth = rss(ifft2c(kspace), coil_dim=1).numpy()  # fastMRI's multi-coil target: RSS of the full data
    metrics = summary["metrics"]
    assert metrics["reference"] == "the fully sampled --input" and str(path) not in json.dumps(metrics)
    zf = rss(ifft2c(kspace * undersampling_mask("equispaced", SIZE, 2, 0.25, 0)), coil_dim=1).numpy()
    assert metrics["zero_filled"] == pytest.approx(all_metrics(truth, zf), rel=1e-4)
    err = run_cli([*base_args(ckpt, path, tmp_path / "mc.nii.gz"), "--simulate", "--acceleration", "8",
                   "--center-fraction", "0.1"], capsys)
    assert "centre columns" in err  # 3 calibration columns are too few for coil maps


def test_cli_on_nifti_simulation_with_samples(ckpt, tmp_path, capsys):
    affine = np.diag([0.9, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10, -5, 3]
    src = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(phantom(2).transpose(1, 2, 0), affine), src)
    out = tmp_path / "recon.nii.gz"
    summary = main(["--checkpoint", str(ckpt), "--input", str(src), "--simulate", "--mask", "random",
                    "--acceleration", "4", "--center-fraction", "0.125", "--seed", "0", "--output", str(out),
                    "--steps", "3", "--num-samples", "2", "--refine-tv", "0.2", "--quiet"])
    vol = nib.load(out)
    np.testing.assert_allclose(vol.affine, affine)  # the input's geometry is kept
    std = nib.load(tmp_path / "recon.std.nii.gz")
    assert std.shape == vol.shape and float(np.asarray(std.dataobj).max()) > 0
    metrics = json.loads((tmp_path / "recon.metrics.json").read_text())["metrics"]
    assert metrics["reference"] == "the fully sampled --input"
    assert summary["num_samples"] == 2 and summary["refine_tv"] == 0.2
    assert summary["checks"]["data_residual"] < 1e-5  # the refinement keeps the measured samples


def test_cli_baselines_need_no_checkpoint(singlecoil_h5, tmp_path, capsys):
    path, img = singlecoil_h5
    summary = main(["--method", "zero-filled", "--input", str(path), "--output", str(tmp_path / "zf.nii.gz"),
                    "--reference", str(path), "--quiet"])
    m = summary["metrics"]
    assert m["reconstruction"] == m["zero_filled"]
    cs = main(["--method", "cs", "--input", str(path), "--output", str(tmp_path / "cs.nii.gz"),
               "--reference", str(path), "--cs-iters", "100", "--quiet"])["metrics"]
    assert cs["reconstruction"]["psnr"] > cs["zero_filled"]["psnr"]  # TV removes the aliasing of a phantom


# ---- every bad input gets one clear sentence --------------------------------------------------------------
def test_missing_kspace_key(ckpt, tmp_path, capsys):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((2, SIZE, SIZE), dtype=np.complex64)
    err = run_cli(base_args(ckpt, path, tmp_path / "o.nii.gz"), capsys)
    assert "no 'kspace' dataset" in err and "image" in err


def test_real_valued_kspace(ckpt, tmp_path, capsys):
    path = tmp_path / "real.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = np.zeros((2, SIZE, SIZE, 2), dtype=np.float32)
    err = run_cli(base_args(ckpt, path, tmp_path / "o.nii.gz"), capsys)
    assert "real-valued" in err and "1j" in err
    with pytest.raises(ValueError, match="real-valued"):
        as_measurement(np.zeros((SIZE, SIZE), dtype=np.float32))


def test_mask_shape_mismatch(ckpt, tmp_path, capsys):
    path = tmp_path / "mask.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = np.ones((2, SIZE, SIZE), dtype=np.complex64)
        f["mask"] = np.ones(SIZE + 4, dtype=np.float32)
    err = run_cli(base_args(ckpt, path, tmp_path / "o.nii.gz"), capsys)
    assert "mask has shape (36,)" in err and f"{SIZE} entries" in err


def test_checkpoint_from_another_domain(tmp_path, singlecoil_h5, capsys):
    other = make_checkpoint(tmp_path / "image.ckpt", [1, SIZE, SIZE], domain="image")
    err = run_cli(base_args(other, singlecoil_h5[0], tmp_path / "o.nii.gz"), capsys)
    assert "'image' domain" in err and "domain=mri" in err


def test_volume_model_is_refused(tmp_path, singlecoil_h5, capsys):
    vol = make_checkpoint(tmp_path / "vol.ckpt", [1, 8, 8, 8], spatial_dims=3)
    err = run_cli(base_args(vol, singlecoil_h5[0], tmp_path / "o.nii.gz"), capsys)
    assert "3D model" in err and "datamodule.mode=slice" in err


def test_unknown_intensity_convention_is_refused(tmp_path, singlecoil_h5, capsys):
    other = make_checkpoint(tmp_path / "minmax.ckpt", [1, SIZE, SIZE], scaling="minmax")
    err = run_cli(base_args(other, singlecoil_h5[0], tmp_path / "o.nii.gz"), capsys)
    assert "'minmax'" in err and "zero_anchored_percentile" in err


def test_resolution_mismatch(tmp_path, singlecoil_h5, capsys):
    small = make_checkpoint(tmp_path / "small.ckpt", [1, 16, 16])
    args = [*base_args(small, singlecoil_h5[0], tmp_path / "o.nii.gz"), "--steps", "2", "--quiet"]
    err = run_cli(args, capsys)
    assert "trained on 16x16 slices of 3 x 3 mm pixels" in err and "--allow-resolution-mismatch" in err
    main([*args, "--allow-resolution-mismatch"])  # the convolutional network runs at 32x32 when allowed
    assert nib.load(tmp_path / "o.nii.gz").shape == (SIZE, SIZE, 2)


def test_unsafe_or_missing_checkpoint(tmp_path, singlecoil_h5, capsys):
    evil = tmp_path / "evil.ckpt"
    # a Path object can only be restored by running pickle code, which weights_only loading refuses
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Path("x")}, evil)
    err = run_cli(base_args(evil, singlecoil_h5[0], tmp_path / "o.nii.gz"), capsys)
    assert "cannot be loaded safely" in err
    err = run_cli(base_args(tmp_path / "none.ckpt", singlecoil_h5[0], tmp_path / "o.nii.gz"), capsys)
    assert "does not exist" in err


def test_input_is_never_overwritten_and_nifti_needs_simulate(ckpt, singlecoil_h5, tmp_path, capsys):
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(phantom(1).transpose(1, 2, 0), np.eye(4)), src)
    before = sha(src)
    err = run_cli([*base_args(ckpt, src, src), "--simulate"], capsys)
    assert "same file as --input" in err and sha(src) == before
    err = run_cli(base_args(ckpt, src, tmp_path / "o.nii.gz"), capsys)
    assert "--simulate" in err
    err = run_cli(base_args(ckpt, singlecoil_h5[0], tmp_path / "o.png"), capsys)
    assert ".nii.gz" in err


def _nifti(path, volume):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(1, 2, 0)), np.eye(4)), path)
    return path


def test_reference_of_another_region_or_size_is_refused_unless_asked(singlecoil_h5, tmp_path, capsys):
    path, img = singlecoil_h5
    zf = ["--method", "zero-filled", "--input", str(path), "--output", str(tmp_path / "zf.nii.gz"), "--quiet"]
    # another region: the same size, other anatomy (a shifted, flipped copy)
    other = _nifti(tmp_path / "other.nii.gz", np.roll(img[:, ::-1, :], SIZE // 3, axis=1) * (1 - img))
    err = run_cli([*zf, "--reference", str(other)], capsys)
    assert "does not look like the reconstructed region" in err and "--allow-reference-mismatch" in err
    assert not (tmp_path / "zf.metrics.json").exists()
    scored = main([*zf, "--reference", str(other), "--allow-reference-mismatch"])["metrics"]
    assert scored["zero_filled_correlation"] < 0.5
    # a smaller NIfTI reference is only centre-cropped when asked for
    centre = _nifti(tmp_path / "centre.nii.gz", img[:, 4:-4, 4:-4])
    err = run_cli([*zf, "--reference", str(centre)], capsys)
    assert "24x24 but the reconstruction's are 32x32" in err and "--crop-reference" in err
    cropped = main([*zf, "--reference", str(centre), "--crop-reference"])["metrics"]
    assert cropped["cropped_to"] == [24, 24] and cropped["zero_filled_correlation"] > 0.9
    # the same-scan reference passes the check without any flag
    assert main([*zf, "--reference", str(path)])["metrics"]["zero_filled_correlation"] > 0.9


def test_output_in_a_read_only_folder_is_refused_before_any_work(singlecoil_h5, tmp_path, capsys):
    import os
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: make the folder a file's child instead
            locked = tmp_path / "a_file"
            locked.write_text("")
        err = run_cli(["--method", "zero-filled", "--input", str(singlecoil_h5[0]),
                       "--output", str(locked / "o.nii.gz"), "--quiet"], capsys)
        assert "--output" in err and "not a writable folder" in err
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_multicoil_zero_filled_needs_no_calibration_region(tmp_path):
    from src.tools.reconstruction.measurement import zero_filled
    rng = np.random.default_rng(0)
    img = phantom(2)
    sens = rng.normal(size=(3, SIZE, SIZE)) + 1j * rng.normal(size=(3, SIZE, SIZE))
    kspace = fft2c(torch.from_numpy(img[:, None] * sens).to(torch.complex64))
    mask = torch.zeros(SIZE)
    mask[::4] = 1  # equispaced, no fully sampled centre: too few lines to estimate coil maps
    meas = as_measurement(kspace * mask, mask)
    with pytest.raises(Exception, match="coil sensitivities"):
        meas.batch([0], "cpu")
    expected = rss(ifft2c(kspace * mask.bool()), coil_dim=1).numpy()
    np.testing.assert_allclose(zero_filled(meas), expected, rtol=1e-5, atol=1e-6)


def test_bf16_network_precision_keeps_the_data_and_the_image(ckpt, monkeypatch):
    """precision=bf16 runs the network under bf16 autocast: the data steps stay exact and the image stays close
    to fp32's; auto follows the CPU's native bf16 support; anything else is a ConfigError naming --precision."""
    import src.tools.reconstruction.reconstructor as recon_mod

    img = torch.from_numpy(phantom()).to(torch.complex64)
    mask = undersampling_mask("equispaced", SIZE, 4, 0.125, 0)
    kspace = fft2c(img) * mask

    def trained_like(precision):  # MONAI zero-initialises the output layer: give the network nonzero weights
        rec = Reconstructor.from_checkpoint(ckpt, device="cpu", steps=3, precision=precision)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in rec.module.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=g))
        return rec

    fp32 = trained_like("fp32").run(kspace, mask, seed=0)
    rec = trained_like("bf16")
    assert rec.precision == "bf16"
    bf16 = rec.run(kspace, mask, seed=0)
    k_out = fft2c(torch.from_numpy(bf16.complex_image))
    measured = mask.expand_as(k_out)
    assert float((k_out - kspace)[measured].abs().max()) <= 1e-4 * float(kspace.abs().max())
    scale = float(np.abs(fp32.image).max())
    assert float(np.abs(bf16.image - fp32.image).max()) <= 0.1 * scale  # bf16 keeps about 3 significant digits
    assert not np.array_equal(bf16.image, fp32.image)  # the autocast really ran
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(recon_mod, "native_cpu_bf16", lambda native=native: native)
        assert Reconstructor.from_checkpoint(ckpt, device="cpu", precision="auto").precision == expected
    with pytest.raises(ConfigError, match="--precision"):
        Reconstructor.from_checkpoint(ckpt, device="cpu", precision="fp16")
