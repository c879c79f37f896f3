"""How a sample is shown to a person: files on disk and W&B media, one writer per domain.

Each domain's ``DOMAIN.media`` is a writer class (``save(samples, out_dir, prefix) -> paths``, optional
``to_wandb(samples, key) -> dict``) taking samples shaped ``(N, C, *spatial)`` in the data range [-1, 1];
this module builds the one ``media.kind`` names and holds the picture helpers writers share.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> one ``(H', W', 3)`` uint8 grid."""
    x = to_uint8(x)
    n, c, h, w = x.shape
    if c == 1:
        x = x.repeat(1, 3, 1, 1)
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.zeros(3, ncol * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i, :3]
    return grid.permute(1, 2, 0).numpy()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def build_media(cfg: dict):
    """The media writer of the domain named by ``media.kind`` (old checkpoints name media this way too)."""
    from .domains import parts

    return parts("media", "media.kind").build(cfg)
