"""Training objectives: how noise is added, what the network predicts, and how the loss is weighted.

Every objective exposes the same three things, so the LightningModule never asks which one it has:

* ``loss(net, x0, u, noise, cond)`` -> per-sample loss. ``u`` in (0, 1) picks the noise level through
  the inverse CDF of the objective's training density, so validation can evaluate fixed quantiles.
* ``denoiser(net, cond)`` -> ``D(x, sigma)``, the denoised estimate in the variance-exploding view
  ``x = x0 + sigma * eps`` that every sampler uses (k-diffusion's convention).
* ``sampling_sigmas(steps)`` -> a descending sigma grid ending in 0.

The network is always called as ``net(x, noise_level, cond)`` with ``noise_level`` of shape ``(B,)``,
roughly in [-2, 1]; backbones scale it for their own embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from src.errors import ConfigError, positive_int
from src.registry import Registry

from .schedules import (
    DiscreteSchedule,
    geometric_sigmas,
    karras_sigmas,
    lognormal_sigma,
    normal_icdf,
)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector to broadcast over ``(B, C, *spatial)``."""
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


class DDPMObjective:
    """Discrete variance-preserving diffusion (Ho et al. 2020) with eps, v or x0 prediction.

    ``min_snr_gamma`` turns on Min-SNR-gamma loss weighting (Hang et al. 2023).
    """

    default_sampler = "ddim"

    def __init__(self, schedule: str = "linear", num_timesteps: int = 1000, prediction: str = "eps",
                 min_snr_gamma: float | None = None, beta_start: float = 1e-4, beta_end: float = 2e-2):
        if prediction not in ("eps", "v", "x0"):
            raise ConfigError(f"diffusion.prediction must be one of eps, v, x0; got '{prediction}'.")
        self.schedule = DiscreteSchedule(schedule, num_timesteps, beta_start, beta_end)
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma
        self.T = num_timesteps

    def _coeffs(self, t: torch.Tensor, x: torch.Tensor):
        abar = self.schedule.alphas_cumprod.to(x.device)[t].float()
        return abar.sqrt(), (1 - abar).sqrt(), abar / (1 - abar)

    def loss(self, net, x0, u, noise, cond=None):
        t = (u * self.T).long().clamp(0, self.T - 1)
        a, s, snr = self._coeffs(t, x0)
        xt = _bcast(a, x0) * x0 + _bcast(s, x0) * noise
        out = net(xt, t.float() / self.T, cond)
        if self.prediction == "eps":
            target, base = noise, snr
        elif self.prediction == "v":
            target, base = _bcast(a, x0) * noise - _bcast(s, x0) * x0, snr + 1
        else:
            target, base = x0, torch.ones_like(snr)
        loss = _per_sample_mse(out, target)
        if self.min_snr_gamma:
            # min(SNR, gamma) on the x0-space loss, which is `base` times smaller than this one (Hang et al. 2023)
            loss = loss * snr.clamp(max=self.min_snr_gamma) / base
        return loss

    def denoiser(self, net, cond=None) -> Denoiser:
        def d(x, sigma):
            abar = 1.0 / (1.0 + sigma.float() ** 2)
            a, s = _bcast(abar.sqrt(), x), _bcast((1 - abar).sqrt(), x)
            z = x * a
            out = net(z, self.schedule.sigma_to_t(sigma) / self.T, cond)
            if self.prediction == "eps":
                return (z - s * out) / a
            if self.prediction == "v":
                return a * z - s * out
            return out

        return d

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        return self.schedule.sampling_sigmas(steps)


class EDMObjective:
    """EDM preconditioning and loss weighting (Karras et al. 2022, Table 1)."""

    default_sampler = "dpmpp_2m"

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def precond(self, sigma: torch.Tensor):
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def loss(self, net, x0, u, noise, cond=None):
        sigma = lognormal_sigma(u, self.p_mean, self.p_std).to(x0.device)
        c_skip, c_out, c_in, c_noise = self.precond(sigma)
        x = x0 + _bcast(sigma, x0) * noise
        f = net(_bcast(c_in, x) * x, c_noise, cond)
        # lambda(sigma) * c_out^2 = 1, so the weighted D-loss equals a plain loss on F's target
        target = (x0 - _bcast(c_skip, x) * x) / _bcast(c_out, x)
        return _per_sample_mse(f, target)

    def denoiser(self, net, cond=None) -> Denoiser:
        def d(x, sigma):
            c_skip, c_out, c_in, c_noise = self.precond(sigma.float())
            return _bcast(c_skip, x) * x + _bcast(c_out, x) * net(_bcast(c_in, x) * x, c_noise, cond)

        return d

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, self.rho)


