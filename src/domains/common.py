"""Small pieces several domains share: picture grids for media writers and the Fréchet distance of metrics.

They live beside the domains (not in ``src.media`` / ``src.metrics``, which build a domain's parts from the
registry), so a domain never imports the layer that dispatches to it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics.fid import compute_frechet_distance


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] -> uint8 in [0, 255]."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """``|mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 sqrt(cov1 cov2))`` between two Gaussians (as in FID/FAD), by MONAI's
    ``compute_frechet_distance`` in float64 (which regularises a singular product as pytorch-fid does)."""
    mu1, cov1, mu2, cov2 = (t.detach().double().cpu() for t in (mu1, cov1, mu2, cov2))
    return max(float(compute_frechet_distance(mu1, cov1, mu2, cov2)), 0.0)
