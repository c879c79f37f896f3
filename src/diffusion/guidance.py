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


def cat_conditions(a, b):
    """Two conditions as one batch: tensors, or dicts of tensors (text embeddings), concatenated along dim 0;
    tensors of different lengths along dim 1 (token sequences) are zero-padded to the longer."""
    if isinstance(a, dict):
        return {k: cat_conditions(a[k], b[k]) for k in a}
    if a.ndim > 1 and b.ndim > 1 and a.shape[1] != b.shape[1]:
        n = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(t, [0, 0] * (t.ndim - 2) + [0, n - t.shape[1]]) for t in (a, b))
    return torch.cat([a, b])


def guided(denoiser: CondDenoiser, label, null_label, scale: float) -> Denoiser:
    """``D_u + scale * (D_c - D_u)`` with ``D_c = denoiser(x, sigma, label)`` and ``D_u`` at ``null_label``.

    ``label``: class indices (``null_label`` the null class's index) or any condition with its null
    counterpart of the same structure (text: the embeddings of the caption and of the empty caption).
    Both halves go through the network as one batch of twice the size (one call per step, as usual).
    """
    scale = float(scale)
    if scale < 0:
        raise ConfigError(f"guidance must be >= 0 (1: conditional, 0: unconditional); got {scale}.")
    if isinstance(null_label, int):
        label = label.long()
        null = torch.full_like(label, int(null_label))
    else:
        null = null_label
    if scale == 1.0:
        return lambda x, sigma: denoiser(x, sigma, label)
    if scale == 0.0:
        return lambda x, sigma: denoiser(x, sigma, null)

    def d(x, sigma):
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cat_conditions(label, null))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return d


def drop_labels(label: torch.Tensor, null_label: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``prob`` (the training half of guidance)."""
    if prob <= 0:
        return label
    keep = torch.rand(label.shape, generator=generator, device=label.device) >= prob
    return torch.where(keep, label, torch.full_like(label, int(null_label)))


def drop_captions(captions: list[str], prob: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by the empty caption with probability ``prob`` (the text version of ``drop_labels``)."""
    if prob <= 0:
        return list(captions)
    keep = (torch.rand(len(captions), generator=generator, device=generator.device) >= prob).tolist()
    return [c if k else "" for c, k in zip(captions, keep)]