class FlowMatchingObjective:
    """Rectified flow / flow matching: ``x_t = (1 - t) x0 + t eps``, the network predicts ``eps - x0``.

    ``time_density`` is ``uniform`` (Liu et al. 2022) or ``logit_normal`` (Esser et al. 2024).
    In the VE view ``sigma = t / (1 - t)`` and ``x_ve = x_t / (1 - t)``.

    Sampling starts at ``sigma_max`` (t = sigma_max / (1 + sigma_max)), where, as in EDM, the data is
    negligible against the noise. Starting at the training clamp ``t_max`` (sigma ~ 1e4) instead makes the
    first step shrink sigma by a factor of ~1e4 / steps, which second-order and Langevin steps cannot take:
    Heun's trapezoid weights the end-point slope by ``(s - s') / (2 s')`` and amplifies the denoiser's error
    there (saturated samples; docs/studies/sampling.md has the measurement).
    """

    default_sampler = "dpmpp_2m"

    def __init__(self, time_density: str = "logit_normal", t_max: float = 0.9999, sigma_max: float = 80.0):
        if time_density not in ("uniform", "logit_normal"):
            raise ConfigError(f"diffusion.time_density must be uniform or logit_normal; got '{time_density}'.")
        if not 0 < sigma_max <= t_max / (1 - t_max):
            raise ConfigError(f"diffusion.sigma_max must be in (0, t_max / (1 - t_max)]; got {sigma_max}.")
        self.time_density = time_density
        self.t_max = t_max
        self.sigma_max = sigma_max

    def _t(self, u):
        if self.time_density == "uniform":
            return u.clamp(1e-5, self.t_max)
        return torch.sigmoid(normal_icdf(u.clamp(1e-6, 1 - 1e-6)))

    def loss(self, net, x0, u, noise, cond=None):
        t = self._t(u).to(x0.device)
        xt = _bcast(1 - t, x0) * x0 + _bcast(t, x0) * noise
        return _per_sample_mse(net(xt, t, cond), noise - x0)

    def denoiser(self, net, cond=None) -> Denoiser:
        def d(x, sigma):
            t = sigma.float() / (1 + sigma.float())
            xt = x * _bcast(1 - t, x)
            return xt - _bcast(t, x) * net(xt, t, cond)

        return d

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        t = torch.linspace(self.sigma_max / (1 + self.sigma_max), 0, steps + 1, dtype=torch.float64)
        return (t / (1 - t)).to(torch.float32)


class VEObjective:
    """Score-based variance-exploding diffusion (Song & Ermon 2019; Song et al. 2021, SMLD / VE SDE).

    Denoising score matching with lambda(sigma) = sigma^2; the score is ``(D(x, sigma) - x) / sigma^2``.
    Inputs are scaled by 1/sqrt(sigma^2 + sigma_data^2) so the network sees unit-scale inputs (EDM's c_in).
    """

    default_sampler = "dpmpp_2m"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, sigma_data: float = 0.5):
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def _sigma(self, u):
        return torch.exp(math.log(self.sigma_min) + u * (math.log(self.sigma_max) - math.log(self.sigma_min)))

    def loss(self, net, x0, u, noise, cond=None):
        sigma = self._sigma(u).to(x0.device)
        x = x0 + _bcast(sigma, x0) * noise
        c_in = 1 / (sigma**2 + self.sigma_data**2).sqrt()
        # network predicts -sigma * score = eps
        return _per_sample_mse(net(_bcast(c_in, x) * x, sigma.log() / 4, cond), noise)

    def denoiser(self, net, cond=None) -> Denoiser:
        def d(x, sigma):
            sigma = sigma.float()
            c_in = 1 / (sigma**2 + self.sigma_data**2).sqrt()
            return x - _bcast(sigma, x) * net(_bcast(c_in, x) * x, sigma.log() / 4, cond)

        return d

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        return geometric_sigmas(steps, self.sigma_min, self.sigma_max)


OBJECTIVES = Registry("diffusion.family", {
    "ddpm": DDPMObjective,
    "edm": EDMObjective,
    "flow": FlowMatchingObjective,
    "ve": VEObjective,
})


def build_objective(cfg: dict):
    """Build an objective from ``{'family': name, **kwargs}`` through an allow-list (no ``_target_``)."""
    if cfg.get("steps") is not None:  # 0 would fall back to the default number of steps without a word
        positive_int(cfg["steps"], "diffusion.steps")
    # keys the module and the samplers read
    return OBJECTIVES.build(cfg, ignore=("sampler", "steps", "clip_denoised", "sampler_options"))
