"""Few-step students (src/distill): the maths against the closed form of Gaussian data, then end-to-end
distillation of smoke teachers of every domain, sampling in 1/2/4 steps, refusals and resume."""

import copy
import math

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from sklearn.datasets import load_digits

from src.checkpoint import load_checkpoint
from src.diffusion.objectives import EDMObjective
from src.diffusion.samplers import SAMPLERS
from src.distill.maths import (
    consistency_distance,
    consistency_function,
    consistency_pair,
    distill_grid,
    ode_step,
    progressive_target,
    student_sigmas,
)
from src.distill.student import StudentModule, check_distill
from src.domains.mri.fft import fft2c
from src.errors import ConfigError
from src.latent.space import file_sha256
from src.latent.stage import module_from_checkpoint
from src.module import DiffusionModule
from src.reconstruct import Reconstructor
from src.sample import main as sample_main
from src.tools.anomaly import Detector
from src.tools.prior import Prior
from src.tools.reconstruction.masks import undersampling_mask
from src.tools.restoration import Problem, Restorer, box_mask
from src.train import train
from tests.conftest import compose
from tests.helpers.restore import DIFFUSION

MU = torch.tensor([0.5, -0.3, 0.0, 0.2])
STD = torch.tensor([0.2, 0.5, 0.8, 0.35])
GRID = distill_grid(16, 0.002, 80.0)
SIGMA_MIN = float(GRID[-1])


def gaussian_denoiser(x, sigma):
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(MU, diag(STD^2)): the exact teacher."""
    s2 = sigma.reshape(-1, 1) ** 2
    return MU + STD**2 / (STD**2 + s2) * (x - MU)


def ode_endpoint(x, sigma, sigma_to=SIGMA_MIN):
    """The probability-flow ODE's exact solution for Gaussian data: x - MU scales as sqrt(STD^2 + sigma^2)."""
    s = sigma.reshape(-1, 1)
    return MU + (x - MU) * ((STD**2 + sigma_to**2) / (STD**2 + s**2)).sqrt()


def test_boundary_condition_holds_exactly_for_any_network():
    den = EDMObjective().denoiser(lambda x, c_noise, cond=None: torch.randn_like(x) * 5)
    f = consistency_function(den, SIGMA_MIN)
    x = torch.randn(8, 4)
    torch.testing.assert_close(f(x, torch.full((8,), SIGMA_MIN)), x, atol=1e-6, rtol=0)


def test_consistency_loss_vanishes_on_the_exact_solution():
    """The exact consistency function (the ODE's endpoint map) has zero loss up to the Heun step's error, while
    the teacher's denoiser itself, which is not self-consistent, does not."""
    g = torch.Generator().manual_seed(0)
    x0 = MU + STD * torch.randn(4096, 4, generator=g)
    noise = torch.randn(4096, 4, generator=g)
    index = torch.randint(0, len(GRID) - 1, (4096,), generator=g)
    x, s_hi, x_hat, s_lo = consistency_pair(gaussian_denoiser, x0, noise, GRID, index, "heun")
    exact = consistency_distance(ode_endpoint(x, s_hi), ode_endpoint(x_hat, s_lo)).mean()
    naive = consistency_distance(gaussian_denoiser(x, s_hi), gaussian_denoiser(x_hat, s_lo)).mean()
    assert exact < 1e-4 and naive > 100 * exact, (exact, naive)
    # Heun on the exact denoiser follows the exact ODE solution closely (relative to the noise level)
    assert ((x_hat - ode_endpoint(x, s_hi, s_lo.reshape(-1, 1))).abs() / s_hi.reshape(-1, 1)).mean() < 1e-2


class AffineNet(torch.nn.Module):
    """EDM's ``F(c_in x, c_noise)`` affine in x with noise-level-dependent coefficients: it can express the
    exact consistency function of Gaussian data (an MLP of the noise level gives the coefficients)."""

    def __init__(self, dims: int = 4, hidden: int = 64):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.SiLU(), torch.nn.Linear(hidden, 2 * dims))

    def forward(self, x, c_noise, cond=None):
        a, b = self.mlp(c_noise.reshape(-1, 1).float()).chunk(2, dim=1)
        return a * x + b


