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


# ---- every sampler on every objective's grid -----------------------------------------------------------
GRIDS = {"ddpm": DDPMObjective(), "edm": EDMObjective(), "flow": FlowMatchingObjective(), "ve": VEObjective()}
# steps at which each sampler has converged on the Gaussian; the stochastic ones need more
CONVERGED_STEPS = {"ddpm": 200, "euler_a": 200, "dpmpp_2m_sde": 200, "pc": 200, "langevin": 200, "heun": 50}


def _moments_and_saturation(out):
    z = ((out - MU) / STD).abs()
    return (out.mean(0) - MU).abs().max().item(), (out.std(0) / STD - 1).abs().max().item(), (z > 5).float().mean()


# "consistency" jumps with a consistency function, not a denoiser: tests/stages/test_distill.py checks it
# with the exact one
DENOISER_SAMPLERS = [s for s in SAMPLERS if s != "consistency"]


@pytest.mark.parametrize("objective", list(GRIDS))
@pytest.mark.parametrize("name", DENOISER_SAMPLERS)
def test_every_sampler_on_every_objective_grid(name, objective):
    sigmas = GRIDS[objective].sampling_sigmas(CONVERGED_STEPS.get(name, 100))
    g = torch.Generator().manual_seed(0)
    out = SAMPLERS[name](gaussian_denoiser, torch.randn(10000, 4, generator=g) * sigmas[0], sigmas, generator=g)
    assert torch.isfinite(out).all()
    mean_err, std_rel_err, saturated = _moments_and_saturation(out)
    assert mean_err < 0.03 and std_rel_err < 0.1, (mean_err, std_rel_err)
    assert saturated < 1e-3  # a Gaussian puts 6e-7 of its mass beyond 5 std


@pytest.mark.parametrize("objective", ["edm", "flow", "ve"])
@pytest.mark.parametrize("name", [s for s in DENOISER_SAMPLERS if s != "langevin"])  # corrector-only: many levels
def test_few_steps_stay_bounded(name, objective):
    """16 steps: discretisation error, but no blow-up (Heun on the flow grid from sigma ~ 1e4 doubled the std)."""
    sigmas = GRIDS[objective].sampling_sigmas(16)
    g = torch.Generator().manual_seed(0)
    out = SAMPLERS[name](gaussian_denoiser, torch.randn(10000, 4, generator=g) * sigmas[0], sigmas, generator=g)
    assert torch.isfinite(out).all()
    mean_err, std_rel_err, saturated = _moments_and_saturation(out)
    assert mean_err < 0.05 and std_rel_err < 0.5, (mean_err, std_rel_err)
    assert saturated < 2e-3


def test_flow_grid_starts_at_sigma_max():
    obj = FlowMatchingObjective()
    sigmas = obj.sampling_sigmas(8)
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-4) and sigmas[-1].item() == 0.0
    ts = sigmas / (1 + sigmas)
    assert torch.allclose(ts[:-1] - ts[1:], (ts[0] / 8).expand(8), atol=1e-6)  # still uniform in t


def _exact_ode_map(x, s0):
    """The probability-flow ODE of Gaussian data from sigma = s0 to 0, in closed form."""
    return MU + STD / (STD**2 + s0**2).sqrt() * (x - MU)


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_ode_solver_convergence_order(name, order):
    """Path-wise error against the closed-form ODE solution shrinks like steps^-order."""
    g = torch.Generator().manual_seed(0)
    obj = EDMObjective(sigma_max=20.0)
    x = torch.randn(512, 4, generator=g) * 20.0
    exact = _exact_ode_map(x, torch.tensor(20.0))
    errs = [(SAMPLERS[name](gaussian_denoiser, x.clone(), obj.sampling_sigmas(n)) - exact).abs().max().item()
            for n in (16, 32, 64)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(r > 2 ** order * 0.75 for r in ratios), (errs, ratios)


def test_dpmpp_2m_matches_dpm_solver_formula():
    """One 2M step by hand (Lu et al. 2022, Algorithm 2, data prediction in lambda = -log sigma)."""
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.0])
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3)) * 10
    calls = []

    def den(x_, s):
        calls.append(x_.clone())
        return gaussian_denoiser(x_, s)

    SAMPLERS["dpmpp_2m"](den, x.clone(), sigmas)
    d0 = gaussian_denoiser(x, sigmas[0].expand(64))
    x1 = 0.3 * x + 0.7 * d0  # first step: DDIM
    assert torch.allclose(calls[1], x1, atol=1e-5)
    lam = -sigmas[:3].log()
    h, h_last = lam[2] - lam[1], lam[1] - lam[0]
    r = h_last / h
    d1 = gaussian_denoiser(x1, sigmas[1].expand(64))
    dd = (1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0
    x2 = (sigmas[2] / sigmas[1]) * x1 - torch.expm1(-h) * dd
    assert torch.allclose(calls[2], x2, atol=1e-5)


def test_euler_ancestral_eta_zero_is_euler():
    sigmas = EDMObjective().sampling_sigmas(12)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(4)) * sigmas[0]
    a = SAMPLERS["euler_a"](gaussian_denoiser, x.clone(), sigmas, eta=0.0)
    b = SAMPLERS["euler"](gaussian_denoiser, x.clone(), sigmas)
    assert torch.allclose(a, b, atol=1e-5)


def test_dpmpp_2m_sde_eta_zero_is_ode_solver():
    sigmas = EDMObjective().sampling_sigmas(12)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(5)) * sigmas[0]
    a = SAMPLERS["dpmpp_2m_sde"](gaussian_denoiser, x.clone(), sigmas, eta=0.0)
    b = SAMPLERS["dpmpp_2m"](gaussian_denoiser, x.clone(), sigmas)
    # the SDE form's correction is the midpoint variant: 0.5 (1 - e^-h) / r vs (1 - e^-h) / (2 r); same thing
    assert torch.allclose(a, b, atol=1e-5)
