"""Noise schedules: discrete beta schedules (DDPM family) and the continuous EDM sigmas.

Every schedule can be read as a table of sigmas in the variance-exploding view
``x = x0 + sigma * eps``; for a variance-preserving schedule ``sigma = sqrt((1 - abar) / abar)``.
Samplers only ever see descending sigma grids that end in 0.
"""

from __future__ import annotations

import math

import torch

from src.errors import ConfigError

DISCRETE_SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")


def betas_for(name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Betas of a discrete schedule, float64, same definitions as MONAI's ``NoiseSchedules``."""
    if name == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if name == "sigmoid":
        x = torch.linspace(-6, 6, num_timesteps, dtype=torch.float64)
        return torch.sigmoid(x) * (beta_end - beta_start) + beta_start
    if name == "cosine":
        # Nichol & Dhariwal (2021), improved DDPM, s = 0.008
        s = 8e-3
        x = torch.linspace(0, num_timesteps, num_timesteps + 1, dtype=torch.float64)
        abar = torch.cos(((x / num_timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
        abar = abar / abar[0]
        return (1 - abar[1:] / abar[:-1]).clamp(0, 0.999)
    raise ConfigError(f"Unknown noise schedule '{name}'; choose one of {', '.join(DISCRETE_SCHEDULES)}.")


class DiscreteSchedule:
    """A discrete variance-preserving schedule with ``alphas_cumprod`` and the matching sigma table."""

    def __init__(self, name: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 2e-2):
        self.name = name
        self.num_timesteps = num_timesteps
        self.betas = betas_for(name, num_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for any sigma, by linear interpolation in log-sigma (as k-diffusion does)."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(torch.float64).clamp_min(1e-12).log()
        idx = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).to(torch.float32)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long()
        hi = t.ceil().long()
        w = t - lo
        log_sigma = (1 - w) * self.log_sigmas.to(t.device)[lo] + w * self.log_sigmas.to(t.device)[hi]
        return log_sigma.exp().to(torch.float32)

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """Evenly spaced integer timesteps from T-1 down to 0 (MONAI's DDIM ``set_timesteps``)."""
        if not 1 <= steps <= self.num_timesteps:
            raise ConfigError(f"steps must be between 1 and num_timesteps={self.num_timesteps}, got {steps}.")
        return torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        ts = self.sampling_timesteps(steps)
        return torch.cat([self.sigmas[ts], self.sigmas.new_zeros(1)]).to(torch.float32)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM's discretisation (Karras et al. 2022, eq. 5), descending, with a final 0 appended."""
    i = torch.arange(steps, dtype=torch.float64)
    inv_rho = 1.0 / rho
    denom = max(steps - 1, 1)
    sig = (sigma_max**inv_rho + i / denom * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sig, sig.new_zeros(1)]).to(torch.float32)


def geometric_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-uniform grid used by score-based (VE) models, descending, with a final 0 appended."""
    sig = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64))
    return torch.cat([sig, sig.new_zeros(1)]).to(torch.float32)


def normal_icdf(u: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2.0) * torch.erfinv(2 * u - 1)


def lognormal_sigma(u: torch.Tensor, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM's training density, ln(sigma) ~ N(p_mean, p_std^2), by inverse CDF of a uniform ``u``."""
    return torch.exp(p_mean + p_std * normal_icdf(u.clamp(1e-6, 1 - 1e-6)))
