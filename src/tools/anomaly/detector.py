"""Anomaly maps by partial noising and denoising back (AnoDDPM, Wyatt et al., CVPRW 2022; MONAI tutorials).

A scan is noised to an intermediate level, then the prior's deterministic sampler (DDIM, eta = 0) takes it
back to clean data (a consistency student, ``src/distill``, in one step: ``f(x + sigma z, sigma)`` at the level
picked on its distillation grid). Healthy-looking anatomy comes back almost unchanged; structure the model never saw in
training is replaced by what it expects there, so ``|x - denoised|``, averaged over several noise draws, is
large where the scan is unusual.
"""

from __future__ import annotations

import torch

from src.diffusion.samplers import sample_ddim
from src.errors import ConfigError

from ..prior import Prior
from ..tiling import Tiling, blend
from .likelihood import bits_per_dim, log_likelihood


def partial_sigmas(sigmas: torch.Tensor, level: float) -> torch.Tensor:
    """The tail of a descending sigma grid that starts ``level`` (share of the steps, in (0, 1]) from its end."""
    if not 0 < level <= 1:
        raise ConfigError(f"--noise-level must be above 0 and at most 1 (a share of the noise schedule), got {level}.")
    steps = len(sigmas) - 1
    start = min(steps - 1, max(0, round((1 - level) * steps)))
    return sigmas[start:]


@torch.no_grad()
def anomaly_map(denoiser, x: torch.Tensor, sigmas: torch.Tensor, draws: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over ``draws`` of ``|x - denoised|`` (averaged over channels): ``(B, *spatial)``."""
    total = torch.zeros((x.shape[0], *x.shape[2:]), device=x.device)
    s0 = float(sigmas[0])
    for _ in range(draws):
        noisy = x + s0 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        back = sample_ddim(denoiser, noisy, sigmas, eta=0.0)
        total += (x - back).abs().mean(1)
    return total / draws


def student_sigmas(prior: Prior, level: float) -> torch.Tensor:
    """A consistency student's one-step denoise: the level ``level`` (share of its distillation grid from the
    bottom) down to 0 in one jump; a progressive student is refused (its denoiser is trained on its own grid)."""
    if prior.student["method"] != "consistency":
        raise ConfigError(f"Checkpoint {prior.name} is a {prior.student['method']} student, trained on its own "
                          "few-step grid only; anomaly maps need a consistency student or the teacher checkpoint.")
    grid = torch.cat([prior.module.grid, prior.module.grid.new_zeros(1)])
    return torch.stack([partial_sigmas(grid, level)[0], grid[-1]])


class Detector:
    """``Detector(prior).map(x)`` and ``.bits_per_dim(x)`` for signals ``(N, C, *spatial)`` in model space."""

    def __init__(self, prior: Prior, noise_level: float = 0.3, draws: int = 4, steps: int | None = None,
                 batch_size: int = 16, ode_steps: int = 32, probes: int = 1):
        if draws < 1 or ode_steps < 1 or probes < 1:
            raise ConfigError("--draws, --ode-steps and --probes must each be at least 1.")
        self.prior, self.draws, self.batch_size = prior, int(draws), max(1, int(batch_size))
        self.noise_level = float(noise_level)
        if prior.student:
            self.sigmas = student_sigmas(prior, self.noise_level)
        else:
            self.sigmas = partial_sigmas(prior.sigmas(steps), self.noise_level)
        self.ode_steps, self.probes = int(ode_steps), int(probes)

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", use_ema: bool = True, **options) -> Detector:
        return cls(Prior.from_checkpoint(path, ("mri", "image", "audio"), "anomaly detection", device, use_ema),
                   **options)

    def _tiling(self, x: torch.Tensor) -> Tiling:
        return Tiling(tuple(x.shape[2:]), self.prior.spatial, overlap=0.25)

    def _tiles(self, x: torch.Tensor, tiling: Tiling):
        items = [(n, r) for n in range(x.shape[0]) for r in tiling.regions()]
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            yield start, chunk, torch.stack([x[n][(slice(None), *r)] for n, r in chunk]).to(self.prior.device)

    def map(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        den = self.prior.denoiser()
        parts: list[list] = [[] for _ in range(x.shape[0])]
        tiling = self._tiling(x)
        for start, chunk, batch in self._tiles(x, tiling):
            g = torch.Generator(device=self.prior.device).manual_seed(int(seed) * 1_000_003 + start)
            for (n, region), m in zip(chunk, anomaly_map(den, batch, self.sigmas, self.draws, g)):
                parts[n].append((region, m))
        return torch.stack([blend(tiling, (), p) for p in parts])

    def bits_per_dim(self, x: torch.Tensor, seed: int = 0) -> float:
        """Bits per value over all tiles (each tile scored on its own; overlaps count once per tile)."""
        if self.prior.student:
            raise ConfigError(f"Checkpoint {self.prior.name} is a few-step student, which has no probability-flow "
                              "ODE to integrate; pass its teacher's checkpoint for --likelihood.")
        den = self.prior.denoiser(clamp=False)  # clamping would cut the Jacobian the trace needs
        grid = self.prior.sigmas(max(64, len(self.sigmas)))
        sigma_min, sigma_max = float(grid[grid > 0].min()), float(grid[0])
        total, dims = 0.0, 0
        for start, _chunk, batch in self._tiles(x, self._tiling(x)):
            g = torch.Generator(device=self.prior.device).manual_seed(int(seed) * 1_000_003 + start)
            total += float(log_likelihood(den, batch, sigma_min, sigma_max, self.ode_steps, self.probes, g).sum())
            dims += batch.numel()
        return float(bits_per_dim(torch.tensor(total), dims))
