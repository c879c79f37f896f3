"""The std of white Gaussian noise in a signal, from its finest Haar details (Donoho & Johnstone 1994).

scikit-image's ``estimate_sigma`` does this through PyWavelets, which is not a dependency, hence these lines.
"""

from __future__ import annotations

import torch


def estimate_noise_std(x: torch.Tensor) -> float:
    """Median absolute finest-scale Haar detail / 0.6745, over the last one or two axes of ``x``."""
    if x.ndim >= 3 and x.shape[-1] > 1 and x.shape[-2] > 1:  # images: the diagonal (HH) detail
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        v = x[..., :h, :w]
        d = (v[..., 0::2, 0::2] - v[..., 0::2, 1::2] - v[..., 1::2, 0::2] + v[..., 1::2, 1::2]) / 2
    else:
        n = x.shape[-1] // 2 * 2
        d = (x[..., 1:n:2] - x[..., 0:n:2]) / 2**0.5
    return float(d.abs().flatten().median() / 0.6745)
