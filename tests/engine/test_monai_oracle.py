"""Schedules and DDPM/DDIM steps agree with MONAI's schedulers on the same inputs."""

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from src.diffusion.objectives import DDPMObjective
from src.diffusion.samplers import ddim_step, sample_ddpm
from src.diffusion.schedules import DiscreteSchedule

MONAI_NAMES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta", "sigmoid": "sigmoid_beta",
               "cosine": "cosine"}


@pytest.mark.parametrize("name", list(MONAI_NAMES))
def test_schedule_matches_monai(name):
    ours = DiscreteSchedule(name, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, schedule=MONAI_NAMES[name])
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod.float(), rtol=1e-4, atol=1e-6)


def test_sigma_t_roundtrip():
    s = DiscreteSchedule("linear", 1000)
    t = torch.tensor([0.0, 1.5, 10.0, 500.25, 999.0])
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t)), t, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("steps,eta", [(10, 0.0), (20, 0.0), (25, 0.7), (50, 1.0)])
def test_ddim_step_matches_monai(steps, eta):
    ref = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", clip_sample=False)
    ref.set_timesteps(steps)
    ab = DiscreteSchedule("linear", 1000).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    for t in (999, 700, 300, 40, 5):
        sample, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        prev = t - 1000 // steps
        abar, abar_prev = ab[t].item(), (ab[prev].item() if prev >= 0 else 1.0)
        x0 = (sample - (1 - abar) ** 0.5 * eps) / abar**0.5
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(t))
        ours = ddim_step(x0, eps, abar, abar_prev, eta, noise)
        theirs, _ = ref.step(eps, t, sample, eta=eta, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_ddpm_sampler_trajectory_matches_monai(prediction):
    """Full ancestral chain through our sigma grid and sigma->t mapping equals MONAI's DDPM loop."""
    T = 50
    obj = DDPMObjective("linear", T, prediction=prediction, beta_start=1e-3, beta_end=0.2)
    monai_pred = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[prediction]
    ref = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta", beta_start=1e-3, beta_end=0.2,
                        clip_sample=False, prediction_type=monai_pred)
    ref.set_timesteps(T)

    def net(z, noise_level, cond):  # any smooth function of (z, t) stands in for a network
        t = noise_level.reshape(-1, 1, 1, 1) * T
        return 0.5 * torch.tanh(z) + 0.01 * t * z.mean()

    shape = (3, 2, 4, 4)
    z0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    g_ref = torch.Generator().manual_seed(2)
    z = z0.clone()
    for t in ref.timesteps:
        out = net(z, torch.full((shape[0],), float(t) / T), None)
        z, _ = ref.step(out, int(t), z, generator=g_ref)

    sigmas = obj.sampling_sigmas(T)
    ours = sample_ddpm(obj.denoiser(net), z0 * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                       generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, z, rtol=2e-3, atol=2e-3)
