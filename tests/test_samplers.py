"""Every sampler against the closed-form optimal denoiser of Gaussian data (no network involved)."""

import pytest
import torch

from src.diffusion.objectives import DDPMObjective, EDMObjective, FlowMatchingObjective, VEObjective
from src.diffusion.samplers import SAMPLERS

MU = torch.tensor([0.5, -0.3, 0.0, 0.2])
STD = torch.tensor([0.2, 0.5, 0.8, 0.35])


def gaussian_denoiser(x, sigma):
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(MU, diag(STD^2))."""
    s2 = sigma.reshape(-1, 1) ** 2
    var = STD**2
    return MU + var / (var + s2) * (x - MU)


def mixture_denoiser(x, sigma):
    """Posterior mean for a two-component 1-D Gaussian mixture at +-1 with std 0.2 (equal weights)."""
    means = torch.tensor([-1.0, 1.0])
    v = 0.04
    s2 = sigma.reshape(-1, 1) ** 2
    logw = -((x - means) ** 2) / (2 * (v + s2))
    w = torch.softmax(logw, dim=1)
    comp = means + v / (v + s2) * (x - means)
    return (w * comp).sum(1, keepdim=True)


# (sampler, sigma grid, options, tolerance on mean/std); grids come from the objectives that use them
CASES = [
    ("ddpm", DDPMObjective("linear", 1000).sampling_sigmas(200), {}, 0.03),
    ("ddim", DDPMObjective("cosine", 1000).sampling_sigmas(50), {"eta": 0.0}, 0.02),
    ("ddim", DDPMObjective("sigmoid", 1000).sampling_sigmas(100), {"eta": 0.5}, 0.03),
    ("euler", FlowMatchingObjective().sampling_sigmas(100), {}, 0.02),
    ("heun", EDMObjective().sampling_sigmas(32), {}, 0.02),
    ("heun", EDMObjective().sampling_sigmas(32), {"s_churn": 10.0}, 0.03),
    ("pc", VEObjective(sigma_max=20.0).sampling_sigmas(200), {"n_corrector": 1}, 0.04),
    ("langevin", VEObjective(sigma_max=20.0).sampling_sigmas(100), {"n_corrector": 10}, 0.03),
]


@pytest.mark.parametrize("name,sigmas,opts,tol", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_sampler_reproduces_gaussian_moments(name, sigmas, opts, tol):
    g = torch.Generator().manual_seed(0)
    n = 20000
    x = torch.randn(n, 4, generator=g) * sigmas[0]
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas, generator=g, **opts)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.mean(0), MU, atol=tol), (out.mean(0), MU)
    assert torch.allclose(out.std(0), STD, atol=tol, rtol=0.05), (out.std(0), STD)


@pytest.mark.parametrize("name,sigmas,opts,tol", [c for c in CASES if c[0] in ("heun", "ddpm", "pc")])
def test_sampler_recovers_mixture_modes(name, sigmas, opts, tol):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8000, 1, generator=g) * sigmas[0]
    out = SAMPLERS[name](mixture_denoiser, x, sigmas, generator=g, **opts)
    frac_pos = (out > 0).float().mean().item()
    assert abs(frac_pos - 0.5) < 0.05
    near = ((out.abs() - 1).abs() < 0.6).float().mean().item()
    assert near > 0.97
    pos = out[out > 0]
    assert abs(pos.mean().item() - 1.0) < 0.05 and abs(pos.std().item() - 0.2) < 0.05


def test_euler_equals_flow_matching_euler_in_t():
    """The sigma-space Euler step is rectified flow's Euler step x_t' = x_t + (t' - t) v."""
    obj = FlowMatchingObjective(t_max=0.999)
    sigmas = obj.sampling_sigmas(10)
    torch.manual_seed(0)
    net = lambda xt, t, cond: torch.sin(3 * xt) + t.reshape(-1, 1)  # noqa: E731
    x_ve = torch.randn(16, 3) * sigmas[0]
    ours = SAMPLERS["euler"](obj.denoiser(net), x_ve.clone(), sigmas)
    ts = sigmas / (1 + sigmas)
    xt = x_ve / (1 + sigmas[0])
    for i in range(len(ts) - 1):
        xt = xt + (ts[i + 1] - ts[i]) * net(xt, ts[i].expand(16), None)
    assert torch.allclose(ours, xt, atol=1e-4)
