"""Samplers as pure functions ``sample_x(denoiser, x, sigmas, ...)`` (k-diffusion's shape).

``denoiser(x, sigma)`` returns the estimate of x0 for ``x = x0 + sigma * eps`` (the VE view); ``x``
starts as ``randn * sigmas[0]`` and ``sigmas`` is descending and ends in 0. Every sampler returns the
final sample. None of them knows about networks, domains or Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from src.registry import Registry

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _sig(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(x.device, torch.float32).expand(x.shape[0])


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, abar: float, abar_prev: float, eta: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """One DDIM update in the variance-preserving view (Song et al. 2021, eq. 12).

    ``eta = 1`` is DDPM's ancestral step with the posterior ("fixed small") variance.
    """
    var = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
    std = eta * math.sqrt(max(var, 0.0))
    z = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - std**2, 0.0)) * eps
    if noise is not None and std > 0:
        z = z + std * noise
    return z


def sample_ddim(denoiser: Denoiser, x, sigmas, eta: float = 0.0, generator=None, callback=None):
    """DDIM (eta = 0 deterministic; eta > 0 stochastic) over any sigma grid."""
    sigmas = sigmas.double().cpu()
    z = x / math.sqrt(1 + sigmas[0].item() ** 2)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        x_ve = z * math.sqrt(1 + s**2)
        x0 = denoiser(x_ve, _sig(sigmas[i], z))
        eps = (x_ve - x0) / s
        noise = _randn(z, generator) if (eta > 0 and s_next > 0) else None
        z = ddim_step(x0, eps, 1 / (1 + s**2), 1 / (1 + s_next**2), eta, noise)
        if callback is not None:
            callback(i, z, x0)
    return z


def sample_ddpm(denoiser: Denoiser, x, sigmas, generator=None, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020), posterior variance; equal to DDIM with eta = 1."""
    return sample_ddim(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback)


def sample_euler(denoiser: Denoiser, x, sigmas, callback=None, **_):
    """Euler on the probability-flow ODE dx/dsigma = (x - D) / sigma.

    In flow-matching time (t = sigma / (1 + sigma), x_t = x / (1 + sigma)) this is exactly the Euler
    step x_t' = x_t + (t' - t) v of rectified flow, so one function serves both.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = denoiser(x, _sig(s, x))
        x = x + (x - den) / s.item() * (s_next - s).item()
        if callback is not None:
            callback(i, x, den)
    return x


def sample_heun(denoiser: Denoiser, x, sigmas, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, callback=None):
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 2; deterministic when s_churn = 0)."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * _randn(x, generator)
        den = denoiser(x, _sig(torch.tensor(s_hat), x))
        d = (x - den) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d2 = (x_next - denoiser(x_next, _sig(torch.tensor(s_next), x))) / s_next
            x_next = x + (s_next - s_hat) * (d + d2) / 2
        x = x_next
        if callback is not None:
            callback(i, x, den)
    return x


def sample_pc(denoiser: Denoiser, x, sigmas, n_corrector: int = 1, snr: float = 0.16, predictor: bool = True,
              generator=None, callback=None):
    """Predictor-corrector sampling for VE SDEs (Song et al. 2021, Algorithms 2-3).

    Predictor: reverse-diffusion step; corrector: ``n_corrector`` Langevin steps with step size set by the
    signal-to-noise ratio ``snr``. With ``predictor=False`` this is annealed Langevin dynamics
    (Song & Ermon 2019). The last step returns the denoised mean, as the reference implementation does.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        sig = _sig(torch.tensor(s), x)
        for _ in range(n_corrector):
            score = (denoiser(x, sig) - x) / s**2
            z = _randn(x, generator)
            g_norm = score.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            step = 2 * (snr * z_norm / g_norm.clamp_min(1e-12)) ** 2
            x = x + step * score + (2 * step).sqrt() * z
        den = denoiser(x, sig)
        if s_next == 0:
            x = den
        elif predictor:
            score = (den - x) / s**2
            x = x + (s**2 - s_next**2) * score + math.sqrt(s**2 - s_next**2) * _randn(x, generator)
        if callback is not None:
            callback(i, x, den)
    return x


def sample_langevin(denoiser: Denoiser, x, sigmas, n_corrector: int = 10, snr: float = 0.16, generator=None,
                    callback=None):
    """Annealed Langevin dynamics (Song & Ermon 2019): corrector steps only, annealed down the sigma grid."""
    return sample_pc(denoiser, x, sigmas, n_corrector=n_corrector, snr=snr, predictor=False,
                     generator=generator, callback=callback)


