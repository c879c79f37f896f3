"""Restoration: operators (adjointness, data steps), tiling, the restorer's data consistency, baselines, the CLI
end to end on files written here, and one sentence for each bad input."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from src.inverse import Downsampling, Inpainting, denoiser_error_std, proximal_consistency
from src.inverse.operators import batch_dot
from src.restore import main
from src.tools.prior import Prior
from src.tools.restoration import Declipping, Identity, LowPass, Problem, Restorer, box_mask
from src.tools.restoration.baselines import wiener
from src.tools.restoration.noise import estimate_noise_std
from src.tools.restoration.scores import image_metrics, log_spectral_distance, si_sdr
from src.tools.tiling import Tiling, blend
from tests.helpers.restore import make_checkpoint

RATE = 8000


def adjoint_gap(op, x, y):
    return float((batch_dot(op.forward(x), y) - batch_dot(x, op.adjoint(y))).abs().max())


@pytest.mark.parametrize("name", ["identity", "inpaint", "downsample", "lowpass", "declip"])
def test_operators_are_adjoint(name):
    g = torch.Generator().manual_seed(0)
    if name in ("lowpass", "declip", "identity"):
        x = torch.randn(3, 1, 257, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(3, 2, 16, 12, generator=g, dtype=torch.float64)
    op = {"identity": Identity(), "inpaint": Inpainting(torch.rand(x.shape, generator=g) > 0.4),
          "downsample": Downsampling(4), "lowpass": LowPass(0.3),
          "declip": Declipping(torch.rand(x.shape, generator=g) > 0.7, torch.ones_like(x), 0.5)}[name]
    y = torch.randn(op.forward(x).shape, generator=g, dtype=torch.float64)
    assert adjoint_gap(op, x, y) < 1e-9 * float(x.norm() * y.norm())


def test_lowpass_is_a_projection_and_its_data_step_keeps_the_band():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 1, 300, generator=g), torch.randn(2, 1, 300, generator=g)
    op = LowPass(0.25)
    assert torch.allclose(op.forward(op.forward(x)), op.forward(x), atol=1e-5)
    z = op.data_consistency(x, y)
    assert torch.allclose(op.forward(z), op.forward(y), atol=1e-5)
    assert torch.allclose(z - op.forward(z), x - op.forward(x), atol=1e-5)  # the high band stays the estimate's


def test_declipping_data_step_keeps_measured_samples_and_the_clip_constraint():
    t = torch.linspace(0, 1, 400)
    clean = torch.sin(2 * np.pi * 5 * t)[None, None]
    level = 0.5
    y = clean.clamp(-level, level)
    clipped = y.abs() >= level
    op = Declipping(clipped, torch.sign(y), level)
    z = op.data_consistency(torch.zeros_like(y), y)
    assert torch.equal(z[~clipped], y[~clipped])
    assert bool(((z * torch.sign(y))[clipped] >= level - 1e-6).all())


def test_proximal_step_weighs_noise_against_the_prior():
    g = torch.Generator().manual_seed(2)
    x0, y = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    noise, prior = 0.3, 0.6
    z = proximal_consistency(Identity(), x0, y, noise, prior)
    assert torch.allclose(z, (prior**2 * y + noise**2 * x0) / (prior**2 + noise**2), atol=1e-5)
    mask = torch.rand(x0.shape, generator=g) > 0.5
    hard = proximal_consistency(Inpainting(mask), x0, y, 0.0, prior)
    assert torch.equal(hard, torch.where(mask, y, x0))
    assert denoiser_error_std(1e-4) == pytest.approx(1e-4, rel=1e-3)
    assert denoiser_error_std(1e4) == pytest.approx(0.5, rel=1e-3)


def test_noise_estimate_recovers_white_noise_std():
    g = torch.Generator().manual_seed(3)
    assert estimate_noise_std(0.1 * torch.randn(1, 1, 20000, generator=g)) == pytest.approx(0.1, rel=0.1)
    t = torch.arange(20000) / 8000
    tones = 0.5 * torch.sin(2 * np.pi * 440 * t) + 0.3 * torch.sin(2 * np.pi * 1500 * t)
    assert estimate_noise_std(tones + 0.02 * torch.randn(20000, generator=g)) == pytest.approx(0.02, rel=0.15)
    assert estimate_noise_std(0.05 * torch.randn(1, 3, 128, 128, generator=g)) == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("full,tile,align", [((1001,), (256,), 1), ((70, 45), (32, 32), 1), ((64, 96), (32, 32), 4)])
def test_tiling_covers_and_blends_back_exactly(full, tile, align):
    x = torch.randn(2, *full)
    tiling = Tiling(full, tile, 0.25, align)
    regions = tiling.regions()
    assert all(r.start % align == 0 for reg in regions for r in reg)
    assert all(r.stop - r.start == min(t, n) for reg in regions for r, t, n in zip(reg, tile, full))
    back = blend(tiling, (2,), [(reg, x[(slice(None), *reg)]) for reg in regions])
    assert torch.allclose(back, x, atol=1e-5)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"image": make_checkpoint(d / "image.ckpt", "image", [3, 16, 16]),
            "gray": make_checkpoint(d / "gray.ckpt", "image", [1, 16, 16]),
            "audio": make_checkpoint(d / "audio.ckpt", "audio", [1, 512], sample_rate=RATE),
            "mri": make_checkpoint(d / "mri.ckpt", "mri", [1, 16, 16])}


def restorer(path, **kw):
    return Restorer(Prior.from_checkpoint(path, ("image", "audio"), "restoration", "cpu"), steps=3, **kw)


def test_restorer_inpainting_keeps_every_measured_pixel(ckpts):
    g = torch.Generator().manual_seed(4)
    y = torch.rand(1, 3, 40, 28, generator=g) * 2 - 1
    keep = torch.from_numpy(~box_mask((40, 28), [(5, 6, 10, 20)]))[None, None]
    out = restorer(ckpts["image"]).restore(Problem("inpaint", y * keep, (40, 28), keep=keep))
    assert out.shape == (1, 3, 40, 28)
    assert torch.allclose(out * keep, y * keep, atol=1e-6)


def test_restorer_super_resolution_is_consistent_with_the_low_resolution_input(ckpts):
    g = torch.Generator().manual_seed(5)
    y = torch.rand(1, 3, 6, 10, generator=g) * 2 - 1
    out = restorer(ckpts["image"]).restore(Problem("super-resolution", y, (24, 40), scale=4))
    assert out.shape == (1, 3, 24, 40)
    assert torch.allclose(torch.nn.functional.avg_pool2d(out, 4), y, atol=1e-4)


def test_restorer_audio_tasks_on_a_recording_longer_than_the_model(ckpts):
    n = 1300  # not a multiple of the model's 512 samples
    t = torch.arange(n) / RATE
    clean = (0.8 * torch.sin(2 * np.pi * 300 * t))[None, None]
    r = restorer(ckpts["audio"])
    y = LowPass(0.25).forward(clean)
    out = r.restore(Problem("bandwidth", y, (n,), cutoff=0.25))
    assert out.shape == (1, 1, n)
    assert torch.allclose(LowPass(0.25).forward(out), y, atol=1e-4)
    y = clean.clamp(-0.5, 0.5)
    keep = y.abs() < 0.5
    out = r.restore(Problem("declip", y, (n,), keep=keep, sign=torch.sign(y), level=0.5))
    assert torch.equal(out[keep], y[keep])
    assert bool((out[~keep].abs() >= 0.5 - 1e-6).all())


def test_metrics_and_wiener_baseline_behave():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clean = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    noisy = clean + rng.normal(0, 0.05, clean.shape).astype(np.float32)
    assert si_sdr(clean, wiener(noisy, 0.05)) > si_sdr(clean, noisy) + 3
    assert log_spectral_distance(clean, clean) == pytest.approx(0.0, abs=1e-9)
    img = rng.random((1, 32, 32)).astype(np.float32)
    m = image_metrics(img, np.clip(img + 0.1, 0, 1))
    assert 10 < m["psnr"] < 30 and m["ssim"] < 1


# ---- the command line, end to end -----------------------------------------------------------------
def write_png(path, arr):
    Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def photo(tmp_path):
    from skimage import data

    img = data.astronaut()[::16, ::16][:32, :24] / 255.0  # 32 x 24 real photo, bundled with scikit-image
    return write_png(tmp_path / "photo.png", img)


@pytest.fixture
def recording(tmp_path):
    t = np.arange(1500) / RATE
    wave = 0.6 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1500 * t)
    path = tmp_path / "take.wav"
    sf.write(path, wave.astype(np.float32), RATE)
    return path


def cli(ckpt, inp, out, *extra):
    return main(["--checkpoint", str(ckpt), "--input", str(inp), "--output", str(out), "--steps", "2", "--quiet",
                 *map(str, extra)])


def test_cli_inpaint_writes_result_input_baseline_and_metrics(ckpts, photo, tmp_path):
    mask = np.zeros((32, 24), bool)
    mask[8:20, 4:14] = True
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "holes.png")
    out = tmp_path / "restored.png"
    summary = cli(ckpts["image"], photo, out, "--task", "inpaint", "--mask", tmp_path / "holes.png", "--simulate")
    for name in ("restored.png", "restored.input.png", "restored.biharmonic.png", "restored.metrics.json"):
        assert (tmp_path / name).is_file()
    metrics = json.loads((tmp_path / "restored.metrics.json").read_text())["metrics"]
    assert set(metrics) == {"diffusion", "biharmonic", "input"} and summary["metrics"] == metrics
    result, given = (np.asarray(Image.open(tmp_path / n), np.int16) for n in ("restored.png", "photo.png"))
    assert result.shape == given.shape
    assert np.abs(result - given)[~mask].max() <= 1  # measured pixels come back (up to 8-bit rounding)
    assert np.asarray(Image.open(tmp_path / "restored.input.png"))[mask].max() == 0  # the simulated holes


def test_cli_super_resolution_and_denoise(ckpts, photo, tmp_path):
    summary = cli(ckpts["gray"], photo, tmp_path / "sr.png", "--task", "super-resolution", "--scale", "2",
                  "--simulate")
    assert Image.open(tmp_path / "sr.png").size == (24, 32) and "bicubic" in summary["metrics"]
    assert Image.open(tmp_path / "sr.input.png").size == (12, 16)
    summary = cli(ckpts["image"], photo, tmp_path / "dn.png", "--task", "denoise", "--noise-std", "0.1",
                  "--simulate")
    assert summary["noise_std"] == 0.1 and set(summary["metrics"]) == {"diffusion", "nl_means", "input"}


@pytest.mark.parametrize("task,extra,baseline", [("denoise", ["--noise-std", "0.05"], "wiener"),
                                                  ("declip", ["--clip-level", "0.4"], "identity"),
                                                  ("bandwidth", ["--cutoff", "1000"], "identity")])
def test_cli_audio_tasks_keep_length_and_score(ckpts, recording, tmp_path, task, extra, baseline):
    out = tmp_path / f"{task}.wav"
    summary = cli(ckpts["audio"], recording, out, "--task", task, "--simulate", *extra)
    wave, rate = sf.read(out)
    assert rate == RATE and wave.shape == (1500,)
    assert set(summary["metrics"]) >= {"diffusion", baseline}
    assert {"si_sdr", "lsd"} <= set(summary["metrics"]["diffusion"])
    assert (tmp_path / f"{task}.input.wav").is_file() and (tmp_path / f"{task}.metrics.json").is_file()


def test_cli_denoise_estimates_an_unknown_noise_level(ckpts, recording, tmp_path, capsys):
    wave, _ = sf.read(recording)
    noisy = tmp_path / "noisy.wav"
    sf.write(noisy, wave + np.random.default_rng(0).normal(0, 0.03, wave.shape), RATE, subtype="FLOAT")
    summary = cli(ckpts["audio"], noisy, tmp_path / "dn.wav", "--task", "denoise", "--reference", recording)
    assert 0.02 < summary["noise_std"] < 0.06
    assert "estimated noise std" in capsys.readouterr().err


# ---- one sentence for each bad input ----------------------------------------------------------------
def refused(capsys, *args):
    with pytest.raises(SystemExit) as e:
        cli(*args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_bad_inputs_get_one_sentence(ckpts, photo, recording, tmp_path, capsys):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small_mask.png")
    err = refused(capsys, ckpts["image"], photo, tmp_path / "o.png", "--task", "inpaint", "--mask",
                  tmp_path / "small_mask.png")
    assert "Mask" in err and "10x10" in err and "24x32" in err
    write_png(tmp_path / "odd.png", np.full((30, 30), 0.5))
    err = refused(capsys, ckpts["image"], tmp_path / "odd.png", tmp_path / "o.png", "--task", "super-resolution",
                  "--scale", "4", "--simulate")
    assert "does not divide" in err and "30x30" in err
    err = refused(capsys, ckpts["image"], photo, tmp_path / "o.png", "--task", "super-resolution", "--scale", "3")
    assert "--scale 3 does not divide the model's tile" in err
    err = refused(capsys, ckpts["audio"], recording, tmp_path / "o.wav", "--task", "declip", "--clip-level", "1.5")
    assert "argument --clip-level: must be a finite number greater than 0 and at most 1, got '1.5'" in err
    err = refused(capsys, ckpts["audio"], recording, tmp_path / "o.wav", "--task", "declip", "--clip-level", "0.95")
    assert "above the data range" in err and "peak" in err
    err = refused(capsys, ckpts["mri"], photo, tmp_path / "o.png", "--task", "inpaint",
                  "--mask-box", "1", "1", "4", "4")
    assert "'mri' domain" in err
    err = refused(capsys, ckpts["image"], photo, tmp_path / "o.png", "--task", "declip", "--clip-level", "0.5")
    assert "restores audio" in err and "image model" in err
    err = refused(capsys, ckpts["audio"], photo, tmp_path / "o.wav", "--task", "denoise")
    assert "not a sound file" in err
    err = refused(capsys, ckpts["audio"], recording, tmp_path / "o.wav", "--task", "bandwidth", "--cutoff", "9000")
    assert "Nyquist" in err
    err = refused(capsys, ckpts["image"], photo, photo, "--task", "denoise")
    assert "same file" in err


def test_cli_stereo_recording_at_another_rate_is_restored_per_channel(ckpts, tmp_path, capsys):
    t = np.arange(2205) / 22050
    stereo = np.stack([0.7 * np.sin(2 * np.pi * 330 * t), 0.5 * np.sin(2 * np.pi * 550 * t)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo.astype(np.float32), 22050)
    cli(ckpts["audio"], tmp_path / "stereo.wav", tmp_path / "out.wav", "--task", "declip", "--clip-level", "0.45",
        "--simulate")
    wave, rate = sf.read(tmp_path / "out.wav", always_2d=True)
    assert rate == RATE and wave.shape == (800, 2)
    clipped, _ = sf.read(tmp_path / "out.input.wav", always_2d=True)
    kept = np.abs(clipped) < 0.45 * (1 - 1e-3)
    assert np.allclose(wave[kept], clipped[kept], atol=1e-6)  # unclipped samples of both channels come back
    assert "resampled from 22050 Hz" in capsys.readouterr().err


def test_tool_json_holds_no_nan_or_infinity(tmp_path):
    """JSON has no NaN or infinity: such a metric is written as null and named under "non_finite"."""
    from src.fileio import write_json

    path = write_json({"metrics": {"exact": {"psnr": float("inf"), "ssim": np.float32(1.0)},
                                   "empty": {"psnr": float("nan")}}}, tmp_path / "m.json")
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert data["metrics"]["exact"] == {"psnr": None, "ssim": 1.0} and data["metrics"]["empty"]["psnr"] is None
    assert data["non_finite"] == {"metrics.exact.psnr": "inf", "metrics.empty.psnr": "nan"}