def test_one_step_student_on_the_exact_teacher_approaches_the_ode_endpoint_map():
    """Consistency distillation (EMA target, Heun teacher steps, boundary scalings) of the exact Gaussian
    teacher: the one-step student maps noise to the teacher ODE's end point, and its samples have the data's
    moments."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = AffineNet()
    target = copy.deepcopy(net).requires_grad_(False)
    edm = EDMObjective()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(1000):
        x0 = MU + STD * torch.randn(256, 4, generator=g)
        noise = torch.randn(256, 4, generator=g)
        index = torch.randint(0, len(GRID) - 1, (256,), generator=g)
        x, s_hi, x_hat, s_lo = consistency_pair(gaussian_denoiser, x0, noise, GRID, index, "heun")
        with torch.no_grad():
            want = consistency_function(edm.denoiser(target), SIGMA_MIN)(x_hat, s_lo)
        loss = consistency_distance(consistency_function(edm.denoiser(net), SIGMA_MIN)(x, s_hi), want).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, q in zip(target.parameters(), net.parameters()):
                p.lerp_(q, 1 - 0.95)
    f = consistency_function(edm.denoiser(net), SIGMA_MIN)
    z = torch.randn(20000, 4, generator=g) * GRID[0]
    with torch.no_grad():
        one_step = SAMPLERS["consistency"](f, z, student_sigmas(GRID, 1))
    endpoint = ode_endpoint(z, GRID[:1].expand(len(z)))
    err = (one_step - endpoint).abs().mean() / STD.mean()
    assert err < 0.1, err  # within 10 % of the data's spread of the exact end point
    torch.testing.assert_close(one_step.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(one_step.std(0), STD, atol=0.05, rtol=0.1)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_multistep_consistency_sampling_of_the_exact_function_gives_the_data_distribution(steps):
    g = torch.Generator().manual_seed(steps)
    sigmas = student_sigmas(GRID, steps)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0 and sigmas[0] == GRID[0]
    out = SAMPLERS["consistency"](lambda x, s: ode_endpoint(x, s), torch.randn(20000, 4, generator=g) * sigmas[0],
                                  sigmas, generator=g)
    torch.testing.assert_close(out.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(out.std(0), STD, atol=0.03, rtol=0.05)


def test_progressive_target_makes_one_step_land_where_two_teacher_steps_land():
    g = torch.Generator().manual_seed(3)
    fine, coarse = student_sigmas(GRID, 8), student_sigmas(GRID, 4)
    assert set(coarse.tolist()) <= set(fine.tolist())  # nested grids
    for i in range(4):
        s, s_mid, s_next = (torch.full((64,), float(v)) for v in (coarse[i], fine[2 * i + 1], coarse[i + 1]))
        x = MU + torch.randn(64, 4, generator=g) * (STD**2 + s.reshape(-1, 1) ** 2).sqrt()
        x_tilde = progressive_target(gaussian_denoiser, x, s, s_mid, s_next)
        two = ode_step(gaussian_denoiser, ode_step(gaussian_denoiser, x, s, s_mid, "euler"), s_mid, s_next, "euler")
        one = ode_step(lambda *_, t=x_tilde: t, x, s, s_next, "euler")  # a DDIM step with x_tilde as the estimate
        torch.testing.assert_close(one, two, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad,key", [({"method": "reflux"}, "distill.method"), ({"steps": [3]}, "distill.steps"),
                                     ({"method": "progressive", "steps": [3], "grid_steps": 9}, "power of two"),
                                     ({"solver": "rk4"}, "distill.solver"), ({"target_decay": 1.0}, "target_decay")])
def test_bad_distill_options_are_one_sentence(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_distill(bad)


# ---- end to end ------------------------------------------------------------------------------------------
SMOKE = ["experiment=smoke", "logger=none", "threads=1", "trainer.accelerator=cpu", "sampling.num=2",
         "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]


def _teacher(compose_cfg, out, *extra):
    res = train(compose_cfg(SMOKE + [f"paths.output_dir={out}", "trainer.max_steps=6", *extra]))
    return out / "checkpoints" / "last.ckpt" if res["global_step"] == 6 else None


def _distill(compose_cfg, teacher, out, *extra):
    return train(compose_cfg(SMOKE + ["stage=distill", f"distill.teacher={teacher}", f"paths.output_dir={out}",
                                      "trainer.max_steps=4", "checkpoint.every_n_steps=2", *extra]))


@pytest.fixture(scope="module")
def image_teacher(tmp_path_factory):

    return _teacher(compose, tmp_path_factory.mktemp("teacher") / "image", "diffusion=edm")


@pytest.mark.slow
def test_consistency_student_of_an_image_teacher_samples_in_1_2_4_steps(compose_cfg, image_teacher, tmp_path,
                                                                        capsys):

    res = _distill(compose_cfg, image_teacher, tmp_path / "cd")
    assert res["global_step"] == 4
    ckpt = load_checkpoint(tmp_path / "cd" / "checkpoints" / "last.ckpt")
    d = ckpt["hyper_parameters"]["distill"]
    assert d["steps"] == [1, 2, 4] and d["teacher"]["sha256"] == file_sha256(image_teacher)
    assert any(k.startswith("target.module.") for k in ckpt["state_dict"])  # the target network is saved
    assert ckpt["run_config"]["domain"]["name"] == "image"
    for steps in (1, 2, 4):
        sample_main([f"ckpt={tmp_path / 'cd' / 'checkpoints' / 'last.ckpt'}", "num_samples=2", f"steps={steps}",
                     f"out={tmp_path / f's{steps}'}", "seed=0", "device=cpu"])
        assert len(list((tmp_path / f"s{steps}").glob("*.png"))) == 2
    with pytest.raises(SystemExit) as e:
        sample_main([f"ckpt={tmp_path / 'cd' / 'checkpoints' / 'last.ckpt'}", "steps=3", f"out={tmp_path / 's3'}"])
    assert e.value.code == 2 and not (tmp_path / "s3").exists()
    assert "distilled for 1, 2 or 4 steps" in capsys.readouterr().err


@pytest.mark.slow
def test_distillation_resumes_exactly(compose_cfg, image_teacher, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _distill(compose_cfg, image_teacher, a, "checkpoint.keep=-1")
    _distill(compose_cfg, image_teacher, b, f"ckpt_path={a / 'checkpoints' / 'step0000002.ckpt'}")
    ca = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    cb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert ca.keys() == cb.keys() and int(cb["target.num_updates"]) == 4
    for k, v in ca.items():  # weights, EMA and target network
        torch.testing.assert_close(cb[k], v, atol=1e-6, rtol=0, msg=f"mismatch in {k}")


@pytest.mark.slow
def test_progressive_student_supports_its_last_phase_only(compose_cfg, image_teacher, tmp_path):
    res = _distill(compose_cfg, image_teacher, tmp_path / "pd", "distill.method=progressive", "distill.steps=[4]")
    assert res["global_step"] == 4
    student = tmp_path / "pd" / "checkpoints" / "last.ckpt"
    sample_main([f"ckpt={student}", "num_samples=2", "steps=4", f"out={tmp_path / 's'}", "seed=0", "device=cpu"])
    with pytest.raises(SystemExit) as e:
        sample_main([f"ckpt={student}", "steps=1", f"out={tmp_path / 's1'}"])
    assert e.value.code == 2


# the smallest data of each domain that still runs every part (the student adopts the teacher's data and metrics):
# short 8 kHz clips; 16^3 phantom volumes, two per batch, two volumes for the sample metrics
SMALL = {"audio": ["datamodule.builtin_size=16", "datamodule.sample_rate=8000", "datamodule.clip_seconds=0.128",
                   "datamodule.batch_size=4"],
         "mri": ["datamodule.shape=[16,16,16]", "datamodule.builtin_size=6", "datamodule.batch_size=2",
                 "metrics.num_samples=2"]}


@pytest.mark.slow
@pytest.mark.parametrize("domain,kind", [("audio", "*.wav"), ("mri", "*.nii.gz")])
def test_consistency_distillation_of_audio_and_mri_teachers(compose_cfg, tmp_path, domain, kind):
    teacher = _teacher(compose_cfg, tmp_path / "teacher", f"domain={domain}", *SMALL[domain])
    # the student takes the teacher's domain, data and network: no domain= here
    res = _distill(compose_cfg, teacher, tmp_path / "cd")
    assert res["global_step"] == 4 and math.isfinite(res["metrics"]["train/loss"])
    sample_main([f"ckpt={tmp_path / 'cd' / 'checkpoints' / 'last.ckpt'}", "num_samples=1", "steps=2",
                 f"out={tmp_path / 's'}", "seed=0", "device=cpu"])
    written = list((tmp_path / "s").glob(kind))
    assert len(written) == 1
    if domain == "mri":  # the teacher's data, adopted: a volume of its shape
        assert nib.load(written[0]).shape == (16, 16, 16)
    else:
        data, rate = sf.read(written[0])
        assert rate == 8000 and len(data) == 1024


def test_missing_teacher_is_one_sentence(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"distill\.teacher="):
        train(compose_cfg(SMOKE + ["stage=distill", f"paths.output_dir={tmp_path / 'x'}"]))
    with pytest.raises(ConfigError, match="does not exist"):
        train(compose_cfg(SMOKE + ["stage=distill", f"distill.teacher={tmp_path / 'none.ckpt'}",
                                   f"paths.output_dir={tmp_path / 'y'}"]))


# ---- the tools with a student (untrained tiny networks: the properties, not the quality) ----------------------
def make_student(path, domain, data_shape, method="consistency", **datamodule):
    """A student checkpoint laid out as stage=distill writes it, from an untrained tiny teacher."""

    torch.manual_seed(0)
    backbone = dict(name="unet", spatial_dims=len(data_shape) - 1, in_channels=data_shape[0], preset="tiny")
    teacher = DiffusionModule(backbone=backbone, diffusion=DIFFUSION, data_shape=list(data_shape))
    distill = {**check_distill({"method": method, "steps": [4] if method == "progressive" else [1, 2, 4]}),
               "sigma_min": 0.01, "sigma_max": 150.0, "teacher": {"file": "t.ckpt", "sha256": "0" * 64, "step": 0}}
    student = StudentModule(**dict(teacher.hparams), distill=distill)
    student.start_from(teacher)
    data = {"image": {"resolution": data_shape[-1], "channels": data_shape[0]},
            "mri": {"mode": "slice", "intensity_scaling": "zero_anchored_percentile", "intensity_percentile": 99.5,
                    "slice_axis": 2}}[domain]
    torch.save({"state_dict": student.state_dict(), "hyper_parameters": dict(student.hparams),
                "run_config": {"domain": {"name": domain}, "datamodule": {**data, **datamodule}}}, path)
    return path


def test_student_checkpoint_rebuilds_without_its_teacher(tmp_path):

    module, _ = module_from_checkpoint(make_student(tmp_path / "s.ckpt", "image", [1, 16, 16]))
    assert module.distill_cfg["steps"] == [1, 2, 4] and module.diffusion_cfg["sampler"] == "consistency"
    assert module.sample(2, steps=1, seed=0).shape == (2, 1, 16, 16)
    with pytest.raises(ConfigError, match="distilled for 1, 2 or 4 steps"):
        module.sample(2, steps=8)


@pytest.mark.parametrize("method", ["consistency", "progressive"])
def test_mri_reconstruction_with_a_student_keeps_the_measured_kspace(tmp_path, method):

    ckpt = make_student(tmp_path / "s.ckpt", "mri", [1, 16, 16], method)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 16, 16, generator=g).to(torch.complex64)
    mask = undersampling_mask("random", 16, 4, 0.125, 1)
    kspace = fft2c(img) * mask
    rec = Reconstructor.from_checkpoint(ckpt, device="cpu")
    assert rec.steps == 4 and rec.fresh_noise == (method == "consistency")
    k_out = fft2c(torch.from_numpy(rec.run(kspace.numpy(), mask.numpy()).complex_image))
    measured = mask.expand(2, 16, 16)
    assert float((k_out - kspace)[measured].abs().max()) <= 1e-4 * float(kspace.abs().max())
    with pytest.raises(ConfigError, match="distilled for"):
        Reconstructor.from_checkpoint(ckpt, device="cpu", steps=8)


def test_restoration_with_a_consistency_student_keeps_every_measured_pixel(tmp_path):

    prior = Prior.from_checkpoint(make_student(tmp_path / "s.ckpt", "image", [3, 16, 16]), ("image", "audio"),
                                  "restoration", "cpu")
    y = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(4)) * 2 - 1
    keep = torch.from_numpy(~box_mask((24, 20), [(5, 6, 8, 10)]))[None, None]
    for steps in (1, 2, 4):
        out = Restorer(prior, steps=steps).restore(Problem("inpaint", y * keep, (24, 20), keep=keep))
        assert torch.allclose(out * keep, y * keep, atol=1e-6)


def test_anomaly_with_students_one_step_or_refused(tmp_path):

    prior = Prior.from_checkpoint(make_student(tmp_path / "c.ckpt", "image", [1, 16, 16]), ("image",), "anomaly", "cpu")
    detector = Detector(prior, noise_level=0.3, draws=1)
    assert len(detector.sigmas) == 2 and detector.sigmas[-1] == 0  # one network call per draw
    assert detector.map(torch.rand(1, 1, 16, 16) * 2 - 1).shape == (1, 16, 16)
    with pytest.raises(ConfigError, match="no probability-flow ODE"):
        detector.bits_per_dim(torch.zeros(1, 1, 16, 16))
    pd = Prior.from_checkpoint(make_student(tmp_path / "p.ckpt", "image", [1, 16, 16], "progressive"), ("image",),
                               "anomaly", "cpu")
    with pytest.raises(ConfigError, match="progressive student"):
        Detector(pd)


@pytest.mark.slow
def test_class_conditional_latent_teacher_with_guidance_distilled_in(compose_cfg, tmp_path):
    """Latent space and class conditioning pass through: the student keeps the teacher's autoencoder (copied, so
    sampling needs neither the teacher nor the autoencoder file) and its labels, with guidance 2 distilled in."""
    d = load_digits()
    for digit in (0, 1):
        (tmp_path / "data" / str(digit)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(d.target == digit)[:8]):
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16)).save(
                tmp_path / "data" / str(digit) / f"{k}.png")
    data = [f"datamodule.path={tmp_path / 'data'}", "datamodule.resolution=16", "datamodule.channels=1",
            "datamodule.batch_size=4", "datamodule.random_flip=false"]
    train(compose_cfg(SMOKE + data + ["stage=autoencoder", f"paths.output_dir={tmp_path / 'ae'}",
                                      "trainer.max_steps=4", "sampling.num=0"]))
    teacher = _teacher(compose_cfg, tmp_path / "teacher", *data, "cond=class",
                       f"latent.autoencoder={tmp_path / 'ae' / 'checkpoints' / 'last.ckpt'}")
    res = _distill(compose_cfg, teacher, tmp_path / "cd", "distill.guidance=2.0")
    assert res["global_step"] == 4
    student = tmp_path / "cd" / "checkpoints" / "last.ckpt"
    module, ckpt = module_from_checkpoint(student)
    assert hasattr(module, "latent") and module.num_classes == 2
    assert ckpt["hyper_parameters"]["distill"]["guidance"] == 2.0
    x = module.sample(2, steps=2, seed=0, label=torch.tensor([0, 1]))
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
