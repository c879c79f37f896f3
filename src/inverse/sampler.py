"""Posterior sampling with a diffusion prior and a data-consistency step on every denoised estimate.

The update is DDIM (Song et al. 2021) in which the denoised estimate ``x0 = D(x, sigma)`` is replaced by
its data-consistent version before the step, as in DDNM (Wang, Yu & Zhang, ICLR 2023, exact null-space
projection) and the Decomposed Diffusion Sampler (Chung, Lee & Ye, ICLR 2024, a few conjugate-gradient
steps on the normal equations). ``eta`` > 0 re-injects fresh noise, so repeated runs with different seeds
are samples of the posterior and their spread is a per-pixel uncertainty.

``resample`` > 0 adds "time travel" (RePaint, Lugmayr et al. CVPR 2022; DDNM+, Wang et al. 2023): on the
steps whose noise level lies in ``resample_sigmas``, the state reached at the next level is diffused back
to the current one with fresh noise and the step is taken again, ``resample`` more times. A projection step
replaces the measured part of the estimate but leaves the rest as the network guessed it without those
data; the repeats let the unmeasured part catch up with what was measured.

``fresh_noise`` makes each step multistep consistency sampling (Song et al. 2023, whose zero-shot inpainting
and super-resolution also replace the estimate by its data-consistent version): the next state is the
consistent ``x0`` noised afresh to the next level, which is what a consistency student (``src/distill``) needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from src.diffusion.samplers import ddim_step

from .operators import LinearOperator

DataStep = Callable[[torch.Tensor, int], torch.Tensor]
RESAMPLE_SIGMAS = (0.05, 5.0)  # where time travel paid on the real-head study (docs/studies/reconstruction.md)


def sample_posterior(denoiser, x: torch.Tensor, sigmas: torch.Tensor, data_step: DataStep, eta: float = 0.85,
                     generator: torch.Generator | None = None, callback=None, resample: int = 0,
                     resample_sigmas: tuple[float, float] = RESAMPLE_SIGMAS, fresh_noise: bool = False) -> torch.Tensor:
    """Run from noise ``x`` (scaled by ``sigmas[0]``) down the sigma grid; return the last consistent ``x0``.

    ``denoiser(x, sigma)`` is ``D`` in the variance-exploding view ``x = x0 + sigma * eps`` and
    ``data_step(x0, i)`` returns the data-consistent estimate in the same (model) space. ``resample``
    repeats of each step whose sigma lies in ``resample_sigmas`` (inclusive; see the module docstring):
    the network runs ``1 + resample`` times on those steps. ``fresh_noise``: the step re-noises ``x0`` with new
    noise only (``eta`` unused), for consistency students.
    """
    if resample < 0:
        raise ValueError(f"resample must be >= 0, got {resample}")
    lo, hi = resample_sigmas
    sigmas = sigmas.double().cpu()
    z = x / math.sqrt(1 + sigmas[0].item() ** 2)
    x0 = z
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        abar, abar_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        repeats = resample if s_next > 0 and lo <= s <= hi else 0
        for k in range(repeats + 1):
            x_ve = z * math.sqrt(1 + s**2)
            sig = torch.full((x.shape[0],), s, device=x.device, dtype=x.dtype)
            den = denoiser(x_ve, sig)
            eps = (x_ve - den) / s
            x0 = data_step(den, i)
            noise = None
            if (eta > 0 or fresh_noise) and s_next > 0:
                noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            if fresh_noise:  # x_next = x0 + sigma_next z in the VE view
                z = math.sqrt(abar_next) * x0 + (math.sqrt(1 - abar_next) * noise if noise is not None else 0)
            else:
                z = ddim_step(x0, eps, abar, abar_next, eta, noise)
            if k < repeats:  # back from sigma_next to sigma: the forward process q(z_s | z_next)
                back = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
                z = math.sqrt(abar / abar_next) * z + math.sqrt(1 - abar / abar_next) * back
        if callback is not None:
            callback(i, z, x0)
    return x0


def projection_step(operator: LinearOperator, y: torch.Tensor, iters: int = 5,
                    to_image: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    to_model: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DataStep:
    """The data step of ``sample_posterior``: to the operator's image space, enforce ``A x = y``, map back."""
    to_image = to_image or (lambda t: t)
    to_model = to_model or (lambda t: t)

    def step(x0: torch.Tensor, i: int) -> torch.Tensor:
        return to_model(operator.data_consistency(to_image(x0), y, iters))

    return step
