"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper: no sampler knows about it.

A conditional denoiser ``D(x, sigma, label)`` trained with label dropout is also an unconditional one
(``label = null``). The guided denoiser is ``D_u + w (D_c - D_u)``: ``w = 1`` is plain conditional
sampling, ``w = 0`` unconditional, ``w > 1`` sharpens towards the class. It is an ordinary
``Denoiser(x, sigma)``, so every sampler runs it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from src.errors import ConfigError

from .samplers import Denoiser

CondDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided(denoiser: CondDenoiser, label: torch.Tensor, null_label: int, scale: float) -> Denoiser:
    """``D_u + scale * (D_c - D_u)`` with ``D_c = denoiser(x, sigma, label)`` and ``D_u`` at ``null_label``.

    Both halves go through the network as one batch of twice the size (one call per step, as usual).
    """
    scale = float(scale)
    if scale < 0:
        raise ConfigError(f"guidance must be >= 0 (1: conditional, 0: unconditional); got {scale}.")
    label = label.long()
    null = torch.full_like(label, int(null_label))
    if scale == 1.0:
        return lambda x, sigma: denoiser(x, sigma, label)
    if scale == 0.0:
        return lambda x, sigma: denoiser(x, sigma, null)

    def d(x, sigma):
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([label, null]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return d


def drop_labels(label: torch.Tensor, null_label: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``prob`` (the training half of guidance)."""
    if prob <= 0:
        return label
    keep = torch.rand(label.shape, generator=generator, device=label.device) >= prob
    return torch.where(keep, label, torch.full_like(label, int(null_label)))