def ancestral_step(s: float, s_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the move s -> s_next into a deterministic step to ``s_down`` and fresh noise of std ``s_up``.

    ``s_down**2 + s_up**2 = s_next**2``; ``eta = 1`` gives the posterior (DDPM) noise, ``eta = 0`` no noise.
    """
    if s_next == 0:
        return 0.0, 0.0
    s_up = min(s_next, eta * math.sqrt(max(s_next**2 * (s**2 - s_next**2) / s**2, 0.0)))
    return math.sqrt(max(s_next**2 - s_up**2, 0.0)), s_up


def sample_euler_ancestral(denoiser: Denoiser, x, sigmas, eta: float = 1.0, s_noise: float = 1.0,
                           generator=None, callback=None):
    """Euler ancestral: an Euler step down to ``s_down``, then noise back up to ``s_next`` (k-diffusion's form)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        den = denoiser(x, _sig(sigmas[i], x))
        s_down, s_up = ancestral_step(s, s_next, eta)
        # the Euler step written as its exact-for-constant-D form (s_down/s) x + (1 - s_down/s) D
        x = (s_down / s) * x + (1 - s_down / s) * den
        if s_up > 0:
            x = x + s_up * s_noise * _randn(x, generator)
        if callback is not None:
            callback(i, x, den)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x, sigmas, callback=None, **_):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep 2nd order in lambda = -log(sigma).

    Data prediction with an exponential integrator, so the step is the same whether the model was trained
    in the VE, VP or flow view, and it stays bounded however large sigma_max is (no 1/sigma_next factor).
    The first step and the step to sigma = 0 are first order (DDIM).
    """
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, eta=0.0, callback=callback)  # its noise-free case


def sample_dpmpp_2m_sde(denoiser: Denoiser, x, sigmas, eta: float = 1.0, s_noise: float = 1.0, generator=None,
                        callback=None):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, the SDE solver; midpoint form of k-diffusion).

    ``eta = 0`` is the ODE solver above (the multistep correction ``(den - prev_den) / (2 r)`` of Algorithm 2);
    ``eta = 1`` follows the reverse SDE, injecting noise at every step.
    """
    sig = sigmas.double().cpu()
    prev_den, h_prev = None, None
    for i in range(len(sig) - 1):
        s, s_next = sig[i].item(), sig[i + 1].item()
        den = denoiser(x, _sig(sigmas[i], x))
        if s_next == 0:
            x = den
        else:
            h = math.log(s / s_next)
            eh = eta * h
            x = (s_next / s) * math.exp(-eh) * x - math.expm1(-h - eh) * den
            if prev_den is not None:
                r = h_prev / h
                x = x - 0.5 * math.expm1(-h - eh) / r * (den - prev_den)
            if eta > 0:
                x = x + _randn(x, generator) * (s_next * math.sqrt(-math.expm1(-2 * eh)) * s_noise)
            h_prev = h
        prev_den = den
        if callback is not None:
            callback(i, x, den)
    return x


def sample_consistency(denoiser: Denoiser, x, sigmas, generator=None, callback=None, **_):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) for a consistency function
    ``f(x, sigma)`` (the denoiser here): jump to the data, ``x0 = f(x, sigma_i)``, then noise back up to the
    next level with fresh noise, ``x = x0 + sigma_{i+1} z``; one network call per step, the last ``x0`` returned.
    """
    x0 = x
    for i in range(len(sigmas) - 1):
        x0 = denoiser(x, _sig(sigmas[i], x))
        s_next = sigmas[i + 1].item()
        if s_next > 0:
            x = x0 + s_next * _randn(x0, generator)
        if callback is not None:
            callback(i, x, x0)
    return x0


SAMPLERS = Registry("sampler", {
    "consistency": sample_consistency,
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "pc": sample_pc,
    "langevin": sample_langevin,
})


def get_sampler(name: str) -> Callable:
    return SAMPLERS.get(name)


def clipped(denoiser: Denoiser, lo: float, hi: float) -> Denoiser:
    """Clamp the x0 estimate to the data range (helps few-step DDPM/DDIM on bounded data)."""
    return lambda x, sigma: denoiser(x, sigma).clamp(lo, hi)
